#!/usr/bin/env bash
# Every benchmark in sequence (each needs the whole machine for honest timings), then the summary.
# Usage: bash benchmarks/run_all.sh [DATA_ROOT]   (default ../shared/data). Results: benchmarks/results/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
PY=.venv/bin/python
$PY benchmarks/acquire_bench.py knn --data-root "$DATA"
$PY benchmarks/acquire_bench.py floor --data-root "$DATA" --arch small_cnn
$PY benchmarks/train_bench.py --data-root "$DATA"
$PY benchmarks/acquire_bench.py floor --data-root "$DATA" --arch resnet18
$PY benchmarks/acquire_bench.py scale --sizes 10000 100000 1000000
$PY benchmarks/acquire_bench.py summary
