"""CLIP-Adapter (SPEC §2; official code: gaopengcuhk/CLIP-Adapter, a partial release).

A(x) = ReLU(W₂·ReLU(W₁x)), W₁: d→d/4, W₂: d/4→d, no bias. The visual side (default,
`side=visual`, the released code) adapts the image feature, f' = r·A(f) + (1−r)·f; the text
side (`side=text`, from the paper) adapts each class's text feature the same way with its own
adapter; `side=both` does both. Logits: 100·norm(f')·norm(W')ᵀ. "norm" rescales to the
input's own norm — 1 for L2-normalised features; it keeps r = 0 exactly zero-shot although the
store keeps features in fp16. Both sides only transform features, so the adapter scores any
class set, unseen classes included.

Training (no official config exists; third-party settings, SPEC §2): SGD lr 0.01, momentum 0.9,
weight decay 5e-4, batch 32, CoOp's epochs (1-shot 50, 2/4-shot 100, 8/16-shot 200, ImageNet
50) and CoOp's schedule (1 warm-up epoch at 1e-5, then a cosine per epoch), on the stored
augmented views (one random view of every train image per epoch). `official` trains as Dassl's
loader batches (`drop_last` when the set holds a full batch) in fp32 (the released trainer casts
CLIP to fp32); `clean` keeps the last incomplete batch and uses the engine's default precision.

Ratio r (metrics.json `hparams.ratio`): official preset r = 0.2, hard-coded as in the released
code. clean preset: one adapter per candidate r in `ratios` (0.2, 0.4, 0.6, 0.8) is trained
in the same loop on the same batches — the loss is their sum, and their parameters are
disjoint, so each adapter gets exactly the gradients it would get alone — then the r with the
best few-shot-val accuracy is kept (ties: the smaller r); `ratio_val_acc` lists every
candidate's val accuracy. Only the chosen adapter is kept in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from . import register
from .base import HP, ClassSet, DataNeeds, Method, train_hparams

SIDES = ("visual", "text", "both")


class Adapter(nn.Module):
    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.fc(x)


def residual(adapter: nn.Module | None, x: torch.Tensor, ratio: float) -> torch.Tensor:
    """r·A(x) + (1−r)·x, rescaled to the norm of x (norm(·) of SPEC for unit-norm x)."""
    if adapter is None:
        return x
    mixed = ratio * adapter(x) + (1 - ratio) * x
    return mixed * (x.norm(dim=-1, keepdim=True) / mixed.norm(dim=-1, keepdim=True))


class SideAdapters(nn.Module):
    """The adapter(s) for one ratio: visual and/or text."""

    def __init__(self, dim: int, side: str, reduction: int):
        super().__init__()
        self.visual = Adapter(dim, reduction) if side in ("visual", "both") else None
        self.text = Adapter(dim, reduction) if side in ("text", "both") else None

    def logits(self, x, text, ratio: float, scale: float, bias: float = 0.0):
        """The backbone's scale (the official `logit_scale.exp()`) and bias."""
        return scale * residual(self.visual, x, ratio) @ residual(self.text, text, ratio).t() + bias


@register
class CLIPAdapter(Method):
    name = "clip_adapter"
    resources = {"mem_mb": 4000, "runtime": 15}  # one cell, paper GPUs (workflow scales for ImageNet)
    needs = "features"
    trains = True
    hparams = {"views": HP(10, min=1), "side": HP("visual", choices=SIDES), "ratio": HP(0.2, min=0.0, max=1.0),
               "reduction": HP(4, min=1), "select_ratio": False, "ratios": HP([0.2, 0.4, 0.6, 0.8], min=0.0, max=1.0),
               **train_hparams(epochs=200, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                               schedule="cosine_epoch", warmup_epochs=1, warmup_lr=1e-5, batch_size=32,
                               precision="auto"),
               "drop_last": False}
    # official: the released trainer's hard-coded ratio, Dassl's train loader (the last incomplete
    # batch dropped when there is a full one) and its fp32 CLIP (`clip_model.float()`)
    presets = {"clean": {"select_ratio": True},
               "official": {"select_ratio": False, "ratio": 0.2, "drop_last": True, "precision": "fp32"}}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        if dataset == "imagenet" or shots == 1:
            return {"epochs": 50}
        return {"epochs": 100 if shots in (2, 4) else 200}

    def data_needs(self) -> DataNeeds:
        selects = len(self.candidates()) > 1
        return DataNeeds(views=int(self.hp["views"]), batch_size=int(self.hp["batch_size"]),
                         drop_last=bool(self.hp["drop_last"]),
                         fewshot_val=("select_ratio chooses the ratio r there; --set select_ratio=false trains the "
                                      "fixed ratio (--set ratio=...) instead") if selects else "")

    def candidates(self) -> list[float]:
        return [float(r) for r in self.hp["ratios"]] if self.hp["select_ratio"] else [float(self.hp["ratio"])]

    def setup(self, task) -> dict:
        side = self.hp["side"]
        dim = task.train.features.shape[-1]
        if dim % int(self.hp["reduction"]):
            raise ConfigError(f"feature dim {dim} is not divisible by reduction {self.hp['reduction']}")
        self.ratios = self.candidates()
        self.adapters = nn.ModuleList(SideAdapters(dim, side, int(self.hp["reduction"]))
                                      for _ in self.ratios).to(task.device)
        self.register_buffer("text", task.classes.text_features.to(task.device).float())
        self.scale, self.bias = task.classes.logit_scale, task.classes.logit_bias
        return {"side": side}

    def loss(self, batch, epoch: int) -> torch.Tensor:
        x, y = batch
        return sum(nn.functional.cross_entropy(a.logits(x, self.text, r, self.scale, self.bias), y) for a, r in zip(self.adapters, self.ratios))

    @torch.no_grad()
    def finish(self, task) -> dict:
        if len(self.ratios) == 1:
            return {"ratio": self.ratios[0], "ratio_selected_on": "fixed"}
        # in the adapters' precision (half after pure fp16 training, as the engine feeds the batches)
        x, y = task.val.features.to(task.device, self.text.dtype), task.val.labels.to(task.device)
        if len(y) == 0:
            raise ConfigError("clip_adapter select_ratio needs a few-shot val split; this cell has none "
                              "(use --set select_ratio=false)")
        accs = [100.0 * float((a.logits(x, self.text, r, self.scale, self.bias).argmax(-1) == y).float().mean())
                for a, r in zip(self.adapters, self.ratios)]
        best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # first best
        self.adapters = nn.ModuleList([self.adapters[best]])
        self.ratios = [self.ratios[best]]
        return {"ratio": self.ratios[0], "ratio_selected_on": "fewshot_val",
                "ratio_val_acc": dict(zip([str(r) for r in self.candidates()], accs))}

    def logits(self, x, classes: ClassSet):
        return self.adapters[0].logits(x, classes.text_features, self.ratios[0], classes.logit_scale, classes.logit_bias)
