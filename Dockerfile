# The card's stack: CUDA 11.2 + cuDNN 8 runtime, Python 3.11, mxnet-cu112 1.9.1, DALI, the toolkit.
#
#   docker build -t rn50 .                                                   # GPU image (V100/A100)
#   docker build --build-arg BASE=ubuntu:20.04 --build-arg MXNET=mxnet==1.9.1 -t rn50-cpu .   # CPU image
#   docker run --gpus all --rm -it --ipc=host -v /data/imagenet/train-val-recordio-passthrough:/data/imagenet/train-val-recordio-passthrough rn50 ./runner -n 8 -b 208
#
# Hopper (H100/H200) needs an NGC MXNet container instead: the PyPI GPU wheel has no sm_90 kernels (see docs/gpus.md).
ARG BASE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04
FROM ${BASE}
ARG MXNET=mxnet-cu112==1.9.1

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 RUNNER_NO_VENV=1 MXNET_CUDNN_AUTOTUNE_DEFAULT=0

# Python 3.11 (the version the pins are tested with) from the deadsnakes PPA; libgomp for MXNet's OpenMP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent curl ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 make \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace/rn50
COPY requirements.txt constraints.txt ./
# The CPU wheel comes with requirements.txt; the GPU build replaces it (as `make install-gpu` does).
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt nvidia-dali-cuda120==1.35.0 \
 && if [ "$MXNET" != "mxnet==1.9.1" ]; then pip uninstall -y mxnet && pip install --no-cache-dir "$MXNET"; fi

COPY runner train.py fit.py data.py dali.py datatypes.py resnet.py report.py checkpoint.py memory.py ./
COPY recfile.py common.py gpu.py mlperf.py optim.py dist.py launcher.py benchmark.py loadgen.py Makefile pytest.ini ./
COPY amp.py loadgen_plan.py loadgen_logs.py runtimes.py runtime_mxnet.py runtime_onnxruntime.py runtime_openvino.py calibration.py ./
COPY tools/ tools/
COPY examples/ examples/
COPY tests/ tests/

# NVIDIA's layout: the prepared data set is mounted here (runner's default --data-root).
VOLUME ["/data/imagenet/train-val-recordio-passthrough"]
CMD ["./runner", "--help"]
