"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts, the vision prompts of every layer coupled
to that layer's text prompts (baselines-facts §3; muzairkhattak/multimodal-prompt-learning
`trainers/maple.py` `MultiModalPromptLearner`, `clip/model.py` `ResidualAttentionBlock_MaPLe`,
`VisionTransformer_MaPLe`). The deep-prompt machinery is `_deep.py`'s.

Learned (official name → fewclip attribute):
  prompt_learner.ctx                             → prompt.ctx       [n_ctx, text width]
  prompt_learner.proj                            → proj             Linear(text width → vision width)
  prompt_learner.compound_prompts_text.{i}       → deep_text.{i}    [n_ctx, text width], i < depth − 1
  prompt_learner.compound_prompt_projections.{i} → deep_proj.{i}    Linear(text width → vision width)
- text: [SOS][a photo](learned) of a {class} . [EOT] (N_CTX 2 of CTX_INIT 'a photo of a': only the
  first two tokens are learned, 'of a' stays frozen in every prompt); before text layer i+1 the
  context's hidden states are replaced by deep_text[i];
- vision: proj(ctx) is appended after the patch tokens, without a positional embedding, before
  ln_pre (the 'unpositioned' shallow vision prompt); before vision layer i+1 the last n_ctx tokens
  are replaced by deep_proj[i](deep_text[i]); vision layers past the depth carry the prompt outputs.
- loss: CE of s·cos; the model of the last epoch is tested (`--load-epoch` = MAX_EPOCH).

Settings per protocol (the official scripts): base-to-new `vit_b16_c2_ep5_batch4_2ctx` (16 shots,
depth 9, SGD lr 0.0035, 5 epochs, batch 4, cosine, 1 warm-up epoch at 1e-5); cross-dataset and DG
from the ImageNet model `vit_b16_c2_ep5_batch4_2ctx_cross_datasets` (depth 3, lr 0.0026, 2 epochs).
The repository ships no few-shot config (issues #91, PromptSRC#21): the few-shot protocol takes the
base-to-new one (`defaults_for`), and config/paper.yaml does not run it.

Quirks of the official code, and what the presets do with them:
- the widths 512 (text) and 768 (vision) are hard-coded, so only ViT-B/16-sized towers build; here
  they are the model's own (the same numbers on ViT-B/16);
- the deep projections are deep copies of ONE initialised Linear, so all start identical: both
  presets do the same;
- precision: `proj` is cast to half and every inserted prompt `.half()` even under PREC fp32, which
  therefore fails; the shipped PREC fp16 trains a half CLIP, half ctx and proj, fp32 deep prompts and
  projections (cast where inserted): `official` = that (`precision: fp16`, `official_fp32`).
`clean` changes only the precision (fp32 master weights with bf16 autocast on a GPU, fp32 on a CPU):
MaPLe selects nothing on test data and its scripts run seeds 1-3 as fewclip's grid does."""

from __future__ import annotations

import copy

from torch import nn

from . import register
from ._deep import DEEP_HPARAMS, DeepPromptMethod, deep_prompts
from .base import HP, train_hparams


@register
class MaPLe(DeepPromptMethod):
    name = "maple"
    resources = {"mem_mb": 20000, "runtime": 60}  # one cell, paper GPUs (workflow scales for ImageNet)
    hparams = {**DEEP_HPARAMS, "n_ctx": HP(2, min=1), "prompt_depth": HP(9, min=1),
               **train_hparams(epochs=5, lr=0.0035, batch_size=4, warmup_epochs=1)}

    @classmethod
    def defaults_for(cls, dataset, shots, preset, protocol="fewshot"):
        if protocol == "dg":  # xd_train_maple.sh: vit_b16_c2_ep5_batch4_2ctx_cross_datasets
            return {"prompt_depth": 3, "lr": 0.0026, "epochs": 2}
        return {}  # base2new_train_maple.sh: vit_b16_c2_ep5_batch4_2ctx (no few-shot config ships)

    def setup(self, task):
        self.setup_context(task)
        t_layers, t_width, v_layers, v_width = self.layers()
        depth = min(int(self.hp["prompt_depth"]), max(t_layers, v_layers))
        n, device = self.prompt.n_ctx, task.device
        self.proj = nn.Linear(t_width, v_width).to(device)
        self.deep_text = deep_prompts(depth - 1, n, t_width, float(self.hp["init_std"]), device)
        one = nn.Linear(t_width, v_width).to(device)
        self.deep_proj = nn.ModuleList(copy.deepcopy(one) for _ in range(depth - 1))
        self.text_layers, self.vision_layers = t_layers, v_layers
        return {"n_ctx": n, "prompt_depth_used": {"text": min(depth, t_layers), "vision": min(depth, v_layers)}}

    def text_layer_prompts(self):
        return [None] + list(self.deep_text)[: self.text_layers - 1]

    def vision_prompts(self):
        deep = [proj(t) for proj, t in zip(list(self.deep_proj)[: self.vision_layers - 1], self.deep_text)]
        return self.proj(self.prompt.ctx), deep

    def official_fp32(self):
        return [*self.deep_text, *self.deep_proj.parameters()]
