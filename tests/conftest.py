import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    """All 15 dataset layouts, tiny, written once per session (read-only for tests)."""
    from fewclip.data.fixtures import write_all_fixtures

    root = tmp_path_factory.mktemp("data")
    write_all_fixtures(root)
    return root


def fewclip(*args, cwd=None, env=None, check=False):
    """Run the `fewclip` console script as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run([str(BIN / "fewclip"), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"fewclip {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are far faster on one CPU thread than on several contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def refused(proc, *words, code=2):
    """A clean failure: the exit code, one `error:` line holding every word, no traceback."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    return lines[0]


@pytest.fixture()
def cli(capsys, one_torch_thread):
    """`fewclip ARGS` in this process (the same entry point as the console script, without the
    start-up cost); returns an object like subprocess.CompletedProcess."""
    from types import SimpleNamespace

    from fewclip import cli as entry

    def call(*args, check=False):
        capsys.readouterr()
        try:
            code = entry.main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out = capsys.readouterr()
        if check and code:
            raise AssertionError(f"fewclip {' '.join(map(str, args))} failed:\n{out.err[-3000:]}")
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call
