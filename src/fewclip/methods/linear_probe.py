"""Linear probe (SPEC §2; official code: CoOp's lpclip/linear_probe.py).

scikit-learn LogisticRegression (lbfgs, L2, max_iter 1000) on the few-shot train features f.
C is chosen on the manifest's few-shot val split (val shots 1→1, 2→2, else 4) as lpclip does:
1. fit every C of the coarse grid {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6}; the peak is the
   first C with the best val accuracy;
2. 8 bisection steps in log10-space, starting from [peak/10, peak·10]: fit both ends, keep
   the better one (ties: the left, smaller C) as the current choice, and shrink the interval to
   the half on its side (between that end and the midpoint in log10 C).
The classifier of the last step's choice is the result. Under both presets the search is the
same (lpclip has no test-set selection). metrics.json `hparams`: `C`, `val_acc`, the coarse
grid's accuracies `c_grid_acc` and every bisection point `c_search`.

Features (`fit_on` hp, recorded in metrics.json `selected.fit_on`): `official` fits lpclip's input, the
**raw, unnormalised** encoder output (the store's `Features.raw`, also at test time); `clean`
fits the L2-normalised features ("normalised").

The fitted weights live as torch parameters (`weight` [C, d], `bias` [C]; counted in
`trainable_params`) so `logits` runs on any device: logits = f·W_lpᵀ + b. The head is
class-specific: unseen classes are n/a, and ImageNet-A/-R keep the rows of their 200 ImageNet classes.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import ConfigError
from . import register
from .base import HP, ClassSet, DataNeeds, Method, NotApplicable

C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # the penalty is sklearn's default, L2 (naming it is deprecated from scikit-learn 1.8 on)
    clf = LogisticRegression(solver="lbfgs", C=c, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # lpclip ignores them too (max_iter 1000)
        return clf.fit(x, y)


def accuracy(clf, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(clf.predict(x) == y)) if len(y) else 0.0


def search_c(train_x, train_y, val_x, val_y, seed: int, steps: int = 8) -> dict:
    """lpclip's C search; returns {"C", "val_acc", "clf", "c_grid_acc", "c_search"}."""
    grid_acc = [accuracy(fit(train_x, train_y, c, seed), val_x, val_y) for c in C_GRID]
    peak = C_GRID[int(np.argmax(grid_acc))]
    left, right = peak * 0.1, peak * 10.0
    trail = []
    c_final, clf_final, acc_final = peak, None, None
    for _ in range(steps):
        clf_l, clf_r = fit(train_x, train_y, left, seed), fit(train_x, train_y, right, seed)
        acc_l, acc_r = accuracy(clf_l, val_x, val_y), accuracy(clf_r, val_x, val_y)
        trail.append({"C_left": left, "acc_left": 100.0 * acc_l, "C_right": right, "acc_right": 100.0 * acc_r})
        mid = 0.5 * (math.log10(left) + math.log10(right))
        if acc_l < acc_r:
            c_final, clf_final, acc_final = right, clf_r, acc_r
            left = 10.0 ** mid
        else:
            c_final, clf_final, acc_final = left, clf_l, acc_l
            right = 10.0 ** mid
    if clf_final is None:  # steps == 0: the coarse peak
        clf_final = fit(train_x, train_y, peak, seed)
        acc_final = accuracy(clf_final, val_x, val_y)
    return {"C": float(c_final), "val_acc": 100.0 * acc_final, "clf": clf_final,
            "c_grid_acc": {f"{c:g}": 100.0 * a for c, a in zip(C_GRID, grid_acc)}, "c_search": trail}


def torch_head(clf, n_classes: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [n_classes, d], bias [n_classes]) giving the same argmax as clf.predict.
    Binary problems (one coef row) become [0, w]; classes absent from training get a bias of −1e9."""
    weight = torch.zeros(n_classes, dim, dtype=torch.float64)
    bias = torch.full((n_classes,), -1e9, dtype=torch.float64)
    seen = torch.as_tensor(clf.classes_, dtype=torch.long)
    coef, intercept = torch.as_tensor(clf.coef_), torch.as_tensor(clf.intercept_)
    if coef.shape[0] == 1 and len(seen) == 2:
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight[seen], bias[seen] = coef, intercept
    return weight.float(), bias.float()


@register
class LinearProbe(Method):
    name = "linear_probe"
    resources = {"mem_mb": 4000, "runtime": 10}  # one cell, paper GPUs (workflow scales for ImageNet)
    needs = "features"
    hparams = {"search_steps": HP(8, min=1), "fit_on": HP("normalised", choices=("raw", "normalised"))}
    presets = {"official": {"fit_on": "raw"}}  # lpclip fits the raw encoder output

    def data_needs(self) -> DataNeeds:
        return DataNeeds(reads_raw=self.hp["fit_on"] == "raw",  # official: raw features at test time too
                         fewshot_val="it chooses the regularisation C there; give the dataset val images")

    def _x(self, feats, split: str) -> torch.Tensor:
        if self.hp["fit_on"] == "normalised":
            return feats.features
        if feats.raw is None:
            raise ConfigError(f"linear_probe fit_on=raw needs the raw {split} features, and the store gave none; "
                              "re-encode the feature store (fewclip encode)")
        return feats.raw

    def setup(self, task) -> dict:
        if len(task.val.labels) == 0:
            raise ConfigError("linear_probe chooses C on the few-shot val split, and this cell has none")
        tx, ty = self._x(task.train, "train").double().numpy(), task.train.labels.numpy()
        vx, vy = self._x(task.val, "val").double().numpy(), task.val.labels.numpy()
        if len(np.unique(ty)) < 2:
            raise ConfigError("linear_probe needs at least two classes in the few-shot train set")
        found = search_c(tx, ty, vx, vy, task.seed, int(self.hp["search_steps"]))
        weight, bias = torch_head(found.pop("clf"), len(task.classes.names), tx.shape[1])
        # Parameters, not buffers: metrics.json's trainable_params (the engine counts parameters that
        # require grad) then holds what the probe learned, C×d weights + C biases. scikit-learn fits
        # them above; the engine never trains this method (trains = False), logits run under no_grad.
        self.weight = torch.nn.Parameter(weight.to(task.device))
        self.bias = torch.nn.Parameter(bias.to(task.device))
        found["fit_on"] = self.hp["fit_on"]
        return found

    def logits(self, x, classes: ClassSet):
        if classes.train_index is None:
            raise NotApplicable("linear_probe: a class-specific head has no weights for unseen classes")
        if len(classes.train_index) and int(classes.train_index.max()) >= self.weight.shape[0]:
            raise NotApplicable(f"linear_probe: class index {int(classes.train_index.max())} is outside the "
                                f"{self.weight.shape[0]} training classes")
        return x.float() @ self.weight[classes.train_index].t() + self.bias[classes.train_index]
