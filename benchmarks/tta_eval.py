"""Evaluation speed with test-time augmentation: seconds to predict 10,000 images (6 passes each) with a
trained model, as `cnnlab evaluate evaluate.tta=true` does (`predict_logits`), at each batch size; best of
`--repeats` (this machine is shared; the fastest repeat is the least disturbed). The model is any source
`evaluate.ckpt` takes: a checkpoint (eager PyTorch) or its export's model.onnx (onnxruntime). The images are
the prepared val + test splits of the run's data, repeated when there are fewer.

    .venv/bin/python benchmarks/tta_eval.py --ckpt <run>/model/best.ckpt --data <workdir>/data/prepared/<name>
        [--images 10000] [--batch-sizes 250 500 2000] [--repeats 3]     # or --ckpt <run>/export/model.onnx
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnlab.data.prepared import load_split
from cnnlab.evaluation.inference import open_model, predict_logits

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--images", type=int, default=10_000)
ap.add_argument("--batch-sizes", type=int, nargs="+", default=[250, 500, 2000])
ap.add_argument("--repeats", type=int, default=3)
a = ap.parse_args()

model = open_model(a.ckpt, torch.device("cpu"))
images = torch.cat([load_split(a.data, s).images for s in ("val", "test")])
images = images.repeat(-(-a.images // len(images)), 1, 1, 1)[: a.images]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(images)} images "
      f"{tuple(images.shape[1:])}, {a.ckpt}")
for bs in a.batch_sizes:
    for tta in (False, True):
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            predict_logits(model, images, bs, tta=tta)
            times.append(time.perf_counter() - t0)
        print(f"batch {bs:5d} tta={tta!s:5}: {min(times):6.2f} s  ({len(images) / min(times):6.0f} img/s; "
              f"repeats {', '.join(f'{t:.2f}' for t in times)})", flush=True)
