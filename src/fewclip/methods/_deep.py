"""What MaPLe and PromptSRC share: deep prompts in both towers of a frozen CLIP ViT.

Both follow the official `clip/model.py` of muzairkhattak/multimodal-prompt-learning and
muzairkhattak/PromptSRC (`ResidualAttentionBlock_MaPLe`, `ResidualAttentionBlock_IVLP`,
`VisionTransformer(_MaPLe)`): one mechanism, "replace the prompt tokens before layer i".

- Text: the learned context (the first `n_ctx` tokens of `ctx_init`, "a photo of a"; the rest of
  the string stays frozen in the prompt) sits at positions 1..n_ctx of the prompt; before text
  layer i (1 <= i < depth) those positions' hidden states are replaced by that layer's deep text
  prompt (`models.prompts.encode_prompts(deep=...)`). The positions lie before every EOT of a
  causal model, so the waste-free encoder applies (`text_encoder.encode_causal`: [SOS, context]
  computed once per layer, no position past a prompt's EOT); open_clip's full-sequence path is
  the fallback and the tests' reference.
- Vision: a shallow prompt appended before ln_pre, then the last tokens replaced before vision
  layer i (1 <= i < depth); after the last prompted layer the prompt outputs go on through the
  remaining layers (`models.prompts.encode_image_deep`).

Depths count layers as the official configs do (9: layers 0..8 of ViT-B/16's 12). A depth beyond
a tower's layers prompts every layer of it (the official code builds the extra prompts and never
uses them; fewclip does not build them): `selected` records the depths used.

Precision: the official trainers default to PREC fp16 with the CLIP in half; the learned context
is half (cut from the half token embedding), but the deep prompts (and MaPLe's per-layer
projections) are created in fp32 and cast to half where they are inserted. `to_half` keeps that
split (`official_fp32`); the official PREC fp32 path fails (a half cast inside the code), so
`official` is pure fp16 as the other prompt methods' preset.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.prompts import TextPrompts, encode_image_deep, encode_prompts, require_vit, text_width, vit_dims
from ._prompt import SGD_HPARAMS, PromptMethod
from .base import HP, ClassSet

# The official `ctx_init and n_ctx <= 4` test: longer contexts are drawn at random, whatever CTX_INIT says.
MAX_INIT_TOKENS = 4

DEEP_HPARAMS = {
    "n_ctx": HP(2, min=1),  # text context tokens learned (MaPLe N_CTX, PromptSRC N_CTX_TEXT)
    "ctx_init": "a photo of a",  # CTX_INIT of every shipped config; "" = random N(0, init_std) contexts
    "init_std": HP(0.02, min=0),  # deep prompts (and random contexts): N(0, 0.02)
    **SGD_HPARAMS,
}


def deep_prompts(n_layers: int, n: int, width: int, std: float, device) -> nn.ParameterList:
    """`n_layers` learned [n, width] prompts, N(0, std)."""
    return nn.ParameterList(nn.Parameter(torch.empty(n, width, device=device).normal_(0, std))
                            for _ in range(max(n_layers, 0)))


class DeepPromptMethod(PromptMethod):
    vision_towers = ("vit",)  # deep vision prompts replace tokens of open_clip's VisionTransformer
    """A learned text context with deep prompts in the text and vision towers of the frozen ViT
    CLIP; logits s·f(image; vision prompts)·g(class; text prompts)ᵀ."""

    @classmethod
    def check_hparams(cls, hp):
        init = (hp.get("ctx_init") or "").strip()
        n = int(hp.get("n_ctx", 1))
        if init and n > MAX_INIT_TOKENS:
            return [f"n_ctx={n} with ctx_init={init!r} (the official code ignores ctx_init above "
                    f"{MAX_INIT_TOKENS} contexts and draws them at random: set ctx_init='' for random contexts)"]
        if init and n > len(init.split()):
            return [f"n_ctx={n} with ctx_init={init!r} (the context is cut from ctx_init's tokens: at most one "
                    "per word; use a longer ctx_init or a smaller n_ctx)"]
        return []

    # --- what a subclass provides: the prompts of one forward ---
    def text_layer_prompts(self) -> list:
        """Per text layer i: None, or [n_ctx, w] replacing the context before layer i."""
        return []

    def vision_prompts(self) -> tuple[torch.Tensor | None, list]:
        """(shallow [n, w] appended before ln_pre or None, [deep prompt of vision layer i+1])."""
        return None, []

    def official_fp32(self) -> list[nn.Parameter]:
        """The parameters the official PREC fp16 run keeps in fp32 (cast where they are inserted)."""
        return []

    # --- shared setup ---
    def setup_context(self, task) -> None:
        """Freeze the CLIP, check it is a ViT, and build the text context."""
        require_vit(task.backbone, self.name)
        self.attach(task)
        hp = self.hp
        n, init = int(hp["n_ctx"]), (hp["ctx_init"] or "").strip()
        self.prompt = TextPrompts(self.clip, self.backbone.tokenizer, n, init, False, len(task.classes.names),
                                  "end", float(hp["init_std"]), init_tokens=n if init else None).to(task.device)

    def layers(self) -> tuple[int, int, int, int]:
        """(text layers, text width, vision layers, vision width) of the frozen CLIP."""
        v_layers, v_width = vit_dims(self.clip.visual)
        return len(self.backbone.text_tower.transformer.resblocks), text_width(self.clip), v_layers, v_width

    def to_half(self) -> None:
        """Pure fp16 as the official PREC fp16: half CLIP copy and context; `official_fp32` stay fp32."""
        if self.is_half:
            return
        super().to_half()
        for p in self.official_fp32():
            p.data = p.data.float()

    # --- features and logits ---
    def _params_version(self) -> tuple:
        return tuple(p._version for p in self.parameters())

    def text_features(self, classes: ClassSet, normalize: bool = True) -> torch.Tensor:
        """[C, d] text features of the learned prompts (cached while evaluating)."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = (normalize, tuple(classes.names), self._params_version())
        if cacheable and key in self._cache:
            return self._cache[key]
        feats = encode_prompts(self.prompt, self.prompt.bank(classes.names), normalize=normalize,
                               deep=self.text_layer_prompts())
        if cacheable:
            self._cache = {key: feats}
        return feats

    def prompted_image_features(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        shallow, deep = self.vision_prompts()
        f = encode_image_deep(self.clip.visual, images, shallow, deep)
        return f / f.norm(dim=-1, keepdim=True) if normalize else f

    def logits(self, x, classes: ClassSet):
        f = self.prompted_image_features(x)
        return classes.clip_logits(f, self.text_features(classes))
