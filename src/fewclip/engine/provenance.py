"""Where and with what a cell ran (metrics.json `provenance`): versions, commit, weights and
manifest digests, the machine (CPU model, BLAS, GPU) and the scheduler's job."""

from __future__ import annotations

import functools
import os
import platform
import resource
import subprocess
from pathlib import Path

import torch

from .. import __version__
from ..io import sha256_json

def provenance(spec, manifest: dict, backbone_sha: str, device: torch.device) -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "fewclip_version": __version__,
        "git_commit": _git_commit(),
        "config_hash": sha256_json(spec.config_identity()),
        "manifest_sha256": manifest["sha256"],
        "backbone_sha256": backbone_sha,
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        # where it ran: the host, the SLURM job (None outside SLURM), the GPU the pool or SLURM gave it
        "host": platform.node(),
        **machine_fingerprint(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_fingerprint() -> dict:
    """What decides the floating-point kernels: results are byte-identical only for the same
    CPU model (and BLAS), GPU and library versions."""
    return {"cpu": _cpu_model(), "blas": _blas()}


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown'} ({platform.machine()})"


@functools.lru_cache(maxsize=1)
def _blas() -> str:
    try:
        config = torch.__config__.show()
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        return "unknown"
    found = [line.split("=", 1)[1].strip().rstrip(",") for line in config.replace(", ", "\n").splitlines()
             if line.strip().startswith(("BLAS_INFO=", "LAPACK_INFO="))]
    extra = [w for w in ("MKL", "OpenBLAS", "oneDNN") if f"{w}" in config and "BLAS_INFO" not in config]
    return ", ".join(dict.fromkeys(found + extra)) or "unknown"
