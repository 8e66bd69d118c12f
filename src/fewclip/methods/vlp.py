"""VLP: VPT-deep + CoOp text context (SPEC §2, official-code-facts §1.5).

Visual lr 0.01 with 10 warm-up epochs (ImageNet 1), text lr 0.002 with 1, and the general-knowledge guidance loss
for the first C epochs (30; ImageNet 10). Inference: prompted image vs learned text."""

from __future__ import annotations

from . import register
from ._vl import VL_HPARAMS, VisionLanguagePrompts


@register
class VLP(VisionLanguagePrompts):
    name = "vlp"
    resources = {"mem_mb": 20000, "runtime": 240}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = dict(VL_HPARAMS)
    use_cavpt = False
