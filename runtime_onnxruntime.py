"""The ``onnxruntime`` runtime of ``loadgen.py`` (``runtimes.py`` has the interface): an ``InferenceSession`` on
``--model-file`` (default ``<model-prefix>-<epoch:04d>.onnx``, as ``tools/export_onnx.py`` writes it; with ``--dtype
int8`` ``<model-prefix>-<epoch:04d>-int8.onnx``, its QDQ form that ``tools/quantize.py`` writes): input ``data``
(N, C, H, W) float32, any N, first output the class probabilities (the predicted class is their argmax).

``session`` is the toolkit's one way to open its ONNX models (``tools/export_onnx.py`` checks its export with it,
through ``runtimes.open_session``): CUDA first where this onnxruntime has it, then the CPU. The SUT's worker
threads run their batches at once, each on ``cores // --threads`` intra-op threads. A file onnxruntime cannot load,
or whose input or classes are not those of the flags, is a one-line ``UsageError`` naming ``--model-file``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common import UsageError, available_cores
from runtimes import FailHook, ModelSpec


def session(path: Path, threads: int | None = None):
    """An onnxruntime ``InferenceSession`` on ``path`` with ``threads`` intra-op threads (default: the cores
    available)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cores()
    opts.log_severity_level = 3  # mx2onnx's models would warn once per initializer
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OnnxRuntime:
    """A ``session`` on ``spec.model_file``, checked against the flags. Sessions run concurrently from several
    threads."""

    def __init__(self, spec: ModelSpec, threads: int):
        self.name = "onnxruntime"
        self.hook = FailHook()
        per_thread = max(1, available_cores() // threads)
        try:
            self.session = session(spec.model_file, per_thread)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... for a file it cannot load
            reason = [ln for ln in str(err).splitlines() if ln.strip()]
            raise UsageError(f"--model-file {spec.model_file}: onnxruntime cannot load it "
                             f"({(reason or ['?'])[-1][:200]})") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        want = [spec.image_shape[0], spec.image_shape[1], spec.image_shape[2]]
        if inp.name != "data" or list(inp.shape[1:]) != want:
            raise UsageError(f"--model-file {spec.model_file}: its input is {inp.name} {inp.shape}, this run feeds "
                             f"data [N, {', '.join(map(str, want))}]; check --image-shape (or export the model with "
                             "tools/export_onnx.py)")
        if len(out.shape) == 2 and isinstance(out.shape[1], int) and out.shape[1] != spec.num_classes:
            raise UsageError(f"--model-file {spec.model_file}: it has {out.shape[1]} classes, --num-classes is "
                             f"{spec.num_classes}")
        self.input = inp.name

    def describe(self) -> dict:
        return {"providers": self.session.get_providers()}

    def warm_up(self, largest: int) -> None:
        shape = self.session.get_inputs()[0].shape[1:]
        for n in sorted({1, largest}):
            self.session.run(None, {self.input: np.zeros((n, *shape), np.float32)})

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.hook.check()
        probs = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0]
        return probs.argmax(axis=1)


def load(spec: ModelSpec, dcfg, max_batch: int, threads: int) -> OnnxRuntime:
    """``runtimes.open_runtime``'s entry (the session takes any batch: ``dcfg`` and ``max_batch`` are not needed)."""
    return OnnxRuntime(spec, threads)
