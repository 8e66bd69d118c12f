"""The official implementations' outputs on a tiny random CLIP (tests/data/official/README.md).

Copied from the shared reference folder: `clip_tiny_vit.pt` (fp16-exact weights stored in fp16;
of the 49,408-row token embedding only the rows of the tokens that occur in the reference's
tokenized prompts are stored, the others are rebuilt as zeros: the official outputs never read
them, and the file stays 1.7 MB instead of 8), `clip_tiny_rn_visual.pt` (the ResNet's visual
tower; its text tower is the ViT file's) and one file per method. `backbone("vit" | "rn")` loads the tiny CLIP through fewclip's own loader
(`load_backbone` with a local checkpoint, QuickGELU from the model config)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data" / "official"
MODELS = {"vit": "fewclip-ref-vit", "rn": "fewclip-ref-rn"}


@functools.lru_cache(maxsize=None)
def ref(name: str) -> dict:
    """The stored outputs of one official case (`zeroshot`, `coop`, `cocoop`, `vpt`, `vlp`, `dpt`,
    `tip`, `lpclip`, `schedules`, `kgcoop`, `maple`, `promptsrc`)."""
    return torch.load(DATA / f"{name}.pt", map_location="cpu", weights_only=True)


def _vit_state() -> dict:
    sd = torch.load(DATA / "clip_tiny_vit.pt", weights_only=True)
    ids, rows = sd.pop("token_embedding.ids"), sd.pop("token_embedding.rows")
    emb = torch.zeros(sd.pop("token_embedding.shape").tolist(), dtype=rows.dtype)
    emb[ids] = rows
    return {**sd, "token_embedding.weight": emb}


@functools.lru_cache(maxsize=None)
def checkpoint(kind: str = "vit") -> Path:
    """A local checkpoint file of the tiny CLIP, written once per session into a temp folder
    (the ViT with its full token embedding; the ResNet's visual tower with the ViT's text tower),
    removed when the process exits."""
    vit = _vit_state()
    state = vit if kind == "vit" else {k: v for k, v in vit.items() if not k.startswith("visual.")} | torch.load(
        DATA / "clip_tiny_rn_visual.pt", weights_only=True)
    folder = Path(tempfile.mkdtemp(prefix="fewclip-ref-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / f"clip_tiny_{kind}.pt"
    torch.save(state, path)
    return path


def backbone(kind: str = "vit"):
    """fewclip's Backbone of the tiny CLIP, fp32, CPU, eval mode."""
    from fewclip.models.backbone import load_backbone

    return load_backbone(MODELS[kind], str(checkpoint(kind)), "cpu")


def close(a, b, tol: float = 1e-5, relative_to_max: bool = False) -> float:
    """max |a - b| (divided by max |b| when `relative_to_max`), asserted <= tol; returns it."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item() if a.numel() else 0.0
    if relative_to_max:
        err /= max(b.abs().max().item(), 1e-12)
    assert err <= tol, f"max difference {err:.3g} > {tol:g}"
    return err
