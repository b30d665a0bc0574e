"""The `fast` recipe over n seeds through the real CLI (prepare → train → evaluate) in a scratch folder:
test accuracy and wall time per seed, then mean ± std (docs/BENCHMARKS.md).

    .venv/bin/python benchmarks/fast_seeds.py --workdir /tmp/fast_fm --seeds 0 1 2
        -- experiment=fast_fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# `python -m cnnlab`, not the console script: benchmarks/gpu_check.sh runs from the source tree, uninstalled
CNNLAB = [sys.executable, "-m", "cnnlab"]


def cli(workdir: Path, *args: str) -> None:
    subprocess.run([*CNNLAB, *args], cwd=workdir, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True, help="scratch folder (data, models, reports)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", default="fast", help="runs are named <name>-seed<N>")
    ap.add_argument("--target", type=float, default=None, help="report how many seeds reach this accuracy")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_cifar10 trainer=gpu")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    over = [*a.overrides, "tracking.enabled=false"]
    cli(a.workdir, "prepare", *over)  # a no-op when the prepared files are there
    rows = []
    for seed in a.seeds:
        name = f"{a.name}-seed{seed}"
        rep = a.workdir / "runs" / name  # one run folder: train/, model/ and eval/
        run = [*over, f"seed={seed}", f"run_name={name}", f"out_dir=runs/{name}"]
        t0 = time.perf_counter()
        cli(a.workdir, "train", *run)
        wall = time.perf_counter() - t0  # the whole `cnnlab train` process: startup, compile, validation
        t0 = time.perf_counter()
        cli(a.workdir, "evaluate", *run, "evaluate.gradcam=0")
        eval_wall = time.perf_counter() - t0  # the whole `cnnlab evaluate` process (TTA when the run sets it)
        train = json.loads((rep / "train/metrics.json").read_text())
        acc = json.loads((rep / "eval/metrics.json").read_text())["accuracy"]
        hist = (rep / "train/history.csv").read_text().splitlines()
        i = hist[0].split(",").index("time_s")
        epochs_s = sum(float(r.split(",")[i]) for r in hist[1:])  # training + validation epochs only
        rows.append({"seed": seed, "test_acc": acc, "train_wall_s": round(wall, 1),
                     "epochs_s": round(epochs_s, 1), "epochs": train["epochs"],
                     "eval_wall_s": round(eval_wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    accs, walls = [r["test_acc"] * 100 for r in rows], [r["train_wall_s"] for r in rows]

    def sd(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    print(f"n={len(rows)}  test accuracy {statistics.mean(accs):.2f} ± {sd(accs):.2f} %  "
          f"train wall {statistics.mean(walls):.1f} ± {sd(walls):.1f} s  ({' '.join(over)})")
    if a.target is not None:
        print(f"{sum(x >= a.target for x in accs)}/{len(accs)} seeds ≥ {a.target} %")
    return rows


if __name__ == "__main__":
    main()
