#!/usr/bin/env bash
# MLPerf Training, closed division: NVIDIA's v2.0 recipe for 8 x A100 (MXNet + DALI). Per-GPU batch 408 (global
# 3264), LARS with LR 10.5 and 2 warmup epochs, polynomial decay (power 2) to 1e-4 over 37 epochs, weight decay 5e-5,
# label smoothing 0.1, evaluation every 4 epochs at offset 2 (epochs 3, 7, ..., 35), target 75.9% top-1, fp16 NHWC,
# dali-gpu. One run; tools/mlperf_score.py runs and scores five (see README "MLPerf Training").
# Usage: examples/MLPERF_8GPU.sh [toolkit dir] [more flags ...]   e.g. --mlperf-log results/dgxa100/resnet/result_0.txt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -gt 0 && -d "$1" && -x "$1/runner" ]]; then root="$1"; shift; fi
exec "$root/runner" -n 8 -b 408 -e 37 --global-lr 10.5 --dtype float16 --data-backend dali-gpu \
    --mlperf --optimizer lars --lr-schedule poly --warmup-epochs 2 --wd 5e-5 --mom 0.9 --label-smoothing 0.1 \
    --eval-period 4 --eval-offset 2 --target-accuracy 0.759 --submission-division closed \
    --submission-platform 8xA100 "$@"
