"""Style transfer speed: wall time of `iterations` evaluations (forward + backward + L-BFGS) at each size with
the default config (offline EfficientNet-Lite0), mean ± std over `--repeats` runs, plus the content/style loss
trajectory; then `--ablation`: the median time of one evaluation for each speed-up switched off in turn.

    .venv/bin/python benchmarks/style_speed.py [--sizes 256 512] [--iterations 300] [--repeats 3] [--ablation]
        [key=value ...]   # Hydra overrides of the style config, e.g. style.softmax_features=true

Sizes alternate within each repeat so machine noise (a shared 2-core box) hits them alike; CPU time of the
process is printed next to wall time (other tenants inflate wall time, much less CPU time).
"""
# ruff: noqa: E402 — torch is imported after the OpenMP wait policy is set, as `cnnlab style` does

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import time

from cnnlab.cli import _omp_policy

_omp_policy("style")  # before torch loads OpenMP: the wait policy `cnnlab style` picks (its entry point)

# isort: split
import torch

from cnnlab.config import compose
from cnnlab.stages.style import transfer_settings
from cnnlab.style import feature_net, features, stylise
from cnnlab.style.images import load_image
from cnnlab.style.losses import gram, relative

p = argparse.ArgumentParser()
p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
p.add_argument("--iterations", type=int, default=300)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--ablation", action="store_true")
p.add_argument("overrides", nargs="*")
args = p.parse_args()

cfg = compose(args.overrides)
s = cfg.style
with open("/proc/cpuinfo") as f:
    cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
print(f"{datetime.date.today()} | {cpu}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
      f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {os.getloadavg()[0]:.1f} | "
      f"torch {torch.__version__} | {platform.python_version()} | network {s.network}, layers "
      f"{list(s.content_layers)} / {list(s.style_layers)}, SWAG {s.softmax_features}, {s.optimizer}, "
      f"channels_last {s.channels_last}")
settings = dataclasses.replace(transfer_settings(cfg), iterations=args.iterations)


specs = [s.style] if isinstance(s.style, str) else list(s.style)
images = {n: (load_image(s.content, n, s.min_size)[0], [load_image(x, n, s.min_size)[0] for x in specs])
          for n in args.sizes}
net = feature_net(s.network, settings.content_layers + settings.style_layers, s.weights_path,
                  s.softmax_features, s.softmax_temperature)
weights = [1 / len(specs)] * len(specs)
wall: dict[int, list[float]] = {n: [] for n in args.sizes}
cpu_s: dict[int, list[float]] = {n: [] for n in args.sizes}
for r in range(args.repeats):
    for n in args.sizes:
        c0 = time.process_time()
        res = stylise(net, *images[n][:1], images[n][1], weights, settings, torch.device("cpu"))
        wall[n].append(res.seconds)
        cpu_s[n].append(time.process_time() - c0)
        print(f"  run {r + 1} at {n} px: {res.seconds:.1f} s wall, {cpu_s[n][-1]:.1f} s CPU", flush=True)
        if r == 0:
            marks = sorted({1, *range(50, len(res.history) + 1, 50), len(res.history)})
            traj = ", ".join(f"{i}: {res.history[i - 1]['content']:.3f}/{res.history[i - 1]['style']:.4f}"
                             for i in marks)
            print(f"  loss trajectory at {n} px (evaluation: content/style): {traj}; final (clamped) "
                  f"{res.final['content']:.3f}/{res.final['style']:.4f}")

print(f"load average at the end {os.getloadavg()[0]:.1f}")
if args.repeats:  # --repeats 0: the ablation only
    print("| size | evaluations | wall time, s (mean ± std, n) | CPU time, s | per evaluation, ms |\n"
          "|---|---|---|---|---|")
for n in args.sizes if args.repeats else []:
    m, sd = statistics.mean(wall[n]), statistics.stdev(wall[n]) if len(wall[n]) > 1 else 0.0
    print(f"| {n} px | {args.iterations} | {m:.1f} ± {sd:.1f} (n={len(wall[n])}) | "
          f"{statistics.mean(cpu_s[n]):.1f} | {1000 * m / args.iterations:.0f} |")

if args.ablation:  # one evaluation (forward + losses + backward) at the largest size, each speed-up removed
    n = max(args.sizes)
    content, styles = images[n]

    def per_eval(cl: bool, fold: bool, layers: tuple[list[str], list[str]] | None = None, bf16: bool = False,
                 reps: int = 15):
        keep = features.fold_batchnorm
        if not fold:
            features.fold_batchnorm = lambda m: None
        c_l, s_l = layers or (list(s.content_layers), list(s.style_layers))
        fnet = feature_net(s.network, c_l + s_l, s.weights_path)
        features.fold_batchnorm = keep
        fmt = torch.channels_last if cl else torch.contiguous_format
        fnet = fnet.to(memory_format=fmt)
        x = content[None].clone().contiguous(memory_format=fmt).requires_grad_(True)
        with torch.no_grad():
            f0 = fnet(styles[0][None].contiguous(memory_format=fmt))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                f = fnet(x)
            loss = (sum(relative(f[k], f0[k]) for k in c_l)
                    + sum(relative(gram(f[k]), gram(f0[k])) for k in s_l))
            loss.backward()
            x.grad = None
            times.append(time.perf_counter() - t)
        return statistics.median(times[2:]) * 1000

    variants = {"all on (BN folded, channels_last)": (True, True),
                "BN not folded": (True, False), "channels_last off": (False, True), "neither": (False, False)}
    print(f"| one evaluation at {n} px | median ms (15 runs, 2 warm-up dropped) |\n|---|---|")
    for name, (cl, fold) in variants.items():
        print(f"| {name} | {per_eval(cl, fold):.0f} |", flush=True)
    print(f"| bfloat16 autocast (all else on) | {per_eval(True, True, bf16=True):.0f} |", flush=True)
    full = (["blocks.6"], list(s.style_layers))
    print(f"| untruncated (content layer blocks.6) | {per_eval(True, True, full):.0f} |")
