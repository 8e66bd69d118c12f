"""Shared code of VLP and DPT (SPEC §2, §2.1; official-code-facts §1.5): VPT-deep + CoOp text
context with two learning rates, the general-knowledge guidance loss for the first C epochs,
and (DPT) class-aware visual prompts (CAVPT), built as fanrena/DPT `trainers/DPT.py` builds them.

DPT's layers (official `Transformer_VPTD`): VPT-deep tokens in the layers below the last
`cavpt_layers` ones (official: layers 1..BOTTOMLIMIT-1); each of the last `cavpt_layers` layers
gets K_N class-aware tokens and no VPT-deep tokens. One CAVPT layer (official `CAVPT`,
`Attention`), for an image with layer input tokens t [T, w]:
  x    = query(learned text features of its K_N selected classes, unnormalised)   [K_N, w]
  kv   = [t.detach(); 10 learned tokens]                                          [T+10, w]
  out  = v(softmax(q(x) k(kv)ᵀ / √32) · kv)        (q, k: w → 32, v: w → w, no biases)
  tokens appended to the layer = norm(out + x);  aux logits = head(head_norm(out))
The K_N classes are the top K_N of the zero-shot logits (un-prompted image · hand-crafted text).
The auxiliary loss is the CE of the aux logits on the (image, layer, token) rows whose selected
class is the image's label (no term when there is none), weighted α.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..models.prompts import require_vit, vit_dims
from ._prompt import (SGD_HPARAMS, TEXT_CONTEXT_HPARAMS, VISUAL_PROMPT_HPARAMS, PromptMethod, VisualPromptMixin,
                      dpt_epochs, visual_warmup)
from .base import HP, ClassSet, train_hparams

VL_HPARAMS = {
    **TEXT_CONTEXT_HPARAMS, **VISUAL_PROMPT_HPARAMS,
    **train_hparams(epochs=100, lr=0.01, warmup_epochs=10, batch_size=32),
    "text_lr": HP(0.002, above=0), "text_warmup_epochs": HP(1, min=0),
    "guidance_epochs": HP(30, min=0), "guidance_weight": HP(0.1, min=0),
    **SGD_HPARAMS,
}


class CAVPTLayer(nn.Module):
    """The class-aware prompt generator of one layer (official names in brackets, layer i)."""

    def __init__(self, text_dim: int, width: int, n_classes: int, qk_dim: int = 32, n_kv: int = 10,
                 init_std: float = 0.02):
        super().__init__()
        self.query = nn.Linear(text_dim, width)  # [meta_nets.i]
        self.kv = nn.Parameter(torch.empty(n_kv, width).normal_(0, init_std))  # [ctx[i]]
        self.q = nn.Linear(width, qk_dim, bias=False)  # [attns.i.qmlp]
        self.k = nn.Linear(width, qk_dim, bias=False)  # [attns.i.kmlp]
        self.v = nn.Linear(width, width, bias=False)  # [attns.i.vmlp]
        self.head_norm = nn.LayerNorm(width)  # [lns.i]
        self.head = nn.Linear(width, n_classes, bias=False)  # [classfiers.i]
        self.norm = nn.LayerNorm(width)  # [lns2.i]
        self.scale = 1.0 / math.sqrt(qk_dim)

    def forward(self, text: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, K, d]: unnormalised learned text features of the selected classes; tokens
        [B, T, w]: the layer's input. Returns the K tokens to append and the aux logits [B, K, C]."""
        x = self.query(text.to(self.query.weight.dtype))
        kv = torch.cat([tokens.detach().to(x.dtype), self.kv.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        attn = torch.softmax(self.q(x) @ self.k(kv).transpose(1, 2) * self.scale, dim=-1)
        out = self.v(attn @ kv)
        return self.norm(out + x), self.head(self.head_norm(out))


class VisionLanguagePrompts(VisualPromptMixin, PromptMethod):
    """VLP; with `use_cavpt` (DPT) the class-aware prompts are added."""

    use_cavpt = False

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        return {"epochs": dpt_epochs(dataset, shots), "warmup_epochs": visual_warmup(dataset),
                "guidance_epochs": 10 if dataset == "imagenet" else 30}

    def setup(self, task):
        require_vit(task.backbone, self.name)
        self.attach(task)
        hp = self.hp
        self.prompt = self.text_prompts(task)
        layers, width = vit_dims(self.clip.visual)
        n = min(int(hp["cavpt_layers"]), layers) if self.use_cavpt else 0
        self.cavpt_at = list(range(layers - n, layers))
        self.setup_visual(task, layers - n)
        if self.cavpt_at:
            self.cavpt = nn.ModuleList(
                CAVPTLayer(self.backbone.embed_dim, width, len(task.classes.names), int(hp["cavpt_qk_dim"]),
                           int(hp["cavpt_kv_tokens"]), float(hp["init_std"]))
                for _ in self.cavpt_at).to(task.device)
        return {"n_ctx": self.prompt.n_ctx, "cavpt_layers_at": [i + 1 for i in self.cavpt_at]}

    def param_groups(self):
        text = list(self.prompt.parameters())
        ids = {id(p) for p in text}
        visual = [p for p in self.parameters() if id(p) not in ids]
        return [
            {"params": visual, "lr": float(self.hp["lr"]), "warmup_epochs": int(self.hp["warmup_epochs"])},
            {"params": text, "lr": float(self.hp["text_lr"]), "warmup_epochs": int(self.hp["text_warmup_epochs"])},
        ]

    def raw_text_features(self, classes: ClassSet) -> torch.Tensor:
        """[C, d] learned-prompt text features before L2 normalisation (cached while evaluating)."""
        return self.learned_text_features(classes, normalize=False)

    def _forward(self, images, classes: ClassSet, zs_feats=None):
        """(prompted image features, normalised learned text features, the CAVPT selections
        [B, K] and the aux logits per CAVPT layer)."""
        raw = self.raw_text_features(classes)
        extra, selected = {}, None
        if self.cavpt_at:
            if zs_feats is None:
                with torch.no_grad():
                    zs_feats = self.image_features(images)
            k = min(int(self.hp["cavpt_classes"]), len(classes.names))
            zs = zs_feats @ classes.text_features.t().to(zs_feats.dtype)
            selected = zs.topk(k, dim=1).indices  # [B, K], highest first
            extra = {layer: partial(m, raw[selected]) for layer, m in zip(self.cavpt_at, self.cavpt)}
        f, aux = self.prompted_features(images, extra)
        return f, raw / raw.norm(dim=-1, keepdim=True), selected, aux

    def logits(self, x, classes: ClassSet):
        f, text, _, _ = self._forward(x, classes)
        return classes.clip_logits(f, text)

    def loss(self, batch, epoch: int):
        images, labels = batch
        classes = self.train_classes
        guided = epoch < int(self.hp["guidance_epochs"])
        zs = None
        if guided or self.cavpt_at:
            with torch.no_grad():
                zs = self.image_features(images)
        f, text, selected, aux = self._forward(images, classes, zs)
        text = text.to(f.dtype)
        main = F.cross_entropy(classes.clip_logits(f, text), labels)
        if guided:
            hand = classes.text_features.to(f.dtype)
            loss = (F.cross_entropy(classes.clip_logits(zs.to(f.dtype), text), labels)
                    + F.cross_entropy(classes.clip_logits(f, hand), labels)
                    + float(self.hp["guidance_weight"]) * main)
        else:
            loss = main
        match = None if selected is None else selected == labels[:, None]  # [B, K]
        if match is not None and match.any():
            logits = torch.cat([aux[layer][match] for layer in self.cavpt_at])
            target = labels[:, None].expand_as(match)[match].repeat(len(self.cavpt_at))
            loss = loss + float(self.hp["alpha"]) * F.cross_entropy(logits.float(), target)
        return loss
