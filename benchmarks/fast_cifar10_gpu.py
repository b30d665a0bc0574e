"""Time-to-94% on CIFAR-10 with one GPU, one command (needs data/raw/cifar-10-python.tar.gz in --workdir or
internet for the download):

    .venv/bin/python benchmarks/fast_cifar10_gpu.py [--workdir /tmp/fast_gpu] [--seeds 0 1 2 3 4]

Runs `experiment=fast_cifar10 trainer=gpu` (bf16, channels_last, torch.compile, data resident on the GPU)
through the same CLI as any run. The wall time includes process start-up and compilation (the first epoch);
`epochs_s` is the sum of the per-epoch times; airbench's 3.09 s on an A100 counts neither start-up nor
compilation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fast_seeds import main as seeds  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/fast_gpu")
    ap.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"])
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=10")
    a = ap.parse_args()
    seeds(["--workdir", a.workdir, "--target", "94", "--seeds", *a.seeds, "--", "experiment=fast_cifar10",
           "trainer=gpu", "train.channels_last=true", "train.compile=true", *a.overrides])
