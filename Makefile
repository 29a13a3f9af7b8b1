# One-command set-up: every target that runs Python first makes .venv and installs the pinned dependencies
# (only when requirements.txt or constraints.txt changed since the last install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := data/demo

.PHONY: install install-gpu demo demo-data test bench bench-data clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

# GPU build of MXNet (V100/A100, CUDA 11.2 + cuDNN 8 on the library path) in place of the CPU wheel.
install-gpu: $(STAMP)
	$(PY) -m pip uninstall --quiet -y mxnet
	$(PY) -m pip install --quiet mxnet-cu112==1.9.1 -c constraints.txt

$(DEMO)/val.rec: | $(STAMP)
	$(PY) tools/make_demo_data.py --out $(DEMO) --size 32

demo-data: $(DEMO)/val.rec

demo: demo-data
	@echo "demo data set ready in $(DEMO)/: train/val .rec + .idx + .lst, classes.txt"

test: $(STAMP)
	$(PY) -m pytest

bench-data: $(STAMP)
	$(PY) tools/bench_data.py $(BENCH_DATA_ARGS)

bench: bench-data

clean:
	rm -rf $(DEMO) .pytest_cache bench-out
