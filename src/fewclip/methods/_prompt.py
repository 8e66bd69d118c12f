"""What the image-level prompt methods share (CoOp, CoCoOp, VPT, VLP, DPT; SPEC §2,
official-code-facts §1.0–1.5): the frozen CLIP they hold, Dassl's optimiser keys, the learned
text context, the VPT-deep tokens, and the papers' epoch rules.

The frozen CLIP model is held outside the module tree, so state dicts and `trainable_params` hold
only what is learned."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from ..errors import FewclipError
from ..models.prompts import TextPrompts, VisualPrompts, encode_image, encode_prompts, require_vit, vit_dims
from .base import HP, ClassSet, DataNeeds, Method, NotApplicable, train_hparams

# Dassl's optimiser and schedule (SPEC §2), and the train transform's RandomResizedCrop scale
# (SPEC §1: 0.08-1). Precision: "auto" (clean); the official preset's "fp16" is pure half.
SGD_HPARAMS = {
    **train_hparams(optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine_epoch", warmup_lr=1e-5,
                    precision="auto"),
    "crop_scale_min": HP(0.08, min=0.0, max=1.0),
}

# CoOp's learned text context (`PromptLearner`): M vectors, from words or random, CSC, class position.
TEXT_CONTEXT_HPARAMS = {
    "n_ctx": HP(16, min=1), "ctx_init": "", "csc": False,
    "class_token_position": HP("end", choices=("end", "middle", "front")), "init_std": HP(0.02, min=0),
}

# VPT-deep tokens per layer.
VISUAL_PROMPT_HPARAMS = {"n_prompts": HP(10, min=1), "init_std": HP(0.02, min=0)}

# CoOp as CoCoOp's baseline (base-to-new, domain generalization: `scripts/cocoop/*.sh`, SPEC §2.4):
# config vit_b16_ctxv1 = 4 contexts from "a photo of a", 200 epochs; ImageNet vit_b16_ep50_ctxv1.
COCOOP_BASELINE = {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "class_token_position": "end"}


def coop_epochs(dataset: str, shots: int) -> int:
    """CoOp's schedule (COOP.md): 1-shot 50, 2/4-shot 100, 8/16-shot 200; ImageNet 50 for every K."""
    if dataset == "imagenet":
        return 50
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


def dpt_epochs(dataset: str, shots: int) -> int:
    """VLP's and DPT's schedule (the DPT paper's text: 1-shot 60, else 100; ImageNet 20)."""
    if dataset == "imagenet":
        return 20
    return 60 if shots <= 1 else 100


def visual_warmup(dataset: str) -> int:
    """VLP's and DPT's visual warm-up: `VLP.py`/`DPT.py` force 1 epoch on ImageNet (VPT.py does not)."""
    return 1 if dataset == "imagenet" else 10


class PromptMethod(Method):
    """An image-level method on a frozen CLIP backbone.

    Precision (SPEC §2.2): the official trainers (CoOp, CoCoOp, VPT, VLP, DPT) default to
    `PREC fp16`, pure half weights trained without a GradScaler: the `official` preset's
    `precision` "fp16" (`to_half` casts the CLIP copy, the learned tensors and modules to half; on
    a GPU or a CPU alike, recorded in metrics.json `train.precision`). `clean` keeps fp32 master
    weights with bf16 autocast ("auto"; fp32 on a CPU)."""

    needs = "images"
    trains = True
    presets = {"official": {"precision": "fp16"}}

    @classmethod
    def check_hparams(cls, hp):
        if hp.get("csc") and (hp.get("ctx_init") or "").strip():
            return ["csc=true with ctx_init (the official code ignores class-specific contexts when the "
                    "context is initialised from words: set ctx_init='' for CSC, or csc=false)"]
        return []

    def __init__(self, hp):
        super().__init__(hp)
        self._frozen: list = []  # [Backbone], deliberately not a submodule
        self._cache: dict = {}

    def data_needs(self) -> DataNeeds:
        return DataNeeds(batch_size=int(self.hp["batch_size"]), crop_scale=(float(self.hp["crop_scale_min"]), 1.0))

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

    def to_half(self) -> None:
        """Pure fp16 on a half copy of the frozen CLIP (the process's shared fp32 backbone is
        untouched); the learned text context is pointed at the copy."""
        if self.is_half:
            return
        if self._frozen:
            old = self._frozen[0]
            model = copy.deepcopy(old.model).half()
            self._frozen[0] = dataclasses.replace(old, model=model)
            for module in self.modules():
                if isinstance(module, TextPrompts) and module.model is old.model:
                    module.rebind(model)
            self._cache = {}
        super().to_half()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        f = self.clip.encode_image(images)
        return f / f.norm(dim=-1, keepdim=True)

    def loss(self, batch, epoch: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.logits(images, self.train_classes), labels)

    def train(self, mode: bool = True):
        self._cache = {}
        return super().train(mode)

    # --- the learned text context (CoOp family) ---
    def text_prompts(self, task) -> TextPrompts:
        """The learned text context, from the method's hyper-parameters."""
        hp = self.hp
        return TextPrompts(self.clip, self.backbone.tokenizer, int(hp["n_ctx"]), hp["ctx_init"],
                           bool(hp["csc"]), len(task.classes.names), hp["class_token_position"],
                           float(hp["init_std"])).to(task.device)

    def class_index(self, classes: ClassSet):
        """Which class-specific context each class uses (None: one shared context)."""
        if not self.prompt.csc:
            return None
        if classes.train_index is None:
            raise NotApplicable("class-specific contexts (csc) have no context for classes unseen in training")
        return classes.train_index

    def learned_text_features(self, classes: ClassSet, normalize: bool = True) -> torch.Tensor:
        """[C, d] learned-prompt text features (cached while evaluating)."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = ("text" if normalize else "raw text", tuple(classes.names), self.prompt.ctx._version)
        if cacheable and key in self._cache:
            return self._cache[key]
        feats = encode_prompts(self.prompt, self.prompt.bank(classes.names), class_index=self.class_index(classes),
                               normalize=normalize)
        if cacheable:
            self._cache = {key: feats}
        return feats


class VisualPromptMixin:
    """VPT-deep tokens on the frozen ViT."""

    vision_towers = ("vit",)

    def setup_visual(self, task, layers: int | None = None) -> None:
        """VPT-deep tokens in the first `layers` layers (all by default; DPT: those below its CAVPT layers)."""
        require_vit(task.backbone, self.name)
        n_layers, width = vit_dims(task.backbone.model.visual)
        self.vpt = VisualPrompts(n_layers if layers is None else layers, int(self.hp["n_prompts"]), width,
                                 float(self.hp["init_std"]), device=task.device)

    def prompted_features(self, images, extra=None):
        f, outs = encode_image(self.clip.visual, images, self.vpt.tokens, extra)
        return f / f.norm(dim=-1, keepdim=True), outs
