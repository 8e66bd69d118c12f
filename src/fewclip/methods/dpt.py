"""DPT: VLP + class-aware visual prompts (CAVPT) (SPEC §2, official-code-facts §1.5).

CAVPT in the last `cavpt_layers` layers (1 = layer 12 of ViT-B, as the official run), K_N = `cavpt_classes`
(10, at most the number of classes) class-aware tokens, auxiliary loss weight α = 0.3.
`cavpt=false` switches CAVPT off, which is exactly VLP."""

from __future__ import annotations

from . import register
from ._vl import VL_HPARAMS, VisionLanguagePrompts


@register
class DPT(VisionLanguagePrompts):
    name = "dpt"
    hparams = {**VL_HPARAMS, "cavpt": True, "cavpt_layers": 1, "cavpt_classes": 10, "cavpt_qk_dim": 32,
               "alpha": 0.3}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        hp = super().defaults_for(dataset, shots, preset, protocol)
        if dataset in ("caltech101", "oxford_pets") and shots == 16:
            hp["epochs"] = 60  # the DPT paper: DPT (not VLP) on Caltech101 and OxfordPets at 16 shots
        return hp

    @property
    def use_cavpt(self) -> bool:  # type: ignore[override]
        return bool(self.hp["cavpt"])
