#!/usr/bin/env bash
# Inference throughput and latency, FP16, 1 GPU, batch 1 to 208; 3 passes of 100 batches, the first left out.
# Usage: examples/INFER_BENCHMARK_FP16.sh [toolkit dir] [more flags ...]   (NVIDIA's form takes the toolkit dir first; it is optional
# here). Every extra flag goes to the benchmark.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
exec "$root/benchmark.py" -n 1 -b 1,2,4,64,128,192,208 --only-inference -e 3 -w 1 -i 100 -o report.json "$@"
