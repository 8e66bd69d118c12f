"""Shared code of VLP and DPT (SPEC §2, official-code-facts §1.5): VPT-deep + CoOp text
context with two learning rates, the general-knowledge guidance loss for the first C epochs,
and (DPT) class-aware visual prompts (CAVPT).

CAVPT in a layer: the K_N classes with the highest zero-shot logits (un-prompted image ·
hand-crafted text) per image; their learned text features → Linear(d → width) → queries of a
cross-attention over that layer's (detached) input tokens (q, k projected to 32, v full width)
→ LayerNorm → K_N class-aware prompt tokens, appended after the layer's VPT-deep tokens. An
auxiliary Linear(width → training classes) on those tokens' outputs of the layer is trained
with CE on the tokens whose selected class is the image's label, weighted α.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone import LOGIT_SCALE
from ..models.prompts import vit_dims
from . import ClassSet
from .coop import SGD_DEFAULTS, CoOp, PromptMethod
from .vpt import VisualPromptMixin, dpt_epochs, visual_warmup

VL_HPARAMS = {
    "n_prompts": 10, "init_std": 0.02,
    "n_ctx": 16, "ctx_init": "", "csc": False, "class_token_position": "end",
    "epochs": 100, "lr": 0.01, "warmup_epochs": 10, "batch_size": 32,
    "text_lr": 0.002, "text_warmup_epochs": 1,
    "guidance_epochs": 30, "guidance_weight": 0.1,
    **SGD_DEFAULTS,
}


class CAVPTLayer(nn.Module):
    def __init__(self, text_dim: int, width: int, n_classes: int, qk_dim: int = 32):
        super().__init__()
        self.query = nn.Linear(text_dim, width)
        self.q = nn.Linear(width, qk_dim)
        self.k = nn.Linear(width, qk_dim)
        self.v = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)
        self.scale = 1.0 / math.sqrt(qk_dim)

    def forward(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """text [B, K, d] learned text features of the selected classes, tokens [B, T, w]."""
        q = self.q(self.query(text.to(tokens.dtype)))
        attn = torch.softmax(q @ self.k(tokens).transpose(1, 2) * self.scale, dim=-1)
        return self.norm(attn @ self.v(tokens))


class VisionLanguagePrompts(VisualPromptMixin, PromptMethod):
    """VLP; with `use_cavpt` (DPT) the class-aware prompts are added."""

    use_cavpt = False

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        return {"epochs": dpt_epochs(dataset, shots), "warmup_epochs": visual_warmup(dataset),
                "guidance_epochs": 10 if dataset == "imagenet" else 30}

    def setup(self, task):
        self.attach(task)
        hp = self.hp
        self.prompt = self.text_prompts(task)
        self.setup_visual(task)
        self.cavpt_at: list[int] = []
        if self.use_cavpt:
            layers, width = vit_dims(self.clip.visual)
            n = min(int(hp["cavpt_layers"]), layers)
            self.cavpt_at = list(range(layers - n, layers))
            self.cavpt = nn.ModuleList(
                CAVPTLayer(self.backbone.embed_dim, width, len(task.classes.names), int(hp["cavpt_qk_dim"]))
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

    _class_index = CoOp._class_index
    text_features = CoOp.text_features

    def _forward(self, images, classes: ClassSet, zs_feats=None):
        """(prompted image features, learned text features, CAVPT selections and token outputs)."""
        text = self.text_features(classes)
        extra, selected = None, None
        if self.cavpt_at:
            if zs_feats is None:
                with torch.no_grad():
                    zs_feats = self.image_features(images)
            k = min(int(self.hp["cavpt_classes"]), len(classes.names))
            zs = zs_feats @ classes.text_features.t().to(zs_feats.dtype)
            selected = zs.topk(k, dim=1).indices  # [B, K]
            chosen = text[selected]  # [B, K, d]
            extra = {layer: (lambda toks, m=m: m(chosen, toks)) for layer, m in zip(self.cavpt_at, self.cavpt)}
        f, outs = self.prompted_features(images, extra)
        return f, text, selected, outs

    def logits(self, x, classes: ClassSet):
        f, text, _, _ = self._forward(x, classes)
        return LOGIT_SCALE * f @ text.t().to(f.dtype)

    def loss(self, batch, epoch: int):
        images, labels = batch
        classes = self.train_classes
        guided = epoch < int(self.hp["guidance_epochs"])
        zs = None
        if guided or self.cavpt_at:
            with torch.no_grad():
                zs = self.image_features(images)
        f, text, selected, outs = self._forward(images, classes, zs)
        text = text.to(f.dtype)
        main = F.cross_entropy(LOGIT_SCALE * f @ text.t(), labels)
        if guided:
            hand = classes.text_features.to(f.dtype)
            loss = (F.cross_entropy(LOGIT_SCALE * zs.to(f.dtype) @ text.t(), labels)
                    + F.cross_entropy(LOGIT_SCALE * f @ hand.t(), labels)
                    + float(self.hp["guidance_weight"]) * main)
        else:
            loss = main
        if self.cavpt_at:
            loss = loss + float(self.hp["alpha"]) * self._aux_loss(selected, outs, labels)
        return loss

    def _aux_loss(self, selected, outs, labels):
        match = selected == labels[:, None]  # [B, K]
        terms = []
        for layer, m in zip(self.cavpt_at, self.cavpt):
            logits = m.head(outs[layer])  # [B, K, n_classes]
            if match.any():
                terms.append(F.cross_entropy(logits[match].float(), labels[:, None].expand_as(match)[match]))
            else:
                terms.append(logits.sum() * 0.0)
        return torch.stack(terms).mean()
