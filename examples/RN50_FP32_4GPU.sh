#!/usr/bin/env bash
# ResNet-50 v1.5, FP32, 4 GPU(s), batch 96 per GPU, NVIDIA's 90-epoch recipe.
# Usage: examples/RN50_FP32_4GPU.sh [toolkit dir] [more flags ...]   (NVIDIA's form takes the toolkit dir first; it is optional
# here). Every extra flag goes to the runner.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
exec "$root/runner" -n 4 -b 96 --dtype float32 --model-prefix model "$@"
