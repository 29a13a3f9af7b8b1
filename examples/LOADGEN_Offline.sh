#!/usr/bin/env bash
# MLPerf Inference, Offline scenario: every sample in one query, sized by the expected rate QPS (default 2500);
# metric: samples per second. ResNet-50 v1.5 FP16 on 1 GPU with MXNet (NHWC, as examples/RN50_FP16_*GPU.sh trains
# it), batch up to 208, 2 SUT threads: the performance run (TIME seconds, default MLPerf's 600), then the accuracy run
# over the whole val set (its top-1 in summary.json).
# Usage: examples/LOADGEN_Offline.sh [toolkit dir] <model prefix> <epoch> [more loadgen.py flags ...]
# Every extra flag goes to both runs, and later flags win: e.g. --backend onnxruntime --dtype float32
# --input-layout NCHW --image-shape 3,224,224 serves the ONNX model of tools/export_onnx.py instead.
#   OUT       output folder (default runs/loadgen/Offline): performance/ and accuracy/, each with LoadGen's logs and
#             summary.json
#   DATA_ROOT the RecordIO folder with val.rec and val.idx (default /data/imagenet/train-val-recordio-passthrough)
#   USER_CONF a LoadGen user.conf: LoadGen's mlperf.conf, then this file, override the settings here (an official run)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/loadgen_gpu.sh" Offline --max-batchsize 208 --threads 2 --qps "${QPS:-2500}" -- "$@"
