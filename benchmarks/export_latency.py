"""CPU inference of exported models against eager PyTorch, same process, same threads (docs/BENCHMARKS.md):
batch-1 latency (median, p95) and batch-256 throughput for the seed CIFAR CNN, the `fast` net and
EfficientNet-Lite0 at 224 px, each as eager PyTorch, onnxruntime (model.onnx) and torch.export (model.pt2).
Weights are as built (Lite0's are ImageNet's): speed does not depend on what a model learned.

    .venv/bin/python benchmarks/export_latency.py --workdir /tmp/export_latency --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cnnlab.config import compose
from cnnlab.export import ExportNet, export, onnx_logits, onnx_session
from cnnlab.models import build_model

MODELS = {"seed_cifar_cnn": ([], (3, 32, 32)), "fast": ([], (3, 32, 32)),
          "efficientnet_lite0": (["model.net.image_size=224"], (3, 224, 224))}


def timed(fn, x: torch.Tensor, runs: int) -> list[float]:
    fn(x)  # warm-up: first-call allocations, ORT's graph optimisation
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100, help="batch-1 repetitions")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("| model | runtime | batch 1 median (ms) | batch 1 p95 (ms) | batch 256 (img/s) | vs eager, "
          "batch 1 | vs eager, batch 256 |\n| --- | --- | --- | --- | --- | --- | --- |")
    for name, (overrides, shape) in MODELS.items():
        cfg = compose([f"model={name}", *overrides])
        net = build_model(cfg.model.net, shape, 10).eval()
        c = shape[0]
        images = torch.randint(0, 256, (256, *shape), dtype=torch.uint8)
        folder = a.workdir / name
        export(net, [0.5] * c, [0.25] * c, images[:32], folder, {"classes": [str(i) for i in range(10)]},
               atol=1e-3)
        session = onnx_session(folder / "model.onnx")
        session_opts = session.get_session_options()
        session_opts.intra_op_num_threads = a.threads
        session = type(session)(str(folder / "model.onnx"), session_opts, providers=["CPUExecutionProvider"])
        eager = ExportNet(net, [0.5] * c, [0.25] * c, uint8=True).eval()
        program = torch.export.load(str(folder / "model.pt2")).module()
        runtimes = {"eager": eager, "onnxruntime": lambda x, s=session: onnx_logits(s, x),
                    "torch.export": program}
        base = {}
        for runtime, fn in runtimes.items():
            with torch.inference_mode():
                one = timed(fn, images[:1], a.runs)
                many = timed(fn, images, 3)
            med, p95 = statistics.median(one) * 1e3, sorted(one)[int(0.95 * len(one))] * 1e3
            thr = 256 / statistics.median(many)
            base.setdefault("one", med)
            base.setdefault("many", thr)
            print(f"| {name} | {runtime} | {med:.2f} | {p95:.2f} | {thr:.0f} | {base['one'] / med:.2f}× "
                  f"| {thr / base['many']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
