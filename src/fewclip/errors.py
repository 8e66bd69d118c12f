"""User-facing errors: one clear message (what, where, how to fix) and a non-zero exit.

`explain(err)` is the one error boundary's dictionary (used by `fewclip.cli`): it turns the
failures a user can cause (a file that cannot be written, a corrupt or truncated file, a
malformed store) into such a message. Errors it does not know stay tracebacks: they are bugs.
`describe_load_error` says what a failed `torch.load` means (`fewclip.io.torch_load` uses it).
This module imports nothing of fewclip: every other module may import it.
"""

from __future__ import annotations

import errno
import os


class FewclipError(Exception):
    """An error the user can cause and fix (bad data, bad config, missing weights).

    Raised in a DataLoader worker, it comes back with the same one-line message: torch re-raises
    a worker's exception as `type(err)(text)`, `text` holding the worker's traceback, and the
    class keeps only the original message."""

    exit_code = 2

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_worker_message(type(self), args[0]),)
        super().__init__(*args)


def _worker_message(cls: type, text: str) -> str:
    """The original message of an exception of class `cls` that torch re-raised from a DataLoader
    worker ('Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...'); any other
    `text` unchanged."""
    first, _, rest = text.partition("\n")
    if not (first.startswith(f"Caught {cls.__name__} ") and "DataLoader worker" in first):
        return text
    last = rest.rsplit("Traceback (most recent call last):\n", 1)[-1].split("\n")
    head = f"{cls.__module__}.{cls.__qualname__}: "
    for i, line in enumerate(last):
        if line.startswith(head):  # the frames above it are indented
            return "\n".join([line[len(head):], *last[i + 1:]]).rstrip("\n")
    return text


class DataError(FewclipError):
    """Missing or malformed dataset files."""


class ConfigError(FewclipError):
    """Unknown names or bad values in a config or on the command line."""


class RunDirError(FewclipError):
    """The run directory belongs to another cell or is being written by another process."""


_OS_HINTS = {
    errno.EACCES: "check the permissions of that path, or choose another --out",
    errno.EPERM: "check the permissions of that path, or choose another --out",
    errno.EROFS: "that file system is read-only; choose another --out",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path or remove the file",
    errno.EISDIR: "a folder stands where a file is expected; choose another path or remove the folder",
    errno.ENOSPC: "the disk is full: free space (or point --out / results/ at a larger disk) and rerun",
    errno.EDQUOT: "the disk quota is exceeded: free space and rerun",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another path",
}


def _where(tb) -> str | None:
    """The file the failing code was reading: the innermost frame's local `path` (or similar)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("path", "checkpoint", "file", "filename"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return str(value)
    return None


def explain(err: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error a user can cause and fix; None for a bug."""
    import pickle

    if isinstance(err, FewclipError):
        msg = str(err)
        cause = err.__cause__
        if cause is not None and _is_load_error(cause):  # say what torch's raw text means
            raw = str(cause)
            if raw and raw in msg:
                msg = msg.replace(raw, describe_load_error(cause))
            elif not raw and "()" in msg:
                msg = msg.replace("()", f"({describe_load_error(cause)})", 1)
        return _no_torch_advice(msg), err.exit_code
    if isinstance(err, OSError) and err.errno is not None:
        # a rename (atomic write) names its temporary file first: the destination is what matters
        where = str(err.filename2 or err.filename or _where(err.__traceback__) or "?")
        what = err.strerror or os.strerror(err.errno)
        hint = _OS_HINTS.get(err.errno, "check that path and rerun")
        if err.errno == errno.EEXIST and os.path.exists(where) and not os.path.isdir(where):
            what, hint = "a file stands where a folder is needed", "choose another path or remove that file"
        return f"{what}: {where}; {hint}", 2
    where = _where(err.__traceback__)
    at = f" {where}" if where else ""
    if isinstance(err, (pickle.UnpicklingError, EOFError)) or (isinstance(err, RuntimeError) and _is_load_error(err)):
        return (f"cannot read{at or ' a saved file'}: {describe_load_error(err)}; replace it with a correct copy, "
                "or delete it and rerun the step that writes it (`fewclip encode`, `fewclip run`)"), 2
    if _is_arrow_error(err):
        return (f"cannot read{at or ' a parquet file'}: it is not a valid parquet file (truncated or corrupt: "
                f"{_first_line(err)}); delete it and rerun the step that writes it"), 2
    if isinstance(err, UnicodeDecodeError):
        return (f"cannot read{at or ' a file'}: it should be text but holds binary data; replace it with a "
                "correct copy or delete it and rerun the step that writes it"), 2
    if isinstance(err, (KeyError, IndexError)):
        kind = "missing key" if isinstance(err, KeyError) else "index out of range"
        return (f"malformed file{at or ''}: {kind} {_first_line(err)}; the file does not have the layout "
                "fewclip writes: delete it and rerun the step that writes it (rerun with --debug for the "
                "traceback)"), 2
    return None


def describe_load_error(err: BaseException) -> str:
    """What a failed `torch.load` means, in our words: torch's own text suggests
    weights_only=False (running the file's code), which fewclip never does."""
    text = str(err)
    if isinstance(err, EOFError) or "central directory" in text or "PytorchStreamReader" in text:
        return "the file is empty or truncated"
    if "Unsupported global" in text or "GLOBAL" in text:
        return "the file holds objects other than tensors, lists and dicts (refused: fewclip loads only tensors)"
    if "weights_only" in text or "Weights only" in text:
        return "the file is not a torch tensor file, or it is corrupt (refused: fewclip loads only tensors)"
    return "the file is not a torch tensor file, or it is corrupt"


def _is_load_error(err: BaseException) -> bool:
    import pickle

    text = str(err)
    return isinstance(err, (pickle.UnpicklingError, EOFError)) or "PytorchStreamReader" in text \
        or "weights_only" in text or "Weights only" in text


def _is_arrow_error(err: BaseException) -> bool:
    return type(err).__module__.startswith("pyarrow") and type(err).__name__ in ("ArrowInvalid", "ArrowIOError",
                                                                                 "ArrowException")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _no_torch_advice(msg: str) -> str:
    """Drop any sentence of torch's that suggests weights_only=False (loading untrusted code)."""
    if "weights_only" not in msg and "Weights only" not in msg:
        return msg
    keep = [s for s in msg.replace("\n", " ").split(". ") if "weights_only" not in s and "Weights only" not in s]
    return ". ".join(keep)
