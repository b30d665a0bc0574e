"""The GPU check's steps (run by benchmarks/gpu_check.sh, which installs what the machine lacks first):

1. tests   — the GPU tests (tests/test_gpu.py: it imports nothing the kit lacks);
2. fast    — `experiment=fast_cifar10 trainer=gpu` (bf16, channels_last, torch.compile) on the CIFAR-10 JPEG
             archive, one run per epoch budget: test accuracy with TTA, wall time, so time to 90 % and the
             plateau can be read off;
3. loop    — training-loop throughput, cnnlab's Lightning loop against a hand-written one (benchmarks/
             throughput.py --device cuda);
4. style   — `cnnlab style` at 512 px.

Each step's outcome (or its one-line error) goes to <out>/gpu_check.json and a Markdown table on stdout; a
failed step does not stop the others, and the exit status is 1 when any failed. `--cpu` runs the same steps
on the CPU at toy sizes (tiny net, 1 epoch, 64 px style): it proves the kit's wiring, its figures mean
nothing (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from fast_seeds import main as fast_seeds  # noqa: E402

CNNLAB = [sys.executable, "-m", "cnnlab"]


def sh(*cmd: str, cwd: Path = ROOT) -> str:
    """Run a command; its stdout, or one line with the tail of its output when it fails."""
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:4])}… exited {p.returncode}: {' | '.join(tail)}")
    return p.stdout


def tests(a: argparse.Namespace) -> dict:
    out = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py")
    return {"summary": out.strip().splitlines()[-1]}


def fast(a: argparse.Namespace) -> dict:
    over = ["experiment=fast_cifar10", "data=image_folder", f"data.root={a.data}"]
    if a.cpu:  # toy sizes: the wiring, not the figures
        over += ["data.val_size=100", "data.test_size=100", "model.net.widths=[8,16,16]",
                 "model.net.init_images=200", "train.batch_size=64", "train.eval_batch_size=100"]
    else:
        over += ["trainer=gpu", "train.channels_last=true", "train.compile=true"]
    runs = []
    for epochs in a.epochs:
        [row] = fast_seeds(["--workdir", str(a.out / "fast"), "--seeds", "0", "--name", f"e{epochs}", "--",
                            *over, f"trainer.max_epochs={epochs}"])
        runs.append(row)
    hit = [r for r in runs if r["test_acc"] >= 0.90]
    best = max(runs, key=lambda r: r["test_acc"])
    return {"runs": runs,
            "to_90": {k: hit[0][k] for k in ("epochs", "train_wall_s", "epochs_s")} if hit else None,
            "plateau": {k: best[k] for k in ("epochs", "test_acc", "train_wall_s", "epochs_s")}}


def loop(a: argparse.Namespace) -> dict:
    n, repeats = ("2048", "1") if a.cpu else ("51200", "3")
    out = sh(sys.executable, "benchmarks/throughput.py", "--device", "cpu" if a.cpu else "cuda", "--n", n,
             "--repeats", repeats, "--batch-sizes", "512")
    m = re.search(r"cnnlab +(\d+) img/s, hand loop +(\d+) img/s, ratio ([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"unexpected output of throughput.py: {out.strip()[-200:]}")
    return {"cnnlab_img_s": int(m[1]), "hand_img_s": int(m[2]), "ratio": float(m[3])}


def style(a: argparse.Namespace) -> dict:
    size = ["style.size=64", "style.iterations=5"] if a.cpu else ["style.size=512"]
    sh(*CNNLAB, "style", *size, "tracking.enabled=false", f"out_dir={a.out / 'style'}", cwd=a.out)
    [metrics] = (a.out / "style").glob("*/metrics.json")
    return json.loads(metrics.read_text())


STEPS: dict[str, Callable[[argparse.Namespace], dict]] = {"tests": tests, "fast": fast, "loop": loop,
                                                           "style": style}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    ap.add_argument("--data", default=str(ROOT / "benchmarks/gpu_kit/cifar10-train-jpg.tar.gz"),
                    help="the CIFAR-10 JPEG archive (or its folder)")
    ap.add_argument("--epochs", type=int, nargs="+",
                    help="one fast_cifar10 run each (default 5 10 16; --cpu: 1)")
    ap.add_argument("--cpu", action="store_true", help="toy sizes on the CPU: proves the wiring")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    a = ap.parse_args(argv)
    a.out = a.out.resolve()
    a.epochs = a.epochs or ([1] if a.cpu else [5, 10, 16])
    if not a.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --cpu for the toy run)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    device = (platform.processor() or "cpu") if a.cpu else torch.cuda.get_device_name()
    results: dict = {"env": {"python": platform.python_version(), "torch": torch.__version__,
                             "device": device, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_mode": a.cpu}}
    for name in a.steps:
        t0 = time.perf_counter()
        try:
            results[name] = {"ok": True, **STEPS[name](a)}
        except Exception as e:  # noqa: BLE001 — one step's failure is recorded; the others still run
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"gpu_check: {name}: {'ok' if results[name]['ok'] else results[name]['error']} "
              f"({results[name]['seconds']} s)", flush=True)
    (a.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(summary(results))
    return 0 if all(results[n]["ok"] for n in a.steps) else 1


def summary(r: dict) -> str:
    lines = [f"GPU check on {r['env']['device']} (torch {r['env']['torch']}, {r['env']['date']})", "",
             "| step | result | seconds |", "| --- | --- | --- |"]
    for name, v in r.items():
        if name == "env":
            continue
        if not v["ok"]:
            text = v["error"]
        elif name == "tests":
            text = v["summary"]
        elif name == "fast":
            text = "; ".join(f"{x['epochs']} ep: {100 * x['test_acc']:.2f} % in {x['train_wall_s']} s "
                             f"(epochs {x['epochs_s']} s)" for x in v["runs"])
        elif name == "loop":
            text = f"cnnlab {v['cnnlab_img_s']} img/s vs hand loop {v['hand_img_s']} (ratio {v['ratio']})"
        else:
            text = f"{v.get('iterations')} evaluations in {v.get('time_s')} s"
        lines.append(f"| {name} | {text} | {v['seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
