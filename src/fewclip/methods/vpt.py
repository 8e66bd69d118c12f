"""VPT-deep: learned prompt tokens in every ViT layer (SPEC §2, official-code-facts §1.5).

n tokens per layer, replaced at each layer, with the hand-crafted text classifier:
s·f_prompted·Wᵀ. Needs a ViT backbone."""

from __future__ import annotations

from . import register
from ._prompt import SGD_HPARAMS, VISUAL_PROMPT_HPARAMS, PromptMethod, VisualPromptMixin, coop_epochs
from .base import ClassSet, train_hparams


@register
class VPT(VisualPromptMixin, PromptMethod):
    name = "vpt"
    resources = {"mem_mb": 16000, "runtime": 180}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {**VISUAL_PROMPT_HPARAMS, **train_hparams(epochs=100, lr=0.01, batch_size=32, warmup_epochs=10),
               **SGD_HPARAMS}

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
        return classes.clip_logits(f)

