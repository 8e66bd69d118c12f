"""The one training loop: optimiser, warm-up + cosine schedule, mixed precision, an atomic
checkpoint at the end of every epoch, automatic resume, NaN guard, tqdm progress.

Methods provide `param_groups()` (each group may carry its own `lr` and `warmup_epochs`) and
`loss(batch, epoch)`; the caller provides `batches(epoch)`, an iterable of batches already on
the device. Schedules follow Dassl (SPEC §2): during warm-up the lr is a constant
`warmup_lr`; afterwards a cosine over `epochs` restarts its count (WARMUP_RECOUNT), stepped per
epoch; `schedule="cosine_iter"` anneals per iteration over all iterations. Both cosines end at
`min_lr` (PyTorch's `eta_min`; 0 by default).

A step budget (`iters` > 0) ends training after exactly that many optimiser steps, in the middle
of an epoch if that is where it falls (the loop of code that counts iterations, not epochs:
`while count < total_iters: for batch in loader: ...`); `epochs` then bounds the passes, 0 for no
bound, and `cosine_iter` anneals over the `iters` steps (step t of T = iters), so the schedule
never needs an epoch's length.

Precision (`precision` hp; SPEC §2.2; the result's `train.precision` records what ran):
- "fp16": **pure fp16**, the official code's `PREC fp16` (the Dassl prompt
  trainers) and fp16 cache adapters: the frozen CLIP (a half copy held by the method), the learned
  tensors, Meta-Net, CAVPT and the method's buffers are cast to half, batches are fed in half, no
  autocast, **no GradScaler**, and SGD/AdamW update the half weights (their state is half too).
  The `official` preset's setting. It runs so on every device: the CPU has half kernels for
  every op the methods use (matmuls accumulate in fp32 there, as cuBLAS does), so a cell the
  workflow sends to the CPU (the feature-level methods) computes what `fewclip plan` shows.
  Half matmuls are much slower than fp32 ones on a CPU without native fp16 arithmetic.
- "amp": fp32 master weights, fp16 autocast and a GradScaler (the official code's `PREC amp`).
- "auto": fp32 master weights with bf16 autocast (fp16 + GradScaler where bf16 is unsupported);
  the `clean` preset's setting. "bf16": bf16 autocast. "fp32": no autocast.
  "auto" is fp32 on a CPU (by definition, noted in `train.precision`); "amp" and "bf16" autocast
  on the CPU too.

Whatever the device, a run computes in the precision its hyper-parameters name (what `fewclip
plan` prints), and `train.precision` in metrics.json records it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import ConfigError, FewclipError
from ..io import atomic_path, torch_load
from ..constants import PRECISIONS


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
    iters: int = 0  # a step budget: stop after this many optimiser steps (0: `epochs` passes)
    min_lr: float = 0.0  # where the cosine schedules end (eta_min)
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "amp" | "fp16" (pure half): see the module doc
    identity: dict = field(default_factory=dict)  # what a resumable checkpoint must match


@dataclass(frozen=True)
class Precision:
    """How a run computes: `half` (pure fp16 weights), else fp32 weights with an optional
    autocast dtype and GradScaler."""

    asked: str
    half: bool = False
    autocast: torch.dtype | None = None
    scaler: bool = False
    note: str = ""

    def describe(self) -> dict:
        if self.half:
            used = "fp16 (pure: half weights and optimiser state, no autocast, no GradScaler)"
        elif self.autocast is not None:
            used = f"{str(self.autocast).removeprefix('torch.')} autocast, fp32 master weights" + \
                (", GradScaler" if self.scaler else "")
        else:
            used = "fp32"
        out = {"asked": self.asked, "used": used, "weights": "fp16" if self.half else "fp32",
               "grad_scaler": self.scaler}
        if self.note:
            out["note"] = self.note
        return out


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The precision a run with hp `precision` = `name` uses on `device` (module doc)."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "fp16":  # pure half on every device: the CPU has half kernels (slower, the same numbers)
        return Precision(name, half=True)
    if name == "fp32":
        return Precision(name)
    if name == "auto" and device.type != "cuda":
        return Precision(name, note="CPU run: fp32")
    if name == "amp" or (name == "auto" and not torch.cuda.is_bf16_supported()):
        return Precision(name, autocast=torch.float16, scaler=True)
    return Precision(name, autocast=torch.bfloat16)


def _half_batch(batch):
    if isinstance(batch, torch.Tensor):
        return batch.half() if batch.is_floating_point() else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_half_batch(b) for b in batch)
    return batch


def _finite(tensors) -> bool:
    """True when every floating-point tensor in `tensors` (a state dict, or an iterable of
    tensors or of lists of tensors) is finite. One host sync per device, not one per tensor."""
    flags: dict = {}

    def walk(x):
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.numel():
                flags.setdefault(x.device, []).append(torch.isfinite(x).all())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)) or (hasattr(x, "__iter__") and not isinstance(x, (str, bytes))):
            for v in x:
                walk(v)

    walk(tensors)
    return all(bool(torch.stack(f).all()) for f in flags.values())


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


def lr_at(base_lr: float, epoch: int, it: int, iters: int, cfg: TrainConfig, warmup_epochs: int,
          step: int | None = None) -> float:
    """The lr of step `it` of `epoch` (`iters` steps per epoch; `step`: the steps taken before it,
    read by `cosine_iter` under a step budget, where it defaults to epoch * iters + it)."""
    if epoch < warmup_epochs:
        return cfg.warmup_lr
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "cosine_iter":
        if cfg.iters:  # over the step budget
            t, total = epoch * iters + it if step is None else step, cfg.iters
        else:
            t, total = epoch * iters + it, max(1, cfg.epochs * iters)
        return cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * t / total))
    return cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / cfg.epochs))


def _optimizer(groups, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise FewclipError(f"unknown optimizer '{cfg.optimizer}'; use sgd or adamw")


def train(method, batches: Callable[[int], Iterable], cfg: TrainConfig, device: torch.device,
          checkpoint: Path | None = None, on_epoch_end: Callable[[int], None] | None = None,
          desc: str = "train") -> dict:
    """Train `method` in place; returns {"epochs" (the passes made), "steps", "final_loss",
    "resumed_from", "precision"}."""
    if cfg.epochs < 1 and cfg.iters < 1:
        raise ConfigError("training needs epochs >= 1 or a step budget iters >= 1")
    if cfg.epochs < 1 and cfg.schedule == "cosine_epoch":
        raise ConfigError("schedule cosine_epoch anneals over `epochs`: set epochs >= 1 or use cosine_iter")
    precision = resolve_precision(cfg.precision, device)
    if precision.half:
        method.to_half()  # the method's own precision hook (fewclip.methods.base.Method.to_half)
    opt = _optimizer(_param_groups(method, cfg), cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)

    start, steps, last_loss = 0, 0, float("nan")
    good_epoch = None  # the last epoch whose (finite) state is in `checkpoint`
    resumed = _resume(checkpoint, method, opt, scaler, cfg, device) if checkpoint is not None else None
    if resumed is not None:
        start, steps, last_loss = resumed
        good_epoch = start
    resumed_from = start

    method.train()
    epoch = start
    while (not cfg.epochs or epoch < cfg.epochs) and (not cfg.iters or steps < cfg.iters):
        before = steps
        steps, last_loss = _epoch(method, batches, opt, scaler, precision, cfg, device, epoch, steps, desc,
                                  checkpoint, good_epoch)
        if steps == before and not cfg.epochs:
            raise FewclipError(f"epoch {epoch + 1} gave no training batch: the step budget iters={cfg.iters} "
                               "can never be reached")
        if on_epoch_end is not None:
            method.eval()
            on_epoch_end(epoch)
            method.train()
        if checkpoint is not None:
            _save(checkpoint, method, opt, scaler, cfg, device, epoch, steps, last_loss, good_epoch,
                  last_step=max(steps - before - 1, 0))
            good_epoch = epoch + 1
        epoch += 1
    method.eval()
    return {"epochs": epoch, "steps": steps, "final_loss": last_loss, "resumed_from": resumed_from,
            "precision": precision.describe()}


def _param_groups(method, cfg: TrainConfig) -> list[dict]:
    """The method's groups with their trainable parameters, lr and warm-up (the config's by default)."""
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
    return groups


def _epoch(method, batches, opt, scaler, precision: Precision, cfg: TrainConfig, device: torch.device, epoch: int,
           steps: int, desc: str, checkpoint, good_epoch) -> tuple[int, float]:
    """One epoch of steps; returns (steps so far, the epoch's mean loss)."""
    from tqdm import tqdm

    dtype = precision.autocast
    per_epoch = cfg.schedule == "cosine_iter" and not cfg.iters  # the schedule needs the epoch's length
    epoch_batches = list(batches(epoch)) if per_epoch else batches(epoch)
    iters = len(epoch_batches) if per_epoch else 1
    where = f"epoch {epoch + 1}/{cfg.epochs}" if cfg.epochs else f"epoch {epoch + 1}, from step {steps + 1}/{cfg.iters}"
    bar = tqdm(epoch_batches, desc=f"{desc} {where}", leave=False, unit="batch")
    total, n = 0.0, 0
    for it, batch in enumerate(bar):
        if precision.half:
            batch = _half_batch(batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(g["base_lr"], epoch, it, iters, cfg, g["warmup_epochs"], steps)
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
        if cfg.iters and steps >= cfg.iters:  # the step budget ends training, mid-epoch if it falls there
            break
    return steps, total / max(n, 1)


def _resume(checkpoint: Path, method, opt, scaler, cfg: TrainConfig,
            device: torch.device) -> tuple[int, int, float] | None:
    """Load a training checkpoint of this very run, if there is one; returns (next epoch, steps,
    loss), or None: no checkpoint, or one of an earlier run of this same cell under other
    hyper-parameters (a run that failed or was stopped, rerun with a fix such as --set lr=...),
    which is deleted with a message: nothing of it can be resumed, and it must not block the
    corrected run. A checkpoint of another cell is refused."""
    if not Path(checkpoint).is_file():
        return None
    state = torch_load(checkpoint, "training checkpoint", "delete it to start this run from scratch")
    if not isinstance(state, dict) or not {"method", "optimizer", "epoch"} <= set(state):
        raise FewclipError(f"training checkpoint {checkpoint} is not one fewclip wrote (keys missing); "
                           "delete it to start this run from scratch")
    if _other_hparams(state.get("identity"), cfg.identity):
        print(f"fewclip: discarding {checkpoint}: the training state of an earlier run of this cell under other "
              "hyper-parameters (it failed or was stopped); training starts from epoch 1", file=sys.stderr)
        Path(checkpoint).unlink()
        return None
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
    return state["epoch"] + 1, state["steps"], state["loss"]


def _other_hparams(theirs, mine: dict) -> bool:
    """Whether a checkpoint's identity is this cell's under other hyper-parameters (`hp`)."""
    if not isinstance(theirs, dict) or "hp" not in mine or theirs.get("hp") == mine["hp"]:
        return False
    return {k: v for k, v in theirs.items() if k != "hp"} == {k: v for k, v in mine.items() if k != "hp"}


def _save(checkpoint: Path, method, opt, scaler, cfg: TrainConfig, device: torch.device, epoch: int, steps: int,
          loss: float, good_epoch, last_step: int) -> None:
    """The end-of-epoch checkpoint, atomically; a poisoned state never replaces a good one."""
    state = {"identity": cfg.identity, "epoch": epoch, "steps": steps, "loss": loss,
             "method": method.state_dict(), "optimizer": opt.state_dict(),
             "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state()
    if not _finite(state["method"]):
        raise _poisoned("the state became NaN/inf", epoch, last_step, checkpoint, good_epoch)
    with atomic_path(checkpoint) as tmp:
        torch.save(state, tmp)
