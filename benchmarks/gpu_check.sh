#!/usr/bin/env bash
# The GPU check of issue #21, for a machine with a CUDA GPU (the `device` tool when one is lent): embed and
# mix + score images/s per GPU, and the floor ratio with resnet18 at 32x32 and with a torchvision ResNet-50 at
# 224x224, into benchmarks/results/gpu.json (and the floor runs' own gpu_floor_*.json).
#
#   bash benchmarks/gpu_check.sh                 # MNIST from $DATA_ROOT (default ../shared/data)
#   DATA_ROOT=/nowhere bash benchmarks/gpu_check.sh   # no dataset there: a synthetic pool of the same sizes
#
# About 5-8 minutes on one H200 after `make install` (a CUDA build of torch must be what the venv has).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA_ROOT=${DATA_ROOT:-../shared/data}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
"$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
source_args=(--data-root "$DATA_ROOT")
[ -d "$DATA_ROOT/mnist" ] || source_args=(--synthetic)
bench() { timeout 300 "$PY" benchmarks/acquire_bench.py floor --gpu "${source_args[@]}" "$@"; }
bench --arch resnet18 --size 32 --channels 3 --n 50000 --batch 512 --name gpu_floor_resnet18_32
bench --arch torchvision/resnet50 --size 224 --channels 3 --n 10000 --batch 256 --name gpu_floor_resnet50_224
"$PY" benchmarks/acquire_bench.py gpu-summary gpu_floor_resnet18_32 gpu_floor_resnet50_224
