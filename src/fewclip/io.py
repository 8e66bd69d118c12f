"""Small file helpers: atomic writes, hashing, JSON. Every artifact goes through these."""

from __future__ import annotations

import contextlib
import functools
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import FewclipError, describe_load_error


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# What torch.save raises when the disk fills (a RuntimeError, not an OSError).
_WRITE_FAILED = ("file write failed", "No space left", "PytorchStreamWriter failed", "unexpected pos")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A reader therefore sees either the old file, the complete new file, or nothing. The file
    gets the permissions of an ordinary new file (0666 minus the user's umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise _disk_full(path) from err
        raise
    except RuntimeError as err:
        tmp.unlink(missing_ok=True)
        if any(s in str(err) for s in _WRITE_FAILED):
            raise _disk_full(path) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _disk_full(path: Path) -> FewclipError:
    return FewclipError(
        f"disk full while writing {path}: nothing was written there (a previous file is kept); "
        "free space (or point --out / results/ at a larger disk) and rerun"
    )


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if path.is_dir():
        raise FewclipError(f"{what} {path} is a folder, not a file; pass the JSON file itself")
    if not path.is_file():
        raise FewclipError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise FewclipError(f"{what} {path} is not a text file (binary content at byte {err.start}); "
                           "replace it with a correct copy") from err
    except json.JSONDecodeError as err:
        raise FewclipError(
            f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "replace it with a correct copy"
        ) from err


def torch_load(path: str | os.PathLike, what: str, fix: str) -> Any:
    """`torch.load(weights_only=True)` with one clear message for a missing, truncated or foreign file."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FewclipError(f"{what} not found: {path}; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError, TypeError,
            AttributeError, IndexError, UnicodeDecodeError) as err:
        raise FewclipError(f"cannot read {what} {path}: {describe_load_error(err)}; {fix}") from err


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a (large) weights file, computed once per process while its size and mtime stay
    the same: the feature store's source and the loaded backbone name the same hash."""
    path = Path(path).resolve()
    st = path.stat()
    return _cached_sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_jsonable).encode()).hexdigest()
