"""VPT-deep: learned prompt tokens in every ViT layer (SPEC §2, official-code-facts §1.5).

n tokens per layer, replaced at each layer, with the hand-crafted text classifier:
s·f_prompted·Wᵀ. Needs a ViT backbone."""

from __future__ import annotations

from ..models.backbone import LOGIT_SCALE
from ..models.prompts import VisualPrompts, encode_image, require_vit, vit_dims
from . import ClassSet, register
from .coop import SGD_DEFAULTS, PromptMethod


def dpt_epochs(dataset: str, shots: int) -> int:
    """DPT's schedule (its text: 1-shot 60, else 100; ImageNet 20), used for its baselines too."""
    if dataset == "imagenet":
        return 20
    return 60 if shots <= 1 else 100


def visual_warmup(dataset: str) -> int:
    return 1 if dataset == "imagenet" else 10


class VisualPromptMixin:
    """VPT-deep tokens on the frozen ViT."""

    def setup_visual(self, task) -> None:
        require_vit(task.backbone, self.name)
        layers, width = vit_dims(task.backbone.model.visual)
        self.vpt = VisualPrompts(layers, int(self.hp["n_prompts"]), width, float(self.hp["init_std"]),
                                 device=task.device)

    def prompted_features(self, images, extra=None):
        f, outs = encode_image(self.clip.visual, images, self.vpt.tokens, extra)
        return f / f.norm(dim=-1, keepdim=True), outs


@register
class VPT(VisualPromptMixin, PromptMethod):
    name = "vpt"
    hparams = {
        "n_prompts": 10, "init_std": 0.02, "epochs": 100, "lr": 0.01, "batch_size": 32, "warmup_epochs": 10,
        **SGD_DEFAULTS,
    }

    @classmethod
    def defaults_for(cls, dataset, shots, preset):
        return {"epochs": dpt_epochs(dataset, shots), "warmup_epochs": visual_warmup(dataset)}

    def setup(self, task):
        self.attach(task)
        self.setup_visual(task)
        return {}

    def logits(self, x, classes: ClassSet):
        f, _ = self.prompted_features(x)
        return LOGIT_SCALE * f @ classes.text_features.t().to(f.dtype)

