"""Time `cnnlab prepare data=image_folder` on a CIFAR-style tree of 60,000 JPEGs.

The tree is ../shared/data/cifar10-train-jpg.tar.gz (50,000 train JPEGs) plus a test/ folder of 10,000 of
those files hard-linked (real JPEG decoding either way); it is built in a temp dir, never in the project.

    .venv/bin/python benchmarks/prepare_image_folder.py [--archive PATH] [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--archive",
               default=Path(__file__).resolve().parents[1] / "../shared/data/cifar10-train-jpg.tar.gz")
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    with tarfile.open(args.archive) as tf:
        tf.extractall(tmp / "tree", filter="data")
    for cls in sorted((tmp / "tree/train").iterdir()):
        (tmp / "tree/test" / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:1000]:
            os.link(f, tmp / "tree/test" / cls.name / f.name)
    n = sum(1 for _ in (tmp / "tree").rglob("*.jpg"))
    cnnlab = Path(sys.executable).with_name("cnnlab")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        subprocess.run([cnnlab, "prepare", "data=image_folder", f"data.root={tmp / 'tree'}",
                        f"paths.prepared_dir={tmp / 'prepared'}", f"paths.log_dir={tmp / 'logs'}"],
                       check=True)
        times.append(time.perf_counter() - t0)
    print(f"{n} images, {os.cpu_count()} cores: {statistics.mean(times):.1f} ± {statistics.stdev(times):.1f} "
          f"s over {len(times)} runs ({n / statistics.mean(times):.0f} images/s)")
