"""CoOp: learned context vectors in the text prompt (SPEC §2, official-code-facts §1.1).

Logits s·f·g([v₁..v_M, class])ᵀ. Also the base of the other image-level prompt methods: the frozen
CLIP model is held outside the module tree, so state dicts and `trainable_params` hold only the
learned prompts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FewclipError
from ..models.backbone import LOGIT_SCALE
from ..models.prompts import TextPrompts, encode_prompts
from . import ClassSet, Method, NotApplicable, register

# Dassl optimiser/schedule keys shared by every prompt method (SPEC §2).
SGD_DEFAULTS = {
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine_epoch",
    "warmup_lr": 1e-5, "precision": "auto",  # official preset: "fp16" (pure half, PromptMethod.presets)
    # the train transform's RandomResizedCrop scale (SPEC §1: 0.08-1); the engine reads it
    "crop_scale_min": 0.08,
}


def coop_epochs(dataset: str, shots: int) -> int:
    """CoOp's schedule (COOP.md): 1-shot 50, 2/4-shot 100, 8/16-shot 200; ImageNet 50 for every K."""
    if dataset == "imagenet":
        return 50
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


# CoOp as CoCoOp's baseline (base-to-new, domain generalization: `scripts/cocoop/*.sh`, SPEC §2.4):
# config vit_b16_ctxv1 = 4 contexts from "a photo of a", 200 epochs; ImageNet vit_b16_ep50_ctxv1.
COCOOP_BASELINE = {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "class_token_position": "end"}


class PromptMethod(Method):
    """An image-level method on a frozen CLIP backbone.

    Precision (SPEC §2.2): the official trainers (CoOp, CoCoOp, VPT, VLP, DPT) default to
    `PREC fp16`, pure half weights trained without a GradScaler: the `official` preset's
    `precision` "fp16" (the engine casts the CLIP copy, the learned tensors and modules to half;
    GPU only, fp32 on the CPU, recorded in metrics.json `train.precision`). `clean` keeps fp32
    master weights with bf16 autocast ("auto")."""

    needs = "images"
    trains = True
    presets = {"official": {"precision": "fp16"}}

    def __init__(self, hp):
        super().__init__(hp)
        self._frozen: list = []  # [Backbone], deliberately not a submodule
        self._cache: dict = {}

    @property
    def backbone(self):
        if not self._frozen:
            raise FewclipError(f"method {self.name} was used before setup()")
        return self._frozen[0]

    @property
    def clip(self):
        return self.backbone.model

    def attach(self, task) -> None:
        bb = task.backbone
        bb.model.eval()
        for p in bb.model.parameters():
            p.requires_grad_(False)
        self._frozen = [bb]
        self.device = task.device
        self.train_classes = task.classes
        self._cache = {}

    def text_prompts(self, task) -> TextPrompts:
        """The learned text context of the CoOp family, from the method's hyper-parameters."""
        hp = self.hp
        return TextPrompts(self.clip, self.backbone.tokenizer, int(hp["n_ctx"]), hp["ctx_init"],
                           bool(hp["csc"]), len(task.classes.names), hp["class_token_position"],
                           float(hp["init_std"])).to(task.device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        f = self.clip.encode_image(images)
        return f / f.norm(dim=-1, keepdim=True)

    def loss(self, batch, epoch: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.logits(images, self.train_classes), labels)

    def train(self, mode: bool = True):
        self._cache = {}
        return super().train(mode)


@register
class CoOp(PromptMethod):
    name = "coop"
    resources = {"mem_mb": 16000, "runtime": 120}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {
        "n_ctx": 16, "ctx_init": "", "csc": False, "class_token_position": "end", "init_std": 0.02,
        "epochs": 200, "lr": 0.002, "batch_size": 32, "warmup_epochs": 1, **SGD_DEFAULTS,
    }

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        if protocol in ("base2new", "dg"):
            return {**COCOOP_BASELINE, "epochs": 50 if dataset == "imagenet" else 200}
        return {"epochs": coop_epochs(dataset, shots)}

    def setup(self, task):
        self.attach(task)
        self.prompt = self.text_prompts(task)
        return {"n_ctx": self.prompt.n_ctx}

    def _class_index(self, classes: ClassSet):
        if not self.prompt.csc:
            return None
        if classes.train_index is None:
            raise NotApplicable("class-specific contexts (csc) have no context for classes unseen in training")
        return classes.train_index

    def text_features(self, classes: ClassSet) -> torch.Tensor:
        """[C, d] normalised learned-prompt text features (cached while evaluating)."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = ("text", tuple(classes.names), self.prompt.ctx._version)
        if cacheable and key in self._cache:
            return self._cache[key]
        feats = encode_prompts(self.prompt, self.prompt.bank(classes.names), class_index=self._class_index(classes))
        if cacheable:
            self._cache = {key: feats}
        return feats

    def logits(self, x, classes: ClassSet):
        f = self.image_features(x)
        return LOGIT_SCALE * f @ self.text_features(classes).t().to(f.dtype)
