# One-command set-up: every target that runs Python first makes .venv and installs the pinned dependencies
# (only when requirements.txt or constraints.txt changed since the last install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := data/demo
RUNS   := runs/demo
# The demo recipe: ResNet-50 v1.5 on the 32 px digits, one CPU device, 30 epochs (about 4 minutes on 2 cores).
# float32: at 32 px bfloat16 trains slower here (about 185 against 230 img/s; the casts and layout reorders outweigh
# the faster convolutions on such small images); `make demo DEMO_DTYPE=bfloat16` runs it in bfloat16.
DEMO_DTYPE ?= float32
DEMO_TRAIN := -n 1 -b 64 -e 30 -l 0.2 --lr-schedule cosine --warmup-epochs 2 --bn-gamma-init0 --dtype $(DEMO_DTYPE) \
              --data-root $(DEMO) --image-shape 3,32,32 --num-classes 10 --no-random-mirror --min-random-area 0.25 \
              --seed 0 --save-keep 2
DEMO_ARGS ?=

.PHONY: install install-gpu install-horovod demo demo-data mlperf-demo test test-fast bench bench-data bench-train bench-infer \
        bench-gluon bench-optim bench-loadgen clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

# GPU build of MXNet (V100/A100, CUDA 11.2 + cuDNN 8 on the library path) in place of the CPU wheel.
install-gpu: $(STAMP)
	$(PY) -m pip uninstall --quiet -y mxnet
	$(PY) -m pip install --quiet mxnet-cu112==1.9.1 -c constraints.txt

# Horovod for --kv-store horovod: PyPI has only its source, built here against the installed mxnet (Gloo, no MPI; a
# few minutes). For GPUs add HOROVOD_GPU_OPERATIONS=NCCL with CUDA and NCCL installed, after `make install-gpu`.
HOROVOD_BUILD ?= HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
                 HOROVOD_WITHOUT_PYTORCH=1
install-horovod: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt cmake==3.27.9 cloudpickle==3.1.2 psutil==7.2.2 cffi==2.1.1
	$(HOROVOD_BUILD) $(PY) -m pip install --quiet --no-build-isolation -c constraints.txt horovod==0.28.1

$(DEMO)/val.rec: | $(STAMP)
	$(PY) tools/make_demo_data.py --out $(DEMO) --size 32

demo-data: $(DEMO)/val.rec

demo: demo-data
	$(PY) runner $(DEMO_TRAIN) --model-prefix $(RUNS)/model --report $(RUNS)/report.json $(DEMO_ARGS)
	$(PY) tools/plot_report.py $(RUNS)/report.json -o $(RUNS)/curves.png

# MLPerf Training on the digits: 5 time-to-quality runs (target 95% val top-1), each log checked by MLPerf's
# compliance checker, and the olympic score (examples/MLPERF_CPU.sh holds the recipe; MLPERF_ARGS go to each run).
MLPERF_OUT ?= runs/mlperf-demo
MLPERF_RUNS ?= 5
MLPERF_ARGS ?=
mlperf-demo: demo-data
	RESULTS=$(MLPERF_OUT)/results/1xCPU/resnet DATA_ROOT=$(DEMO) RUNS=$(MLPERF_RUNS) examples/MLPERF_CPU.sh \
	    $(MLPERF_ARGS)

test: $(STAMP)
	$(PY) -m pytest

# The in-process tier alone (no toolkit processes started): seconds, for quick checks while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e"

bench-data: $(STAMP)
	$(PY) tools/bench_data.py $(BENCH_DATA_ARGS)

bench-train: $(STAMP)
	$(PY) tools/bench_train.py $(BENCH_TRAIN_ARGS)

# Every inference runtime x precision this CPU runs (MXNet, onnxruntime, OpenVINO; float32, bfloat16, INT8) in one
# table, on the demo's checkpoint (trained first when there is none: `make demo`).
BENCH_INFER_MODEL ?= $(RUNS)/model
bench-infer: demo-data
	test -e $(BENCH_INFER_MODEL)-symbol.json || $(MAKE) demo
	$(PY) tools/bench_runtimes.py --model-prefix $(BENCH_INFER_MODEL) --data-root $(DEMO) $(BENCH_INFER_ARGS)

# The toolkit's float32/bfloat16 scoring executor against the plain executor and a hybridized Gluon ResNet-50 v1.5.
bench-gluon: $(STAMP)
	$(PY) tools/bench_infer.py $(BENCH_GLUON_ARGS)

bench-loadgen: $(STAMP)
	$(PY) tools/bench_loadgen.py $(BENCH_LOADGEN_ARGS)

bench-optim: $(STAMP)
	$(PY) tools/bench_optim.py $(BENCH_OPTIM_ARGS)

bench: bench-train bench-infer bench-gluon bench-data bench-optim bench-loadgen

clean:
	rm -rf $(DEMO) $(RUNS) $(MLPERF_OUT) .pytest_cache bench-out
