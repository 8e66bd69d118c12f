"""The run directory (DESIGN.md): checked before any work, locked while a cell runs, and published
whole. Results are written into a staging folder (`.incoming`) and moved into --out only when
the whole cell (every extra evaluation included) succeeded, metrics.json last: a failure leaves a
previous finished run untouched and nothing that `fewclip collect` would count."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..errors import RunDirError

def check_writable(out: Path) -> None:
    """--out must be a folder (or not exist yet) that this process can write; leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a run directory; choose another --out (a folder)")
    missing = []
    probe_parent = out
    while not probe_parent.exists():
        missing.append(probe_parent)
        if probe_parent.parent == probe_parent:
            break
        probe_parent = probe_parent.parent
    if probe_parent.exists() and not probe_parent.is_dir():
        raise RunDirError(f"--out {out}: {probe_parent} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fewclip-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(f"--out {out} is not writable ({err.strerror or err}); choose another --out "
                          "or fix its permissions") from err
    finally:
        for folder in missing:  # innermost first: what this check created goes again
            try:
                folder.rmdir()
            except OSError:
                break


def check_owner(identity: dict, out: Path) -> None:
    """A finished run of another cell in --out is never replaced (`identity`: the cell's RUN_IDENTITY)."""
    path = out / "metrics.json"
    if not path.is_file():
        return
    try:
        theirs = json.loads(path.read_text())
        if not isinstance(theirs, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise RunDirError(f"--out {out} holds a metrics.json that cannot be read ({type(err).__name__}); it is "
                          f"not replaced: delete {out} if it is yours to discard, or choose another --out") from err
    mine = identity
    diffs = [f"{k}={theirs.get(k)!r} (this cell: {v!r})" for k, v in mine.items()
             if k in theirs and theirs.get(k) != v]
    if diffs:
        raise RunDirError(f"--out {out} holds the finished run of another cell ({', '.join(diffs)}); it is not "
                          "replaced. Choose another --out, or delete that run directory first")


LOCK_NAME = ".fewclip-run.lock"
STAGE_NAME = ".incoming"


@contextlib.contextmanager
def owned_run_dir(out, identity: dict):
    """Lock --out (one writer at a time), check its owner again under the lock, and yield a
    fresh staging folder inside it. On failure the staging folder goes, and so does an --out
    this call created, if it is empty; a previous finished run is never touched."""
    out = Path(out)
    missing = []
    folder = out
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out / LOCK_NAME)
    stage = out / STAGE_NAME
    try:
        with lock:
            check_owner(identity, out)
            if stage.exists():
                shutil.rmtree(stage)  # a killed run's leftovers
            stage.mkdir()
            try:
                yield stage
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    finally:
        for folder in missing:
            try:
                folder.rmdir()  # only if empty: a failed first run leaves nothing
            except OSError:
                break


def publish(stage: Path, out: Path) -> None:
    """Move a complete cell from its staging folder into --out, metrics.json last. The old
    metrics.json goes first: until the new one lands, the cell reads as unfinished."""
    new = {p.name for p in stage.iterdir()}
    (out / "metrics.json").unlink(missing_ok=True)
    for old in out.iterdir():
        if old.name in new or old.name in (LOCK_NAME, STAGE_NAME):
            continue
        if old.is_dir() and old.name.startswith("eval_"):
            shutil.rmtree(old)
        elif old.name in ("predictions.parquet", "checkpoint.pt"):
            old.unlink()
    for name in sorted(new - {"metrics.json"}):
        dest = out / name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(stage / name, dest)
    os.replace(stage / "metrics.json", out / "metrics.json")


class RunLock:
    """`{out}/.fewclip-run.lock`: an flock held for the run, holding the writer's pid and host.

    A second writer is refused and told who holds it. The kernel releases an flock when its
    process dies, so a lock left by a killed run is stale by construction: the next run takes
    it over (and says so)."""

    def __init__(self, path: Path):
        self.path, self.fd = Path(path), None

    def __enter__(self):
        import fcntl

        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                holder = self._holder()
                if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) and not _alive(holder):
                    # a file system without flock (ENOLCK): fall back on the recorded pid and host
                    self.fd = None
                    self.path.write_text(json.dumps(_lock_record()))
                    return self
                who = (f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}"
                       if holder else "a process that is just starting")
                raise RunDirError(
                    f"run directory {self.path.parent} is being written by another fewclip process ({who}); "
                    f"wait for it to finish or stop it. If that process is gone (another host), delete {self.path}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (and removed) it between our open and flock
                os.close(fd)
                continue
            stale = self._holder()
            if stale and (stale.get("pid"), stale.get("host")) != (os.getpid(), platform.node()):
                print(f"fewclip: taking over the stale lock {self.path} of pid {stale.get('pid')} on host "
                      f"{stale.get('host')} (that process is gone)", file=sys.stderr)
            me = json.dumps(_lock_record()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            self.fd = fd
            return self
        raise RunDirError(f"could not lock {self.path}: other processes keep taking it; retry")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def __exit__(self, *exc):
        try:
            self.path.unlink(missing_ok=True)
        finally:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return False


def _lock_record() -> dict:
    return {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(holder: dict | None) -> bool:
    """Whether a lock's recorded holder may still run: unknown hosts count as alive."""
    if not holder:
        return False
    if holder.get("host") != platform.node():
        return True
    try:
        os.kill(int(holder.get("pid")), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
