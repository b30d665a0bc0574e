"""Tests that need a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs them on a GPU machine). This
file imports only what the GPU check's kit installs (no MLflow, no DVC): a bare GPU image can collect it."""

from __future__ import annotations

import pytest

from cnnlab.stages import train


@pytest.mark.gpu
def test_gpu_profile_bf16_channels_last_trains_and_resumes(cfg, workdir, synthetic):
    """trainer=gpu (bf16-mixed, data resident on the GPU): a run learns, and a resumed run continues it."""
    over = ("debug=tiny", "trainer=gpu", "train.channels_last=true", "tracking.enabled=false", "out_dir=g")
    assert train.run(cfg(*over, "trainer.max_epochs=2")) > 0.3
    train.run(cfg(*over, "trainer.max_epochs=3", "resume=true"))
    rows = (workdir / "g/train/history.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3 epochs
