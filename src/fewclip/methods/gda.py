"""GDA: Gaussian discriminant analysis on CLIP features, training-free (Wang, Liang, Sheng, He,
Wang, Tan, "A Hard-to-Beat Baseline for Training-free CLIP-Based Adaptation", ICLR'24; official
code: mrflogs/ICLR24, `main_few_shots.py`, `main_base2new.py`, `main_robustness.py`).

From the stored augmented views (`views` passes, crop scale 0.5–1 + flip, each L2-normalised; the
official code re-encodes 10 such passes): the class means μ_c over all views of class c, one shared
precision P, and the linear classifier of Gaussians with uniform priors,
W = P·μ_cᵀ [d, C], b_c = log(1/C) − μ_c·P·μ_cᵀ / 2; logits = 100·f·Tᵀ + α·(f·W + b) with T the
hand-crafted text features. It never touches an image encoder and nothing is trained.

The precision (`estimator`), as each official script computes it:
- "shrinkage" (few-shot, DG: `main_few_shots.py`, `main_robustness.py`): with S the scatter of the
  views around their class means over all n = V·N vectors (torch.cov's (n−1)·cov),
  P = d·pinv(S + tr(S)/(n−1)·I_d) — the official d·pinv((n−1)·cov + tr(cov)·I).
- "pooled" (base-to-new, `main_base2new.py`): P = pinv(mean_c cov_c) with cov_c each class's own
  unbiased covariance; no shrinkage, no factor d; singular when a class has fewer views than
  dimensions, where the pseudo-inverse is a true one.
Both pseudo-inverses drop the eigenvalues below d·eps_fp32 times the largest, the cut-off of the
official fp32 `torch.linalg.pinv` (computed here in float64 from the fp32 scatter).

Unseen classes (base-to-new's new half, and a DG cell's cross-dataset targets) get GDA's base-to-new
estimator from the class's text feature w: its `neighbours` (64) nearest train views V_w by w·v
(among all views of all training classes), μ_w = mean of V_w together with `text_copies` (16)
copies of w, and one precision averaged over the unseen classes, mean_w d·pinv(D_wᵀD_w +
tr(D_wᵀD_w)/(k−1)·I) with D_w = V_w − w (the spread around w, not around the neighbours' mean);
α is the one searched on the training classes. The official code hard-codes d = 512 here (it runs
with 512-d features only); fewclip uses the features' d (the same for ViT-B/16 and B/32).

α: the first of `alphas` (1e-4 … 100) with a STRICTLY higher accuracy than the best so far, starting
from 0 % and α = `default_alpha` (0.1, kept when no α scores above 0), as the official loop.
Where it is searched (`search_split`, metrics.json `selected.search_split`):
- official: the dataset's FULL val split (the official loaders subsample train only); ImageNet:
  the TEST set (`val_features = test_features`; in base-to-new the base-class test set), as every
  official script does for ImageNet, DG included;
- clean: the manifest's few-shot val split (min(K, 4) images per class).

What `clean` changes: the α search split above, and the dataset's own template on ImageNet (and so on
its DG targets) where the official code uses the 7-template ensemble (`templates`). Both presets
use the estimator of the protocol's official script.

Not reproduced (the official `main()`, outside the method): its K-shot sampling (seeds 1–3 set once,
then K = 1, 2, 4, 8, 16 drawn in turn from the same RNG), and its first cell's fp16 val/test
features (`clip_classifier(..., clip_model.float())` casts the model after they were extracted).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..models.templates import TEMPLATE_SETS
from . import register
from .base import HP, ClassSet, DataNeeds, Method, NotApplicable

ALPHAS = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]  # main_few_shots.py run()
CHUNK = 8192  # rows per scatter update: memory stays O(CHUNK·d + d²)
RTOL = torch.finfo(torch.float32).eps  # × d: the default cut-off of torch.linalg.pinv on fp32 input


def class_means(vecs: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[C, d] the mean of each class's vectors (refused when a class has none)."""
    counts = torch.bincount(labels, minlength=n_classes)
    if bool((counts == 0).any()):
        raise ConfigError(f"gda: class {int(torch.nonzero(counts == 0)[0])} has no few-shot train image; "
                          "GDA estimates every class's mean from its images")
    sums = torch.zeros(n_classes, vecs.shape[1], dtype=torch.float64, device=vecs.device)
    part = torch.zeros(n_classes, vecs.shape[1], dtype=torch.float32, device=vecs.device)
    for r0 in range(0, vecs.shape[0], CHUNK):  # fp32 sums within a chunk, float64 across chunks
        sums += part.zero_().index_add_(0, labels[r0 : r0 + CHUNK], vecs[r0 : r0 + CHUNK].float())
    return (sums / counts[:, None]).float()


def scatter(vecs: torch.Tensor, labels: torch.Tensor, mus: torch.Tensor, row_weight=None) -> torch.Tensor:
    """[d, d] float64 Σ_i w_i (v_i − μ_{y_i})(v_i − μ_{y_i})ᵀ, accumulated over chunks of rows (fp32
    products, float64 sum)."""
    d = vecs.shape[1]
    out = torch.zeros(d, d, dtype=torch.float64, device=vecs.device)
    for r0 in range(0, vecs.shape[0], CHUNK):
        lab = labels[r0 : r0 + CHUNK]
        c = vecs[r0 : r0 + CHUNK].float() - mus[lab]
        if row_weight is not None:
            c = c * row_weight[lab].sqrt()[:, None]
        out += (c.t() @ c).double()
    return out


def pinv(a: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(pseudo-inverse, rank) of a symmetric matrix, float64, with the official fp32 cut-off: eigenvalues
    below d·eps_fp32 times the largest are dropped (scipy's eigh: torch's float64 eigh is far slower on
    some CPUs)."""
    import scipy.linalg

    lam, vec = scipy.linalg.eigh(a.double().cpu().numpy())
    keep = abs(lam) > a.shape[-1] * RTOL * abs(lam).max()
    v = torch.from_numpy(vec[:, keep])
    return ((v / torch.from_numpy(lam[keep])) @ v.t()).to(a.device), int(keep.sum())


def shrinkage_precision(vecs, labels, mus) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(P = d·pinv(S + tr(S)/(n−1)·I) [d, d] fp32, its pinv argument, its rank) — main_few_shots.py's
    KS estimator."""
    n, d = vecs.shape
    s = scatter(vecs, labels, mus)
    arg = s + torch.trace(s) / (n - 1) * torch.eye(d, dtype=torch.float64, device=s.device)
    p, rank = pinv(arg)
    return (d * p).float(), arg.float(), rank


def pooled_precision(vecs, labels, mus) -> tuple[torch.Tensor, int]:
    """(P = pinv(mean_c cov_c) [d, d] fp32, its rank) — main_base2new.py's base-class estimator."""
    counts = torch.bincount(labels, minlength=mus.shape[0]).double()
    if bool((counts < 2).any()):
        raise ConfigError("gda estimator=pooled needs at least two views of every class (a class covariance); "
                          "raise views or use estimator=shrinkage")
    p, rank = pinv(scatter(vecs, labels, mus, 1.0 / (counts - 1)) / mus.shape[0])
    return p.float(), rank


def linear_head(mus: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d, C] = (μ·P)ᵀ, b [C] = log(1/C) − diag(μ P μᵀ)/2): Gaussians with uniform priors."""
    mp = mus @ precision
    b = math.log(1.0 / mus.shape[0]) - (mp * mus).sum(1) / 2
    return mp.t().contiguous(), b


def gda_logits(x, text, W, b, alpha: float, scale: float = 100.0, bias: float = 0.0) -> torch.Tensor:
    """s·f·Tᵀ + bias + α·(f·W + b) (text [C, d], W [d, C]; s: `ClassSet.fixed_scale`, the official 100)."""
    return (scale * x) @ text.t() + bias + alpha * (x @ W + b)


@torch.no_grad()
def search_alpha(x, y, text, W, b, alphas, default: float, scale: float = 100.0, bias: float = 0.0) -> dict:
    """The official α search: the first α with a strictly higher accuracy than the best so far
    (starting from 0 % and `default`). {"alpha", "acc", "accs" (one per α, in %)}."""
    correct = torch.zeros(len(alphas), dtype=torch.long)
    for r0 in range(0, x.shape[0], CHUNK):
        xr, yr = x[r0 : r0 + CHUNK].float(), y[r0 : r0 + CHUNK]
        zs, g = (scale * xr) @ text.t() + bias, xr @ W + b
        for j, a in enumerate(alphas):
            correct[j] += int(((zs + a * g).argmax(1) == yr).sum())
    accs = [100.0 * int(c) / max(len(y), 1) for c in correct]
    best, alpha = 0.0, default
    for a, acc in zip(alphas, accs):
        if acc > best:
            best, alpha = acc, a
    return {"alpha": float(alpha), "acc": best, "accs": accs}


@torch.no_grad()
def unseen_head(vecs: torch.Tensor, text: torch.Tensor, k: int, copies: int, chunk: int = 32):
    """(μ_new [C, d], W_new [d, C], b_new [C]) of classes seen only through their text features
    (main_base2new.py): k nearest views, μ with `copies` copies of w, the averaged precision."""
    n, d = vecs.shape
    k = min(k, n)
    if k < 2:
        raise ConfigError("gda needs at least two train views to estimate an unseen class's covariance")
    idx = (text @ vecs.t()).topk(k, dim=1).indices  # [C, k]
    mus, prec, shift = [], torch.zeros(d, d, dtype=torch.float64, device=vecs.device), 0.0
    eye_k = torch.eye(k, dtype=torch.float64, device=vecs.device)
    for c0 in range(0, text.shape[0], chunk):
        w, nb = text[c0 : c0 + chunk], vecs[idx[c0 : c0 + chunk]]  # [c, d], [c, k, d]
        mus.append(torch.cat([nb, w[:, None].expand(-1, copies, -1)], 1).mean(1))
        dev = (nb - w[:, None]).double()  # D_w [c, k, d]
        tau = (dev * dev).sum((1, 2)) / (k - 1)  # tr(DᵀD)/(k−1) = tr(S_w)
        # DᵀD + τI is positive definite (τ > 0): its pseudo-inverse is its inverse, by Woodbury
        # (DᵀD + τI)⁻¹ = (I − Dᵀ(τI_k + DDᵀ)⁻¹D)/τ, a k×k solve per class instead of a d×d one
        small = tau[:, None, None] * eye_k + dev @ dev.transpose(1, 2)
        inner = dev.transpose(1, 2) @ torch.linalg.solve(small, dev)  # [c, d, d]
        prec -= (d / tau[:, None, None] * inner).sum(0)
        shift += float((d / tau).sum())
    prec += shift * torch.eye(d, dtype=torch.float64, device=vecs.device)
    mu = torch.cat(mus).float()
    W, b = linear_head(mu, (prec / text.shape[0]).float())
    return mu, W, b


def official_split(dataset: str, preset: str) -> str:
    """Where the official code searches α: the full val split, ImageNet's test set."""
    if preset != "official":
        return "fewshot_val"
    return "test" if dataset == "imagenet" else "full_val"


@register
class GDA(Method):
    name = "gda"
    needs = "features"
    resources = {"mem_mb": 8000, "runtime": 10}  # one cell (the workflow scales it for ImageNet)
    hparams = {
        "views": HP(10, min=1),  # augment_epoch
        "alphas": HP(ALPHAS, min=0),
        "default_alpha": HP(0.1, min=0),
        "search_split": HP("fewshot_val", choices=("fewshot_val", "full_val", "test")),
        "estimator": HP("shrinkage", choices=("shrinkage", "pooled")),
        "neighbours": HP(64, min=2),  # k of the unseen-class estimator
        "text_copies": HP(16, min=0),
        "templates": HP("dataset", choices=TEMPLATE_SETS),
    }

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        return {"search_split": official_split(dataset, preset),
                "estimator": "pooled" if protocol == "base2new" else "shrinkage",
                # GDA's datasets/imagenet.py: the 7-template ensemble for ImageNet (and its DG targets)
                "templates": "ensemble7" if preset == "official" and dataset == "imagenet" else "dataset"}

    def data_needs(self) -> DataNeeds:
        split = self.hp["search_split"]
        return DataNeeds(templates=self.hp["templates"], views=int(self.hp["views"]), full_val=split == "full_val",
                         test_for_selection=split == "test",
                         fewshot_val="it chooses the blend weight α there; --set search_split=full_val searches "
                                     "the dataset's whole val split" if split == "fewshot_val" else "")

    def setup(self, task) -> dict:
        if task.views is None:
            raise ConfigError("gda estimates its Gaussians from the stored augmented views (views > 0)")
        n_classes = len(task.classes.names)
        views = task.views.features
        vecs = views.reshape(-1, views.shape[-1])  # pass after pass, as the official loop concatenates
        labels = task.train.labels.long().repeat(views.shape[0])
        mus = class_means(vecs, labels, n_classes)
        if self.hp["estimator"] == "pooled":
            precision, rank = pooled_precision(vecs, labels, mus)
        else:
            precision, _, rank = shrinkage_precision(vecs, labels, mus)
        W, b = linear_head(mus, precision)
        self.register_buffer("W", W.to(task.device))
        self.register_buffer("b", b.to(task.device))
        self._vecs = vecs  # the unseen-class estimator's neighbours (not part of the checkpoint)
        text = task.classes.text_features.float()
        self.preset = task.preset
        scale, bias = task.classes.fixed_scale(task.preset), task.classes.logit_bias
        split = self.hp["search_split"]
        feats = {"fewshot_val": task.val, "full_val": task.full_val, "test": task.test}[split]
        if feats is None:
            raise ConfigError(f"gda search_split {split!r} needs features the engine did not provide "
                              "('test' needs the official preset)")
        info = {"search_split": split, "estimator": self.hp["estimator"], "n_vectors": int(vecs.shape[0]),
                "precision_rank": rank}
        if len(feats.labels) == 0:
            alpha = float(self.hp["default_alpha"])
            info.update(search_split=f"none ({split} is empty; default α kept)")
        else:
            found = search_alpha(feats.features, feats.labels, text, W, b, list(self.hp["alphas"]),
                                 float(self.hp["default_alpha"]), scale, bias)
            alpha = found["alpha"]
            info.update(search_acc=found["acc"], search_n=int(len(feats.labels)),
                        alpha_accs={f"{a:g}": acc for a, acc in zip(self.hp["alphas"], found["accs"])})
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float64))
        info.update(alpha=alpha, logit_scale=scale)
        return info

    def logits(self, x, classes: ClassSet):
        x, text = x.float(), classes.text_features.float()
        idx = classes.train_index
        if idx is None:
            if getattr(self, "_vecs", None) is None:
                raise NotApplicable("gda scores unseen classes from the train views, which a reloaded model lacks")
            _, W, b = unseen_head(self._vecs.to(x.device), text, int(self.hp["neighbours"]),
                                  int(self.hp["text_copies"]))
        else:
            if len(idx) and int(idx.max()) >= self.W.shape[1]:
                raise NotApplicable(f"gda: class index {int(idx.max())} is outside the {self.W.shape[1]} "
                                    "training classes")
            W, b = self.W[:, idx], self.b[idx]
        return gda_logits(x, text, W, b, float(self.alpha), classes.fixed_scale(self.preset), classes.logit_bias)
