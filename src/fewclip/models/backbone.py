"""Backbones through open_clip: a model name plus a pretrained tag, a local checkpoint, or `none`.

`none` gives a random initialisation drawn under a fixed seed, so features of a random model
are reproducible. The package's tiny models (`fewclip-tiny-vit`, `fewclip-tiny-rn`) are
registered with open_clip on import of this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import ConfigError, FewclipError
from ..io import checkpoint_sha256

INIT_SEED = 0  # random-init backbones are drawn under this seed
LOGIT_SCALE = 100.0  # SPEC §1: exp of OpenAI CLIP's learned temperature

_registered = False


def register_package_models() -> None:
    """Make the package's model configs (fewclip-tiny-*) known to open_clip."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(Path(str(resources.files("fewclip.models") / "model_configs")))
    from .families import register_tiny_families

    register_tiny_families()  # fewclip-tiny-{laion,metaclip,eva,siglip}: their timm towers and tokenizer path
    _registered = True


@dataclass(frozen=True)
class Preprocess:
    """A model's image preprocessing: the fields of open_clip's `preprocess_cfg` fewclip applies
    (fewclip.data.transforms). `resize_mode`: 'shortest' (shorter side to `size` + center crop,
    CLIP's), 'squash' (both sides to `size`, no crop, SigLIP's) or 'longest' (longer side + pad);
    `interpolation`: 'bicubic' or 'bilinear'."""

    size: int
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self):
        from ..data.transforms import INTERPOLATIONS, RESIZE_MODES

        size = self.size
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ConfigError(f"non-square model input {tuple(size)}: fewclip's transforms make square inputs")
            size = size[0]
        object.__setattr__(self, "size", int(size))
        for key in ("mean", "std"):
            v = getattr(self, key)
            v = tuple(float(x) for x in v) if isinstance(v, (tuple, list)) else (float(v),) * 3
            object.__setattr__(self, key, v)
        if self.interpolation not in INTERPOLATIONS or self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"unsupported preprocessing: interpolation '{self.interpolation}' (known: "
                              f"{', '.join(INTERPOLATIONS)}), resize_mode '{self.resize_mode}' (known: "
                              f"{', '.join(RESIZE_MODES)})")

    @classmethod
    def from_cfg(cls, cfg: dict, size) -> "Preprocess":
        """From an open_clip `preprocess_cfg` (or a pretrained tag's config); missing keys take
        open_clip's defaults (CLIP's mean/std, bicubic, shortest)."""
        from ..data.transforms import CLIP_MEAN, CLIP_STD

        def get(key, default):
            return default if cfg.get(key) is None else cfg[key]

        return cls(size, get("mean", CLIP_MEAN), get("std", CLIP_STD), get("interpolation", "bicubic"),
                   get("resize_mode", "shortest"))

    def as_dict(self) -> dict:
        """JSON-ready (lists, not tuples: equal after a round trip through store.json)."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}


def _is_tag(pretrained: str | None) -> bool:
    return pretrained not in (None, "", "none") and not is_local_file(pretrained)


def _package_config(name: str) -> dict | None:
    """A fewclip model's config file (model_configs/{name}.json) as it is, read without importing
    open_clip: a model config, or open_clip_config.json's layout {"model_cfg", "preprocess_cfg"}
    (fewclip.models.families); either way `preprocess_cfg` is a top-level key."""
    import json

    path = resources.files("fewclip.models") / "model_configs" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _model_config(name: str) -> dict | None:
    cfg = _package_config(name)
    if cfg is None:
        from .towers import model_config

        cfg = model_config(name)  # open_clip's own config file, read without importing open_clip
    if cfg is None:
        register_package_models()
        import open_clip

        cfg = open_clip.get_model_config(name)
    return cfg


def agreed_tag_preprocess(name: str) -> dict:
    """The preprocessing keys (mean, std, interpolation, resize_mode) on which every pretrained tag
    open_clip lists for model `name` agrees: what a local checkpoint of that model was most
    likely trained with. Empty for a model without tags (fewclip's own models have none)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfgs = [merge_preprocess_dict(PreprocessCfg(), get_pretrained_cfg(m, t))
            for m, t in open_clip.list_pretrained() if m == name]
    agreed = {}
    for key in ("mean", "std", "interpolation", "resize_mode"):
        values = {tuple(c[key]) if isinstance(c[key], (tuple, list)) else c[key] for c in cfgs}
        if len(values) == 1:
            agreed[key] = cfgs[0][key]
    return agreed


def preprocess_override(name: str, pretrained: str | None, model_cfg: dict | None = None) -> dict | None:
    """The `force_preprocess_cfg` load_backbone hands open_clip. None for a pretrained tag (open_clip
    applies the tag's own). For a random init or a local file, where open_clip would fall back to
    OpenAI's defaults: the model config's own `preprocess_cfg` key, else (a local file) what all
    of open_clip's tags of the model agree on (`agreed_tag_preprocess`), else None (the defaults)."""
    if _is_tag(pretrained):
        return None
    cfg = model_cfg if model_cfg is not None else (_model_config(name) or {})
    if cfg.get("preprocess_cfg"):
        return dict(cfg["preprocess_cfg"])
    if pretrained not in (None, "", "none") and _package_config(name) is None:
        return agreed_tag_preprocess(name) or None
    return None


def expected_preprocess(name: str, pretrained: str | None) -> Preprocess:
    """What `load_backbone(name, pretrained).preprocess` gives, without creating the model (and,
    for fewclip's own models, without importing open_clip): the feature store records it before
    it loads anything. A tag's preprocessing needs open_clip's table; a local file need not exist."""
    cfg = _model_config(name)
    if cfg is None:
        raise ConfigError(f"unknown backbone '{name}' (no open_clip or fewclip model config of that name)")
    size = cfg.get("model_cfg", cfg).get("vision_cfg", {}).get("image_size", 224)
    if _is_tag(pretrained):
        from open_clip.pretrained import get_pretrained_cfg

        return Preprocess.from_cfg(get_pretrained_cfg(name, pretrained), size)  # open_clip: the tower's size
    forced = preprocess_override(name, pretrained, cfg) or {}
    return Preprocess.from_cfg(forced, forced.get("size") or size)


@dataclass
class Backbone:
    model: torch.nn.Module  # open_clip CLIP
    name: str
    pretrained: str
    sha256: str  # checkpoint hash, or "random-init-seed0"
    tokenizer: object
    device: torch.device

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def embed_dim(self) -> int:
        """The joint embedding's width (open_clip's VisionTransformer and ResNet say it; a timm tower
        does not, so it is read from the text projection, which maps into the same space)."""
        dim = getattr(self.model.visual, "output_dim", None)
        if dim is not None:
            return int(dim)
        proj = self.text_tower.text_projection
        if proj is None:
            return int(self.text_tower.ln_final.weight.shape[0])
        return int(proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1])

    @property
    def preprocess(self) -> Preprocess:
        """The model's own preprocessing: `model.visual.preprocess_cfg`, which open_clip sets on every
        model it creates (CLIP's values for a model without one)."""
        cfg = getattr(self.model.visual, "preprocess_cfg", None) or {}
        return Preprocess.from_cfg(cfg, cfg.get("size") or self.image_size)

    @property
    def logit_scale(self) -> float:
        """The model's own learned temperature, exp(logit_scale) (100 on OpenAI's CLIP)."""
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> float:
        """SigLIP's learned bias, added after scaling; 0 for models without one."""
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().float())

    @property
    def openai_weights(self) -> bool:
        """OpenAI's released weights: the `openai` tag, or a local file of an OpenAI architecture."""
        return self.pretrained == "openai" or (is_local_file(self.pretrained) and needs_quick_gelu(self.name, self.pretrained))

    @property
    def text_tower(self):
        """The text transformer's parts under CLIP's attribute names (`towers.text_tower`)."""
        from .towers import text_tower

        return text_tower(self.model)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text features, fp32 on the backbone's device."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens).float())
        feats = torch.cat(out)
        return feats / feats.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """fp32 image features, L2-normalised unless `normalize=False` (the raw encoder output)."""
        feats = self.model.encode_image(images.to(self.device)).float()
        return feats / feats.norm(dim=-1, keepdim=True) if normalize else feats


def needs_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether weights `pretrained` of model `name` were trained with QuickGELU (SPEC §1).

    open_clip builds GELU towers for `create_model('ViT-B-16', pretrained='openai')` and only
    warns, which silently changes every feature. QuickGELU is forced for: the `openai` tag; any tag
    whose open_clip pretrained config says `quick_gelu`; a local checkpoint of an architecture
    that OpenAI released (RN50, ViT-B-16, ...: the files of OpenAI's `clip` package or state dicts
    saved from its model). Model configs that set `quick_gelu` themselves (the `-quickgelu` names,
    fewclip's tiny models) keep it."""
    from open_clip.pretrained import get_pretrained_cfg

    if pretrained in (None, "", "none"):
        return False
    if is_local_file(pretrained):
        return bool(get_pretrained_cfg(name, "openai"))
    if pretrained == "openai":
        return True
    return bool(get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def is_local_file(pretrained: str) -> bool:
    return os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def load_backbone(name: str, pretrained: str = "openai", device: str | torch.device = "cpu",
                  cache_dir: str | None = None) -> Backbone:
    """Create an open_clip model in eval mode with its weights; errors are one clear message.
    Loading never draws from the caller's random stream (open_clip initialises randomly first):
    a cell gives the same result whether it loads the backbone or finds it cached."""
    register_package_models()
    import open_clip

    if name not in open_clip.list_models():
        raise ConfigError(
            f"unknown backbone '{name}'. Valid open_clip model names include: "
            + ", ".join(m for m in open_clip.list_models() if m.startswith(("RN", "ViT-B", "ViT-L", "fewclip")))
            + " (full list: python -c 'import open_clip; print(open_clip.list_models())')"
        )
    device = torch.device(device)
    if pretrained in ("none", "", None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model = open_clip.create_model(name, pretrained=None, device="cpu",
                                           force_preprocess_cfg=preprocess_override(name, "none"))
        sha = f"random-init-seed{INIT_SEED}"
        pretrained = "none"
    elif is_local_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FewclipError(f"checkpoint file not found: {path}; pass an existing file to --pretrained")
        try:
            with torch.random.fork_rng(devices=[]):  # the random init before the weights: not the caller's stream
                model = open_clip.create_model(
                    name, pretrained=str(path), device="cpu", force_quick_gelu=needs_quick_gelu(name, str(path)),
                    force_preprocess_cfg=preprocess_override(name, str(path)),
                )
        except RuntimeError as err:
            raise FewclipError(
                f"checkpoint {path} does not fit backbone '{name}': {str(err).splitlines()[0]}; "
                "pass the model name the checkpoint was saved from"
            ) from err
        sha = checkpoint_sha256(path)
        pretrained = str(path)
    else:
        tags = [t for m, t in open_clip.list_pretrained() if m == name]
        if pretrained not in tags:
            raise ConfigError(
                f"unknown pretrained tag '{pretrained}' for backbone '{name}'; valid tags: {tags or 'none'}, "
                "or a local checkpoint file, or 'none' for a random init"
            )
        try:
            with torch.random.fork_rng(devices=[]):
                model = open_clip.create_model(name, pretrained=pretrained, device="cpu", cache_dir=cache_dir,
                                               force_quick_gelu=needs_quick_gelu(name, pretrained))
        except RuntimeError as err:
            where = cache_dir or os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub (or ~/.cache/clip)"
            raise FewclipError(
                f"weights '{pretrained}' for '{name}' are not available offline and could not be downloaded "
                f"(expected in the open_clip cache {where}). Fix: run once with internet access to fill the "
                "cache, or download the checkpoint yourself and pass its path to --pretrained"
            ) from err
        sha = _cached_checkpoint_sha(name, pretrained, cache_dir)
    model = model.to(device).eval()
    return Backbone(model, name, pretrained, sha, open_clip.get_tokenizer(name), device)


def _cached_checkpoint_sha(name: str, tag: str, cache_dir: str | None) -> str:
    """The pretrained weights' identity: open_clip's published hash where it has one."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    return cfg.get("url", "").split("/")[-2] if "url" in cfg else f"{cfg.get('hf_hub', name)}:{tag}"
