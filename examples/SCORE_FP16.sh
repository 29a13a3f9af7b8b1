#!/usr/bin/env bash
# Score a checkpoint on the val set, FP16, 1 GPU, batch 128: prints top-1/top-5, img/s and latency.
# Usage: examples/SCORE_FP16.sh [toolkit dir] [more flags ...]   (NVIDIA's form takes the toolkit dir first; it is optional
# here). Every extra flag goes to the runner.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
if [[ $# -lt 2 ]]; then echo "usage: examples/SCORE_FP16.sh [toolkit dir] <model prefix> <epoch> [flags ...]" >&2; exit 2; fi
prefix="$1" epoch="$2"; shift 2
exec "$root/runner" -n 1 -b 128 --only-inference --model-prefix "$prefix" --load-epoch "$epoch" -e 1 "$@"
