"""Every verb fails cleanly, run directories are owned, nothing is
half-written. Each failure is driven through `fewclip` as a user calls it; each test checks the
exit code, the message's key words, that there is no traceback, and what is left on disk."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import BIN, fewclip, refused

TINY = "fewclip-tiny-vit"


def common(tmp_path, data):
    return ["--backbone", TINY, "--pretrained", "none", "--device", "cpu", "--data-root", data,
            "--features", tmp_path / "features"]


def tree(folder: Path) -> dict:
    """{relative path: bytes} of every file below `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fixture_root):
    """One finished trained cell (clip_adapter, dtd, 1-shot, seed 1) and its feature store."""
    root = tmp_path_factory.mktemp("finished")
    out = root / "runs/fewshot/tiny/dtd/clip_adapter/1shot/seed1"
    fewclip("run", *common(root, fixture_root), "--dataset", "dtd", "--method", "clip_adapter", "--shots", 1,
            "--seed", 1, "--backbone-key", "tiny", "--out", out, "--set", "epochs=2", "--set", "lr=1e-3", check=True)
    return root, out


def copy_finished(finished, tmp_path):
    root, out = finished
    shutil.copytree(root / "features", tmp_path / "features")
    dest = tmp_path / "run"
    shutil.copytree(out, dest)
    return dest


def rerun_args(tmp_path, fixture_root, out, *extra):
    return ["run", *common(tmp_path, fixture_root), "--dataset", "dtd", "--method", "clip_adapter", "--shots", 1,
            "--seed", 1, "--backbone-key", "tiny", "--out", out, "--set", "epochs=2", "--set", "lr=1e-3", *extra]


# ----------------------------------------------------------------------------- 1. one error boundary


@pytest.mark.parametrize("damage, words", [
    ("truncate", ["cannot read", "test.pt", "truncated", "re-encode"]),
    ("pickle", ["cannot read", "test.pt", "refused"]),
    ("empty", ["cannot read", "test.pt", "empty or truncated"]),
])
def test_a_corrupt_feature_file_is_named_and_never_loaded(finished, tmp_path, fixture_root, damage, words, cli):
    out = copy_finished(finished, tmp_path)
    before = tree(out)
    test_pt = tmp_path / "features/tiny/dtd/test.pt"
    if damage == "truncate":
        test_pt.write_bytes(test_pt.read_bytes()[:300])
    elif damage == "pickle":
        import pickle

        test_pt.write_bytes(pickle.dumps({"x": object}))
    else:
        test_pt.write_bytes(b"")
    run = fewclip if damage == "truncate" else cli  # one case as a separate process, the others in-process
    proc = run(*rerun_args(tmp_path, fixture_root, out))
    refused(proc, *words)
    after = tree(out)
    after.pop("train_state.pt", None)  # the failed rerun's resume state, beside the finished run
    assert after == before  # the previous finished run is untouched
    assert not (out / ".incoming").exists() and not (out / ".fewclip-run.lock").exists()


def test_debug_keeps_the_traceback(finished, tmp_path, fixture_root):
    out = copy_finished(finished, tmp_path)
    (tmp_path / "features/tiny/dtd/test.pt").write_bytes(b"\0" * 10)
    proc = fewclip(*rerun_args(tmp_path, fixture_root, out, "--debug"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "error: cannot read" in proc.stderr


def test_a_corrupt_resume_checkpoint_is_refused_with_how_to_fix(finished, tmp_path, fixture_root, cli):
    shutil.copytree(finished[0] / "features", tmp_path / "features")
    out = tmp_path / "fresh"
    out.mkdir()
    (out / "train_state.pt").write_bytes(b"PK\x03\x04 not a zip")
    proc = cli(*rerun_args(tmp_path, fixture_root, out))
    refused(proc, "training checkpoint", "train_state.pt", "delete it")
    assert not (out / "metrics.json").exists()


def test_unwritable_or_misplaced_outputs_name_the_path(tmp_path, fixture_root, cli):
    (tmp_path / "afile").write_text("x")
    base = ["split", "--data-root", fixture_root, "--dataset", "dtd", "--shots", 1, "--seed", 1]
    refused(cli(*base, "--out", tmp_path), "is a directory", str(tmp_path))
    refused(cli(*base, "--out", tmp_path / "afile" / "m.json"), "a file stands where a folder is needed",
            str(tmp_path / "afile"))
    assert (tmp_path / "afile").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_boundary_maps_each_class_of_failure():
    """The dictionary behind the boundary, for failures hard to cause from outside."""
    import pickle

    import pyarrow as pa

    from fewclip.errors import explain

    def raised(fn):
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            return explain(err)

    def key_error(path="results/features/x/store.pt"):
        return {}["paths"]

    def index_error(path="results/splits/dtd/m.json"):
        return [][3]

    def arrow(path="results/all_runs.parquet"):
        raise pa.ArrowInvalid("Parquet magic bytes not found in footer")

    def binary(path="results/runs/a/metrics.json"):
        return b"\xff\xfe\x00".decode()

    def unpickle(path="x/checkpoint.pt"):
        raise pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set "
                                     "to `False` will likely succeed")

    def permission():
        raise PermissionError(errno.EACCES, "Permission denied", "/shared/results/run")

    for fn, words in [(key_error, ["malformed", "store.pt", "'paths'"]), (index_error, ["malformed", "m.json"]),
                      (arrow, ["all_runs.parquet", "not a valid parquet"]), (binary, ["metrics.json", "binary"]),
                      (unpickle, ["checkpoint.pt", "refused"]), (permission, ["permission denied", "/shared"])]:
        message, code = raised(fn)
        assert code == 2 and "weights_only" not in message
        for word in words:
            assert word.lower() in message.lower(), (fn.__name__, message)
    assert raised(lambda: 1 / 0) is None  # a bug stays a traceback


# ----------------------------------------------------------------------------- 2. validate before any work


@pytest.mark.parametrize("extra, words", [
    (["--seed", "-1"], ["--seed", "0..4294967295", "-1"]),
    (["--seed", str(2**40)], ["--seed", str(2**40)]),
    (["--shots", "0"], ["--shots", "1 or more"]),
    (["--device", "gpu"], ["unknown device", "gpu", "cuda:N"]),
    (["--set", "epochs=0"], ["epochs=0", "at least 1"]),
    (["--set", "batch_size=-2"], ["batch_size=-2", "at least 1"]),
    (["--set", "views=0"], ["views=0"]),
    (["--set", "lr=.inf"], ["lr=inf", "finite"]),
    (["--set", "lr=-1e-3"], ["lr=-0.001", "greater than 0"]),
    (["--set", "schedule=cosine"], ["schedule='cosine'", "cosine_epoch"]),
    (["--set", "optimizer=adam"], ["optimizer='adam'", "adamw"]),
    (["--eval", "imagenet_v2"], ["--eval", "--protocol dg"]),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, fixture_root, extra, words, cli):
    args = {"--seed": "1", "--shots": "1", "--device": "cpu"}
    rest = []
    it = iter(extra)
    for a in it:
        if a in args:
            args[a] = next(it)
        else:
            rest += [a, next(it)]
    out = tmp_path / "deep" / "run"
    proc = cli("run", "--backbone", TINY, "--pretrained", "none", "--data-root", fixture_root,
                   "--features", tmp_path / "features", "--dataset", "dtd", "--method", "clip_adapter",
                   "--out", out, *[x for kv in args.items() for x in kv], *rest)
    refused(proc, *words)
    assert not (tmp_path / "deep").exists() and not (tmp_path / "features").exists()


def _root_without(fixture_root, tmp_path, drop: str, edit=None) -> Path:
    """A data root of symlinks to the fixture datasets, without `drop` (or with `drop` copied and edited)."""
    root = tmp_path / "root"
    root.mkdir()
    for d in fixture_root.iterdir():
        if d.name != drop:
            (root / d.name).symlink_to(d)
        elif edit is not None:
            shutil.copytree(d, root / d.name)
            edit(root / d.name)
    return root


def test_a_dg_target_without_data_is_refused_before_training(tmp_path, fixture_root):
    root = _root_without(fixture_root, tmp_path, "imagenet-sketch")
    out = tmp_path / "dg"
    proc = fewclip("run", *common(tmp_path, root), "--dataset", "imagenet", "--method", "clip_adapter",
                   "--protocol", "dg", "--eval", "imagenet_v2", "imagenet_sketch", "--shots", 1, "--seed", 1,
                   "--out", out)
    refused(proc, "imagenet-sketch")
    assert not out.exists() and not (tmp_path / "features").exists()


def test_a_bad_later_cell_stops_the_whole_batch_before_the_first_cell(tmp_path, fixture_root, cli):
    cli("split", "--data-root", fixture_root, "--dataset", "dtd", "--shots", 1, "--seed", 1,
            "--out", tmp_path / "m1.json", check=True)  # the 2-shot manifest is missing
    # a method that uses the few-shot sample (zero-shot runs one cell for every K and seed)
    proc = cli("run", *common(tmp_path, fixture_root), "--dataset", "dtd", "--method", "linear_probe",
                   "--shots", 1, 2, "--seed", 1, "--out", tmp_path / "runs/{shots}", "--manifest",
                   tmp_path / "m{shots}.json")
    refused(proc, "m2.json")
    assert not (tmp_path / "runs").exists()


def test_yaml_exponent_learning_rates_are_floats(finished):
    from fewclip.methods import get_method, resolve_hparams

    metrics = json.loads((finished[1] / "metrics.json").read_text())
    assert metrics["hparams"]["lr"] == pytest.approx(1e-3)  # `--set lr=1e-3` (YAML 1.1 reads a string)
    hp = resolve_hparams(get_method("coop"), "dtd", 1, "clean", {"lr": "2e-3", "warmup_lr": "1E-5"}, "fewshot")
    assert hp["lr"] == 0.002 and hp["warmup_lr"] == 1e-5
    from fewclip.errors import ConfigError

    with pytest.raises(ConfigError, match="must be float"):
        resolve_hparams(get_method("coop"), "dtd", 1, "clean", {"lr": "fast"}, "fewshot")


# ----------------------------------------------------------------------------- 3. a run directory is owned


@pytest.mark.parametrize("change, words", [
    (["--shots", "2"], ["another cell", "shots=1", "this cell: 2"]),
    (["--seed", "3"], ["another cell", "seed=1"]),
    (["--method", "tip_adapter"], ["another cell", "method='clip_adapter'"]),
    (["--preset", "official"], ["another cell", "preset='clean'"]),
])
def test_a_finished_run_of_another_cell_is_never_replaced(finished, tmp_path, fixture_root, change, words, cli):
    out = copy_finished(finished, tmp_path)
    before = tree(out)
    args = rerun_args(tmp_path, fixture_root, out)
    flag = change[0]
    if flag in args:
        args[args.index(flag) + 1] = change[1]
    else:
        args += change
    if flag == "--method":
        args = args[:-4]  # tip_adapter has no epochs/lr to set
    refused(cli(*args), *words, str(out))
    assert tree(out) == before


def test_a_rerun_of_the_same_cell_replaces_it_and_leaves_no_scaffolding(finished, tmp_path, fixture_root, cli):
    out = copy_finished(finished, tmp_path)
    (out / "eval_stale").mkdir()  # an old evaluation of this cell that the new run does not make
    (out / "eval_stale" / "metrics.json").write_text("{}")
    cli(*rerun_args(tmp_path, fixture_root, out), check=True)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "predictions.parquet"]


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(finished, tmp_path, fixture_root, cli):
    import platform

    out = copy_finished(finished, tmp_path)
    before = tree(out)
    lock = out / ".fewclip-run.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this test process is the live writer
    os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "started": "now"}).encode())
    try:
        line = refused(cli(*rerun_args(tmp_path, fixture_root, out)), "another fewclip process",
                       f"pid {os.getpid()}", platform.node())
        assert ".fewclip-run.lock" in line
        assert {k: v for k, v in tree(out).items() if k != ".fewclip-run.lock"} == before
    finally:
        os.close(fd)  # the holder "dies": its lock file stays, but the kernel lock is gone
    lock.write_text(json.dumps({"pid": 999999, "host": platform.node(), "started": "yesterday"}))
    proc = cli(*rerun_args(tmp_path, fixture_root, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stale lock" in proc.stderr and "999999" in proc.stderr
    assert not lock.exists()


def test_a_dg_cell_whose_second_target_fails_leaves_nothing_collect_counts(tmp_path, fixture_root, cli):
    runs = tmp_path / "runs"
    out = runs / "dg/tiny/imagenet/zeroshot/1shot/seed1"
    args = ["run", *common(tmp_path, fixture_root), "--backbone-key", "tiny", "--dataset", "imagenet",
            "--method", "zeroshot", "--protocol", "dg", "--eval", "imagenet_v2", "imagenet_sketch",
            "--shots", 1, "--seed", 1, "--out", out]
    cli(*args, check=True)
    shutil.rmtree(out)
    sketch = tmp_path / "features/tiny/imagenet_sketch/test.pt"
    sketch.write_bytes(sketch.read_bytes()[:200])  # the second target's features are corrupt
    refused(cli(*args), "imagenet_sketch", "test.pt")
    assert not out.exists()  # not even eval_imagenet_v2
    # an eval_* result of a cell without its own metrics.json (an older version's crash) is ignored
    (out / "eval_imagenet_v2").mkdir(parents=True)
    (out / "eval_imagenet_v2" / "metrics.json").write_text(json.dumps({"top1": 50.0}))
    proc = cli("collect", "--runs", runs, "--out", tmp_path / "t.parquet")
    refused(proc, "no finished runs")
    assert "skipped" in proc.stderr and "eval_imagenet_v2" in proc.stderr and "has no metrics.json" in proc.stderr
    assert not (tmp_path / "t.parquet").exists()


# ----------------------------------------------------------------------------- 4. checkpoints only when good


def test_the_nan_guard_keeps_only_a_finite_checkpoint(tmp_path, fixture_root, finished, cli):
    shutil.copytree(finished[0] / "features", tmp_path / "features")
    out = tmp_path / "nan"
    proc = cli("run", *common(tmp_path, fixture_root), "--backbone-key", "tiny", "--dataset", "dtd",
                   "--method", "clip_adapter", "--shots", 1, "--seed", 1, "--out", out,
                   "--set", "epochs=3", "--set", "lr=1e30")
    line = refused(proc, "training stopped", "last good checkpoint is kept", "finite", "lower the learning rate")
    assert "nan" in line.lower() or "inf" in line.lower()
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    assert not (out / "metrics.json").exists() and not (out / "checkpoint.pt").exists()


def test_nan_gradients_stop_before_the_poisoned_weights_are_saved(tmp_path):
    from fewclip.engine.train import TrainConfig, train
    from fewclip.errors import FewclipError
    from fewclip.methods import Method

    class Poison(Method):
        name, trains = "poison", True

        def __init__(self):
            super().__init__({})
            self.w = torch.nn.Parameter(torch.ones(3))

        def loss(self, batch, epoch):  # a finite loss (0) whose gradient is NaN, from epoch 2 on
            if epoch < 1:
                return (self.w ** 2).sum()
            return (self.w - self.w.detach()).abs().sqrt().sum()

    ckpt = tmp_path / "train_state.pt"
    cfg = TrainConfig(epochs=3, lr=0.1, identity={"m": "poison"})
    with pytest.raises(FewclipError, match=r"weights became NaN/inf at epoch 2, step 1.*last good checkpoint is kept.*after epoch 1, finite"):
        train(Poison(), lambda e: [None], cfg, torch.device("cpu"), ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 0 and torch.isfinite(state["method"]["w"]).all()
    # and in the first epoch no checkpoint is promised
    ckpt.unlink()
    cfg = TrainConfig(epochs=1, lr=0.1, identity={"m": "poison"})

    class Early(Poison):
        def loss(self, batch, epoch):
            return (self.w - self.w.detach()).abs().sqrt().sum()

    with pytest.raises(FewclipError, match="no checkpoint was written yet"):
        train(Early(), lambda e: [None, None], cfg, torch.device("cpu"), ckpt)
    assert not ckpt.exists()


def test_disk_full_inside_torch_save_keeps_the_previous_file(finished, tmp_path, fixture_root, monkeypatch, capsys):
    """torch.save reports a full disk as a RuntimeError; a rerun of a finished cell hits it."""
    from fewclip import cli

    out = copy_finished(finished, tmp_path)
    before = tree(out)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # half written, then the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    code = cli.main([str(a) for a in rerun_args(tmp_path, fixture_root, out)])
    err = capsys.readouterr().err
    assert code == 2 and "disk full while writing" in err and "Traceback" not in err
    assert tree(out) == before
    assert not [p for p in out.rglob("*.tmp")]


# ----------------------------------------------------------------------------- 5. collect and report


@pytest.fixture()
def runs_tree(tmp_path):
    from test_analysis_fixtures import grid_config, make_runs

    return make_runs(tmp_path, grid_config(seeds=(1,)), n_test=20)


def _collect(run, runs, table, *extra):
    return run("collect", "--runs", runs, "--out", table, *extra)


def test_zero_runs_never_overwrite_a_good_table(runs_tree, tmp_path, cli):
    table = tmp_path / "all_runs.parquet"
    assert _collect(cli, runs_tree, table).returncode == 0
    good = table.read_bytes()
    empty = tmp_path / "empty_runs"
    empty.mkdir()
    refused(_collect(cli, empty, table), "no finished runs", "kept", "--allow-empty")
    assert table.read_bytes() == good
    assert _collect(cli, empty, table, "--allow-empty").returncode == 0
    assert len(pd.read_parquet(table)) == 0


def test_stray_folders_are_skipped_and_named(runs_tree, tmp_path, cli):
    cell = next(runs_tree.glob("fewshot/*/*/*/*shot/seed1"))
    shutil.copytree(cell, cell.parent / "seed1_old")
    shutil.copytree(cell, cell.parent.parent / "2shot.bak" / "seed1")
    table = tmp_path / "t.parquet"
    proc = _collect(cli, runs_tree, table)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"skipped {cell.parent / 'seed1_old' / 'metrics.json'}" in proc.stderr
    assert "2shot.bak" in proc.stderr
    df = pd.read_parquet(table)
    assert not df["run_dir"].str.contains("_old|bak").any()


@pytest.mark.parametrize("content, words", [
    (b"[1, 2, 3]", ["a JSON list", "not an object"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ["binary"]),
    (b'{"top1": 5', ["not valid JSON"]),
    (b'{"note": "hand-written"}', ["no 'top1'"]),
])
def test_unreadable_metrics_are_refused_with_their_path(runs_tree, tmp_path, content, words, cli):
    table = tmp_path / "t.parquet"
    assert _collect(cli, runs_tree, table).returncode == 0
    good = table.read_bytes()
    bad = next(runs_tree.glob("fewshot/*/*/*/*shot/seed1/metrics.json"))
    bad.write_bytes(content)
    refused(_collect(cli, runs_tree, table), str(bad), "previous one is kept", *words)
    assert table.read_bytes() == good


def test_report_refuses_zero_resamples_and_corrupt_parquets(runs_tree, tmp_path, cli):
    table = tmp_path / "t.parquet"
    assert _collect(cli, runs_tree, table).returncode == 0
    report = ["report", "--table", table, "--runs", runs_tree, "--out", tmp_path / "reports"]
    refused(cli(*report, "--n-resamples", "0"), "--n-resamples", "at least 1")
    pred = next(runs_tree.glob("fewshot/*/*/*/*shot/seed1/predictions.parquet"))
    pred.write_bytes(pred.read_bytes()[:50])
    refused(cli(*report, "--n-resamples", "10"), str(pred), "parquet")
    table.write_bytes(table.read_bytes()[:-40])
    refused(cli(*report), str(table), "cannot be read", "fewclip collect")
    assert not (tmp_path / "reports").exists()


# ----------------------------------------------------------------------------- 6. an empty test split


def test_an_empty_test_split_is_an_error_not_zero_accuracy(tmp_path, fixture_root, cli):
    def empty_test(folder):
        split = folder / "split_zhou_DescribableTextures.json"
        data = json.loads(split.read_text())
        data["test"] = []
        split.write_text(json.dumps(data))

    root = _root_without(fixture_root, tmp_path, "dtd", edit=empty_test)
    out = tmp_path / "run"
    proc = cli("run", *common(tmp_path, root), "--dataset", "dtd", "--method", "zeroshot", "--shots", 1,
                   "--seed", 1, "--out", out)
    refused(proc, "test split of dtd is empty", "split file")
    assert not out.exists()


# ----------------------------------------------------------------------------- 7. what is deterministic


def test_provenance_records_the_machine_and_collect_warns_on_mixed_machines(finished, tmp_path, cli):
    metrics = json.loads((finished[1] / "metrics.json").read_text())
    prov = metrics["provenance"]
    assert prov["cpu"] and prov["blas"] and prov["host"]
    runs = tmp_path / "runs"
    for seed, cpu in ((1, prov["cpu"]), (2, "Some Other CPU (aarch64)")):
        d = runs / f"fewshot/tiny/dtd/clip_adapter/1shot/seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({**metrics, "seed": seed, "provenance": {**prov, "cpu": cpu}}))
    proc = _collect(cli, runs, tmp_path / "t.parquet")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "different machines" in proc.stderr and "Some Other CPU" in proc.stderr
    same = tmp_path / "same"
    shutil.copytree(runs / "fewshot/tiny/dtd/clip_adapter/1shot/seed1", same / "fewshot/tiny/dtd/clip_adapter/1shot/seed1")
    assert "different machines" not in _collect(cli, same, tmp_path / "u.parquet").stderr


# ----------------------------------------------------------------------------- 8. the user's umask


@pytest.mark.parametrize("umask, mode", [("022", 0o644), ("007", 0o660)])
def test_files_are_written_with_the_users_umask(tmp_path, fixture_root, umask, mode):
    out = tmp_path / "m.json"
    subprocess.run(["bash", "-c", f'umask {umask}; exec "$0" "$@"', str(BIN / "fewclip"), "split", "--data-root",
                    str(fixture_root), "--dataset", "dtd", "--shots", "1", "--seed", "1", "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert out.stat().st_mode & 0o777 == mode


def test_a_run_directory_is_readable_by_the_group(finished):
    for p in finished[1].iterdir():
        assert p.stat().st_mode & 0o044, p  # not mkstemp's 0600


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, fixture_root, cli, monkeypatch):
    """Root ignores permission bits, so the refusal a read-only disk gives is injected where the
    run writes under --out (creating the folder and the write probe), for any user."""
    import tempfile

    target = tmp_path / "readonly"
    real_mkdir, real_mkstemp = Path.mkdir, tempfile.mkstemp

    def denied(path):
        return Path(path).is_relative_to(target)

    def mkdir(self, *a, **k):
        if denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    def mkstemp(*a, dir=None, **k):
        if dir is not None and denied(dir):
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    proc = cli("run", *common(tmp_path, fixture_root), "--dataset", "dtd", "--method", "zeroshot", "--shots", 1,
               "--seed", 1, "--out", target / "run")
    refused(proc, "not writable", str(target / "run"), "choose another --out")
    assert not (tmp_path / "features").exists() and not target.exists()
