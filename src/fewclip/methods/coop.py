"""CoOp: learned context vectors in the text prompt (SPEC §2, official-code-facts §1.1).

Logits s·f·g([v₁..v_M, class])ᵀ, on the frozen CLIP that `_prompt.PromptMethod` holds."""

from __future__ import annotations

from . import register
from ._prompt import COCOOP_BASELINE, SGD_HPARAMS, TEXT_CONTEXT_HPARAMS, PromptMethod, coop_epochs
from .base import ClassSet, train_hparams


@register
class CoOp(PromptMethod):
    name = "coop"
    resources = {"mem_mb": 16000, "runtime": 120}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {**TEXT_CONTEXT_HPARAMS, **train_hparams(epochs=200, lr=0.002, batch_size=32, warmup_epochs=1),
               **SGD_HPARAMS}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        if protocol in ("base2new", "dg"):
            return {**COCOOP_BASELINE, "epochs": 50 if dataset == "imagenet" else 200}
        return {"epochs": coop_epochs(dataset, shots)}

    def setup(self, task):
        self.attach(task)
        self.prompt = self.text_prompts(task)
        return {"n_ctx": self.prompt.n_ctx}

    def text_features(self, classes: ClassSet):
        return self.learned_text_features(classes)

    def logits(self, x, classes: ClassSet):
        f = self.image_features(x)
        return classes.clip_logits(f, self.text_features(classes))
