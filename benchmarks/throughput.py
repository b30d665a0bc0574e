"""Training throughput: cnnlab's loop (Classifier + PreparedData under a Lightning Trainer) vs a hand-written
PyTorch loop over the same in-memory uint8 tensors. Same model (seed_cifar_cnn), optimizer (Adam 1e-3),
normalisation, batch order cost, one process. The two alternate `--repeats` times per batch size so machine
noise hits both alike. Throughput is batch size / the median step-to-step interval (everything between two
optimizer steps: fetch, convert, forward, backward, step, logging), which a burst of noise from other tenants
of this shared machine barely moves; the ratio of the two medians is reported.

    .venv/bin/python benchmarks/throughput.py [--n 10240] [--repeats 5] [--batch-sizes 32 512] [--device cuda]

On a GPU both loops hold the uint8 data on the device (as PreparedData does) and each timestamp waits for
the device (torch.cuda.synchronize), so an interval is a finished step in both.

Images are random uint8 3×32×32 (speed does not depend on content).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cnnlab.config import compose
from cnnlab.data.augment import normalize
from cnnlab.data.loader import PreparedData
from cnnlab.data.prepared import save_split
from cnnlab.models import build_model
from cnnlab.tasks.classifier import Classifier

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=10240)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
p.add_argument("--device", default="cpu", help="cpu or cuda")
args = p.parse_args()
device = torch.device(args.device)


def stamp() -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()

cfg = compose(["model=seed_cifar_cnn"])
shape, mean, std = (3, 32, 32), [0.5] * 3, [0.25] * 3
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (args.n, *shape), dtype=np.uint8)
labels = rng.integers(0, 10, args.n)


class StepTimer(pl.Callback):
    def __init__(self):
        self.stamps = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.stamps.append(stamp())


def median_rate(stamps: list[float], bs: int) -> float:
    return bs / statistics.median(np.diff(stamps[1:]))  # skip the first (warm-up) step


def cnnlab_epoch(data_dir: str, bs: int) -> float:
    torch.manual_seed(0)
    model = Classifier(net=dict(cfg.model.net), in_shape=shape, num_classes=10,
                       class_names=list("abcdefghij"), mean=mean, std=std,
                       optimizer=lambda groups, lr: torch.optim.Adam(groups, lr=lr), lr=1e-3)
    timer = StepTimer()
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                         logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(model, datamodule=PreparedData(data_dir, bs, 1024, drop_last=True))
    return median_rate(timer.stamps, bs)


def hand_epoch(bs: int) -> float:
    torch.manual_seed(0)
    net = build_model(cfg.model.net, shape, 10).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_all, y_all = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    net.train()
    stamps = []
    perm = torch.randperm(args.n, device=device)
    for i in range(0, args.n - bs + 1, bs):
        idx = perm[i:i + bs]
        x, y = normalize(x_all[idx], m, s), y_all[idx]
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stamps.append(stamp())
    return median_rate(stamps, bs)


with tempfile.TemporaryDirectory() as tmp:
    save_split(Path(tmp) / "train.safetensors", images, labels)
    save_split(Path(tmp) / "val.safetensors", images[:64], labels[:64])
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, {args.n} images 3×32×32, "
          "seed_cifar_cnn")
    for bs in args.batch_sizes:
        ours, hand = [], []
        for _ in range(args.repeats):
            hand.append(hand_epoch(bs))
            ours.append(cnnlab_epoch(tmp, bs))
        r = [a / b for a, b in zip(ours, hand)]
        print(f"batch {bs:4d}: cnnlab {statistics.median(ours):7.0f} img/s, "
              f"hand loop {statistics.median(hand):7.0f} img/s, ratio {statistics.median(r):.3f} "
              f"(per-repeat ratios {', '.join(f'{x:.3f}' for x in r)})")
