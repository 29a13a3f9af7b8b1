#!/usr/bin/env bash
# The two runs of examples/LOADGEN_<scenario>.sh, ResNet-50 v1.5 FP16 on 1 GPU with MXNet (NHWC, as
# examples/RN50_FP16_*GPU.sh trains it): the performance run (TIME seconds, default MLPerf's 600), then the accuracy
# run over the whole val set (its top-1 in summary.json). OUT, DATA_ROOT and USER_CONF as those scripts say.
# Usage: examples/loadgen_gpu.sh <scenario> [its flags ...] -- [toolkit dir] <model prefix> <epoch> [flags ...]
set -euo pipefail
scenario="$1"; shift
own=()
while [[ $# -gt 0 && "$1" != "--" ]]; do own+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the --
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
if [[ $# -lt 2 ]]; then
    echo "usage: examples/LOADGEN_${scenario}.sh [toolkit dir] <model prefix> <epoch> [flags ...]" >&2; exit 2
fi
prefix="$1" epoch="$2"; shift 2
py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
out="${OUT:-runs/loadgen/$scenario}"
args=(--scenario "$scenario" --model-prefix "$prefix" --load-epoch "$epoch"
      --data-root "${DATA_ROOT:-/data/imagenet/train-val-recordio-passthrough}" --time "${TIME:-600}"
      --dtype float16 --input-layout NHWC --conv-layout NHWC --batchnorm-layout NHWC --pooling-layout NHWC
      --image-shape 4,224,224 --fuse-bn-relu 1 --fuse-bn-add-relu 1 "${own[@]}")
if [[ -n "${USER_CONF:-}" ]]; then args+=(--user-conf "$USER_CONF"); fi
"$py" "$root/loadgen.py" "${args[@]}" --output "$out/performance" "$@"
exec "$py" "$root/loadgen.py" "${args[@]}" --accuracy --output "$out/accuracy" "$@"
