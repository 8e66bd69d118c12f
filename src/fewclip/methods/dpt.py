"""DPT: VLP + class-aware visual prompts (CAVPT) (SPEC §2, §2.1; official-code-facts §1.5).

The structure is fanrena/DPT `trainers/DPT.py`'s (the math is in `_vl.py`): CAVPT in the last
`cavpt_layers` layers (1 = layer 12 of ViT-B, the official run's BOTTOMLIMIT 12), VPT-deep tokens
only in the layers below, K_N = `cavpt_classes` (10, at most the number of classes) class-aware
tokens, `cavpt_kv_tokens` (10, hard-coded in the official code) extra learned key/value tokens,
auxiliary loss weight α = 0.3. `cavpt=false` switches CAVPT off, which is exactly VLP.

Hyper-parameters → official cfg: n_prompts = TRAINER.VPT.N_CTX; n_ctx = TRAINER.COOP.N_CTX;
cavpt_layers = 12 − TRAINER.TOPDOWN_SECOVPT.BOTTOMLIMIT + 1 (layers of the ViT, generally);
cavpt_classes = TRAINER.SELECTED_COVPT.CPN; alpha = TRAINER.ALPHA; guidance_epochs = PRETRAIN.C.

Learnable tensors, official name (relative to `CustomCLIP_Selected_CoVPTDeep`; i = CAVPT layer,
0 = the lowest; `extractor` = `image_encoder.transformer.extractor`) → fewclip attribute:
  prompt_learner.ctx                          → prompt.ctx
  image_encoder.transformer.ctx_learner.ctx   → vpt.tokens            [layers − cavpt_layers, n, w]
  extractor.ctx[i]                            → cavpt[i].kv           (official: one [layers, 10, w] tensor)
  extractor.meta_nets.i.{weight, bias}        → cavpt[i].query.{weight, bias}
  extractor.attns.i.{qmlp, kmlp, vmlp}.weight → cavpt[i].{q, k, v}.weight
  extractor.lns.i.{weight, bias}              → cavpt[i].head_norm.{weight, bias}
  extractor.classfiers.i.weight               → cavpt[i].head.weight
  extractor.lns2.i.{weight, bias}             → cavpt[i].norm.{weight, bias}
Frozen official `text_features` (hand-crafted, normalised) = the ClassSet's `text_features`.
"""

from __future__ import annotations

from . import register
from ._vl import VL_HPARAMS, VisionLanguagePrompts
from .base import HP


@register
class DPT(VisionLanguagePrompts):
    name = "dpt"
    resources = {"mem_mb": 20000, "runtime": 240}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {**VL_HPARAMS, "cavpt": True, "cavpt_layers": HP(1, min=1), "cavpt_classes": HP(10, min=1),
               "cavpt_qk_dim": HP(32, min=1), "cavpt_kv_tokens": HP(10, min=1), "alpha": HP(0.3, min=0)}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        hp = super().defaults_for(dataset, shots, preset, protocol)
        if dataset in ("caltech101", "oxford_pets") and shots == 16:
            hp["epochs"] = 60  # the DPT paper: DPT (not VLP) on Caltech101 and OxfordPets at 16 shots
        return hp

    @property
    def use_cavpt(self) -> bool:  # type: ignore[override]
        return bool(self.hp["cavpt"])
