"""Tiny, randomly initialised members of four modern open_clip families (issue 28).

Each `fewclip-tiny-<family>` keeps the architecture flags of a real open_clip config and only
shrinks its sizes (image 32, patch 8, width 64, 2 layers, embed_dim 64), so tests and the demo
exercise the code paths of the real families without downloading anything:

- `fewclip-tiny-laion`: open_clip's own VisionTransformer + TextTransformer, GELU, CLIP BPE
  tokenizer (as `ViT-B-16`, which the LAION/DataComp tags load).
- `fewclip-tiny-metaclip`: the same with `quick_gelu: true` (as `ViT-B-16-quickgelu`, which the
  MetaCLIP and DFN tags load; their pretrained configs say `quick_gelu=True`).
- `fewclip-tiny-eva`: a timm EVA02 vision tower (`fewclip_tiny_eva02`: RoPE, SwiGLU, sub-LN,
  no fused qkv, as `eva02_base_patch16_clip_224`) whose timm head is the projection
  (`timm_pool: token`, `timm_proj: null`), and open_clip's text tower (as `EVA02-B-16`).
- `fewclip-tiny-siglip`: a timm ViT without class token pooled by a MAP head
  (`fewclip_tiny_siglip`, as `vit_base_patch16_siglip_224`; `timm_proj: none`), a bidirectional
  text tower pooled at the last token with a biased projection, LayerNorm eps 1e-6, a learned
  logit bias (-10 at init) and a SigLIP-like HF tokenizer shipped with the package (as
  `ViT-B-16-SigLIP`).

Config files. `model_configs/fewclip-tiny-<family>.json` are open_clip model configs plus a
`preprocess_cfg` key: the family's preprocessing (open_clip's pretrained.py `_pcfg` for
LAION/MetaCLIP/EVA, `_slpcfg` for SigLIP), read from the file (`preprocess_cfg(name)`). open_clip
must not see that key: `create_model` passes every top-level key of a model config to the model
class (`CLIP.__init__() got an unexpected keyword argument 'preprocess_cfg'`).
`register_tiny_families()` therefore registers, after the package's directory, a generated copy of
each such config without `preprocess_cfg` and with its tokenizer path resolved (below); open_clip
takes the last registered file of a name, so `open_clip.get_model_config(name)` is that copy.

Tokenizer path. open_clip hands `text_cfg.hf_tokenizer_name` to
`transformers.AutoTokenizer.from_pretrained`, which needs an absolute directory for a local
tokenizer. The JSON holds `fewclip-package:<path inside fewclip.models>`; the registered copy
holds the installed absolute path.

The SigLIP-like tokenizer (`tokenizers/fewclip-tiny-siglip/`) behaves as SigLIP's T5
sentencepiece tokenizer: Metaspace pieces (`▁word`), no start token, `</s>` (id 1) appended,
padded with `</s>` (pad id 1, as open_clip's `SigLipTokenizer` sets for the c4-en vocab),
`<pad>` id 0 and `<unk>` id 2 as in T5. Its Unigram vocabulary holds every word of the demo
datasets' class names and of the dataset / open_clip templates as one piece, plus the single
letters and digits, so other words split into letters as sentencepiece splits rare words;
characters outside the vocabulary become `<unk>`. `build_tiny_siglip_tokenizer()` regenerates
it (`python -m fewclip.models.families`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path

__all__ = [  # timm's register_model appends the tower entrypoints here
    "FAMILIES", "REFERENCE_CONFIGS", "register_tiny_families", "preprocess_cfg", "open_clip_config",
    "family_config_file", "resolve_package_path", "tokenizer_words", "build_tiny_siglip_tokenizer",
]

FAMILIES = ("fewclip-tiny-laion", "fewclip-tiny-metaclip", "fewclip-tiny-eva", "fewclip-tiny-siglip")
# The real open_clip config each tiny family mirrors (flags equal, sizes smaller).
REFERENCE_CONFIGS = {
    "fewclip-tiny-laion": "ViT-B-16",
    "fewclip-tiny-metaclip": "ViT-B-16-quickgelu",
    "fewclip-tiny-eva": "EVA02-B-16",
    "fewclip-tiny-siglip": "ViT-B-16-SigLIP",
}
PACKAGE_PREFIX = "fewclip-package:"  # hf_tokenizer_name relative to the installed fewclip.models
SIGLIP_TOKENIZER = "tokenizers/fewclip-tiny-siglip"
SIGLIP_CONTEXT_LENGTH = 16

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_INCEPTION = (0.5, 0.5, 0.5)  # open_clip.constants.INCEPTION_MEAN / _STD (SigLIP)

# timm pretrained cfgs of the tiny towers (read by timm.models.register_model from this module).
# No weights: the towers are always randomly initialised (open_clip passes pretrained=False).
default_cfgs = {
    "fewclip_tiny_eva02": dict(  # as eva02_base_patch16_clip_224's cfg, 32 px
        url="", num_classes=64, input_size=(3, 32, 32), pool_size=None, crop_pct=0.9,
        interpolation="bicubic", fixed_input_size=True, mean=_OPENAI_MEAN, std=_OPENAI_STD,
        first_conv="patch_embed.proj", classifier="head", license="mit",
    ),
    "fewclip_tiny_siglip": dict(  # as vit_base_patch16_siglip_224's cfg, 32 px
        url="", num_classes=0, input_size=(3, 32, 32), pool_size=None, crop_pct=0.9,
        interpolation="bicubic", fixed_input_size=True, mean=_INCEPTION, std=_INCEPTION,
        first_conv="patch_embed.proj", classifier="head", license="apache-2.0",
    ),
}

# ----------------------------------------------------------------------------- timm towers


def fewclip_tiny_eva02(pretrained: bool = False, **kwargs):
    """timm's Eva with the flags of `eva02_base_patch16_clip_224`, tiny: 32 px, patch 8, width 64,
    2 blocks, 2 heads. RoPE keeps the base model's position scale: its 14×14 grid is mapped onto
    a 16×16 reference grid (×8/7), so the 4×4 grid here onto a 32/7 one."""
    from timm.models import build_model_with_cfg
    from timm.models.eva import Eva, checkpoint_filter_fn

    model_args = dict(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        qkv_fused=False,
        mlp_ratio=4 * 2 / 3,
        swiglu_mlp=True,
        scale_mlp=True,
        scale_attn_inner=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(32 / 7, 32 / 7),
        global_pool=kwargs.pop("global_pool", "token"),
    )
    return build_model_with_cfg(Eva, "fewclip_tiny_eva02", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **dict(model_args, **kwargs))


def fewclip_tiny_siglip(pretrained: bool = False, **kwargs):
    """timm's VisionTransformer with the flags of `vit_base_patch16_siglip_224` (no class token,
    MAP attention pooling, timm's defaults otherwise: LayerNorm eps 1e-6, GELU, qkv bias), tiny:
    32 px, patch 8, width 64, 2 blocks, 2 heads."""
    from timm.models import build_model_with_cfg
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    model_args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                      class_token=False, global_pool="map")
    return build_model_with_cfg(VisionTransformer, "fewclip_tiny_siglip", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **dict(model_args, **kwargs))


def _register_timm_models() -> None:
    import timm
    from timm.models import register_model

    for fn in (fewclip_tiny_eva02, fewclip_tiny_siglip):
        if not timm.is_model(fn.__name__):  # re-registering warns in timm
            register_model(fn)


# ----------------------------------------------------------------------------- open_clip configs


def _package_dir() -> Path:
    return Path(str(resources.files("fewclip.models")))


def family_config_file(name: str) -> Path:
    return _package_dir() / "model_configs" / f"{name}.json"


def _family_files() -> dict[str, dict]:
    """The package's configs open_clip cannot take as they are (a `preprocess_cfg` key or a
    `fewclip-package:` path): name -> config."""
    out = {}
    for path in sorted((_package_dir() / "model_configs").glob("*.json")):
        cfg = json.loads(path.read_text())
        if _needs_resolving(cfg):
            out[path.stem] = cfg
    return out


def _needs_resolving(cfg: dict | None) -> bool:
    if not isinstance(cfg, dict):
        return False
    name = cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    return "preprocess_cfg" in cfg or (isinstance(name, str) and name.startswith(PACKAGE_PREFIX))


def resolve_package_path(value: str) -> str:
    """`fewclip-package:<rel>` -> the absolute path of <rel> inside the installed fewclip.models."""
    if isinstance(value, str) and value.startswith(PACKAGE_PREFIX):
        return str(_package_dir() / value[len(PACKAGE_PREFIX):])
    return value


def open_clip_config(cfg: dict) -> dict:
    """A package config as open_clip takes it: no `preprocess_cfg`, the tokenizer path absolute."""
    cfg = json.loads(json.dumps(cfg))
    cfg.pop("preprocess_cfg", None)
    text = cfg.get("text_cfg", {})
    if "hf_tokenizer_name" in text:
        text["hf_tokenizer_name"] = resolve_package_path(text["hf_tokenizer_name"])
    return cfg


def preprocess_cfg(name: str) -> dict | None:
    """The preprocessing of a package model in open_clip's PreprocessCfg keys (mean, std,
    interpolation, resize_mode): its config file's `preprocess_cfg`; None where it has none."""
    path = family_config_file(name)
    if not path.is_file():
        return None
    pp = json.loads(path.read_text()).get("preprocess_cfg")
    return json.loads(json.dumps(pp)) if pp is not None else None


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: concurrent processes never read a half-written config


def _config_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fewclip" / "open_clip_configs"


def _write_open_clip_configs(files: dict[str, dict]) -> Path:
    """Write each config as open_clip takes it to `<name>.json` in a directory named after the
    content (installs and versions never share one): in the user cache, else a temp dir."""
    texts = {name: json.dumps(open_clip_config(cfg), indent=2, sort_keys=True) + "\n"
             for name, cfg in files.items()}
    digest = hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:16]
    try:
        out = _config_cache_root() / digest
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            _write_if_changed(out / f"{name}.json", text)
    except OSError:  # no writable cache: a private temp dir for this process
        out = Path(tempfile.mkdtemp(prefix=f"fewclip-open_clip-configs-{digest}-"))
        for name, text in texts.items():
            (out / f"{name}.json").write_text(text)
    return out


_config_dir: Path | None = None


def register_tiny_families() -> None:
    """Register the tiny timm towers with timm and the package configs open_clip cannot read
    as they are (see the module docstring) with open_clip. Idempotent; called by
    `fewclip.models.backbone.register_package_models()` after it registers model_configs/. If the
    package directory was registered again after the copies, the copies are registered again."""
    global _config_dir
    import open_clip

    _register_timm_models()
    files = _family_files()
    if not files:
        return
    if _config_dir is None:
        _config_dir = _write_open_clip_configs(files)
    registered = [open_clip.get_model_config(name) for name in files]
    if any(cfg is None or _needs_resolving(cfg) for cfg in registered):
        open_clip.add_model_config(_config_dir)  # registered last: these copies win


# ----------------------------------------------------------------------------- SigLIP-like tokenizer


def tokenizer_words() -> list[str]:
    """Every word of the demo datasets' class names and of the dataset and open_clip templates,
    cleaned as SigLIP's tokenizer cleans text (open_clip's `canonicalize`)."""
    from open_clip.tokenizer import _clean_canonicalize
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    from ..data import demo
    from ..data.datasets import DATASETS

    texts = list(demo.COLOURS) + list(demo.SHAPES) + list(demo.TEXTURES) + list(demo.SCENES)
    texts += list(demo.HABITATS) + demo.shape_classnames()
    texts += [spec.template.format("") for spec in DATASETS.values()]
    texts += [t("") for t in (*OPENAI_IMAGENET_TEMPLATES, *SIMPLE_IMAGENET_TEMPLATES)]
    return sorted({w for text in texts for w in _clean_canonicalize(text).split()})


def build_tiny_siglip_tokenizer(out_dir: str | Path | None = None) -> Path:
    """Write the SigLIP-like tokenizer (tokenizer.json, tokenizer_config.json, ...) to `out_dir`
    (default: the package's tokenizers/fewclip-tiny-siglip); returns the directory. Its vocabulary
    size must equal `vocab_size` in model_configs/fewclip-tiny-siglip.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir) if out_dir is not None else _package_dir() / SIGLIP_TOKENIZER
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # T5's ids 0, 1, 2
    chars = [("▁", -10.0)] + [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    words = [("▁" + w, -5.0) for w in tokenizer_words()] + [("▁" + c, -5.0) for c, _ in chars[1:]]
    seen, vocab = set(), []
    for piece, score in specials + chars + words:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
        model_max_length=SIGLIP_CONTEXT_LENGTH, padding_side="right", truncation_side="right",
        clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    # the class name both transformers 4 and 5 resolve (5 writes its own `TokenizersBackend`)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("backend", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    path = build_tiny_siglip_tokenizer()
    size = len(json.loads((path / "tokenizer.json").read_text())["model"]["vocab"])
    print(f"wrote {path} (vocab_size {size})")
