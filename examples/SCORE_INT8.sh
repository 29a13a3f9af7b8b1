#!/usr/bin/env bash
# Score an INT8 checkpoint (tools/quantize.py writes it: <prefix>-int8) on the val set, 1 CPU device, batch 64: prints top-1/top-5, img/s and latency.
# Usage: examples/SCORE_INT8.sh [toolkit dir] <INT8 model prefix> <epoch> [more flags ...]   (every extra flag goes to the
# runner). MXNet's INT8 is oneDNN's: CPU only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
if [[ $# -lt 2 ]]; then echo "usage: examples/SCORE_INT8.sh [toolkit dir] <INT8 model prefix> <epoch> [flags ...]" >&2; exit 2; fi
prefix="$1" epoch="$2"; shift 2
exec "$root/runner" -n 1 -b 64 --dtype int8 --only-inference --model-prefix "$prefix" --load-epoch "$epoch" -e 1 "$@"
