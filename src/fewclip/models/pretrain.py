"""Pretrain the demo's micro-CLIP: a tiny open_clip model trained with the CLIP loss on
procedurally generated image–caption pairs (fewclip.data.demo.pretrain_pair).

The pairs come from their own random stream, disjoint from every evaluation image of the demo
world. Training is deterministic for a given seed (fixed thread count, deterministic
algorithms, every random draw seeded), and the result is a plain state dict that
`load_backbone(model, "/path/to/micro_clip.pt")` loads through the normal local-checkpoint path.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np

MODEL = "fewclip-micro-vit"
STEPS = 400
BATCH_SIZE = 128
POOL_SIZE = 12288  # distinct pretraining pairs (drawn once, then shuffled per epoch)
LR = 2e-3
WARMUP = 25
THREADS = 2  # fixed, so the bytes do not depend on the core count (the rule declares 2 threads)


def _to_tensor(images: np.ndarray, preprocess):
    """uint8 [N, H, W, 3] -> model input, normalised with the model's mean/std (`preprocess`)."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (x - mean) / std


def build_pool(seed: int, n: int) -> tuple[np.ndarray, list[str]]:
    """The first `n` pretraining pairs of the corpus for `seed`: uint8 [n, 32, 32, 3] and captions."""
    from ..data.demo import pretrain_pair

    pairs = [pretrain_pair(seed, i) for i in range(n)]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def pretrain_micro_clip(out, seed: int = 0, steps: int = STEPS, batch_size: int = BATCH_SIZE,
                        pool_size: int = POOL_SIZE, model_name: str = MODEL, lr: float = LR,
                        log=print) -> dict:
    """Train and write the checkpoint to `out` (atomically); returns a summary dict."""
    import torch
    import torch.nn.functional as F

    from ..io import atomic_path
    from .backbone import expected_preprocess, register_package_models

    register_package_models()
    import open_clip

    # the preprocessing load_backbone gives the checkpoint (a local file) when it is evaluated
    preprocess = expected_preprocess(model_name, str(Path(out).resolve()))
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        pool_size = min(pool_size, steps * batch_size)
        images, captions = build_pool(seed, pool_size)
        gen_s = time.perf_counter() - t0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(model_name, pretrained=None, device="cpu")
            tokenizer = open_clip.get_tokenizer(model_name)
            tokens = tokenizer(captions)
            pixels = _to_tensor(images, preprocess)
            decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
            rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                     {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
            model.train()
            order = torch.randperm(pool_size)
            pos, loss_v, acc_v = 0, float("nan"), float("nan")
            labels = torch.arange(batch_size)
            for step in range(steps):
                if pos + batch_size > pool_size:
                    order, pos = torch.randperm(pool_size), 0
                idx = order[pos:pos + batch_size]
                pos += batch_size
                x = pixels[idx]
                flip = torch.rand(len(idx)) < 0.5  # horizontal flips, as the train transform does
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                scale = lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps))
                for g in opt.param_groups:
                    g["lr"] = scale
                img_f, txt_f, logit_scale = model(x, tokens[idx])[:3]
                logits = logit_scale * img_f @ txt_f.t()
                y = labels[: len(idx)]
                loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y)) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                loss_v = float(loss.detach())
                acc_v = float((logits.detach().argmax(1) == y).float().mean())
                if step % 50 == 0 or step == steps - 1:
                    log(f"step {step + 1}/{steps}  loss {loss_v:.4f}  in-batch acc {acc_v:.3f}  "
                        f"({time.perf_counter() - t0:.1f}s)")
            model.eval()
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    out = Path(out)
    buf = io.BytesIO()  # in memory: the zip's record names then do not depend on the file name
    torch.save(state, buf)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    summary = {"model": model_name, "seed": seed, "steps": steps, "batch_size": batch_size,
               "pool_size": pool_size, "final_loss": loss_v, "final_batch_acc": acc_v,
               "data_seconds": round(gen_s, 2), "seconds": round(time.perf_counter() - t0, 2),
               "checkpoint": str(out)}
    log(f"wrote {out} ({summary['seconds']}s)")
    return summary


def zero_shot_accuracy(backbone, data_root, dataset: str) -> float:
    """Top-1 (%) of the hand-crafted-prompt zero-shot classifier on `dataset`'s test split."""
    import torch

    from ..data.datasets import load_dataset
    from ..data.images import load_image
    from ..data.transforms import test_transform
    ds = load_dataset(dataset, data_root)
    tf = test_transform(backbone.preprocess)
    weights = backbone.encode_text([ds.template.format(name) for name in ds.classnames])
    correct = 0
    for i in range(0, len(ds.test), 256):
        batch = ds.test[i:i + 256]
        x = torch.stack([tf(load_image(ds.abspath(it))) for it in batch])
        pred = (backbone.encode_images(x) @ weights.t()).argmax(1)
        correct += int((pred == torch.tensor([it.label for it in batch])).sum())
    return 100.0 * correct / len(ds.test)
