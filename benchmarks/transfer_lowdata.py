"""Low-data transfer learning (issue 4): 100 training images per class, the best scratch model vs
EfficientNet-Lite0 (ImageNet weights, offline) as a linear probe and fine-tuned, each given the same
wall-clock training budget (Lightning's `max_time`), n seeds, through the real CLI (prepare → train →
evaluate, test split). Also the frozen backbone's feature-extraction throughput (images/s) at the input sizes
used.

    .venv/bin/python benchmarks/transfer_lowdata.py --workdir /tmp/cnnlab-transfer --budget 90 --seeds 0 1 2

Validation: the first 1,024 of the 5,000 validation images each epoch (a low-data study has little to
validate on, and a full pass would eat the budget of the slow models); best checkpoint by val/acc; test: all
10,000 Fashion-MNIST test images. Constant learning rate (a schedule would need the epoch count in advance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CNNLAB = str(Path(sys.executable).with_name("cnnlab"))
LITE0 = ["model=efficientnet_lite0", "optimizer=adamw"]
MODELS = {  # run name → overrides; scratch: the seed notebook's CNN
    "scratch": ["model=seed_mnist_cnn", "optimizer=adam", "optimizer.lr=1e-3"],
    "lite0-probe": [*LITE0, "model.net.mode=linear_probe", "optimizer.lr=1e-2"],  # head only: a larger lr
    "lite0-finetune": [*LITE0, "model.net.mode=finetune", "optimizer.lr=1e-3"],  # backbone at 0.1 × lr
}


def cli(workdir: Path, *args: str) -> None:
    subprocess.run([CNNLAB, *args], cwd=workdir, check=True, stdout=subprocess.DEVNULL)


@torch.no_grad()
def feature_throughput(size: int, batch: int = 256, repeats: int = 5) -> float:
    """Images/s through the frozen Lite0 trunk + pooling (no head), eval mode, fp32, one process."""
    from cnnlab.models.pretrained import TransferNet

    net = TransferNet(in_shape=(1, 28, 28), num_classes=10, image_size=size, mode="linear_probe").eval()
    x = torch.rand(batch, 1, 28, 28)
    net.features(x)  # warm-up (oneDNN picks its kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net.features(x)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cnnlab-transfer"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=90, help="training wall time per run, s")
    ap.add_argument("--image-size", type=int, default=64, help="Lite0 input size (28 px images upsampled)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--throughput-sizes", type=int, nargs="*", default=[64, 128, 224])
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    common = ["data=fashion_mnist", "tracking.enabled=false", "scheduler=none",
              f"train.per_class={a.per_class}", "train.batch_size=64", "trainer.max_epochs=1000",
              f"trainer.max_time={{seconds:{a.budget}}}", "trainer.limit_val_batches=1"]
    cli(a.workdir, "prepare", "data=fashion_mnist")
    results: dict[str, list[dict]] = {}
    for seed in a.seeds:  # seeds outermost: a load change on this shared machine hits every model alike
        for name, overrides in MODELS.items():
            size = [f"model.net.image_size={a.image_size}"] if name.startswith("lite0") else []
            over = [*common, *overrides, *size, f"seed={seed}", f"run_name=lowdata-{name}-s{seed}"]
            t0 = time.perf_counter()
            cli(a.workdir, "train", *over)
            wall = time.perf_counter() - t0
            cli(a.workdir, "evaluate", *over, "evaluate.gradcam=0")
            rep = a.workdir / "reports" / over[-1].split("=", 1)[1]
            train = json.loads((rep / "train/metrics.json").read_text())
            acc = json.loads((rep / "eval/metrics.json").read_text())["accuracy"]
            row = {"model": name, "seed": seed, "test_acc": acc, "epochs": train["epochs"],
                   "train_s": train["time_s"], "process_s": round(wall, 1)}
            results.setdefault(name, []).append(row)
            print(json.dumps(row), flush=True)

    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
    print(f"\n| model | test accuracy (mean ± std, n={len(a.seeds)}) | epochs in {a.budget} s | per seed |")
    print("| --- | --- | --- | --- |")
    for name, rows in results.items():
        accs = [100 * r["test_acc"] for r in rows]
        print(f"| {name} | {statistics.mean(accs):.2f} ± {sd(accs):.2f} % | "
              f"{'/'.join(str(r['epochs']) for r in rows)} | {', '.join(f'{x:.2f}' for x in accs)} |")
    for size in a.throughput_sizes:
        print(f"feature extraction at {size} px: {feature_throughput(size):.0f} img/s")


if __name__ == "__main__":
    main()
