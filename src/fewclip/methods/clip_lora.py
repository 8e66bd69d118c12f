"""CLIP-LoRA: low-rank adapters on q, k, v of every attention layer of both towers (Zanella & Ben Ayed, CVPRW 2024).

The official code, MaxZanella/CLIP-LoRA @ 358f0d7 (2024-10-14), trains one recipe for every dataset and
shot count.

The math, as the official code computes it (`loralib/layers.py` LinearLoRA and
PlainMultiheadAttentionLoRA, `lora.py` run_lora, `run_utils.py` defaults):
- q, k and v of every block of the text and the vision transformer (open_clip's packed in_proj,
  rows 0:D, D:2D, 2D:3D) become  y = x Wᵀ + b + s · (drop(x) @ (B A)ᵀ),  A [r, d_in], B [d_out, r],
  rank r = 2, s = α/√r with α = 1 (0.7071: the official LoRALayer's α/√r, not loralib's α/r), drop
  = Dropout(0.25) on the LoRA branch's input only (the frozen path sees x), one dropout per
  projection (three independent masks on the same LayerNorm output). A ~ kaiming_uniform(a=√5)
  = U(±1/√d_in), B = 0: training starts at zero-shot CLIP. The output projection has no LoRA.
  Attention: scaled dot-product over the heads with the block's mask (causal in the text tower).
- Evaluation (eval mode): the merged weights W + s·B A, no dropout (the official `eval()` adds
  s·B A into the weights in place and `train()` subtracts it; here the merged weights are computed
  from the current A, B when first needed in eval mode and cached, the frozen weights never change);
  in fp32 this equals the unmerged branch up to round-off.
- Logits 100 · f·tᵀ (main.py's fixed `logit_scale = 100`, not CLIP's learned one) with f, t
  L2-normalised; the text features are re-encoded through the adapted text tower at every step,
  in train mode (LoRA dropout there too), text before images as the official loop; cross-entropy.
- Training: AdamW (lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2) with a per-iteration
  cosine to 1e-6 over 500 × K iterations (`n_iters * shots`; `iters`), stopped after exactly that
  many steps, mid-epoch (the engine's step budget); batches of 32 with the last incomplete batch
  kept (`drop_last=False`); RandomResizedCrop(0.08-1, bicubic) + flip. The final iterate is
  evaluated: nothing is selected (`VALIDATION = False`), in either preset.
- Weight decay 1e-2 follows the FIXED upstream code: lora.py shipped `weight_decay=1e2` until
  commit 37a196d (2024-06-03, "weight_decay 1e2 -> 1e-2", after CLIP-LoRA#1); both presets use 1e-2.

Presets (the README's method table names each choice):
- `official`: the repository's choices: one template for every dataset, "a photo of a {}."
  (every CLIP-LoRA dataset file at HEAD, ImageNet included); fp16 autocast + GradScaler
  (`precision` "amp", fp32 master weights: the LoRA tensors are fp32 in the official code too).
- `clean`: the dataset's hand-crafted template (SPEC §4, `template` ""), the template zero-shot
  CLIP and every prompt method's text classifier use; the engine's "auto" precision (bf16
  autocast on a GPU, fp32 on a CPU). It selects nothing either, so no split other than the
  few-shot train split is read; seeds are the config's in both presets.
Not reproduced, in either preset: CLIP-LoRA's Tip-Adapter-style loaders (its val shots drawn before
its train shots, so its K-shot sample for a seed differs from Dassl's; fewclip's manifests and the
config's seeds; the README runs seed 1 and never said which seeds the paper averaged, CLIP-LoRA#18);
its ImageNet class names (fewclip's dataset class names); the frozen towers are held in fp32 under
the autocast (the official CLIP keeps fp16 weights; its values are fp16 anyway, only ops outside
autocast's lists such as residual adds differ); logits and the loss are computed from the encoders'
outputs in fp32 (the official normalises and scores the fp16 features outside autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..constants import PRECISIONS
from ..errors import FewclipError
from ..models.templates import prompt_texts
from ..models.text_encoder import activation_bytes, eot_index, fast_path_supported, free_memory, should_recompute
from . import register
from ._prompt import PromptMethod
from .base import HP, ClassSet, DataNeeds, train_hparams

N_ITERS = 500  # run_utils.py --n_iters: iterations per shot (total_iters = n_iters * shots)
OFFICIAL_TEMPLATE = "a photo of a {}."  # every CLIP-LoRA dataset's `template` at HEAD


class LoRA(nn.Module):
    """The low-rank update of one frozen projection (W, b): ΔW = s · B A on a dropped-out input."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, dropout: float, device=None):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, device=device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(rank)
        self.dropout = nn.Dropout(dropout)
        self._merged: tuple | None = None  # (key, W + s·B A) in eval mode

    def delta(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.merged(weight), bias)
        lora_in = self.dropout(x) if self.dropout.p > 0 else x
        return F.linear(x, weight, bias) + torch.matmul(lora_in, self.delta().transpose(0, 1)) * self.scaling

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        """W + s·B A (no gradient, in the weights' dtype, outside autocast: the official merge)."""
        key = (self.lora_A._version, self.lora_B._version, self.lora_A.data_ptr(), weight.data_ptr(), weight.dtype)
        if self._merged is None or self._merged[0] != key:
            with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
                self._merged = (key, weight + self.delta().to(weight.dtype) * self.scaling)
        return self._merged[1]

    def train(self, mode: bool = True):
        self._merged = None
        return super().train(mode)


class AttentionLoRA(nn.Module):
    """The LoRA of one attention layer: q, k, v."""

    def __init__(self, width: int, rank: int, alpha: float, dropout: float, device=None):
        super().__init__()
        self.q, self.k, self.v = (LoRA(width, width, rank, alpha, dropout, device) for _ in range(3))

    def attend(self, attn: nn.MultiheadAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """Self-attention of `attn` (frozen) with LoRA on q, k, v; x [N, L, D] (the block's ln_1 output)."""
        N, L, D = x.shape
        H = attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q, k, v = (lora(x, w[i * D:(i + 1) * D], None if b is None else b[i * D:(i + 1) * D]).view(
            N, L, H, D // H).transpose(1, 2) for i, lora in enumerate((self.q, self.k, self.v)))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return F.linear(out.transpose(1, 2).reshape(N, L, D), attn.out_proj.weight, attn.out_proj.bias)


def _block(blk, lora: AttentionLoRA, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward with LoRA attention."""
    x = x + blk.ls_1(lora.attend(blk.attn, blk.ln_1(x), causal))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _plain_blocks(blocks) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    return all(type(blk) is ResidualAttentionBlock and not hasattr(blk, "ln_1_kv") and blk.attn._qkv_same_embed_dim
               and blk.attn.bias_k is None and not blk.attn.add_zero_attn and not blk.attn.dropout for blk in blocks)


@register
class CLIPLoRA(PromptMethod):
    vision_towers = ("vit",)  # LoRA on q, k, v of open_clip's VisionTransformer blocks
    name = "clip_lora"
    resources = {"mem_mb": 24000, "runtime": 240}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {
        "rank": HP(2, min=1),  # --r
        "alpha": HP(1.0, above=0),  # --alpha; scaling alpha / sqrt(rank)
        "dropout": HP(0.25, min=0.0, max=1.0),  # --dropout_rate, on the LoRA input only
        "template": HP("", kind=str),  # "": the dataset's template; else a format string with one "{}"
        "crop_scale_min": HP(0.08, min=0.0, max=1.0),  # RandomResizedCrop(224, scale=(0.08, 1))
        # epochs 0: no bound on the passes, the step budget `iters` (500 x K, defaults_for) ends training
        **train_hparams(epochs=0, iters=N_ITERS, lr=2e-4, batch_size=32, optimizer="adamw", weight_decay=1e-2,
                        eps=1e-8, schedule="cosine_iter", min_lr=1e-6, warmup_epochs=0, precision="auto"),
        # no pure fp16: the official LoRA tensors and AdamW state are fp32 (eps 1e-8 is 0 in half)
        "precision": HP("auto", choices=tuple(p for p in PRECISIONS if p != "fp16")),
    }
    presets = {"official": {"template": OFFICIAL_TEMPLATE, "precision": "amp"}}

    def __init__(self, hp):
        super().__init__(hp)
        self._tokens: dict = {}  # the prompts' frozen token embeddings, per class list and template

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        return {"iters": N_ITERS * shots}  # lora.py: total_iters = args.n_iters * args.shots

    @classmethod
    def check_hparams(cls, hp):
        problems = []
        template = hp.get("template", "")
        if template and template.count("{}") != 1:
            problems.append(f"template={template!r} (must hold '{{}}' once, where the class name goes; "
                            "'' is the dataset's template)")
        if hp.get("epochs") == 0 and hp.get("iters") == 0:
            problems.append("epochs=0 with iters=0 (nothing ends training: set the step budget iters, "
                            f"{N_ITERS} x K by default, or epochs)")
        if hp.get("epochs") == 0 and hp.get("schedule") == "cosine_epoch":
            problems.append("schedule=cosine_epoch with epochs=0 (it anneals over the epochs: use cosine_iter)")
        if hp.get("min_lr", 0.0) > hp.get("lr", 0.0):
            problems.append(f"min_lr={hp['min_lr']!r} (must not exceed lr={hp['lr']!r})")
        return problems

    def data_needs(self) -> DataNeeds:
        """Batches of 32 with the last incomplete one kept (the official loader's drop_last=False)."""
        return DataNeeds(batch_size=int(self.hp["batch_size"]), crop_scale=(float(self.hp["crop_scale_min"]), 1.0),
                         drop_last=False)

    def setup(self, task):
        self.attach(task)
        model = self.clip
        visual = model.visual
        if not (hasattr(visual, "transformer") and hasattr(visual, "_embeds")
                and _plain_blocks(visual.transformer.resblocks)
                and fast_path_supported(model)):
            raise FewclipError(
                f"clip_lora puts LoRA on the attention of every transformer block of both towers; backbone "
                f"'{task.backbone.name}' ({type(visual).__name__}) has no such blocks. Use ViT-B-16 (the official "
                "backbone), ViT-B-32, ViT-L-14 or fewclip-tiny-vit")
        self.scale, self.bias = task.classes.fixed_scale(task.preset), task.classes.logit_bias
        rank, alpha, p = int(self.hp["rank"]), float(self.hp["alpha"]), float(self.hp["dropout"])

        def towers(blocks):
            return nn.ModuleList(AttentionLoRA(blk.attn.embed_dim, rank, alpha, p, task.device) for blk in blocks)

        # the official apply_lora wraps the text blocks first, then the vision blocks (their init draws)
        self.text = towers(model.transformer.resblocks)
        self.visual = towers(visual.transformer.resblocks)
        return {"lora_layers": {"text": len(self.text), "visual": len(self.visual)},
                "scaling": alpha / math.sqrt(rank)}

    # --- towers ---
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised features of the adapted image tower."""
        visual = self.clip.visual
        x = visual._embeds(images)
        for blk, lora in zip(visual.transformer.resblocks, self.visual):
            x = _block(blk, lora, x, causal=False)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def prompt_tokens(self, classes: ClassSet) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings [C, L, w] cut after the longest end-of-text token, EOT index [C]) of the
        classes' prompts under `template` ('' = the classes' dataset template); frozen, cached."""
        template = self.hp["template"] or classes.template
        key = (tuple(classes.names), template)
        if key not in self._tokens:
            model = self.clip
            texts = [prompt_texts(name, "dataset", template)[0] for name in classes.names]
            tokens = self.backbone.tokenizer(texts).to(self.device)
            ends = eot_index(model, tokens)
            with torch.no_grad():
                emb = model.token_embedding(tokens[:, : int(ends.max()) + 1])
            self._tokens[key] = (emb, ends)
        return self._tokens[key]

    def text_features(self, classes: ClassSet) -> torch.Tensor:
        """Unnormalised features of the adapted text tower (cached while evaluating)."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = ("text", tuple(classes.names), self.hp["template"] or classes.template,
               tuple(p._version for p in self.parameters()))
        if cacheable and key in self._cache:
            return self._cache[key]
        model = self.clip
        emb, ends = self.prompt_tokens(classes)
        C, L = emb.shape[:2]
        cast = model.transformer.get_cast_dtype()
        x = emb.to(cast) + model.positional_embedding[:L].to(cast)
        recompute = False
        if torch.is_grad_enabled():  # the backward keeps every block's activations for C prompts
            elem = 2 if torch.is_autocast_enabled(x.device.type) else torch.finfo(cast).bits // 8
            recompute = should_recompute(activation_bytes(model, C * L, L, elem), free_memory(x.device))
        for blk, lora in zip(model.transformer.resblocks, self.text):
            x = checkpoint(_block, blk, lora, x, True, use_reentrant=False) if recompute else _block(blk, lora, x, True)
        pooled = model.ln_final(x[torch.arange(C, device=x.device), ends.to(x.device)])
        proj = model.text_projection
        feats = pooled if proj is None else proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        if cacheable:
            self._cache = {key: feats}
        return feats

    # --- the method's math ---
    def scores(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """s · f·tᵀ + bias of L2-normalised features, in fp32 (s: main.py's fixed 100 under `official`
        on OpenAI weights, else the backbone's own scale: `ClassSet.fixed_scale`)."""
        with torch.autocast(image_features.device.type, enabled=False):
            f, t = image_features.float(), text_features.float()
            f, t = f / f.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
            return self.scale * f @ t.t() + self.bias

    def loss(self, batch, epoch: int) -> torch.Tensor:
        images, labels = batch
        text = self.text_features(self.train_classes)  # text first, as run_lora (dropout draw order)
        return F.cross_entropy(self.scores(self.image_features(images), text), labels)

    def logits(self, x, classes: ClassSet):
        return self.scores(self.image_features(x), self.text_features(classes))
