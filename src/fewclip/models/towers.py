"""What differs between open_clip's model families, read from the model itself (issue 28).

- **Text tower.** open_clip's `CLIP` keeps its text transformer's parts on the model itself
  (`token_embedding`, `transformer`, `ln_final`, ...); `CustomTextCLIP` (SigLIP, EVA02, ...) keeps
  them in `model.text`, a `TextTransformer` that names its pooling `pool_type` and `eos_id`.
  `text_tower` gives both under CLIP's names, so the prompt learners read one interface. Whether
  the tower is causal (`attn_mask`) and where it pools (`text_pool_type`: argmax / eos / first /
  last) come from the tower: SigLIP's is bidirectional and pools the last of its 64 positions.
- **Tokenizer.** Where the text starts (`prefix_len`: 1 after CLIP's start-of-text token, 0 for
  SigLIP's tokenizer, which has none) and how many tokens a word takes (`word_token_count`), read
  from the model's own tokenizer rather than from CLIP's conventions.
- **Vision tower.** `vision_tower_kind` tells, from open_clip's model config alone (no weights),
  whether the image tower is open_clip's own VisionTransformer ("vit": its token sequence is what
  visual prompts and LoRA hook into), a ModifiedResNet ("resnet") or a timm model ("timm", e.g.
  SigLIP's and EVA02's towers), so the planner refuses a cell before any job.
"""

from __future__ import annotations

import functools

from ..errors import FewclipError

VISION_KINDS = {"vit": "open_clip's VisionTransformer", "resnet": "a ModifiedResNet", "timm": "a timm model"}


class TextTowerView:
    """A `TextTransformer` (CustomTextCLIP's `model.text`) under CLIP's attribute names."""

    def __init__(self, text):
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise FewclipError(
                f"text tower {type(text).__name__} appends a class token or masks padding (CoCa-style); fewclip's "
                "prompt learners insert their context into the token sequence and support neither")
        self.text = text

    def __getattr__(self, name):
        if name == "text_pool_type":
            return self.text.pool_type
        if name == "text_eos_id":
            return self.text.eos_id
        return getattr(self.text, name)


def text_tower(model):
    """The model's text transformer parts under CLIP's names: the model itself for open_clip's
    `CLIP`, a view of `model.text` for `CustomTextCLIP`."""
    if hasattr(model, "token_embedding"):
        return model
    if hasattr(model, "text") and hasattr(model.text, "token_embedding"):
        return TextTowerView(model.text)
    raise FewclipError(f"{type(model).__name__} has no open_clip text transformer (token embeddings); "
                       "prompt learning needs one")


def prefix_len(tokenizer) -> int:
    """Tokens the tokenizer puts before the text: 1 for CLIP's start-of-text, 0 for SigLIP's.
    Found where "X" and "X X" first differ (their common tokens before it are the prefix)."""
    one, two = tokenizer(["X", "X X"]).long()
    differ = (one != two).nonzero()
    if len(differ) == 0:
        raise FewclipError("cannot locate the text in the tokenizer's output ('X' and 'X X' tokenize the same)")
    return int(differ[0]) - 1


def word_token_count(tokenizer, text: str) -> int:
    """Tokens of `text` alone (no start/end/pad tokens), after the tokenizer's own cleaning."""
    clean = getattr(tokenizer, "clean_fn", None)
    cleaned = clean(text) if clean else text
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "encode"):  # open_clip's HFTokenizer
        return len(tokenizer.tokenizer.encode(cleaned, add_special_tokens=False))
    if hasattr(tokenizer, "encode"):  # open_clip's SimpleTokenizer (CLIP's BPE)
        return len(tokenizer.encode(cleaned))
    raise FewclipError(f"tokenizer {type(tokenizer).__name__} has no encode(): cannot count the tokens of a word")


def config_folders() -> list:
    """fewclip's model_configs folder and open_clip's, found without importing open_clip."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")
    folders = [Path(__file__).resolve().parent / "model_configs"]
    return folders + ([Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else [])


@functools.lru_cache(maxsize=None)
def model_config(model_name: str) -> dict | None:
    """The model config of `model_name` as open_clip reads it, from fewclip's model_configs folder or
    open_clip's, without importing open_clip (planning a grid stays free of its import); None when
    neither folder has it (an hf-hub model: open_clip resolves it itself)."""
    import json

    for folder in config_folders():
        path = folder / f"{model_name}.json"
        if path.is_file():
            cfg = json.loads(path.read_text())
            return cfg.get("model_cfg", cfg)  # fewclip.models.families' {"model_cfg", "preprocess_cfg"} layout
    return None


@functools.lru_cache(maxsize=None)
def vision_tower_kind(model_name: str) -> str:
    """"vit", "resnet" or "timm", from open_clip's model config of `model_name` (no weights)."""
    cfg = model_config(model_name)
    if cfg is None:
        from .backbone import register_package_models

        register_package_models()
        import open_clip

        cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise FewclipError(f"unknown open_clip model '{model_name}'")
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return "timm"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "resnet"
    return "vit"

