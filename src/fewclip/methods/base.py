"""The method contract: everything the engine may call on a method, with its default.

A method is a `Method` subclass in one file. It declares
- `name`; `needs`: "features" (it works on the feature store) or "images" (it runs the image
  encoder itself: the prompt methods); `trains`: whether the engine's training loop runs;
- `hparams`: one entry per hyper-parameter, a plain default (its type is the default's) or an
  `HP(default, ...)` that also states a range or choices; `presets` ("clean", "official"): overrides;
  `defaults_for(dataset, shots, preset, protocol)`: per-cell rules (epochs per shot count...);
  `check_hparams(hp)`: rules across several keys; `resources`: one cell's memory and run time;
- `uses_fewshot_sample`: True (the default) when the result depends on the cell's few-shot sample
  (K and the seed); False when it reads no few-shot data, so it depends on neither: the grid then
  runs one cell per (protocol, backbone, dataset), the canonical one (the protocol's first K, the
  config's first seed), its metrics.json says `"shared_across": ["shots", "seed"]`, and
  `fewclip collect` places that one result at every K and seed of the other methods' cells;
and answers the engine:
- before the task is built: `data_needs()` (a `DataNeeds`: optional inputs, how to batch);
- its math: `setup(task)`, `param_groups()`, `loss(batch, epoch)`, `epoch_end(task, epoch)`,
  `finish(task)`, `logits(x, classes)`, `report(top1)`;
- precision: `to_half()` (the official code's pure fp16), `half_exempt()`.
The engine (fewclip.engine) owns data, loops, devices, checkpoints and metrics.json.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

# One cell's memory (MB) and run time (minutes) when a method declares none, by its side.
RESOURCE_DEFAULTS = {"features": {"mem_mb": 4000, "runtime": 15}, "images": {"mem_mb": 16000, "runtime": 240}}


class NotApplicable(Exception):
    """The method cannot evaluate this class set (e.g. a class-specific head on unseen classes)."""


@dataclass
class ClassSet:
    """The classes a classifier scores: names, hand-crafted text features, where each sits among
    the training classes (None when the classes were never seen in training), and the backbone's
    own logit scale and bias (`logit_scale.exp()`, SigLIP's `logit_bias`; 100 and 0 on OpenAI's
    CLIP). Every method's CLIP logits go through `clip_logits`, so none hard-codes CLIP's 100."""

    names: list[str]
    text_features: torch.Tensor  # [C, d], L2-normalised
    train_index: torch.Tensor | None = None  # [C] long
    template: str = "a photo of a {}."
    logit_scale: float = 100.0  # the backbone's exp(logit_scale)
    logit_bias: float = 0.0  # the backbone's logit_bias (SigLIP), 0 where it has none
    openai_weights: bool = False  # OpenAI's released CLIP weights (see `fixed_scale`)

    def subset(self, index) -> "ClassSet":
        index = torch.as_tensor(index, dtype=torch.long)
        ti = None if self.train_index is None else self.train_index[index]
        return dataclasses.replace(self, names=[self.names[i] for i in index.tolist()],
                                   text_features=self.text_features[index], train_index=ti)

    def to(self, device) -> "ClassSet":
        ti = None if self.train_index is None else self.train_index.to(device)
        return dataclasses.replace(self, text_features=self.text_features.to(device), train_index=ti)

    def clip_logits(self, f: torch.Tensor, text: torch.Tensor | None = None, scale: float | None = None):
        """scale · f @ textᵀ + bias (text: these classes' hand-crafted features by default), in f's dtype;
        `scale` overrides the backbone's (an official recipe's fixed 100: `fixed_scale`)."""
        text = self.text_features if text is None else text
        s = self.logit_scale if scale is None else scale
        out = s * f @ text.t().to(f.dtype)
        return out + self.logit_bias if self.logit_bias else out

    def fixed_scale(self, preset: str, official_value: float = 100.0) -> float:
        """A scale an official recipe hard-codes (Tip-Adapter's `100.`, CLIP-LoRA's and GDA's 100):
        kept under `official` on OpenAI's weights, whose learned exp(logit_scale) is that 100; on any
        other backbone, and under `clean`, the backbone's own scale."""
        return official_value if preset == "official" and self.openai_weights else self.logit_scale


@dataclass(frozen=True)
class HP:
    """One hyper-parameter: its default and the values a run may use.

    `kind` is the value's type (the default's unless given: give it when the default is None);
    numbers may have `min` (value ≥ min), `above` (value > above) and `max` (value ≤ max); a list's
    items obey the same bounds and the list must not be empty; `choices` is a tuple of allowed
    values, or a function returning it (read when a value is checked)."""

    default: Any
    kind: type | None = None
    min: float | None = None
    above: float | None = None
    max: float | None = None
    choices: tuple | Callable[[], tuple] | None = None

    @property
    def type(self) -> type | None:
        return self.kind if self.kind is not None else (None if self.default is None else type(self.default))

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices

    def problem(self, key: str, value: Any) -> str | None:
        """Why `value` is not allowed for `key` (one phrase), or None."""
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key}={value!r} (must be a finite number)"
        if isinstance(value, list):
            if (self.min is not None or self.max is not None) and not (
                    value and all(_number(v) and self._in_range(v) for v in value)):
                return f"{key}={value!r} (must be a non-empty list of numbers {self._range_text()})"
            return None
        if _number(value) and not self._in_range(value):
            return f"{key}={value!r} (must be {self._range_text()})"
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return f"{key}={value!r} (valid: {', '.join(str(a) for a in allowed)})"
        return None

    def _in_range(self, v) -> bool:
        return ((self.min is None or v >= self.min) and (self.above is None or v > self.above)
                and (self.max is None or v <= self.max))

    def _range_text(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min:g} and {self.max:g}"
        if self.above is not None:
            return f"greater than {self.above:g}"
        if self.min is not None:
            return "at least 1" if self.min == 1 and self.type is int else f"{self.min:g} or more"
        return f"at most {self.max:g}"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DataNeeds:
    """What a method asks of the engine for one cell (`Method.data_needs`).

    Optional inputs of the task: `views` stored augmented views of each few-shot train image
    (feature methods: `task.views` [V, N, d], and the training batches); `full_val` the dataset's
    whole val split (`task.full_val`); `test_for_selection` the test split (`task.test`), for the
    official code's selection on test data (offered under the `official` preset only, and
    recorded in metrics.json). How it is fed: `templates` the hand-crafted text features in
    `task.classes` (a template set of fewclip.models.templates); `reads_raw` logits take the raw,
    unnormalised features; `batch_size`; `drop_last`: True is Dassl's rule (the last incomplete
    batch is dropped when there is a full one), False keeps every batch, None is the side's usual
    loader (feature methods keep every batch, image methods follow Dassl's loader); `crop_scale`
    the train transform's RandomResizedCrop scale (image methods).
    `fewshot_val`: what the method chooses on the manifest's few-shot val split and how a cell can
    do without it (one phrase, e.g. "it chooses the ratio r there; --set select_ratio=false trains
    the fixed ratio"); set, a cell whose few-shot val split is empty is refused before any work."""

    templates: str = "dataset"
    views: int = 0
    full_val: bool = False
    test_for_selection: bool = False
    reads_raw: bool = False
    batch_size: int = 0
    drop_last: bool | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    fewshot_val: str = ""


class Method(nn.Module):
    name: ClassVar[str] = ""
    needs: ClassVar[str] = "features"  # or "images"
    trains: ClassVar[bool] = False
    hparams: ClassVar[dict[str, Any]] = {}  # after class creation: the plain defaults
    hparam_specs: ClassVar[dict[str, HP]] = {}  # ... and each key's HP (built from `hparams`)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # What one cell needs on the paper's hardware, on a dataset of the usual size (the workflow scales it
    # for ImageNet-sized ones): {"mem_mb": MB, "runtime": minutes}; keys left out take the defaults
    # of the method's side (`RESOURCE_DEFAULTS`).
    resources: ClassVar[dict[str, int]] = {}
    # False: the result depends on neither K nor the seed (the method reads no few-shot data); the
    # grid runs one cell per (protocol, backbone, dataset) and the report uses it at every K and seed.
    uses_fewshot_sample: ClassVar[bool] = True
    # The image towers the method can run on (`models.towers.vision_tower_kind`): "vit" (open_clip's
    # VisionTransformer, whose token sequence visual prompts and LoRA hook into), "resnet", "timm"
    # (SigLIP's, EVA02's towers). A cell on another tower is refused before any job (`tower_problem`).
    vision_towers: ClassVar[tuple[str, ...]] = ("vit", "resnet", "timm")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "hparams" in cls.__dict__:
            declared = cls.__dict__["hparams"]
            cls.hparam_specs = {k: v if isinstance(v, HP) else HP(v) for k, v in declared.items()}
            cls.hparams = {k: spec.default for k, spec in cls.hparam_specs.items()}

    def __init__(self, hp: dict[str, Any]):
        super().__init__()
        self.hp = dict(hp)
        self.is_half = False  # set by to_half()

    # --- declarations ---
    @classmethod
    def tower_problem(cls, model: str) -> str | None:
        """Why the method cannot run on open_clip model `model` (its image tower), or None."""
        from ..models.towers import VISION_KINDS, vision_tower_kind

        kind = vision_tower_kind(model)
        if kind in cls.vision_towers:
            return None
        return (f"method {cls.name} needs {' or '.join(VISION_KINDS[k] for k in cls.vision_towers)} as the image "
                f"tower (it hooks into the tower's token sequence); backbone model {model} has {VISION_KINDS[kind]}. "
                f"Run {cls.name} on a backbone with such a tower (ViT-B-16, ViT-B-32, ViT-L-14, MetaCLIP/DFN/LAION "
                "ViT-B-16 weights) or drop it from this run")

    @classmethod
    def defaults_for(cls, dataset: str, shots: int, preset: str, protocol: str = "fewshot") -> dict[str, Any]:
        """Hyper-parameters that depend on the cell (epochs per shot count, per-dataset values,
        the protocol's official config). A plugin may leave `protocol` out."""
        return {}

    @classmethod
    def check_hparams(cls, hp: dict[str, Any]) -> list[str]:
        """Problems of a resolved setting that span several keys (one phrase each); the per-key
        types, ranges and choices come from `hparams`."""
        return []

    @classmethod
    def resource_needs(cls) -> dict[str, int]:
        """{"mem_mb", "runtime"} of one cell: the class's `resources` over its side's defaults."""
        return {**RESOURCE_DEFAULTS[cls.needs], **cls.resources}

    def data_needs(self) -> DataNeeds:
        """What this cell asks of the engine. The default reads the conventional keys `templates`,
        `views` and `batch_size` when the method has them."""
        return DataNeeds(templates=self.hp.get("templates", "dataset"), views=int(self.hp.get("views", 0)),
                         batch_size=int(self.hp.get("batch_size", 0)))

    # --- the method's math; the engine calls these ---
    def setup(self, task) -> dict[str, Any]:
        """Build and initialise from the task (fewclip.engine.inputs: FeatureTask or ImageTask);
        the returned dict is recorded in metrics.json under `selected`."""
        return {}

    def param_groups(self) -> list[dict]:
        """Optimiser groups (each may carry its own `lr` and `warmup_epochs`)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def loss(self, batch, epoch: int) -> torch.Tensor:  # pragma: no cover - trained methods override
        """One training batch's loss: (features or images, labels) on the device."""
        raise TypeError(f"method {self.name} does not train")

    def epoch_end(self, task, epoch: int) -> None:
        """After each training epoch (in eval mode); e.g. keep the best epoch's state."""

    def finish(self, task) -> dict[str, Any]:
        """After training (or after setup when the method does not train); the dict joins `selected`."""
        return {}

    def logits(self, x: torch.Tensor, classes: ClassSet) -> torch.Tensor:
        """[N, C] logits of features or images `x` for `classes`; raise NotApplicable when the
        method cannot score them (unseen classes for a class-specific head)."""
        raise TypeError(f"method {self.name} defines no logits")

    def report(self, top1: float) -> dict[str, Any]:
        """Extra entries of metrics.json from the test top-1, e.g. the number the official code
        prints when it differs (they may replace `top1`, saying so in `top1_rule`)."""
        return {}

    # --- precision ---
    def half_exempt(self) -> list[str]:
        """Names of buffers kept in full precision under pure fp16 (Python floats in the official code)."""
        return []

    def to_half(self) -> None:
        """Pure fp16, as the official code trains: parameters and floating buffers become half, except
        `half_exempt()`. Methods holding a frozen backbone override it to swap in a half copy."""
        if self.is_half:
            return
        exempt = set(self.half_exempt())
        kept = {name: buf for name, buf in self.named_buffers() if name in exempt}
        self.half()
        for name, buf in kept.items():
            owner = self.get_submodule(name.rpartition(".")[0]) if "." in name else self
            setattr(owner, name.rpartition(".")[2], buf)
        self.is_half = True


def _training_rules() -> dict[str, dict]:
    from ..constants import PRECISIONS

    return {
        "epochs": {"min": 1}, "batch_size": {"min": 1}, "warmup_epochs": {"min": 0},
        "lr": {"above": 0}, "eps": {"above": 0}, "warmup_lr": {"min": 0}, "weight_decay": {"min": 0},
        "iters": {"min": 0}, "min_lr": {"min": 0},
        "momentum": {"min": 0.0, "max": 1.0},
        "optimizer": {"choices": ("sgd", "adamw")},
        "schedule": {"choices": ("cosine_epoch", "cosine_iter", "constant")},
        "precision": {"choices": PRECISIONS},
    }


def train_hparams(**defaults) -> dict[str, HP]:
    """The training loop's keys (fewclip.engine.train.TrainConfig: epochs, lr, batch_size, optimizer,
    momentum, weight_decay, eps, schedule, warmup_epochs, warmup_lr, iters, min_lr, precision) with
    their defaults for one method, each with the loop's own range or choices. A method with a step
    budget (`iters`: training stops after that many steps) may leave `epochs` at 0 (no bound on the
    passes); `check_hparams` should then refuse epochs = iters = 0."""
    rules = _training_rules()
    unknown = sorted(set(defaults) - set(rules))
    if unknown:
        raise TypeError(f"train_hparams: {', '.join(unknown)} are not training-loop keys ({', '.join(rules)})")
    if "iters" in defaults:
        rules["epochs"] = {"min": 0}
    return {key: HP(value, **rules[key]) for key, value in defaults.items()}
