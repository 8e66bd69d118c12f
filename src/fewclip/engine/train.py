"""The one training loop: optimiser, warm-up + cosine schedule, mixed precision, an atomic
checkpoint at the end of every epoch, automatic resume, NaN guard, tqdm progress.

Methods provide `param_groups()` (each group may carry its own `lr` and `warmup_epochs`) and
`loss(batch, epoch)`; the caller provides `batches(epoch)`, an iterable of batches already on
the device. Schedules follow Dassl (SPEC §2): during warm-up the lr is a constant
`warmup_lr`; afterwards a cosine over `epochs` restarts its count (WARMUP_RECOUNT), stepped per
epoch; `schedule="cosine_iter"` (Tip-Adapter-F) anneals per iteration over all iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import FewclipError
from ..io import atomic_path, torch_load


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    optimizer: str = "sgd"  # "sgd" | "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 1e-8
    schedule: str = "cosine_epoch"  # "cosine_epoch" | "cosine_iter" | "constant"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    precision: str = "auto"  # "auto" (bf16/fp16 on GPU, fp32 on CPU) | "fp32" | "bf16" | "fp16"
    identity: dict = field(default_factory=dict)  # what a resumable checkpoint must match


def _finite(tensors) -> bool:
    """True when every floating-point tensor in `tensors` (a state dict, or an iterable of
    tensors or of lists of tensors) is finite."""
    if isinstance(tensors, dict):
        tensors = tensors.values()
    for t in tensors:
        if isinstance(t, (list, tuple)) or (not isinstance(t, torch.Tensor) and hasattr(t, "__iter__")):
            if not _finite(t):
                return False
        elif isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            return False
    return True


def _poisoned(what: str, epoch: int, it: int, checkpoint: Path | None, good_epoch: int | None) -> FewclipError:
    """The NaN guard's message; it promises only the checkpoint that exists (and is finite)."""
    if checkpoint is None:
        kept = ""
    elif good_epoch is None:
        kept = f"; no checkpoint was written yet ({checkpoint} does not exist)"
    else:
        kept = f", the last good checkpoint is kept at {checkpoint} (after epoch {good_epoch}, finite)"
    return FewclipError(f"{what} at epoch {epoch + 1}, step {it + 1}; training stopped{kept}. Lower the "
                        "learning rate (--set lr=...) or use precision fp32")


def lr_at(base_lr: float, epoch: int, it: int, iters: int, cfg: TrainConfig, warmup_epochs: int) -> float:
    if epoch < warmup_epochs:
        return cfg.warmup_lr
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "cosine_iter":
        total = max(1, cfg.epochs * iters)
        return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch * iters + it) / total))
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / cfg.epochs))


def _precision(cfg: TrainConfig, device: torch.device):
    if device.type != "cuda" or cfg.precision == "fp32":
        return None, False
    if cfg.precision == "fp16" or (cfg.precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16, True
    return torch.bfloat16, False


def _optimizer(groups, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise FewclipError(f"unknown optimizer '{cfg.optimizer}'; use sgd or adamw")


def train(method, batches: Callable[[int], Iterable], cfg: TrainConfig, device: torch.device,
          checkpoint: Path | None = None, on_epoch_end: Callable[[int], None] | None = None,
          desc: str = "train") -> dict:
    """Train `method` in place; returns {"epochs", "steps", "final_loss", "resumed_from"}."""
    from tqdm import tqdm

    groups = []
    for g in method.param_groups():
        g = dict(g)
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g.setdefault("lr", cfg.lr)
        g["base_lr"] = g["lr"]
        g.setdefault("warmup_epochs", cfg.warmup_epochs)
        if g["params"]:
            groups.append(g)
    if not groups:
        raise FewclipError(f"method {method.name} has no trainable parameters")
    opt = _optimizer(groups, cfg)
    dtype, use_scaler = _precision(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start, steps, last_loss = 0, 0, float("nan")
    good_epoch = None  # the last epoch whose (finite) state is in `checkpoint`
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch_load(checkpoint, "training checkpoint", "delete it to start this run from scratch")
        if not isinstance(state, dict) or not {"method", "optimizer", "epoch"} <= set(state):
            raise FewclipError(f"training checkpoint {checkpoint} is not one fewclip wrote (keys missing); "
                               "delete it to start this run from scratch")
        if not _finite(state["method"]):
            raise FewclipError(f"training checkpoint {checkpoint} holds non-finite (NaN/inf) weights; "
                               "delete it to start this run from scratch")
        if state.get("identity") != cfg.identity:
            raise FewclipError(
                f"checkpoint {checkpoint} belongs to another run ({state.get('identity')}), not to "
                f"{cfg.identity}; delete it to start this run from scratch"
            )
        method.load_state_dict(state["method"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start, steps, last_loss = state["epoch"] + 1, state["steps"], state["loss"]
        good_epoch = start
    resumed_from = start

    method.train()
    for epoch in range(start, cfg.epochs):
        epoch_batches = list(batches(epoch)) if cfg.schedule == "cosine_iter" else batches(epoch)
        iters = len(epoch_batches) if cfg.schedule == "cosine_iter" else 1
        bar = tqdm(epoch_batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch")
        total, n = 0.0, 0
        for it, batch in enumerate(bar):
            for g in opt.param_groups:
                g["lr"] = lr_at(g["base_lr"], epoch, it, iters, cfg, g["warmup_epochs"])
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = method.loss(batch, epoch)
            if not torch.isfinite(loss):
                raise _poisoned(f"loss became {loss.item()}", epoch, it, checkpoint, good_epoch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if not _finite(g["params"] for g in opt.param_groups):  # a finite loss, NaN/inf gradients
                raise _poisoned("the weights became NaN/inf", epoch, it, checkpoint, good_epoch)
            steps += 1
            total, n = total + loss.item(), n + 1
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        last_loss = total / max(n, 1)
        if on_epoch_end is not None:
            method.eval()
            on_epoch_end(epoch)
            method.train()
        if checkpoint is not None:
            state = {"identity": cfg.identity, "epoch": epoch, "steps": steps, "loss": last_loss,
                     "method": method.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state()}
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state()
            if not _finite(state["method"]):  # never save a poisoned state over a good one
                raise _poisoned("the state became NaN/inf", epoch, max(n - 1, 0), checkpoint, good_epoch)
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
            good_epoch = epoch + 1
    method.eval()
    return {"epochs": cfg.epochs, "steps": steps, "final_loss": last_loss, "resumed_from": resumed_from}
