#!/usr/bin/env bash
# Training throughput sweep, FP16: 1, 4, 8 GPUs x batch 64-208 per GPU; 2 epochs of 100 iterations, the first left out.
# Usage: examples/BENCHMARK_FP16.sh [toolkit dir] [more flags ...]   (NVIDIA's form takes the toolkit dir first; it is optional
# here). Every extra flag goes to the benchmark.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
exec "$root/benchmark.py" -n 1,4,8 -b 64,128,192,208 -e 2 -w 1 -i 100 -o report.json "$@"
