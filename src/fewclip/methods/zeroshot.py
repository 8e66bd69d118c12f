"""Zero-shot CLIP (SPEC §2): logits = s · f · Wᵀ with hand-crafted text features W."""

from __future__ import annotations

from ..models.templates import TEMPLATE_SETS
from . import register
from .base import HP, ClassSet, Method


@register
class ZeroShot(Method):
    name = "zeroshot"
    resources = {"mem_mb": 2000, "runtime": 5}  # one cell, paper GPUs (workflow scales for ImageNet)
    needs = "features"
    uses_fewshot_sample = False  # no few-shot data is read: one cell stands for every K and seed
    # "dataset": the dataset's template (SPEC §4); "ensemble7": the 7-template ImageNet
    # ensemble; "openai80": CLIP's 80 templates. Text features come from the feature store.
    hparams = {"templates": HP("dataset", choices=TEMPLATE_SETS)}

    def logits(self, x, classes: ClassSet):
        return classes.clip_logits(x)
