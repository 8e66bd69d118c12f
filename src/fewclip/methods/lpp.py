"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, CVPR'24; official code:
FereshteShakeri/FewShot-CLIP-Strong-Baseline, `methods/linear_probe_p2.py`): a linear probe
initialised and blended from text, trained full-batch on the stored features.

logits = f·Wᵀ + b + α_c·(f·t_c), with f the L2-normalised image feature, t_c the class's
hand-crafted text feature, W [C, d], b [C] and one blending weight α_c per class. The training
input is one augmented view of each few-shot train image (the official loader's RandomResizedCrop
0.5–1 + flip, encoded once): the store's first stored view (`views` = 1; 0 takes the plain
train features, v > 1 the first v views as v·N rows).

What `official` reproduces, each a quirk of the official code (all kept by `clean` too unless said):
- **image-sum initialisation**: W starts at the per-class SUM of the train features (the division
  by the class count is commented out in `compute_centroids`); b keeps nn.Linear's random
  U(−1/√d, 1/√d) (drawn here from the cell's seed); α starts at one scalar for every class,
  mean_c 250·mean_{i∈c} f_i·t_c (`calculate_init_alpha`, float64). The text enters only through α.
- **step-size rules**: W and b by SGD, momentum 0.9, lr_w = 4N / λ_max(FᵀF) (`calculate_lr_w`; no
  decay, no schedule); α by a plain gradient step every 10 epochs (`alpha_every`) with
  lr_α = N / (4·max_c Σ_i (f_i·t_c)²) (`calculate_lr_alpha`); 300 full-batch epochs (`epochs`).
  The configured lr and batch size of the official config are not read.
- **never-zeroed α gradient**: `optimizer.zero_grad()` covers the classifier only, so each α step
  uses the SUM of α's gradients since epoch 0 (`alpha_grad` "accumulated"); "current" uses the
  gradient of the update epoch alone (the fixed code, which the official repository does not have).
- **reporting epoch**: after each epoch's update, accuracy on the few-shot val split; the kept (and
  reported) model is the one of the LATEST epoch whose val accuracy is ≥ the best so far (ties go
  to the later epoch; epoch 1 always qualifies). metrics.json `selected`: `epoch_kept` (1-based),
  `val_acc`, `lr_w`, `lr_alpha`, `init_alpha`, and `last_loss` (the official return value: the
  LAST epoch's training loss, not the kept one's). `select` "last" keeps the last epoch instead
  (for a cell without few-shot val images).
- precision (`precision`): `official` holds features, text weights, W, b, α, their gradients and
  the momentum in fp16 as the official GPU code does, rounding after every operation; each product
  is computed in fp32 from the half operands and rounded (what an fp16 GEMM with fp32
  accumulation gives; a CPU computes it at fp32 speed). `clean` runs fp32.

What `clean` changes: fp32 instead of fp16, and the dataset's own template on ImageNet (and so on its
DG targets) where the official code uses the 7-template ensemble (`templates`); it selects on the
few-shot val split exactly as `official` does (LP++ never looks at test data).

Not reproduced (the data protocol of the official `main.py`, outside the method): its own K-shot
sampling with 10 tasks (seeds 1–10) and a val split of K shots per class (fewclip's manifests: Dassl's
sampling, min(K, 4) val shots, the config's seeds); `main_imagenet.py` scores ImageNet-A/-R 1000-way,
fewclip over their 200 classes. The head is class-specific: unseen classes are n/a.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.templates import TEMPLATE_SETS
from . import register
from .base import HP, ClassSet, DataNeeds, Method, NotApplicable

ALPHA_INIT_SCALE = 250.0  # calculate_init_alpha: 250 / shots · (shots · class mean of f·t_c)
MOMENTUM = 0.9  # torch.optim.SGD(classifier.parameters(), lr_w, momentum=0.9)


class Rounding:
    """The stored precision: fp16 rounds every result to half (computing in fp32), fp32 keeps it."""

    def __init__(self, precision: str = "fp32"):
        self.dtype = torch.float16 if precision == "fp16" else torch.float32

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.dtype == torch.float32 else t.half().float()


FP32 = Rounding("fp32")


def init_classifier(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, n_classes: int, q=FP32):
    """(W [C, d] = per-class sums of x, α scalar (float) = mean_c 250·mean_{i∈c} x_i·t_c).

    `text` is [C, d] (rows: classes); x [N, d] and text already carry the precision's rounding."""
    counts = torch.bincount(y, minlength=n_classes)
    if bool((counts == 0).any()):
        missing = int(torch.nonzero(counts == 0)[0])
        raise ConfigError(f"lpp: class {missing} has no few-shot train image; LP++ initialises every class "
                          "from its images")
    sums = q(torch.zeros(n_classes, x.shape[1], dtype=x.dtype).index_add_(0, y, x))
    z = q(x @ text.t())  # [N, C]
    own = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, y, z.gather(1, y[:, None])[:, 0].double())
    class_mean = q((own / counts.double()).float()).double()  # mean_{i∈c} f_i·t_c
    return sums, float((ALPHA_INIT_SCALE * class_mean).mean())


def init_bias(n_classes: int, dim: int, seed: int) -> torch.Tensor:
    """nn.Linear's default bias init U(−1/√d, 1/√d), drawn from the cell's seed (the official draw
    depends on torch's global RNG state after the loaders, which no other code base reproduces)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n_classes, generator=gen) * 2 - 1) / math.sqrt(dim)


def step_sizes(x: torch.Tensor, text: torch.Tensor, q=FP32) -> tuple[float, float, float]:
    """(lr_w = 4N / λ_max(xᵀx), lr_α = N / (4·max_c Σ_i (x_i·t_c)²), λ_max)."""
    n = x.shape[0]
    gram = q(x.t() @ x) if x.shape[0] >= x.shape[1] else q(x @ x.t())  # the same largest eigenvalue
    lam = float(np.linalg.eigvalsh(gram.double().numpy()).max())
    col = q(q(q(x @ text.t()) ** 2).sum(0))
    lr_alpha = float(q(torch.tensor(n, dtype=torch.float32) / q(4 * col.max())))
    return 4 * n / lam, lr_alpha, lam


@dataclass
class State:
    """The classifier and everything the loop carries from one epoch to the next."""

    W: torch.Tensor
    b: torch.Tensor
    alpha: torch.Tensor  # [C]
    alpha_grad: torch.Tensor | None = None  # what α's .grad holds (accumulated since epoch 0, officially)
    buf_W: torch.Tensor | None = None  # SGD momentum buffers (None before the first step)
    buf_b: torch.Tensor | None = None

    def __post_init__(self):
        if self.alpha_grad is None:
            self.alpha_grad = torch.zeros_like(self.alpha)


def blend(x, z, W, b, alpha, q=FP32) -> torch.Tensor:
    """f·Wᵀ + b + α ⊙ (f·T) with z = f·T precomputed ([N, C])."""
    return q(q(x @ W.t() + b) + q(alpha * z))


def epoch_step(s: State, x, y, z, lr_w: float, lr_alpha: float, update_alpha: bool, accumulate: bool,
               q=FP32) -> tuple[float, float]:
    """One official epoch: forward, cross-entropy, SGD-with-momentum step of W and b, the α gradient
    added to what α's .grad holds, and, when `update_alpha`, α −= lr_α·grad. (loss, train acc %)."""
    logits = blend(x, z, s.W, s.b, s.alpha, q)
    acc = 100.0 * float((logits.argmax(1) == y).double().mean())
    # the cross-entropy and its gradient by torch's own kernels, in the stored precision (fp16: half
    # logits, as the official code computes them; its rounding decides when the loss reaches 0)
    held = logits.to(q.dtype).requires_grad_()
    with torch.enable_grad():
        loss_t = F.cross_entropy(held, y)
        (g,) = torch.autograd.grad(loss_t, held)
    loss, g = float(loss_t.detach()), g.float()
    g_w, g_b, g_alpha = q(g.t() @ x), q(g.sum(0)), q(q(g * z).sum(0))
    s.alpha_grad = q(s.alpha_grad + g_alpha) if accumulate else g_alpha
    if s.buf_W is None:
        s.buf_W, s.buf_b = g_w.clone(), g_b.clone()
    else:
        s.buf_W, s.buf_b = q(q(MOMENTUM * s.buf_W) + g_w), q(q(MOMENTUM * s.buf_b) + g_b)
    s.W, s.b = q(s.W - lr_w * s.buf_W), q(s.b - lr_w * s.buf_b)
    if update_alpha:
        s.alpha = q(s.alpha - q(lr_alpha * s.alpha_grad))
    return loss, acc


def fit(x, y, z, val, W, b, alpha, lr_w: float, lr_alpha: float, epochs: int, alpha_every: int,
        accumulate: bool = True, select: str = "val", q=FP32, on_epoch=None) -> dict:
    """The official loop. `val` = (x_val, y_val, z_val) or None; the kept state is the latest epoch
    with val accuracy ≥ the best so far (`select` "val") or the last one ("last").
    `on_epoch(epoch, state, loss, train_acc, val_acc)` sees every epoch (tests record the trajectory).
    Returns {"W", "b", "alpha" (kept), "epoch_kept" (0-based), "val_acc", "last_loss", "val_accs"}."""
    s = State(W.clone(), b.clone(), alpha.clone())
    best, kept, val_accs, loss = 0.0, None, [], float("nan")
    for epoch in range(epochs):
        loss, acc = epoch_step(s, x, y, z, lr_w, lr_alpha, (epoch + 1) % alpha_every == 0, accumulate, q)
        val_acc = None
        if select == "val":
            xv, yv, zv = val
            pred = blend(xv, zv, s.W, s.b, s.alpha, q).argmax(1)
            val_acc = 100.0 * float((pred == yv).double().mean()) if len(yv) else 0.0
            val_accs.append(val_acc)
            if val_acc >= best:
                best, kept = val_acc, (epoch, s.W.clone(), s.b.clone(), s.alpha.clone())
        if on_epoch is not None:
            on_epoch(epoch, s, loss, acc, val_acc)
    if select != "val":
        kept = (epochs - 1, s.W, s.b, s.alpha)
    epoch, W, b, alpha = kept
    return {"W": W, "b": b, "alpha": alpha, "epoch_kept": epoch, "val_acc": best if select == "val" else None,
            "last_loss": loss, "val_accs": val_accs}


@register
class LPP(Method):
    name = "lpp"
    needs = "features"
    resources = {"mem_mb": 6000, "runtime": 15}  # one cell (the workflow scales it for ImageNet)
    hparams = {
        "epochs": HP(300, min=1),  # configs/base.yaml train_epoch
        "alpha_every": HP(10, min=1),  # α steps when (epoch + 1) % 10 == 0
        "alpha_grad": HP("accumulated", choices=("accumulated", "current")),
        "views": HP(1, min=0),  # 0: the plain train features; v: the first v stored augmented views
        "select": HP("val", choices=("val", "last")),
        "precision": HP("fp32", choices=("fp32", "fp16")),
        "templates": HP("dataset", choices=TEMPLATE_SETS),
    }
    presets = {"official": {"precision": "fp16"}}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        # LP++'s datasets/imagenet.py: the 7-template ensemble for ImageNet (and its DG targets)
        return {"templates": "ensemble7" if preset == "official" and dataset == "imagenet" else "dataset"}

    def data_needs(self) -> DataNeeds:
        return DataNeeds(templates=self.hp["templates"], views=int(self.hp["views"]),
                         fewshot_val="it keeps the epoch with the best few-shot val accuracy; --set select=last "
                                     "keeps the last epoch" if self.hp["select"] == "val" else "")

    def _q(self):
        return Rounding(self.hp["precision"])

    def setup(self, task) -> dict:
        q, n_classes = self._q(), len(task.classes.names)
        v = int(self.hp["views"])
        if v:
            if task.views is None:
                raise ConfigError("lpp views > 0 needs the stored augmented views of the train images")
            x = task.views.features[:v].reshape(-1, task.views.features.shape[-1])
            y = task.train.labels.repeat(v)
        else:
            x, y = task.train.features, task.train.labels
        x, y = q(x.float().to(task.device)), y.long().to(task.device)
        text = q(task.classes.text_features.float().to(task.device))
        W, init_alpha = init_classifier(x, y, text, n_classes, q)
        b = q(init_bias(n_classes, x.shape[1], int(task.seed)).to(task.device))
        alpha = q(torch.full((n_classes,), init_alpha, device=task.device))
        lr_w, lr_alpha, _ = step_sizes(x.cpu(), text.cpu(), q)
        val = None
        if self.hp["select"] == "val":
            if len(task.val.labels) == 0:
                raise ConfigError("lpp keeps the epoch with the best few-shot val accuracy, and this cell has no "
                                  "few-shot val images; --set select=last keeps the last epoch")
            xv = q(task.val.features.float().to(task.device))
            val = (xv, task.val.labels.long().to(task.device), q(xv @ text.t()))
        out = fit(x, y, q(x @ text.t()), val, W, b, alpha, lr_w, lr_alpha, int(self.hp["epochs"]),
                  int(self.hp["alpha_every"]), self.hp["alpha_grad"] == "accumulated", self.hp["select"], q)
        dtype = torch.float16 if self.hp["precision"] == "fp16" else torch.float32
        # Parameters (trainable_params counts them); fitted here, the engine never trains them.
        self.weight = torch.nn.Parameter(out["W"].to(dtype))
        self.bias = torch.nn.Parameter(out["b"].to(dtype))
        self.alpha = torch.nn.Parameter(out["alpha"].to(dtype))
        self.is_half = dtype == torch.float16  # the engine then feeds half features, as the official code scores
        return {"epoch_kept": out["epoch_kept"] + 1, "val_acc": out["val_acc"], "last_loss": out["last_loss"],
                "lr_w": lr_w, "lr_alpha": lr_alpha, "init_alpha": init_alpha, "train_rows": int(x.shape[0])}

    def logits(self, x, classes: ClassSet):
        idx = classes.train_index
        if idx is None:
            raise NotApplicable("lpp: a class-specific head has no weights for unseen classes")
        if len(idx) and int(idx.max()) >= self.weight.shape[0]:
            raise NotApplicable(f"lpp: class index {int(idx.max())} is outside the {self.weight.shape[0]} "
                                "training classes")
        q = self._q()
        x, text = q(x.float()), q(classes.text_features.float())
        return blend(x, q(x @ text.t()), self.weight[idx].float(), self.bias[idx].float(), self.alpha[idx].float(), q)
