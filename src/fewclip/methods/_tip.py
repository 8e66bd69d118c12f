"""The cache model shared by Tip-Adapter and Tip-Adapter-F (SPEC §2).

logits = s·f·Wᵀ + α·exp(−β(1 − f·Kᵀ))·L with K the cache keys, L the one-hot cache values.
α and β are searched on a 200×20 grid (Tip-Adapter's `search_hp`):
βᵢ = 0.1 + i(β_max−0.1)/200 (i = 0..199), αⱼ = 0.1 + j(α_max−0.1)/20 (j = 0..19);
the best accuracy wins, ties go to the first (β outer, α inner), as in the official loop.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models.templates import TEMPLATE_SETS
from .base import HP, ClassSet, DataNeeds, NotApplicable

SEARCH_STEPS = (200, 20)  # (β steps, α steps)

# Tip-Adapter's per-dataset configs (`configs/*.yaml`, SPEC §4): init α and the search scale
# (β_max, α_max). The demo's generated datasets take the values of the dataset each imitates.
TIP_CONFIG: dict[str, tuple[float, tuple[float, float]]] = {
    "imagenet": (1.17, (7, 3)), "caltech101": (3, (12, 5)), "oxford_pets": (1.17, (7, 3)),
    "stanford_cars": (3, (20, 10)), "oxford_flowers": (10, (50, 50)), "food101": (1.17, (10, 10)),
    "fgvc_aircraft": (5, (30, 30)), "sun397": (1.17, (12, 10)), "dtd": (2, (13, 13)), "eurosat": (2, (12, 10)),
    "ucf101": (3, (7, 3)),
    "demo_shapes": (1.17, (7, 3)), "demo_textures": (2, (13, 13)), "demo_scenes": (1.17, (12, 10)),
}

# The keys both Tip methods share (the per-dataset ones filled by `cache_defaults`).
CACHE_HPARAMS = {
    "views": HP(10, min=1), "init_beta": HP(1.0, min=0), "search": True,
    "templates": HP("dataset", choices=TEMPLATE_SETS),
    "init_alpha": HP(None, kind=float, min=0), "beta_max": HP(None, kind=float, min=0),
    "alpha_max": HP(None, kind=float, min=0),
    "search_split": HP("fewshot_val", choices=("fewshot_val", "full_val", "test")), "select_on_test": False,
}


def cache_defaults(dataset: str, preset: str) -> dict:
    """Per-dataset values: init α, the search scale, where the official code selects, the classifier."""
    alpha, scale = TIP_CONFIG.get(dataset, (None, None))
    return {"init_alpha": None if alpha is None else float(alpha),
            "beta_max": None if scale is None else float(scale[0]),
            "alpha_max": None if scale is None else float(scale[1]), **official_defaults(dataset, preset),
            # Tip-Adapter's ImageNet classifier (and so its DG targets'): the 7-template ensemble
            "templates": "ensemble7" if dataset == "imagenet" else "dataset"}


def cache_data_needs(hp: dict) -> DataNeeds:
    """The stored views (the cache keys, and Tip-Adapter-F's training batches), and the split α/β
    are searched on."""
    return DataNeeds(templates=hp["templates"], views=int(hp["views"]), batch_size=int(hp.get("batch_size", 0)),
                     full_val=hp["search_split"] == "full_val",
                     test_for_selection=bool(hp["select_on_test"]) or hp["search_split"] == "test")


def search_grid(beta_max: float, alpha_max: float, steps: tuple[int, int] = SEARCH_STEPS):
    """(betas [200], alphas [20]) as float64 lists, exactly SPEC's formula."""
    betas = [i * (beta_max - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [j * (alpha_max - 0.1) / steps[1] + 0.1 for j in range(steps[1])]
    return betas, alphas


def cache_logits(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta) -> torch.Tensor:
    """exp(−β(1 − x·Kᵀ))·L."""
    return torch.exp(-beta * (1 - x @ keys.t())) @ values


def tip_logits(x, text, keys, values, alpha, beta, scale: float = 100.0, bias: float = 0.0) -> torch.Tensor:
    """scale·x·textᵀ + bias + α·cache (scale: `ClassSet.fixed_scale`, the official `100.` on OpenAI weights)."""
    return scale * x @ text.t() + bias + alpha * cache_logits(x, keys, values, beta)


def class_values(values: torch.Tensor, classes: ClassSet, method: str) -> torch.Tensor:
    """The cache value columns of the classes scored (A/R: the 200 ImageNet columns)."""
    if classes.train_index is None:
        raise NotApplicable(f"{method}: the cache values are one-hot over the training classes; "
                            "it has no cache entries for unseen classes")
    if len(classes.train_index) and int(classes.train_index.max()) >= values.shape[1]:
        raise NotApplicable(f"{method}: class index {int(classes.train_index.max())} is outside the "
                            f"{values.shape[1]} training classes of the cache")
    return values[:, classes.train_index]


def cache_init(task) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys: the **raw** (unnormalised) features of the 10 stored augmented views of each few-shot
    train image, averaged, then L2-normalised (Tip-Adapter's `build_cache_model`: the mean of
    `encode_image` outputs, normalised after averaging); values: one-hot labels over the
    training classes."""
    if task.views is None:
        raise ConfigError("Tip-Adapter needs stored augmented views (hyper-parameter views > 0)")
    if task.views.raw is None:
        raise ConfigError("Tip-Adapter's keys average the raw (unnormalised) view features, and the store gave "
                          "none; re-encode the feature store (fewclip encode)")
    keys = task.views.raw.float().mean(0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    values = torch.nn.functional.one_hot(task.train.labels.long(), len(task.classes.names)).float()
    return keys.to(task.device), values.to(task.device)


def init_values(task, hp) -> tuple[float, float, float, float]:
    """(init α, init β, β_max, α_max) of the cell (`cache_defaults`, or --set overrides)."""
    alpha, beta_max, alpha_max = hp["init_alpha"], hp["beta_max"], hp["alpha_max"]
    if alpha is None or beta_max is None or alpha_max is None:
        raise ConfigError(f"dataset {task.dataset} has no Tip-Adapter init α / search scale (SPEC §4); "
                          "give them with --set init_alpha=... --set beta_max=... --set alpha_max=...")
    return float(alpha), float(hp["init_beta"]), float(beta_max), float(alpha_max)


@torch.no_grad()
def search_alpha_beta(x, labels, text, keys, values, beta_max: float, alpha_max: float,
                      steps: tuple[int, int] = SEARCH_STEPS, budget: int = 2**25, scale: float = 100.0,
                      bias: float = 0.0) -> dict:
    """Exhaustive grid search of (α, β) by top-1 accuracy on (x, labels).

    Counts correct predictions for every grid point, in chunks of rows and of α so that memory
    stays near `budget` elements, then takes the first maximum in β-major order (the official
    strict `>` over `for beta: for alpha:`)."""
    betas, alphas = search_grid(beta_max, alpha_max, steps)
    # in the keys' precision: fp32, or fp16 for a pure-fp16 Tip-Adapter-F (the official search
    # runs on fp16 features and adapter)
    dtype = torch.float16 if keys.dtype == torch.float16 else torch.float32
    x, labels = x.to(dtype), labels.to(x.device)
    keys, values, text = keys.to(dtype), values.to(dtype), text.to(dtype)
    alpha_t = torch.tensor(alphas, dtype=dtype, device=x.device)
    n, c = x.shape[0], values.shape[1]
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.long, device=x.device)
    rows = max(1, budget // max(keys.shape[0], c * len(alphas), 1))
    for r0 in range(0, n, rows):
        xr, yr = x[r0 : r0 + rows], labels[r0 : r0 + rows]
        clip = scale * xr @ text.t() + bias
        one_minus_affinity = 1 - xr @ keys.t()
        for i, beta in enumerate(betas):
            cache = torch.exp(-beta * one_minus_affinity) @ values
            logits = clip.unsqueeze(0) + alpha_t.view(-1, 1, 1) * cache.unsqueeze(0)  # [A, rows, C]
            correct[i] += (logits.argmax(-1) == yr.unsqueeze(0)).sum(-1)
    flat = int(torch.argmax(correct.flatten()))  # first maximum, β-major
    i, j = divmod(flat, len(alphas))
    return {"alpha": alphas[j], "beta": betas[i], "acc": 100.0 * int(correct[i, j]) / max(n, 1)}


def search_features(task, hp):
    """(features, labels, split name) to search α/β on, as the preset says.

    clean: the few-shot val split (min(K, 4) per class). official: the full val split of the
    dataset (Tip-Adapter's `main.py`), or for ImageNet the test set (`main_imagenet.py`)."""
    split = hp["search_split"]
    feats = {"fewshot_val": task.val, "full_val": task.full_val, "test": task.test}[split]
    if feats is None:
        raise ConfigError(f"search_split {split!r} needs features the engine did not provide "
                          "('test' needs the official preset)")
    return feats.features.to(task.device), feats.labels.to(task.device), split


def official_defaults(dataset: str, preset: str) -> dict:
    """Where the official code selects: full val, ImageNet's test set (val = test there)."""
    if preset != "official":
        return {"search_split": "fewshot_val", "select_on_test": False}
    if dataset == "imagenet":
        return {"search_split": "test", "select_on_test": True}
    return {"search_split": "full_val", "select_on_test": False}
