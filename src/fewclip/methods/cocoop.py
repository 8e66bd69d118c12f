"""CoCoOp: CoOp context plus an image-conditioned Meta-Net (SPEC §2, official-code-facts §1.2).

h(f) = Linear(d, d/16) → ReLU → Linear(d/16, width) whose output is added to every context
vector, per image: s·f·g([v + h(f), class])ᵀ.

The official code runs the text encoder once per image (batch 1). Here the B×C prompts of a
whole batch go through the text encoder in one pass (no Python loop over images); batch 1
(`batch_size`, the default) reproduces the official setting.

Settings per protocol: CoCoOp's own scripts (base-to-new, cross-dataset, DG) use
`vit_b16_c4_ep10_batch1_ctxv1`: 4 contexts from "a photo of a". CoCoOp's paper has no few-shot
table; the few-shot comparison that runs it is DPT's, with `configs/trainers/VPT/cocoop.yaml`
(fanrena/DPT): 16 random contexts, batch 1, 10 epochs, lr 0.002, warm-up 1 epoch at 1e-5."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models.prompts import encode_prompts, text_width
from . import register
from ._prompt import SGD_HPARAMS, TEXT_CONTEXT_HPARAMS, PromptMethod
from .base import HP, ClassSet, train_hparams

EVAL_PROMPTS = 8192  # images × classes encoded at once while evaluating (memory bound)


@register
class CoCoOp(PromptMethod):
    name = "cocoop"
    resources = {"mem_mb": 24000, "runtime": 480}  # one cell, paper GPUs (workflow scales for ImageNet)
    # vit_b16_c4_ep10_batch1_ctxv1 (CoCoOp's protocols); few-shot: DPT's cocoop.yaml (defaults_for)
    hparams = {**TEXT_CONTEXT_HPARAMS, "n_ctx": HP(4, min=1), "ctx_init": "a photo of a",
               **train_hparams(epochs=10, lr=0.002, batch_size=1, warmup_epochs=1), **SGD_HPARAMS}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        return {"n_ctx": 16, "ctx_init": ""} if protocol == "fewshot" else {}

    def setup(self, task):
        self.attach(task)
        self.prompt = self.text_prompts(task)
        info = {"n_ctx": self.prompt.n_ctx}
        if self.prompt.csc:
            raise ConfigError("cocoop has no class-specific context option; use csc=false")
        d = self.backbone.embed_dim
        hidden = max(1, d // 16)
        self.meta_net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, text_width(self.clip))).to(task.device)
        return info

    def logits(self, x, classes: ClassSet):
        f = self.image_features(x)
        bank = self.prompt.bank(classes.names)
        C = len(classes.names)
        step = len(f) if torch.is_grad_enabled() else max(1, EVAL_PROMPTS // max(C, 1))
        out = []
        for i in range(0, len(f), step):
            fi = f[i : i + step]
            ctx = self.prompt.ctx.unsqueeze(0) + self.meta_net(fi).unsqueeze(1)  # [B, M, w]
            t = encode_prompts(self.prompt, bank, ctx, per_image=True)  # [B, C, d]
            out.append(classes.logit_scale * torch.einsum("bd,bcd->bc", fi, t.to(fi.dtype)) + classes.logit_bias)
        return torch.cat(out)
