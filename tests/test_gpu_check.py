"""benchmarks/gpu_check.sh, the one-command GPU check, in its CPU mode: every step runs for real at toy sizes
(synthetic images: a test, not a benchmark), so the kit is known to work before a GPU machine is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def kit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cpu_mode_runs_every_step(workdir):
    rng = np.random.default_rng(0)
    for c in range(10):  # synthetic CIFAR-shaped image folder: 10 classes × 40 random 32×32 images
        d = workdir / "imgs/train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    p = kit("--cpu", "--data", str(workdir / "imgs"), "--out", str(workdir / "out"))
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads((workdir / "out/gpu_check.json").read_text())
    assert all(r[step]["ok"] for step in ("tests", "fast", "loop", "style")), r
    assert "skipped" in r["tests"]["summary"] or "passed" in r["tests"]["summary"]
    [run] = r["fast"]["runs"]
    assert run["epochs"] == 1 and 0 <= run["test_acc"] <= 1 and run["train_wall_s"] > 0
    assert r["loop"]["ratio"] > 0 and r["style"]["iterations"] == 5
    assert "| fast | 1 ep:" in p.stdout  # the Markdown summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_mode_without_a_gpu_says_so(workdir):
    p = kit("--out", str(workdir / "out"))
    assert p.returncode == 2 and "no CUDA device here" in p.stderr
    assert not (workdir / "out").exists()
