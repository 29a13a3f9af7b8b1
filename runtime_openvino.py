"""The ``openvino`` runtime of ``loadgen.py`` (``runtimes.py`` has the interface): OpenVINO's CPU plugin on the
toolkit's ONNX export (``tools/export_onnx.py``: input ``data`` N,C,H,W float32, first output the class
probabilities) or on the OpenVINO IR (``.xml`` + ``.bin``) that ``tools/quantize.py --backend openvino`` writes.

Precision (``--dtype``): ``float32`` and ``bfloat16`` run the float32 model with OpenVINO's
``INFERENCE_PRECISION_HINT`` ``f32`` or ``bf16`` (bfloat16 only where the CPU has AVX512_BF16 or AMX-BF16, the rule
of ``common.check_dtype``); ``int8`` runs the quantized IR, whose manifest (``calibration.check_model_file``) says it
is one.

Threads: the compiled model has one stream per SUT worker thread (``--threads``), the cores shared between them
(``INFERENCE_NUM_THREADS``), and each worker thread its own infer request, so the workers' batches run at once (one
stream with every core is OpenVINO's LATENCY configuration, one stream per core its THROUGHPUT one). A batch runs
whole, any size (the model's batch dimension is dynamic). A file OpenVINO cannot read, or whose input or classes are
not those of the flags, is a one-line ``UsageError`` naming ``--model-file``.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from common import UsageError, available_cores, last_line
from runtimes import FailHook, ModelSpec

PRECISION_HINT = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}  # int8: the layers left in float run in f32


def compile_model(path: Path, threads: int | None = None, streams: int = 1, dtype: str = "float32"):
    """OpenVINO's compiled model of ``path`` on the CPU: ``streams`` streams sharing ``threads`` threads (default
    the cores available), ``dtype``'s precision hint."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    config = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT", "NUM_STREAMS": str(streams),
              "INFERENCE_NUM_THREADS": str(threads or available_cores()),
              "INFERENCE_PRECISION_HINT": PRECISION_HINT[dtype]}
    return core.compile_model(model, "CPU", config)


def session(path: Path, threads: int | None = None):
    """``runtimes.open_session``'s entry: a float32 compiled model of ``path`` with one stream."""
    return compile_model(path, threads)


class OpenVinoRuntime:
    """A compiled model with one stream and one infer request per SUT worker thread."""

    def __init__(self, spec: ModelSpec, threads: int):
        self.name = "openvino"
        self.hook = FailHook()
        self.dtype = spec.dtype
        self.streams = max(1, min(threads, available_cores()))
        try:
            self.compiled = compile_model(spec.model_file, None, self.streams, spec.dtype)
        except Exception as err:  # OpenVINO raises RuntimeError (and its own subclasses) for a file it cannot read
            raise UsageError(f"--model-file {spec.model_file}: OpenVINO cannot load it ({last_line(err)[:200]})") \
                from None
        inp, out = self.compiled.inputs[0], self.compiled.outputs[0]
        shape = inp.get_partial_shape()
        want = [spec.image_shape[0], spec.image_shape[1], spec.image_shape[2]]
        got = [d.get_length() if d.is_static else None for d in list(shape)[1:]] if shape.rank.is_static else []
        if got != want:
            raise UsageError(f"--model-file {spec.model_file}: its input is {shape}, this run feeds data "
                             f"[N, {', '.join(map(str, want))}]; check --image-shape (or export the model with "
                             "tools/export_onnx.py)")
        classes = out.get_partial_shape()
        if classes.rank.is_static and len(classes) == 2 and classes[1].is_static \
                and classes[1].get_length() != spec.num_classes:
            raise UsageError(f"--model-file {spec.model_file}: it has {classes[1].get_length()} classes, "
                             f"--num-classes is {spec.num_classes}")
        self.sample_shape = tuple(want)
        self._local = threading.local()
        self._requests = []
        self._lock = threading.Lock()

    def describe(self) -> dict:
        import openvino as ov

        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return {"openvino": ov.get_version().split("-")[0], "streams": self.streams,
                "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                "precision_hint": hint.get_type_name() if isinstance(hint, ov.Type) else str(hint)}  # f32, bf16

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
            with self._lock:
                self._requests.append(req)
        return req

    def warm_up(self, largest: int) -> None:
        for n in sorted({1, largest}):
            self._request().infer({0: np.zeros((n, *self.sample_shape), np.float32)})

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.hook.check()
        req = self._request()
        req.infer({0: np.ascontiguousarray(x, np.float32)}, share_inputs=True)  # no copy of the batch
        return req.get_output_tensor(0).data.argmax(axis=1)


def load(spec: ModelSpec, dcfg, max_batch: int, threads: int) -> OpenVinoRuntime:
    """``runtimes.open_runtime``'s entry (any batch runs: ``dcfg`` and ``max_batch`` are not needed)."""
    return OpenVinoRuntime(spec, threads)
