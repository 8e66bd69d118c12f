"""VPT-deep: learned prompt tokens in every ViT layer (SPEC §2, official-code-facts §1.5).

n tokens per layer, replaced at each layer, with the hand-crafted text classifier:
s·f_prompted·Wᵀ. Needs a ViT backbone."""

from __future__ import annotations

from ..models.backbone import LOGIT_SCALE
from ..models.prompts import VisualPrompts, encode_image, require_vit, vit_dims
from . import ClassSet, register
from .coop import SGD_DEFAULTS, PromptMethod, coop_epochs


def dpt_epochs(dataset: str, shots: int) -> int:
    """VLP's and DPT's schedule (the DPT paper's text: 1-shot 60, else 100; ImageNet 20)."""
    if dataset == "imagenet":
        return 20
    return 60 if shots <= 1 else 100


def visual_warmup(dataset: str) -> int:
    """VLP's and DPT's visual warm-up: `VLP.py`/`DPT.py` force 1 epoch on ImageNet (VPT.py does not)."""
    return 1 if dataset == "imagenet" else 10


class VisualPromptMixin:
    """VPT-deep tokens on the frozen ViT."""

    def setup_visual(self, task, layers: int | None = None) -> None:
        """VPT-deep tokens in the first `layers` layers (all by default; DPT: those below its CAVPT layers)."""
        require_vit(task.backbone, self.name)
        n_layers, width = vit_dims(task.backbone.model.visual)
        self.vpt = VisualPrompts(n_layers if layers is None else layers, int(self.hp["n_prompts"]), width,
                                 float(self.hp["init_std"]), device=task.device)

    def prompted_features(self, images, extra=None):
        f, outs = encode_image(self.clip.visual, images, self.vpt.tokens, extra)
        return f / f.norm(dim=-1, keepdim=True), outs


@register
class VPT(VisualPromptMixin, PromptMethod):
    name = "vpt"
    resources = {"mem_mb": 16000, "runtime": 180}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {
        "n_prompts": 10, "init_std": 0.02, "epochs": 100, "lr": 0.01, "batch_size": 32, "warmup_epochs": 10,
        **SGD_DEFAULTS,
    }

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        # The DPT paper: VPT's max epoch equals CoOp's; `VPT.py` takes cfg.OPTIM's 10 warm-up epochs
        # on every dataset (no ImageNet exception).
        return {"epochs": coop_epochs(dataset, shots), "warmup_epochs": 10}

    def setup(self, task):
        self.attach(task)
        self.setup_visual(task)
        return {}

    def logits(self, x, classes: ClassSet):
        f, _ = self.prompted_features(x)
        return LOGIT_SCALE * f @ classes.text_features.t().to(f.dtype)

