"""The inference runtimes of ``loadgen.py`` behind one interface, chosen by name: ``--backend NAME`` opens
``runtime_<name>.py`` (imported only then, so a runtime's libraries load only in the runs that use it).

A runtime turns a batch of preprocessed samples (float32, the network's input layout, N first) into the predicted
classes (N integers), and never holds a batch back. What the SUT uses of it (``Runtime``): ``name``, ``hook`` (the
debug hook below), ``describe()`` (what the summary's ``model`` adds: context, batch sizes, providers),
``warm_up(largest)`` (everything a batch of up to ``largest`` samples needs, done before LoadGen's clock starts) and
``predict(x)`` (called from the SUT's worker threads; a runtime that cannot run concurrently locks). A runtime
module has ``load(spec, dcfg, max_batch, threads)``, and one that reads model files ``session(path, threads)``, its
own session on such a file (``open_session``: how ``tools/export_onnx.py`` checks its export).

* ``mxnet`` (``runtime_mxnet.py``): the checkpoint (or random weights) in a Module bound for inference, as
  ``--only-inference`` scores it, at ``--max-batchsize`` and every power of two below it.
* ``onnxruntime`` (``runtime_onnxruntime.py``): an ``InferenceSession`` on ``--model-file`` (input ``data`` N,C,H,W
  float32, first output the class probabilities), as ``tools/export_onnx.py`` writes it, or its INT8 (QDQ) form
  that ``tools/quantize.py`` writes.
* ``openvino`` (``runtime_openvino.py``): OpenVINO's CPU plugin on the same ONNX file in float32 or bfloat16, or on
  the INT8 IR that ``tools/quantize.py`` writes.

Precision (``--dtype``): float32 everywhere; bfloat16 in mxnet and openvino on a CPU with AVX512_BF16 or AMX-BF16;
float16 in mxnet on a GPU; int8 in all three on the files ``tools/quantize.py`` writes (``calibration.py``), each
with a manifest that says so.

``ModelSpec`` is what a runtime is asked to run (the model flags, checked); ``inference_symbol`` is its network as
MXNet builds it, which the mxnet runtime binds and the memory estimate of every runtime counts.

A debug hook for testing the failure path: ``RN50_LOADGEN_FAIL_AFTER=K`` makes ``predict`` raise after K batches of
the test (``hook.armed`` is set when the test starts, so the warm-up is not counted): a real failure in the worker
thread.
"""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from common import UsageError

# --backend NAME -> its module
RUNTIMES = {"mxnet": "runtime_mxnet", "onnxruntime": "runtime_onnxruntime", "openvino": "runtime_openvino"}
FILE_RUNTIMES = ("onnxruntime", "openvino")  # the runtimes that run a model file (--model-file)
FAIL_ENV = "RN50_LOADGEN_FAIL_AFTER"


@dataclass(frozen=True)
class ModelSpec:
    """What the SUT runs: backend, weights, dtype, device, and the model flags it is built from."""
    backend: str
    dtype: str
    device: str  # "cpu" or "gpu"
    model_prefix: Path | None
    load_epoch: int | None
    model_file: Path | None  # onnxruntime, openvino: the model file they run
    num_classes: int
    image_shape: tuple
    input_layout: str
    model: object  # resnet.ModelConfig

    def describe(self) -> dict:
        out = {"backend": self.backend, "dtype": self.dtype, "device": self.device,
               "num_layers": self.model.num_layers, "num_classes": self.num_classes,
               "image_shape": list(self.image_shape)}
        if self.model_file is not None:
            out["model_file"] = str(self.model_file)
        elif self.model_prefix is not None:
            out["checkpoint"] = f"{self.model_prefix}-{self.load_epoch:04d}"
        else:
            out["checkpoint"] = None  # random weights
        return out


class FailHook:
    """``RN50_LOADGEN_FAIL_AFTER=K``: raise in the runtime after K batches of the test (armed when it starts)."""

    def __init__(self):
        text = os.environ.get(FAIL_ENV)
        try:
            self.after = None if text in (None, "") else int(text)
        except ValueError:
            raise UsageError(f"{FAIL_ENV}={text}: expected a number of batches") from None
        self.armed = False
        self.batches = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.after is None or not self.armed:
            return
        with self._lock:
            self.batches += 1
            if self.batches > self.after:
                raise RuntimeError(f"injected failure ({FAIL_ENV}={self.after}: after {self.after} batches)")


class Runtime(Protocol):
    """What the SUT calls (module docstring)."""
    name: str
    hook: FailHook

    def describe(self) -> dict: ...

    def warm_up(self, largest: int) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def inference_symbol(spec: ModelSpec):
    """The network the mxnet runtime binds (float32 NCHW for the file runtimes: what tools/export_onnx.py exports;
    float32 for int8, whose graph comes from the checkpoint: what the memory estimate counts, an upper bound)."""
    import resnet

    dtype = "float32" if spec.dtype == "int8" else spec.dtype
    return resnet.build(spec.model, num_classes=spec.num_classes, image_shape=spec.image_shape, dtype=dtype,
                        input_dtype="float32", input_layout=spec.input_layout, device_type=spec.device,
                        for_training=False)


def _module(name: str):
    if name not in RUNTIMES:
        raise ValueError(f"no runtime {name!r}; the runtimes are {', '.join(RUNTIMES)}")
    return importlib.import_module(RUNTIMES[name])


def open_runtime(name: str, spec: ModelSpec, dcfg, max_batch: int, threads: int) -> Runtime:
    """The runtime ``name`` running ``spec`` on batches of up to ``max_batch`` samples of ``dcfg``'s shape, called
    from ``threads`` threads; a one-line ``UsageError`` for a model it cannot load."""
    return _module(name).load(spec, dcfg, max_batch, threads)


def open_session(name: str, path: Path, threads: int | None = None):
    """The runtime ``name``'s own session on the model file ``path`` (``threads``: its threads, default the cores
    available)."""
    module = _module(name)
    if not hasattr(module, "session"):
        raise ValueError(f"the {name} runtime runs checkpoints, not model files")
    return module.session(path, threads)
