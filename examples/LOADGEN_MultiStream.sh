#!/usr/bin/env bash
# MLPerf Inference, MultiStream scenario: 8 samples per query, the next once it is answered; metric: p99 latency
# per query. ResNet-50 v1.5 FP16 on 1 GPU with MXNet (NHWC, as examples/RN50_FP16_*GPU.sh trains it), batch 8: the
# performance run (TIME seconds, default MLPerf's 600), then the accuracy run over the whole val set (its top-1 in
# summary.json).
# Usage: examples/LOADGEN_MultiStream.sh [toolkit dir] <model prefix> <epoch> [more loadgen.py flags ...]
# Every extra flag goes to both runs, and later flags win: e.g. --backend onnxruntime --dtype float32
# --input-layout NCHW --image-shape 3,224,224 serves the ONNX model of tools/export_onnx.py instead.
#   OUT       output folder (default runs/loadgen/MultiStream): performance/ and accuracy/, each with LoadGen's logs and
#             summary.json
#   DATA_ROOT the RecordIO folder with val.rec and val.idx (default /data/imagenet/train-val-recordio-passthrough)
#   USER_CONF a LoadGen user.conf: LoadGen's mlperf.conf, then this file, override the settings here (an official run)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/loadgen_gpu.sh" MultiStream --max-batchsize 8 --threads 1 --samples-per-query 8 -- "$@"
