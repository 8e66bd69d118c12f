"""`fewclip download`: the real fetch -> verify -> extract -> arrange path against a local server.

Fixture archives are built from `write_fixture` output in the member layout of the real
archives (the packaged sources table says which member goes where), served by an in-process
HTTP server on 127.0.0.1 that speaks Range and can drop a connection mid-file. A guard refuses
every address but the loopback one, in this process and in the subprocesses the tests start.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fewclip.cli import main as cli_main
from fewclip.data import download
from fewclip.data.datasets import check_dataset, get_spec
from fewclip.data.fixtures import write_fixture
from fewclip.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGED = json.loads(download.SOURCES.read_text())
REAL = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
        "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenet_v2", "imagenet_sketch",
        "imagenet_a", "imagenet_r"]
AUTOMATIC = [n for n in REAL if n != "imagenet"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

GUARD = '''
import socket
_real_gai, _real_cc = socket.getaddrinfo, socket.create_connection
def _gai(host, *a, **k):
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: no network except 127.0.0.1 ({host})")
    return _real_gai(host, *a, **k)
def _cc(address, *a, **k):
    if address[0] not in {"127.0.0.1", "localhost", "::1"}:
        raise OSError(f"test guard: no network except 127.0.0.1 ({address[0]})")
    return _real_cc(address, *a, **k)
socket.getaddrinfo, socket.create_connection = _gai, _cc
'''


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Every test: name resolution and connections to anything but 127.0.0.1 fail."""
    real_gai, real_cc = socket.getaddrinfo, socket.create_connection

    def gai(host, *a, **k):
        if host not in LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no network except 127.0.0.1 ({host})")
        return real_gai(host, *a, **k)

    def cc(address, *a, **k):
        if address[0] not in LOOPBACK:
            raise OSError(f"test guard: no network except 127.0.0.1 ({address[0]})")
        return real_cc(address, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", gai)
    monkeypatch.setattr(socket, "create_connection", cc)
    monkeypatch.setattr(download, "RETRY_WAIT", 0.0)


class Server:
    """Threaded in-process HTTP server on 127.0.0.1: files from a dict, Range, one-off drops."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.path in server.drop_once:  # half the body, then the connection dies
                    server.drop_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def hits(self, suffix: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path.endswith(suffix)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def _archive(filename: str, members: list[tuple[str, Path | None, set[str]]]) -> bytes:
    """An archive whose member `name` holds the tree at `path` (minus top-level `skip` names)."""
    entries: list[tuple[str, bytes]] = []
    for name, path, skip in members:
        if path is None or not path.exists():  # parts fewclip's readers never look at
            entries.append((f"{name}/README.txt", b"placeholder\n"))
            continue
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path)
            if rel.parts[0] not in skip:
                entries.append((f"{name}/{rel.as_posix()}", f.read_bytes()))
    buf = io.BytesIO()
    if filename.endswith(".zip"):
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in entries:
                zf.writestr(name, data)
    else:
        mode = "w:gz" if filename.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(fileobj=buf, mode=mode) as tf:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def serve_dataset(name: str, server: Server, src_root: Path, checksums: bool = True) -> dict:
    """Serve `name`'s files (built from its fixture) and return its table entry pointing at them."""
    write_fixture(name, src_root)
    folder = src_root / get_spec(name).folder
    entry = copy.deepcopy(PACKAGED["datasets"][name])
    plain = {f["place"]["file"] for f in entry["files"] if "file" in f["place"]}
    for f in entry["files"]:
        if "file" in f["place"]:
            path = folder / f["place"]["file"]
            data = path.read_bytes() if path.exists() else f"placeholder for {f['name']}\n".encode()
        else:
            data = _archive(f["name"], [
                (member, folder / to if to else folder, set() if to else plain)
                for member, to in f["place"]["extract"].items()
            ])
        url_path = f"/{name}/{f['name']}"
        server.files[url_path] = data
        f["urls"] = [server.base + url_path]
        f["md5"] = hashlib.md5(data).hexdigest() if checksums else None
        f["sha256"] = hashlib.sha256(data).hexdigest() if checksums else None
        f["size"] = len(data) if checksums else None
    return entry


def make_table(tmp_path: Path, entries: dict) -> dict:
    table = {"version": 1, "datasets": entries}
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(table, indent=1))
    for entry in entries.values():  # every URL a test hands out is a loopback one
        for f in entry["files"]:
            assert all(u.startswith("http://127.0.0.1:") for u in f["urls"]), f["urls"]
    return download.load_sources(path)


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".fewclip-staging"))


def quiet(*args):
    pass


# ----------------------------------------------------------------------------- the guard


def test_the_guard_refuses_everything_but_loopback():
    with pytest.raises(urllib.error.URLError, match="test guard"):
        urllib.request.urlopen("http://example.com/", timeout=2)
    with pytest.raises(OSError, match="test guard"):
        socket.create_connection(("8.8.8.8", 53), timeout=2)


# ----------------------------------------------------------------------------- every layout


@pytest.mark.parametrize("name", AUTOMATIC)
def test_download_arranges_the_coop_layout(name, server, tmp_path):
    """Each dataset's real table entry (URLs swapped for the fixture server): download, verify,
    extract, arrange, then the reader agrees and the tree is byte-identical to the fixture."""
    src = tmp_path / "src"
    table = make_table(tmp_path, {name: serve_dataset(name, server, src)})
    root = tmp_path / "data"
    report = download.prepare(name, root, table, log=quiet)
    assert report["status"] == "ok"
    assert check_dataset(name, root)["status"] == "ok"
    folder = get_spec(name).folder
    got, want = tree(root / folder), tree(src / folder)
    assert {k: v for k, v in got.items() if k in want} == want
    assert set(want) <= set(got)
    marker = json.loads(download.marker_path(root, name).read_text())
    assert marker["status"] == "ok" and marker["dataset"] == name
    assert [f["from"] for f in marker["files"]] == [f["urls"][0] for f in table["datasets"][name]["files"]]
    assert not (root / download.DOWNLOADS).exists()  # archives removed after success
    assert leftovers(root) == []


def test_cli_download_then_doctor_ok(server, tmp_path, capsys):
    table = make_table(tmp_path, {"fgvc_aircraft": serve_dataset("fgvc_aircraft", server, tmp_path / "src")})
    root = tmp_path / "data"
    rc = cli_main(["download", "fgvc_aircraft", "--data-root", str(root), "--sources", table["_path"],
                   "--keep-archives"])
    assert rc == 0
    assert (root / download.DOWNLOADS / "fgvc_aircraft" / "fgvc-aircraft-2013b.tar.gz").is_file()
    for txt in ("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"):
        assert (root / "fgvc_aircraft" / txt).is_file()
    capsys.readouterr()
    assert cli_main(["doctor", "--data-root", str(root), "--dataset", "fgvc_aircraft"]) == 0
    out = capsys.readouterr().out
    assert "fgvc_aircraft" in out and " ok " in out
    # a second run finds it prepared and fetches nothing
    before = len(server.requests)
    assert cli_main(["download", "fgvc_aircraft", "--data-root", str(root), "--sources", table["_path"]]) == 0
    assert len(server.requests) == before


# ----------------------------------------------------------------------------- resume


def test_dropped_connection_resumes_with_range(server, tmp_path):
    table = make_table(tmp_path, {"imagenet_v2": serve_dataset("imagenet_v2", server, tmp_path / "src")})
    archive = "/imagenet_v2/imagenetv2-matched-frequency.tar.gz"
    server.drop_once.add(archive)
    report = download.prepare("imagenet_v2", tmp_path / "data", table, log=quiet)
    assert report["status"] == "ok"
    ranges = server.hits(archive)
    half = len(server.files[archive]) // 2
    assert ranges == [None, f"bytes={half}-"]  # the second request asks only for the rest


def test_interrupted_run_resumes_on_the_next_run(server, tmp_path):
    table = make_table(tmp_path, {"imagenet_a": serve_dataset("imagenet_a", server, tmp_path / "src")})
    archive = "/imagenet_a/imagenet-a.tar"
    server.drop_once.add(archive)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="rerun to resume") as err:
        download.prepare("imagenet_a", root, table, retries=0, log=quiet)
    assert archive in str(err.value)
    part = root / download.DOWNLOADS / "imagenet_a" / "imagenet-a.tar.part"
    half = len(server.files[archive]) // 2
    assert part.stat().st_size == half
    assert not (root / "imagenet-adversarial").exists() and leftovers(root) == []
    assert download.prepare("imagenet_a", root, table, retries=0, log=quiet)["status"] == "ok"
    assert server.hits(archive) == [None, f"bytes={half}-"]
    assert "README.txt" in os.listdir(root / "imagenet-adversarial" / "imagenet-a")


# ----------------------------------------------------------------------------- bad cases


def test_wrong_checksum_fails_cleanly(server, tmp_path):
    entry = serve_dataset("dtd", server, tmp_path / "src")
    archive = entry["files"][0]
    good = archive["md5"]
    archive["md5"] = "0" * 32
    table = make_table(tmp_path, {"dtd": entry})
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download.prepare("dtd", root, table, log=quiet)
    msg = str(err.value)
    assert "checksum mismatch" in msg and archive["urls"][0] in msg
    assert "0" * 32 in msg and good in msg  # both checksums
    dl = root / download.DOWNLOADS / "dtd"
    assert not (dl / archive["name"]).exists() and not (dl / (archive["name"] + ".part")).exists()
    assert not (root / "dtd").exists() and leftovers(root) == []
    assert not download.marker_path(root, "dtd").exists()


def test_wrong_size_fails_cleanly(server, tmp_path):
    entry = serve_dataset("eurosat", server, tmp_path / "src")
    entry["files"][0]["size"] += 1
    table = make_table(tmp_path, {"eurosat": entry})
    with pytest.raises(DataError, match="size mismatch for http://127.0.0.1"):
        download.prepare("eurosat", tmp_path / "data", table, log=quiet)
    assert not (tmp_path / "data" / "eurosat").exists()


def test_truncated_archive_without_checksum(server, tmp_path):
    entry = serve_dataset("food101", server, tmp_path / "src", checksums=False)
    url_path = "/food101/food-101.tar.gz"
    server.files[url_path] = server.files[url_path][: len(server.files[url_path]) // 2]
    table = make_table(tmp_path, {"food101": entry})
    root = tmp_path / "data"
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        download.prepare("food101", root, table, log=quiet)
    assert entry["files"][0]["urls"][0] in str(err.value)
    assert not (root / download.DOWNLOADS / "food101" / "food-101.tar.gz").exists()
    assert not (root / "food-101").exists() and leftovers(root) == []


def test_no_network_one_clear_message(server, tmp_path):
    entry = serve_dataset("oxford_pets", server, tmp_path / "src")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    for f in entry["files"]:
        f["urls"] = [f"http://127.0.0.1:{port}/{f['name']}"]
    table = make_table(tmp_path, {"oxford_pets": entry})
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download.prepare("oxford_pets", root, table, mirrors=["http://mirror.invalid/data"], log=quiet)
    msg = str(err.value)
    assert "network error" in msg and "http://mirror.invalid/data/images.tar.gz" in msg
    assert f"http://127.0.0.1:{port}/images.tar.gz" in msg and "--mirror" in msg
    assert not (root / "oxford_pets").exists() and leftovers(root) == []
    assert not (root / download.DOWNLOADS).exists()  # no empty folders left behind either
    # the same through the CLI: one line of error, exit 2, no traceback
    rc = cli_main(["download", "oxford_pets", "--data-root", str(root), "--sources", table["_path"]])
    assert rc == 2


def test_mirror_is_tried_first_then_the_table(server, tmp_path):
    entry = serve_dataset("ucf101", server, tmp_path / "src")
    table = make_table(tmp_path, {"ucf101": entry})
    server.files["/mirror/split_zhou_UCF101.json"] = server.files["/ucf101/split_zhou_UCF101.json"]
    root = tmp_path / "data"
    download.prepare("ucf101", root, table, mirrors=[server.base + "/mirror/"], log=quiet)
    assert server.hits("/mirror/UCF-101-midframes.zip") == [None]  # 404 there: fell back
    assert server.hits("/ucf101/UCF-101-midframes.zip") == [None]
    assert server.hits("/mirror/split_zhou_UCF101.json") == [None]
    assert server.hits("/ucf101/split_zhou_UCF101.json") == []  # the mirror's copy verified
    assert check_dataset("ucf101", root)["status"] == "ok"


@pytest.mark.parametrize("where", ["download", "extract"])
def test_disk_full(where, server, tmp_path, monkeypatch):
    table = make_table(tmp_path, {"caltech101": serve_dataset("caltech101", server, tmp_path / "src")})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "_get" if where == "download" else "extract_archive", full)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="disk full") as err:
        download.prepare("caltech101", root, table, log=quiet)
    assert "free space" in str(err.value)
    assert not (root / "caltech-101").exists() and leftovers(root) == []


def test_existing_broken_folder_needs_force(server, tmp_path):
    table = make_table(tmp_path, {"dtd": serve_dataset("dtd", server, tmp_path / "src")})
    root = tmp_path / "data"
    (root / "dtd").mkdir(parents=True)
    (root / "dtd" / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="exists but is broken.*--force"):
        download.prepare("dtd", root, table, log=quiet)
    assert server.requests == []  # refused before fetching anything
    assert download.prepare("dtd", root, table, force=True, log=quiet)["status"] == "ok"
    (aside,) = root.glob("dtd.replaced-*")
    assert (aside / "mine.txt").read_text() == "user data"


def test_targets_reuse_imagenet_classnames(server, tmp_path):
    table = make_table(tmp_path, {"imagenet_r": serve_dataset("imagenet_r", server, tmp_path / "src")})
    root = tmp_path / "data"
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_bytes((tmp_path / "src" / "imagenet-rendition" / "classnames.txt").read_bytes())
    assert download.prepare("imagenet_r", root, table, log=quiet)["status"] == "ok"
    assert server.hits("classnames.txt") == []
    assert server.hits("imagenet-r.tar") == [None]


def test_google_drive_files_go_through_gdown(tmp_path, monkeypatch):
    import types

    gdown = types.ModuleType("gdown")  # stands in for the real one: no Drive from a test
    monkeypatch.setitem(sys.modules, "gdown", gdown)
    calls = []

    def fake_download(id, output, quiet, resume, timeout):
        calls.append((id, resume))
        Path(output).write_bytes(b"n01440764 tench\n")
        return output

    gdown.download = fake_download
    src = download.Source("classnames.txt", ("gdrive:ABC123",), hashlib.md5(b"n01440764 tench\n").hexdigest(),
                          None, None, None, "classnames.txt", None, "")
    path, url = download.fetch(src, tmp_path, log=quiet)
    assert calls == [("ABC123", True)] and url == "gdrive:ABC123" and path.read_text() == "n01440764 tench\n"


# ----------------------------------------------------------------------------- ImageNet


def test_imagenet_explains_then_verifies(server, tmp_path, capsys):
    src = tmp_path / "src"
    write_fixture("imagenet", src)
    entry = copy.deepcopy(PACKAGED["datasets"]["imagenet"])
    server.files["/imagenet/classnames.txt"] = (src / "imagenet" / "classnames.txt").read_bytes()
    entry["files"][0]["urls"] = [server.base + "/imagenet/classnames.txt"]
    table = make_table(tmp_path, {"imagenet": entry})
    root = tmp_path / "data"
    rc = cli_main(["download", "imagenet", "--data-root", str(root), "--sources", table["_path"]])
    err = capsys.readouterr().err
    assert rc == 2
    for needle in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz",
                   "image-net.org", str(root / "imagenet" / "raw"), str(root / "imagenet" / "images" / "val"),
                   "1d675b47d978889d74fa0da5fadfb00e", "torchvision"):
        assert needle in err
    assert (root / "imagenet" / "classnames.txt").read_bytes() == server.files["/imagenet/classnames.txt"]
    assert not download.marker_path(root, "imagenet").exists()
    (root / "imagenet" / "images").parent.mkdir(parents=True, exist_ok=True)
    os.rename(src / "imagenet" / "images", root / "imagenet" / "images")  # the user's manual step
    assert cli_main(["download", "imagenet", "--data-root", str(root), "--sources", table["_path"]]) == 0
    assert json.loads(download.marker_path(root, "imagenet").read_text())["status"] == "ok"
    assert server.hits("classnames.txt") == [None]  # fetched once


# ----------------------------------------------------------------------------- the packaged table


def test_packaged_table_covers_every_dataset():
    table = download.load_sources()
    assert set(REAL) <= set(table["datasets"])
    for name in REAL:
        entry, files = download.sources_of(table, name)
        spec = get_spec(name)
        assert entry.get("licence"), name
        assert files and all(f.urls for f in files), name
        for f in files:
            assert f.md5 is None or (len(f.md5) == 32 and int(f.md5, 16) >= 0), (name, f.name)
            assert f.sha256 is None or len(f.sha256) == 64, (name, f.name)
            assert f.md5 or f.sha256 or "checksum unknown" in f.note, (name, f.name)
        if entry.get("manual"):
            assert name == "imagenet"
            continue
        # every path the reader expects is produced by some file of the entry
        places = [to for f in files if f.extract for to in f.extract.values()] + [f.file for f in files if f.file]
        for expected in spec.expected_paths(Path("/r")):
            rel = expected.relative_to(Path("/r") / spec.folder).as_posix()
            assert any(p == "" or rel == p or rel.startswith(p + "/") for p in places), (name, rel)
    pets = {f.name: f for f in download.sources_of(table, "oxford_pets")[1]}
    assert pets["split_zhou_OxfordPets.json"].urls == ("gdrive:1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",)


def test_bad_sources_table(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        download.load_sources(bad)
    bad.write_text(json.dumps({"datasets": {"dtd": {"files": [{"name": "x", "urls": []}]}}}))
    with pytest.raises(ConfigError, match="place"):
        download.sources_of(download.load_sources(bad), "dtd")


# ----------------------------------------------------------------------------- Snakemake


def test_snakemake_rule_downloads_and_writes_the_marker(server, tmp_path):
    table = make_table(tmp_path, {"dtd": serve_dataset("dtd", server, tmp_path / "src")})
    root = tmp_path / "data"
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(
        f"DATA_ROOT = {str(root)!r}\n"
        f"include: {str(REPO / 'workflow' / 'rules' / 'download.smk')!r}\n"
    )
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)  # the job's `fewclip` sees the same guard
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(guard)}
    marker = download.marker_path(root, "dtd")
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-c1", str(marker), "--config", f"download_sources={table['_path']}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule download:" in proc.stderr and "wildcards: dataset=dtd" in proc.stderr  # one wildcard rule
    assert json.loads(marker.read_text())["status"] == "ok"
    assert check_dataset("dtd", root)["status"] == "ok"
    assert (work / "logs" / "download" / "dtd.log").is_file()
    assert (work / "benchmarks" / "download" / "dtd.tsv").is_file()
    # {dataset} is one `fewclip download` knows: another name has no rule to make its marker
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "-c1", str(download.marker_path(root, "demo_shapes"))],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_dead_host_dataset_from_a_file_mirror(server, tmp_path):
    """SUN397/Stanford Cars: official hosts dead, so the user serves their copies with --mirror file://."""
    entry = serve_dataset("stanford_cars", server, tmp_path / "src")
    mirror = tmp_path / "archives"
    mirror.mkdir()
    for f in entry["files"]:
        (mirror / f["name"]).write_bytes(server.files[f"/stanford_cars/{f['name']}"])
    table = make_table(tmp_path, {"stanford_cars": entry})
    root = tmp_path / "data"
    download.prepare("stanford_cars", root, table, mirrors=[mirror.as_uri()], log=quiet)
    assert server.requests == []  # everything came from the mirror
    assert check_dataset("stanford_cars", root)["status"] == "ok"
    marker = json.loads(download.marker_path(root, "stanford_cars").read_text())
    assert all(f["from"].startswith("file://") for f in marker["files"])
