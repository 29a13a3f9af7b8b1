#!/usr/bin/env bash
# Training throughput sweep on CPU, FP32, synthetic data: 1 and 2 CPU devices x batch 8-32 per device; 2 epochs of 20 iterations, the first left out.
# Usage: examples/BENCHMARK_CPU.sh [toolkit dir] [more flags ...]   (NVIDIA's form takes the toolkit dir first; it is optional
# here). Every extra flag goes to the benchmark.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
exec "$root/benchmark.py" -n 1,2 -b 8,16,32 -e 2 -w 1 -i 20 --dtype float32 --data-backend synthetic -o report.json "$@"
