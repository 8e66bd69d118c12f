"""`fewclip download`: fetch, verify, extract and arrange datasets into CoOp's layout (SPEC §4).

Where each file comes from lives in a table (`sources.json`, package data; `--sources` points
at another one): mirrors of the same bytes, md5/sha256/size where known (never guessed), and
where each archive member goes under the dataset folder. For each dataset:

1. fetch every file into `<data-root>/.downloads/<dataset>/`: plain URLs with a small resumable
   fetch (HTTP Range on a `.part` file, renamed only when complete), Google Drive files with
   gdown (`resume=True`); `--mirror URL_BASE` is tried first as `URL_BASE/<file name>`;
2. verify size and checksums; a file that does not match is removed and the message names the
   URL and both checksums;
3. extract into a staging folder beside the target (`<data-root>/.fewclip-staging-*`), arrange
   the members, check the staged folder with the dataset reader, and only then rename it into
   place: a failure at any point leaves nothing half-extracted under the dataset's folder;
4. write the marker `<data-root>/.fewclip-download-<dataset>.json` (what was fetched, from where,
   with which checksums) that the Snakemake rules use as their output.

ImageNet is licensed: it is never downloaded; `fewclip download imagenet` says what to fetch by
hand and where to put it, then verifies it.

Every path from the table (a file's `name`, `place.file`, `place.extract` members and targets,
`reuse`) and every archive member is untrusted: `path_problem` refuses an absolute path or a '..'
(the whole table, when it is loaded, before anything is fetched), and what is put in place must
resolve under the dataset's folder (`_landing`: no symlink on the way out).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import ConfigError, DataError
from ..io import write_json
from .datasets import check_dataset, get_spec

SOURCES = Path(__file__).with_name("sources.json")
DOWNLOADS = ".downloads"
USER_AGENT = "fewclip-download/1 (+https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"
CHUNK = 1 << 20
RETRY_WAIT = 1.0  # seconds before a resumed attempt (times the attempt number)
TRANSIENT = (http.client.IncompleteRead, ConnectionError, TimeoutError, socket.timeout)
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile)


def marker_path(root, name: str) -> Path:
    return Path(paths.format_path(paths.DOWNLOAD_MARKER, data_root=Path(root), dataset=name))


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Source:
    name: str
    urls: tuple[str, ...]
    md5: str | None
    sha256: str | None
    size: int | None
    extract: dict | None  # {archive member: path under the dataset folder ('' = the folder)}
    file: str | None  # plain file: its path under the dataset folder
    reuse: str | None  # a path under the data root to copy instead of downloading, when present
    note: str


def load_sources(path=None) -> dict:
    path = Path(path) if path else SOURCES
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sources table {path} not found") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"sources table {path} is not valid JSON ({err})") from err
    if not isinstance(table, dict) or not isinstance(table.get("datasets"), dict):
        raise ConfigError(f"sources table {path} must be an object with a 'datasets' object "
                          f"(see the packaged {SOURCES})")
    table["_path"] = str(path)
    for name in table["datasets"]:  # every entry, before anything is fetched, written or moved
        sources_of(table, name)
    return table


def sources_of(table: dict, name: str) -> tuple[dict, list[Source]]:
    entry = table["datasets"].get(name)
    if entry is None:
        raise ConfigError(f"no sources for {name!r} in {table['_path']}")
    if not isinstance(entry, dict) or not isinstance(entry.get("files", []), list):
        raise ConfigError(f"{table['_path']}: {name} must be an object with a list 'files'")
    files = []
    for i, f in enumerate(entry.get("files", [])):
        place = (f.get("place") if isinstance(f, dict) else None) or {}
        if not isinstance(f, dict) or not f.get("name") or not isinstance(f.get("urls"), list) \
                or not isinstance(place, dict) or not (("extract" in place) ^ ("file" in place)) \
                or not isinstance(place.get("extract", {}), dict):
            raise ConfigError(f"{table['_path']}: {name} files[{i}] needs 'name', a list 'urls' and "
                              "'place' with exactly one of 'extract' (archive member -> path) or 'file'")
        _check_table_paths(f, place, f"sources table {table['_path']}: {name} files[{i}]")
        files.append(Source(f["name"], tuple(f["urls"]), f.get("md5"), f.get("sha256"), f.get("size"),
                            place.get("extract"), place.get("file"), f.get("reuse"), f.get("note", "")))
    return entry, files


def path_problem(value, *, one_name: bool = False) -> str | None:
    """Why `value`, a relative path from an untrusted source (the sources table, an archive member),
    could land outside the folder it is joined to; None when it cannot. `one_name`: a file name."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if "\0" in value:
        return "contains a NUL byte"
    if value.startswith(("/", "\\")):
        return "is an absolute path"
    parts = value.replace("\\", "/").split("/")
    if ".." in parts:
        return "contains '..'"
    if one_name and (len(parts) > 1 or value in ("", ".")):
        return "is not a plain file name"
    return None


def _check_table_paths(f: dict, place: dict, where: str) -> None:
    """Refuse the table when one of its paths could write, move or delete outside its folder."""
    fields = [("name", f["name"], True, "<data-root>/.downloads/<dataset>/, as a plain file name")]
    if "file" in place:
        fields.append(("place.file", place["file"], False, "the dataset's folder"))
        if place["file"] in ("", "."):
            raise ConfigError(f"{where} place.file is empty; name the file under the dataset's folder")
    for member, to in (place.get("extract") or {}).items():
        fields += [("place.extract member", member, False, "the extracted archive"),
                   (f"place.extract target of {member!r}", to, False, "the dataset's folder ('' = the folder itself)")]
    if f.get("reuse") is not None:
        fields.append(("reuse", f["reuse"], False, "the data root"))
    for field, value, one_name, under in fields:
        problem = path_problem(value, one_name=one_name)
        if problem:
            raise ConfigError(f"{where} {field} {value!r} {problem}; a path from the sources table must stay "
                              f"under {under}: fix the table (a relative path without '..'); nothing was fetched")


def _landing(base: Path, rel: str, what: str) -> Path:
    """`base / rel`, refused unless it resolves (symlinks followed) under `base`."""
    path = base / rel
    if not path.resolve().is_relative_to(base.resolve()):
        raise DataError(f"{what} {rel!r} resolves to {path.resolve()}, outside {base} (a symlink on the way "
                        "points out); refused, nothing was put in place: check the sources table and the archive")
    return path


# ----------------------------------------------------------------------------- one dataset


def prepare(name: str, data_root, table: dict | None = None, *, mirrors=(), retries: int = 3,
            timeout: float = 60.0, keep_archives: bool = False, force: bool = False, log=print) -> dict:
    """Bring one dataset into the CoOp layout under `data_root`; returns its check report."""
    spec = get_spec(name)
    table = table if table is not None else load_sources()
    entry, files = sources_of(table, name)
    root = Path(data_root).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{spec.title}: cannot create the data root {root} ({err})") from err
    report = check_dataset(name, root)
    if report["status"] == "ok":
        log(f"{spec.title}: already prepared under {root / spec.folder}")
        if not marker_path(root, name).is_file():  # keep the provenance of an earlier download
            _write_marker(root, name, report, [], table)
        return report
    try:
        if entry.get("manual"):
            return _prepare_manual(spec, entry, files, root, table, mirrors, retries, timeout, log)
        folder = root / spec.folder
        if folder.exists() and not force:
            raise DataError(
                f"{spec.title}: {folder} exists but is {report['status']} "
                f"({'; '.join(report['problems'][:3])}); move it away, or rerun with --force to "
                "replace it (the old folder is renamed, not deleted)"
            )
        licence = entry.get("licence")
        if licence:
            log(f"{spec.title}: licence: {licence}")
        fetched = [_obtain(spec, src, root, mirrors, retries, timeout, log) for src in files]
        report = _stage_and_publish(spec, root, files, fetched, force, log)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DataError(
                f"{spec.title}: disk full under {root} ({err}); nothing was put in place under "
                f"{root / spec.folder} (partial downloads stay in {root / DOWNLOADS / name} and resume); "
                "free space or use a --data-root on a larger disk, then rerun"
            ) from err
        raise DataError(f"{spec.title}: {err}") from err
    _write_marker(root, name, report, fetched, table)
    if not keep_archives:
        for _, path, _ in fetched:
            if path.is_relative_to(root / DOWNLOADS):
                path.unlink(missing_ok=True)
        _rmdir_empty(root / DOWNLOADS / name)
        _rmdir_empty(root / DOWNLOADS)
    log(f"{spec.title}: ok under {root / spec.folder} (classes={report['classes']} train={report['train']} "
        f"val={report['val']} test={report['test']})")
    return report


def _obtain(spec, src: Source, root: Path, mirrors, retries, timeout, log) -> tuple[Source, Path, str]:
    """(source, local path, where it came from): a reusable local copy, or a verified download."""
    if src.reuse and (root / src.reuse).is_file():
        log(f"{spec.title}: {src.name}: using {root / src.reuse}")
        return src, root / src.reuse, str(root / src.reuse)
    path, url = fetch(src, root / DOWNLOADS / spec.name, mirrors=mirrors, retries=retries,
                      timeout=timeout, log=log, what=spec.title)
    return src, path, url


def _stage_and_publish(spec, root: Path, files: list[Source], fetched, force: bool, log) -> dict:
    staging = Path(tempfile.mkdtemp(prefix=f".fewclip-staging-{spec.name}-", dir=root))
    try:
        target = staging / spec.folder
        target.mkdir(parents=True)
        for src, path, url in fetched:
            if src.extract is not None:
                _extract_into(spec, src, path, url, staging, target, log)
            else:
                dest = _landing(target, src.file, f"{spec.title}: place.file")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        report = check_dataset(spec.name, staging)
        if report["status"] != "ok":
            raise DataError(
                f"{spec.title}: the downloaded files do not form the CoOp layout: "
                f"{'; '.join(report['problems'][:5])}; nothing was put in place (check the sources table, "
                f"or fetch the files by hand: {spec.source})"
            )
        folder = root / spec.folder
        if folder.exists():  # only with --force (checked before downloading)
            aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            os.rename(folder, aside)
            log(f"{spec.title}: the old {folder} was moved to {aside}")
        os.rename(target, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return check_dataset(spec.name, root)


def _extract_into(spec, src: Source, archive: Path, url: str, staging: Path, target: Path, log) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=staging))
    log(f"{spec.title}: extracting {archive.name}")
    try:
        extract_archive(archive, tmp)
    except ARCHIVE_ERRORS as err:
        if archive.is_relative_to(staging.parent / DOWNLOADS):
            archive.unlink(missing_ok=True)
            _rmdir_empty(archive.parent)
            _rmdir_empty(archive.parent.parent)
        raise DataError(
            f"{spec.title}: archive {archive.name} (from {url}) is truncated or corrupt ({err}); "
            "it was removed and nothing was put in place: rerun to fetch it again"
        ) from err
    for member, dest in src.extract.items():
        found = tmp / member
        if not found.exists():
            top = sorted(p.name for p in tmp.iterdir())[:10]
            raise DataError(
                f"{spec.title}: archive {archive.name} (from {url}) has no {member!r} "
                f"(top level: {top}); the sources table does not match this archive"
            )
        if dest in ("", "."):
            for child in found.iterdir():
                _move(child, target / child.name)
        else:
            _move(found, _landing(target, dest, f"{spec.title}: the target of archive member {member!r}"))
    shutil.rmtree(tmp, ignore_errors=True)


def _move(src: Path, dest: Path) -> None:
    if dest.exists():
        raise DataError(f"two sources both provide {dest.name} under {dest.parent}: fix the sources table")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dest)


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a zip or (compressed) tar into `dest`.

    A member that is absolute or holds '..' is refused (`path_problem`, as the sources table's own
    paths); tarfile's 'data' filter also refuses links pointing out of `dest` and special files
    (torchvision's extract_archive calls extractall without it).
    """
    def refuse(member: str, problem: str):
        return DataError(f"archive {archive}: member {member!r} {problem}: it would land outside the folder "
                         "it is extracted into; refused, nothing was put in place (the archive is not the one "
                         "the sources table describes: check where it comes from)")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if problem := path_problem(member):
                    raise refuse(member, problem)
            zf.extractall(dest)
        return

    def checked(member: tarfile.TarInfo, path: str):
        if problem := path_problem(member.name):
            raise refuse(member.name, problem)
        return tarfile.data_filter(member, path)

    with tarfile.open(archive, "r:*") as tf:
        tf.extractall(dest, filter=checked)


def _write_marker(root: Path, name: str, report: dict, fetched, table: dict) -> None:
    files = [{"name": src.name, "from": url, "md5": src.md5, "sha256": src.sha256, "size": src.size}
             for src, _, url in fetched]
    write_json(marker_path(root, name), {
        "dataset": name, "folder": get_spec(name).folder, "status": report["status"],
        "counts": {k: report[k] for k in ("classes", "train", "val", "test")},
        "files": files, "sources": table.get("_path"),
    })


def _rmdir_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ----------------------------------------------------------------------------- ImageNet (manual)


def _prepare_manual(spec, entry: dict, files: list[Source], root: Path, table, mirrors, retries, timeout, log) -> dict:
    folder = root / spec.folder
    notes = []
    fetched = []
    for src in files:  # small unlicensed helpers (CoOp's classnames.txt)
        dest = _landing(folder, src.file, f"{spec.title}: place.file") if src.file else None
        if dest is not None and dest.is_file():
            continue
        try:
            src_, path, url = _obtain(spec, src, root, mirrors, retries, timeout, log)
        except DataError as err:
            notes.append(f"could not fetch {src.name} automatically ({err})")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        if path.is_relative_to(root / DOWNLOADS):
            path.unlink(missing_ok=True)
            _rmdir_empty(root / DOWNLOADS / spec.name)
            _rmdir_empty(root / DOWNLOADS)
        fetched.append((src_, dest, url))
        log(f"{spec.title}: {src.name} -> {dest}")
    report = check_dataset(spec.name, root)
    if report["status"] == "ok":
        _write_marker(root, spec.name, report, fetched, table)
        log(f"{spec.title}: ok under {folder} (classes={report['classes']} train={report['train']} "
            f"test={report['test']})")
        return report
    raise DataError(manual_instructions(spec, entry, root, report, notes))


def manual_instructions(spec, entry: dict, root: Path, report: dict, notes=()) -> str:
    folder = root / spec.folder
    manual = entry.get("manual") or {}
    raw = folder / "raw"
    lines = [
        f"{spec.title} is not downloaded by fewclip ({entry.get('licence', 'licensed data')}).",
        "Prepare it by hand:",
        f"  1. with an image-net.org account, put these files into {raw}:",
    ]
    lines += [f"       {m['name']} (md5 {m['md5']}; {m['from']})" for m in manual.get("files", [])]
    lines += [
        "  2. sort them into wnid folders with torchvision (it checks the md5s and reads the devkit):",
        f"       python -c \"import torchvision as tv; [tv.datasets.ImageNet({str(raw)!r}, split=s) for s in ('train', 'val')]\"",
        f"     then move (or symlink) {raw / 'train'} to {folder / 'images' / 'train'} and "
        f"{raw / 'val'} to {folder / 'images' / 'val'};",
        f"  3. {folder / 'classnames.txt'}: fetched by this command from CoOp's Google Drive "
        "(https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view);",
        f"  4. rerun `fewclip download {spec.name} --data-root {root}` to verify.",
        f"Now: {report['status']}: " + "; ".join(report["problems"][:4]),
    ]
    lines += list(notes)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- fetch + verify


def fetch(src: Source, dest_dir, *, mirrors=(), retries: int = 3, timeout: float = 60.0,
          log=print, what: str = "") -> tuple[Path, str]:
    """Download `src` into `dest_dir` and verify it; returns (path, the URL that worked)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / src.name
    label = f"{what}: {src.name}" if what else src.name
    if path.is_file():
        problem = verify(path, src, "(already downloaded)")
        if problem is None:
            log(f"{label}: already downloaded and verified")
            return path, str(path)
        path.unlink()
    urls = [f"{m.rstrip('/')}/{src.name}" for m in mirrors] + list(src.urls)
    if not urls:
        raise DataError(f"{label}: no URL in the sources table; fetch it by hand into {path} ({src.note})")
    errors = []
    for url in urls:
        log(f"{label}: fetching {url}")
        try:
            if url.startswith("gdrive:"):
                _fetch_gdrive(url.split(":", 1)[1], path, timeout)
            else:
                _fetch_http(url, path, src.size, retries, timeout, log)
        except (OSError, http.client.HTTPException) as err:
            if getattr(err, "errno", None) == errno.ENOSPC:
                raise
            errors.append(f"{url}: {_describe(err)}")
            continue
        except _GdriveError as err:
            errors.append(f"{url}: {err}")
            continue
        problem = verify(path, src, url)
        if problem is None:
            return path, url
        path.unlink(missing_ok=True)
        errors.append(problem)
    _rmdir_empty(dest_dir)  # nothing fetched: leave no empty folders (a .part to resume stays)
    _rmdir_empty(dest_dir.parent)
    raise DataError(
        f"{label}: could not get a verified copy: " + " | ".join(errors)
        + f". Check the network (or pass --mirror URL_BASE serving {src.name}); "
        f"a copy fetched by hand can be put at {path}" + (f" ({src.note})" if src.note else "")
    )


def verify(path: Path, src: Source, url: str) -> str | None:
    """None if `path` matches the table's size and checksums, else a message naming URL and values."""
    size = path.stat().st_size
    if src.size is not None and size != src.size:
        return (f"size mismatch for {url}: expected {src.size} bytes, got {size}; "
                f"the file was removed ({path})")
    if src.md5 is None and src.sha256 is None:
        return None
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            md5.update(block)
            sha.update(block)
    for kind, want, got in (("md5", src.md5, md5.hexdigest()), ("sha256", src.sha256, sha.hexdigest())):
        if want is not None and want.lower() != got:
            return (f"checksum mismatch for {url}: expected {kind} {want}, got {got}; "
                    f"the file was removed ({path})")
    return None


def _fetch_http(url: str, path: Path, size: int | None, retries: int, timeout: float, log) -> None:
    """GET `url` into `path` via `path.part`, resuming with HTTP Range after a dropped connection."""
    part = path.with_name(path.name + ".part")
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is not None and have == size:
            break
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
            log(f"  resuming at byte {have}")
        try:
            _get(urllib.request.Request(url, headers=headers), part, have, timeout)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the .part is complete
                break
            raise
        except TRANSIENT as err:
            if attempt == retries:
                raise ConnectionError(
                    f"connection lost after {retries + 1} attempt(s) ({_describe(err)}); "
                    f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}: rerun to resume"
                ) from err
            log(f"  connection lost ({_describe(err)}); retrying")
            time.sleep(RETRY_WAIT * (attempt + 1))
    os.replace(part, path)


def _get(request, part: Path, have: int, timeout: float) -> None:
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        status = resp.status
        total = None
        if have and status == 206:
            content_range = resp.headers.get("Content-Range", "")  # bytes start-end/total
            start = content_range.partition(" ")[2].partition("-")[0]
            if start != str(have):
                raise ConnectionError(f"server resumed at {content_range!r}, not at byte {have}")
            mode = "ab"
            tail = content_range.rpartition("/")[2]
            total = int(tail) if tail.isdigit() else None
        else:  # 200: the whole file (a server that ignores Range restarts it)
            mode, have = "wb", 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part, mode) as fh:
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got} of {total} bytes")


class _GdriveError(Exception):
    pass


def _fetch_gdrive(file_id: str, path: Path, timeout: float) -> None:
    """A Google Drive file via gdown (it resumes from its own .part file with resume=True)."""
    try:
        import gdown
    except ImportError:
        raise _GdriveError("gdown is not installed (pip install gdown)") from None
    try:
        out = gdown.download(id=file_id, output=str(path), quiet=False, resume=True, timeout=timeout)
    except OSError:
        raise
    except Exception as err:  # gdown's own errors (FileURLRetrievalError, quota, permission)
        raise _GdriveError(f"{type(err).__name__}: {err}") from err
    if not out or not path.is_file():
        raise _GdriveError("gdown returned no file")


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"network error: {err.reason}"
    return f"{type(err).__name__}: {err}"
