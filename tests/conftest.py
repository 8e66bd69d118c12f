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
