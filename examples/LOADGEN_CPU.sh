#!/usr/bin/env bash
# MLPerf Inference on CPU (no GPU needed), one scenario or a comma list (SingleStream, MultiStream, Server, Offline):
# ResNet-50 v1.5 FP32 with MXNet (DTYPE=bfloat16 on CPUs with AVX512_BF16 or AMX), batch up to 32, 1 SUT thread: the
# performance run (TIME seconds, default 60), then the accuracy run over the whole val set (its top-1 in summary.json).
# QPS (default 10) is Server's target and Offline's expected rate.
# Usage: examples/LOADGEN_CPU.sh [toolkit dir] <scenario> <model prefix> <epoch> [more loadgen.py flags ...]
# Every extra flag goes to both runs, and later flags win: the digits of `make demo` need --data-root data/demo
# --image-shape 3,32,32 --num-classes 10.
#   OUT       output folder (default runs/loadgen/cpu): performance/ and accuracy/, each with LoadGen's logs and
#             summary.json
#   DATA_ROOT the RecordIO folder with val.rec and val.idx (default /data/imagenet/train-val-recordio-passthrough)
#   USER_CONF a LoadGen user.conf: LoadGen's mlperf.conf, then this file, override the settings here (an official run)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
if [[ $# -lt 3 ]]; then
    echo "usage: examples/LOADGEN_CPU.sh [toolkit dir] <scenario> <model prefix> <epoch> [flags ...]" >&2; exit 2
fi
scenario="$1" prefix="$2" epoch="$3"; shift 3
py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
out="${OUT:-runs/loadgen/cpu}"
args=(--scenario "$scenario" --model-prefix "$prefix" --load-epoch "$epoch"
      --data-root "${DATA_ROOT:-/data/imagenet/train-val-recordio-passthrough}" --time "${TIME:-60}"
      --qps "${QPS:-10}" --dtype "${DTYPE:-float32}" --max-batchsize 32 --threads 1)
if [[ -n "${USER_CONF:-}" ]]; then args+=(--user-conf "$USER_CONF"); fi
"$py" "$root/loadgen.py" "${args[@]}" --output "$out/performance" "$@"
exec "$py" "$root/loadgen.py" "${args[@]}" --accuracy --output "$out/accuracy" "$@"
