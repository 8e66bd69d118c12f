"""Prompt learning on open_clip's internals (SPEC §2).

Text side (CoOp / CoCoOp / VLP / DPT): learned context vectors are spliced into the token
embeddings of "X X ... X {class}." at the positions of the X's (class token at the end, in the
middle or at the front), then run through open_clip's text transformer, `ln_final`, pooled at
the end-of-text token (argmax of the token ids, as open_clip's `text_global_pool` does) and
projected. A `PromptBank` holds the frozen prefix/suffix embeddings of one class-name list, so
any list (base-to-new's unseen names, DG targets) gets its own bank.

Since CLIP's text transformer is causal, the output at the end-of-text token does not depend on
the positions after it, and positions shared by every prompt have the same hidden states:
`text_encoder.encode_causal` runs each prompt only up to its own EOT and computes the shared
[SOS, context] prefix once (once per image for CoCoOp), both exact (issue 19).

Image side (VPT-deep / VLP / DPT): `encode_image` runs open_clip's `VisionTransformer` block by
block and appends per-layer prompt tokens after the patch tokens, replacing the previous
layer's prompt outputs at every layer (VPT-deep, in the first layers that have tokens);
optional per-layer callables add tokens computed from the layer's input (DPT's class-aware
tokens). Prompt tokens carry no positional embedding, so their position in the sequence
does not matter; they are dropped before the next layer and before pooling.

Deep prompts in both towers (MaPLe, IVLP/PromptSRC): `encode_prompts(deep=...)` replaces the
context's hidden states before each prompted text layer, and `encode_image_deep` appends a shallow
vision prompt before ln_pre and replaces it layer by layer, keeping it through the later layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import FewclipError
from .text_encoder import encode_causal, encode_text_open_clip, eot_index, fast_path_supported
from .towers import prefix_len, text_tower, word_token_count

POSITIONS = ("end", "middle", "front")


def text_width(model) -> int:
    return int(text_tower(model).ln_final.weight.shape[0])


def _tokens(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts).long()


@dataclass
class PromptBank:
    """Frozen pieces of the prompts of one class-name list."""

    names: list[str]
    tokens: torch.Tensor  # [C, L] token ids of "X .. X name." (causal towers: cut after the longest EOT)
    prefix: torch.Tensor  # [C, P, w] the tokens before the text (CLIP: start-of-text, P = 1; SigLIP: P = 0)
    suffix: torch.Tensor  # [C, L-P-M, w] embeddings of "name." + EOT + padding
    name_lens: list[int]


class TextPrompts(nn.Module):
    """Learned context vectors: [M, w] shared, or [C, M, w] class-specific (CSC).

    Context from words (`ctx_init`, CoOp's `CTX_INIT`), as the official `PromptLearner` does it:
    "_" becomes a space, M = the number of **words** (`len(ctx_init.split(" "))`, not of BPE
    tokens; `n_ctx` is ignored), and the token embeddings at positions 1..M of the tokenized
    ctx_init are the learned vectors. When a word has several BPE tokens, the tokens after the
    first M stay frozen in the prompt (they sit in the suffix), as in the official code.
    Class-specific contexts exist only with random init: the official code silently ignores
    CSC when CTX_INIT is set, fewclip refuses the combination (ConfigError naming both keys).
    `init_tokens` (MaPLe, PromptSRC: their N_CTX): only the first `init_tokens` BPE tokens of
    ctx_init are learned, the rest of ctx_init stays frozen in the prompt (MaPLe's N_CTX 2 of
    "a photo of a": [a photo](learned) of a {class}.)."""

    def __init__(self, model, tokenizer, n_ctx: int = 16, ctx_init: str = "", csc: bool = False,
                 n_classes: int | None = None, position: str = "end", init_std: float = 0.02,
                 init_tokens: int | None = None):
        super().__init__()
        if position not in POSITIONS:
            raise FewclipError(f"class_token_position must be one of {', '.join(POSITIONS)}, got '{position}'")
        self._model = [model]
        self._tokenizer = tokenizer
        self.position, self.csc = position, csc
        self.n_prefix = prefix_len(tokenizer)  # where the context starts: after CLIP's SOS, at 0 for SigLIP
        tower = self.tower
        width = text_width(model)
        device = tower.token_embedding.weight.device
        ctx_init = (ctx_init or "").replace("_", " ")
        if ctx_init.strip():
            if csc:
                from ..errors import ConfigError

                raise ConfigError(
                    f"csc=true with ctx_init={ctx_init!r}: class-specific contexts only exist with random "
                    "init (the official CoOp code ignores CSC when CTX_INIT is set); use csc=false to learn "
                    "one context initialised from the words, or ctx_init='' for class-specific random contexts")
            n_ctx = len(ctx_init.split(" ")) if init_tokens is None else init_tokens
            with torch.no_grad():
                tok = _tokens(tokenizer, [ctx_init]).to(device)
                vec = tower.token_embedding(tok)[0, self.n_prefix : self.n_prefix + n_ctx].float().clone()
            self.prompt_prefix = ctx_init
        else:
            if n_ctx < 1:
                raise FewclipError(f"n_ctx must be >= 1, got {n_ctx}")
            shape = (n_classes, n_ctx, width) if csc else (n_ctx, width)
            vec = torch.empty(shape, device=device).normal_(0, init_std)
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        if csc and not n_classes:
            raise FewclipError("class-specific contexts (csc) need the number of classes")
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(vec)
        self._banks: dict[tuple, PromptBank] = {}

    @property
    def model(self):
        return self._model[0]

    @property
    def tower(self):
        """The model's text transformer under CLIP's names (`towers.text_tower`)."""
        return text_tower(self._model[0])

    def rebind(self, model) -> None:
        """Use `model` (e.g. a half copy of the frozen CLIP) from now on; its token banks are rebuilt."""
        self._model = [model]
        self._banks = {}

    def bank(self, names: list[str]) -> PromptBank:
        key = tuple(names)
        if key not in self._banks:
            tower, P = self.tower, self.n_prefix
            clean = [n.replace("_", " ") for n in names]
            texts = [f"{self.prompt_prefix} {n}." for n in clean]
            tokens = _tokens(self._tokenizer, texts).to(tower.token_embedding.weight.device)
            if tower.attn_mask is not None and getattr(tower, "text_pool_type", "argmax") in ("argmax", "eos"):
                tokens = tokens[:, : int(eot_index(tower, tokens).max()) + 1]  # causal: nothing after EOT matters
            with torch.no_grad():
                emb = tower.token_embedding(tokens).float()
            name_lens = [word_token_count(self._tokenizer, n) for n in clean]
            self._banks[key] = PromptBank(list(names), tokens, emb[:, :P], emb[:, P + self.n_ctx :], name_lens)
        return self._banks[key]

    def embeddings(self, bank: PromptBank, ctx: torch.Tensor | None = None,
                   class_index: torch.Tensor | None = None, per_image: bool = False) -> torch.Tensor:
        """Prompt embeddings [C, L, w]. ctx: the learned [M, w] (shared) or [C_train, M, w] (CSC,
        rows picked by `class_index`, the training index of each of the bank's classes); with
        `per_image`, ctx is [B, M, w] (CoCoOp: one context per image) and the result [B, C, L, w]."""
        ctx = self.ctx if ctx is None else ctx
        C = len(bank.names)
        prefix, suffix = bank.prefix.to(ctx.dtype), bank.suffix.to(ctx.dtype)
        if per_image:
            B = ctx.shape[0]
            ctx = ctx.unsqueeze(1).expand(B, C, -1, -1).reshape(B * C, self.n_ctx, -1)

            def rep(t):
                return t.unsqueeze(0).expand(B, -1, -1, -1).reshape(B * C, t.shape[1], t.shape[2])

            out = self._assemble(rep(prefix), ctx, rep(suffix), bank.name_lens * B)
            return out.reshape(B, C, out.shape[1], out.shape[2])
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(C, -1, -1)
        else:  # CSC
            if class_index is None:
                if ctx.shape[0] != C:
                    raise FewclipError("class-specific contexts need the training index of each class")
            else:
                ctx = ctx[class_index.to(ctx.device)]
        return self._assemble(prefix, ctx, suffix, bank.name_lens)

    def _assemble(self, prefix, ctx, suffix, name_lens) -> torch.Tensor:
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, n in enumerate(name_lens):
            name, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
            c = ctx[i : i + 1]
            if self.position == "middle":
                rows.append(torch.cat([prefix[i : i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
            else:
                rows.append(torch.cat([prefix[i : i + 1], name, c, rest], dim=1))
        return torch.cat(rows)


FAST_TEXT = True  # False: the path before issue 19 (every prompt padded, open_clip's transformer); benches compare


def encode_text_embeddings(model, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text` from token embeddings x [N, L, w] (L <= context length);
    returns unnormalised features [N, d]. Each prompt is computed only up to its end-of-text
    token (text_encoder.encode_causal); models it does not cover go through open_clip itself."""
    tower = text_tower(model)
    if FAST_TEXT and fast_path_supported(tower):
        return encode_causal(tower, x, eot_index(tower, tokens))[0]
    return encode_text_open_clip(tower, x, tokens)


def encode_prompts(learner: TextPrompts, bank: PromptBank, ctx=None, class_index=None,
                   per_image: bool = False, normalize: bool = True, deep=None) -> torch.Tensor:
    """L2-normalised text features: [C, d], or [B, C, d] for per-image contexts [B, M, w]
    (`normalize=False`: the text encoder's raw output, as DPT's CAVPT queries read it).
    deep: per text layer i, None or [M, w] tokens replacing the context's hidden states
    (positions 1..M) before layer i (MaPLe / IVLP deep text prompts; shared context, class at the end).

    With the class token at the end, the prompt is [SOS, ctx, name. EOT]: [SOS, ctx] is shared by
    every class (CoOp: once; CoCoOp: once per image; CSC: only SOS) and is computed once
    (text_encoder.encode_causal). `middle`/`front` run the whole prompts, still without padding."""
    model, P = learner.tower, learner.n_prefix
    if deep is not None and (per_image or learner.csc or learner.position != "end"):
        raise FewclipError("deep text prompts need one shared context with the class token at the end")
    if not (FAST_TEXT and fast_path_supported(model)):
        emb = learner.embeddings(bank, ctx, class_index, per_image)
        if deep is not None:
            feats = encode_text_open_clip(model, emb, bank.tokens, deep, deep_start=P)
        elif emb.dim() == 4:
            B, C = emb.shape[:2]
            feats = encode_text_open_clip(model, emb.flatten(0, 1), bank.tokens.repeat(B, 1)).reshape(B, C, -1)
        else:
            feats = encode_text_open_clip(model, emb, bank.tokens)
    elif learner.position != "end":
        emb = learner.embeddings(bank, ctx, class_index, per_image)
        ends = eot_index(model, bank.tokens)
        if emb.dim() == 4:
            B, C = emb.shape[:2]
            feats = encode_causal(model, emb.flatten(0, 1), ends.repeat(B)).reshape(B, C, -1)
        else:
            feats = encode_causal(model, emb, ends)[0]
    else:
        ctx = learner.ctx if ctx is None else ctx
        M = learner.n_ctx
        sos = bank.prefix[:1].to(ctx.dtype)  # [1, P, w], the same for every class
        suffix = bank.suffix.to(ctx.dtype)
        ends = eot_index(model, bank.tokens) - P - M  # EOT's index in the suffix
        if per_image:  # [B, M, w]: one prefix per image
            prefix = torch.cat([sos.expand(ctx.shape[0], -1, -1), ctx], dim=1)
        elif ctx.dim() == 2:
            prefix = torch.cat([sos, ctx.unsqueeze(0)], dim=1)
        else:  # CSC: only SOS is shared
            if class_index is not None:
                ctx = ctx[class_index.to(ctx.device)]
            elif ctx.shape[0] != len(bank.names):
                raise FewclipError("class-specific contexts need the training index of each class")
            prefix, suffix, ends = sos, torch.cat([ctx, suffix], dim=1), ends + M
        feats = encode_causal(model, suffix, ends, prefix, deep, deep_start=P)
        if not per_image:
            feats = feats[0]
    return feats / feats.norm(dim=-1, keepdim=True) if normalize else feats


# ----------------------------------------------------------------------------- visual prompts


def require_vit(backbone, method: str) -> None:
    visual = backbone.model.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
        raise FewclipError(
            f"visual prompting needs a ViT backbone; method '{method}' cannot run on '{backbone.name}' "
            f"({type(visual).__name__}). Use ViT-B-32/ViT-B-16 or fewclip-tiny-vit"
        )


def vit_dims(visual) -> tuple[int, int]:
    """(number of transformer layers, width) of an open_clip VisionTransformer."""
    blocks = visual.transformer.resblocks
    return len(blocks), int(visual.class_embedding.shape[0])


class VisualPrompts(nn.Module):
    """VPT-deep: n learned tokens for each of the first `layers` ViT layers, [layers, n, width],
    N(0, std) init (all layers for VPT and VLP; the layers below the CAVPT ones for DPT)."""

    def __init__(self, layers: int, n: int, width: int, init_std: float = 0.02, device=None):
        super().__init__()
        self.n = n
        self.tokens = nn.Parameter(torch.empty(layers, n, width, device=device).normal_(0, init_std))


def encode_image(visual, images: torch.Tensor, deep: torch.Tensor | None = None,
                 extra: dict[int, Callable[[torch.Tensor], tuple[torch.Tensor, object]]] | None = None,
                 ) -> tuple[torch.Tensor, dict[int, object]]:
    """Image features (unnormalised, [B, d]) of open_clip's VisionTransformer with prompts.

    deep: [L, n, w] tokens appended before each of the first L layers (replacing the previous
    layer's); extra: {layer index (0-based): fn(the layer's input tokens [B, T, w]) -> (tokens
    [B, K, w] to append, anything)}. Returns the features and, per `extra` layer, the second
    value its fn returned."""
    x = visual._embeds(images)
    B, T = x.shape[0], x.shape[1]
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    outs: dict[int, object] = {}
    for i, blk in enumerate(blocks):
        parts = [x]
        if deep is not None and i < deep.shape[0] and deep.shape[1]:
            parts.append(deep[i].to(x.dtype).unsqueeze(0).expand(B, -1, -1))
        if extra and i in extra:
            tokens, outs[i] = extra[i](x)
            parts.append(tokens.to(x.dtype))
        if len(parts) > 1:
            x = torch.cat(parts, dim=1)
        x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        x = x[:, :T]
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, outs


def encode_image_deep(visual, images: torch.Tensor, shallow: torch.Tensor | None = None,
                      deep=()) -> torch.Tensor:
    """Image features (unnormalised, [B, d]) with IVLP / MaPLe vision prompts (the official
    `VisionTransformer(_MaPLe).forward` and `ResidualAttentionBlock_IVLP/_MaPLe`), which differ
    from VPT-deep's (`encode_image`) in two ways:

    - `shallow` [n, w] is appended after the patch tokens BEFORE ln_pre, without a positional
      embedding: ln_pre normalises it with the other tokens;
    - before layer i >= 1, the last n tokens are REPLACED by deep[i-1] [n, w] where there is one;
      in the layers after the last deep prompt the previous layer's outputs at those positions
      go on through the remaining layers (they are never dropped). Pooled at the CLS token."""
    deep = list(deep or [])
    if any(t is not None for t in deep) and (shallow is None or not shallow.shape[0]):
        raise FewclipError("deep vision prompts replace the shallow prompt's tokens: give a shallow prompt")
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    B, T = x.shape[0], x.shape[1] + 1
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    if shallow is not None and shallow.shape[0]:
        x = torch.cat([x, shallow.to(x.dtype).unsqueeze(0).expand(B, -1, -1)], dim=1)
    x = visual.ln_pre(x)
    batch_first = getattr(visual.transformer, "batch_first", True)
    for i, blk in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep) and deep[i - 1] is not None:
            tokens = deep[i - 1].to(x.dtype)
            x = torch.cat([x[:, : x.shape[1] - tokens.shape[0]], tokens.unsqueeze(0).expand(B, -1, -1)], dim=1)
        x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
    pooled, _ = visual._pool(x[:, :T])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
