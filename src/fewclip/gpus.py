"""A lock-file GPU pool: several GPU jobs on one workstation, each on its own device.

Snakemake counts GPUs (`--resources gpu=N` runs at most N `gpu=1` jobs at once) but assigns
no device ids. A job that needs a GPU calls `claim()` before torch initialises CUDA: it
takes an exclusive `fcntl.flock` on one file per device under the pool folder and sets
`CUDA_VISIBLE_DEVICES` to that device only. The kernel drops the lock when the process
exits, crash included, so a killed job never leaks its device.

Where the ids come from, first match wins:
- `FEWCLIP_GPUS="0,1"`: these ids (also the way to test the pool without GPUs);
- inside a SLURM job (`SLURM_JOB_ID` set): SLURM already gave the job its own devices, the
  pool stays out of the way;
- `CUDA_VISIBLE_DEVICES="2,3"`: these ids;
- the NVIDIA driver's device list (`/proc/driver/nvidia/gpus`, else `nvidia-smi -L`).
No ids → nothing to claim, the job runs on the CPU (or what `--device` says).

The pool folder is `$FEWCLIP_GPU_POOL`, else `.fewclip/gpus` under the working directory
(the Snakemake working directory, so every job of one workflow shares it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import FewclipError

DEFAULT_POOL = ".fewclip/gpus"


class GpuPoolError(FewclipError):
    """No device could be claimed in time."""


@dataclass
class Claim:
    """A held device: `gpu` is the id (as the driver numbers it), `fd` keeps the lock."""

    gpu: str | None
    source: str
    fd: int | None = None
    path: Path | None = None

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_held: Claim | None = None  # the claim of this process (kept alive until exit)


def pool_dir() -> Path:
    return Path(os.environ.get("FEWCLIP_GPU_POOL") or DEFAULT_POOL)


def _split_ids(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def candidate_ids() -> tuple[list[str], str]:
    """(device ids the pool may hand out, where they came from)."""
    env = os.environ
    if env.get("FEWCLIP_GPUS") is not None:
        return _split_ids(env["FEWCLIP_GPUS"]), "FEWCLIP_GPUS"
    if env.get("SLURM_JOB_ID"):
        # SLURM confines the job to its GPUs (CUDA_VISIBLE_DEVICES); a pool on a shared file
        # system would also couple jobs on different nodes.
        return [], "slurm"
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return _split_ids(env["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES"
    return _driver_ids(), "driver"


def _driver_ids() -> list[str]:
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return [str(i) for i in range(len(list(proc.iterdir())))]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
    return fd


def acquire(ids: list[str], pool: Path | None = None, timeout: float = 24 * 3600,
            poll: float = 0.2) -> tuple[str, int, Path]:
    """Lock the first free id of `ids` (waits while all are held); returns (id, fd, lock file)."""
    if not ids:
        raise GpuPoolError("the GPU pool has no device ids")
    pool = pool or pool_dir()
    pool.mkdir(parents=True, exist_ok=True)
    # Start at a per-process offset so simultaneous starters don't all race for id 0.
    start = os.getpid() % len(ids)
    order = ids[start:] + ids[:start]
    deadline = time.monotonic() + timeout
    while True:
        for gpu in order:
            path = pool / f"gpu{gpu}.lock"
            fd = _try_lock(path)
            if fd is not None:
                return gpu, fd, path
        if time.monotonic() > deadline:
            raise GpuPoolError(f"no free GPU among {','.join(ids)} in {pool} after {timeout:.0f} s")
        time.sleep(poll)


def claim(device: str = "auto", log=sys.stderr) -> Claim:
    """Give this process one GPU of the pool and pin CUDA_VISIBLE_DEVICES to it.

    Call before anything initialises CUDA. `device` is the job's --device: `cpu` and an
    explicit `cuda:N` (the user chose) claim nothing. The claim lasts until the process exits.
    """
    global _held
    if _held is not None:
        return _held
    if device == "cpu" or (device.startswith("cuda:")):
        _held = Claim(None, f"--device {device}")
        return _held
    ids, source = candidate_ids()
    if not ids:
        _held = Claim(None, source if source == "slurm" else "no GPU visible")
        if source == "slurm":
            print(f"fewclip: GPUs from SLURM: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", file=log)
        return _held
    gpu, fd, path = acquire(ids)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _held = Claim(gpu, source, fd, path)
    print(f"fewclip: GPU {gpu} claimed from the pool {path.parent} ({source}); CUDA_VISIBLE_DEVICES={gpu}",
          file=log, flush=True)
    return _held
