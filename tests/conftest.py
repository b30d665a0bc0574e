"""Shared fixtures: every test runs in its own temporary working directory (paths.* are relative to it)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.config import compose

CNNLAB = str(Path(sys.executable).with_name("cnnlab"))

# One thread per process: the suite runs as 2 pytest workers on 2 cores, and torch's 2 threads per process on
# an oversubscribed machine ran a Lite0 forward/backward 60x slower than 1 thread (13 s vs 0.2 s).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Slow tests first, so the two workers finish together instead of one running a 4-minute DVC scenario
    alone at the end; tests marked gpu need CUDA: skipped elsewhere (benchmarks/gpu_check.sh runs them on a
    GPU machine)."""
    items.sort(key=lambda item: ("test_pipeline.py" not in item.nodeid, "slow" not in item.keywords))
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cfg():
    """compose(overrides) → the DictConfig a `cnnlab <command> <overrides>` run would get, writing to out/
    unless the overrides name an out_dir (the CLI would make a folder under runs/)."""
    return lambda *overrides: compose(
        [*overrides] if any(o.startswith("out_dir=") for o in overrides) else ["out_dir=out", *overrides])


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `cnnlab` console script as a user would, in `cwd` (default: the current
    directory)."""
    p = subprocess.run([CNNLAB, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"cnnlab {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def synthetic(cfg):
    """Generated data (`data=synthetic`, for tests only) prepared in the test's directory."""
    from cnnlab.stages import prepare

    prepare.run(cfg("data=synthetic"))


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders: what a refused command must leave as it was."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in folders for p in sorted(d.rglob("*")) if p.is_file()}


def refused(args: list[str] | tuple[str, ...], says: str, cwd: Path | None = None) -> str:
    """`cnnlab <args>` as a user runs it: exit 2 and one stderr line `cnnlab <command>: error: ...` that
    says `says`, no traceback. Returns the line."""
    p = run_cli(*args, check=False, cwd=cwd)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"cnnlab {args[0]}: error: ") and says in lines[0], lines[0]
    assert "Traceback" not in p.stdout + p.stderr
    return lines[0]
