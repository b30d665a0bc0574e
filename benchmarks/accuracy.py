"""Baseline accuracy table: models × datasets × seeds through the real CLI (`cnnlab prepare/train/evaluate`).

    .venv/bin/python benchmarks/accuracy.py [--epochs 3] [--seeds 0 1 2] [--workdir /tmp/cnnlab-bench-acc]
        [--only fashion_mnist|cifar10_jpg] [--models ...]

Fashion-MNIST: the real data (Debian package or download), official test split.
CIFAR-10: ../shared/data/cifar10-train-jpg.tar.gz (the 50,000 training images as JPEG) via `image_folder`;
5,000 held out for validation and 5,000 more carved out as the test split (the official test split is not
there).
Prints a Markdown table of test accuracy (mean ± std over seeds) and wall time per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT / "../shared/data/cifar10-train-jpg.tar.gz"
STUDIES = {
    "fashion_mnist": (["data=fashion_mnist"], ["seed_mlp", "seed_mnist_cnn", "cnn"]),
    "cifar10_jpg": (["data=image_folder", "data.name=cifar10_jpg", "data.val_size=5000",
                     "data.test_size=5000"],
                    ["seed_cifar_cnn", "seed_cifar_cnn_k2", "cnn"]),
}

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
p.add_argument("--workdir", type=Path, default=Path("/tmp/cnnlab-bench-acc"))
p.add_argument("--only", choices=list(STUDIES))
p.add_argument("--models", nargs="+")
p.add_argument("--extra", nargs="*", default=["optimizer=adam", "train.batch_size=128"])
args = p.parse_args()

cnnlab = Path(sys.executable).with_name("cnnlab")
args.workdir.mkdir(parents=True, exist_ok=True)


def sh(*a: str) -> None:
    subprocess.run([str(cnnlab), *a], cwd=args.workdir, check=True, stdout=subprocess.DEVNULL)


rows = []
for study, (data_args, models) in STUDIES.items():
    if args.only and study != args.only:
        continue
    if study == "cifar10_jpg":
        tree = args.workdir / "cifar10_jpg"
        if not tree.is_dir():
            with tarfile.open(CIFAR_TAR) as tf:
                tf.extractall(tree, filter="data")
        data_args = [*data_args, f"data.root={tree}"]
    sh("prepare", *data_args)
    for model in args.models or models:
        accs, times = [], []
        for seed in args.seeds:
            run = f"bench-{study}-{model}-s{seed}"
            t0 = time.perf_counter()
            sh("train", *data_args, f"model={model}", f"seed={seed}", f"run_name={run}",
               f"trainer.max_epochs={args.epochs}", *args.extra)
            times.append(time.perf_counter() - t0)
            sh("evaluate", *data_args, f"model={model}", f"seed={seed}", f"run_name={run}")
            metrics = json.loads((args.workdir / f"reports/{run}/eval/metrics.json").read_text())
            accs.append(metrics["accuracy"])
            print(f"{study} {model} seed {seed}: test acc {accs[-1]:.4f}, train {times[-1]:.0f} s",
                  flush=True)
        rows.append((study, model, accs, times))

print(f"\n| data | model | test accuracy (mean ± std, n={len(args.seeds)}) | train wall time per run |")
print("| --- | --- | --- | --- |")
for study, model, accs, times in rows:
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"| {study} | {model} | {100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} % | "
          f"{statistics.mean(times):.0f} s |")
