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
# Selection quality (issue #6 protocols; hours on 2 cores, resumable: re-run to continue).
for protocol in mnist fashion_mnist cifar10_cpu; do
  $PY benchmarks/select_bench.py run --protocol "$protocol" --data-root "$DATA"
done
$PY benchmarks/select_bench.py ablation --protocol mnist --data-root "$DATA"
$PY benchmarks/select_bench.py ablation --protocol fashion_mnist --data-root "$DATA"
