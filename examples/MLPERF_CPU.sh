#!/usr/bin/env bash
# MLPerf Training's whole procedure on a CPU: five time-to-quality runs with different seeds, each log checked by
# MLPerf's compliance checker, and the olympic score. The recipe suits the 32 px digits of `make demo-data` (open
# division: not ImageNet): ResNet-50 v1.5, batch 32, LARS (eta 0.001, momentum 0.9, weight decay 1e-4) with LR 4.0
# for the global batch, 1 warmup epoch, polynomial decay (power 2) to 1e-4 over 5 epochs, random-resized crops from
# half the area or more, no flips, evaluation after every epoch, target 95% val top-1; in the precision that trains
# this recipe faster on the machine (tools/pick_dtype.py: measured once, kept in <output>/dtype.json; float32 where the
# CPU has no bfloat16).
# Usage: examples/MLPERF_CPU.sh [toolkit dir] [more runner flags ...]
#   RESULTS  where result_0..4.txt go (default runs/mlperf-cpu/results/1xCPU/resnet, MLPerf's package layout)
#   DATA_ROOT the RecordIO folder (default data/demo); RUNS the number of runs (default 5)
#   DTYPE    float32 or bfloat16 (default: the faster here, tools/pick_dtype.py)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
results="${RESULTS:-runs/mlperf-cpu/results/1xCPU/resnet}"
out="$(dirname "$(dirname "$(dirname "$results")")")"
py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
dtype="${DTYPE:-}"
if [[ -z "$dtype" ]]; then
    dtype="$("$py" "$root/tools/pick_dtype.py" -b 32 --image-shape 3,32,32 --num-classes 10 --cache "$out/dtype.json")"
fi
exec "$py" "$root/tools/mlperf_score.py" "$results" --runs "${RUNS:-5}" --overwrite --log-dir "$out/logs" \
    --json "$out/score.json" -- \
    -n 1 -b 32 -e 5 --dtype "$dtype" --global-lr 4.0 --optimizer lars --lr-schedule poly --warmup-epochs 1 --mom 0.9 --wd 1e-4 \
    --bn-gamma-init0 --data-root "${DATA_ROOT:-data/demo}" --image-shape 3,32,32 --num-classes 10 \
    --no-random-mirror --min-random-area 0.5 --submission-division open --target-accuracy 0.95 \
    --eval-period 1 --eval-offset 0 --submission-platform 1xCPU "$@"
