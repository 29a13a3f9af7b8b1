"""Post-training INT8 quantization for the three inference runtimes, under MLPerf's accuracy rule: calibration on
images of the training set through the validation preprocessing, the INT8 model scored against its float32 source on
the validation set, and a manifest that records both.

What ``tools/quantize.py --backend NAME`` writes (``NAME``'s float32 model in, its INT8 model out):

* ``mxnet``: an INT8 checkpoint ``<prefix>-int8-symbol.json`` + ``<prefix>-int8-NNNN.params`` +
  ``<prefix>-int8-NNNN.json`` (``checkpoint.py``'s manifest, model dtype ``int8``, with a ``quantization`` block).
  MXNet 1.9.1's oneDNN flow (``quantize_model_mkldnn``): the scoring graph's convolutions fused with their batchnorm,
  relu and residual add by the ``MKLDNN_QUANTIZE`` subgraph pass, quantized with channel-wise int8 weights, uint8 or
  int8 activations whose ranges come from the calibration images (``naive``: their min and max; ``entropy``: the
  thresholds that minimize the KL divergence of each layer's histogram), requantization fused in. ``--only-inference
  --dtype int8`` and ``loadgen.py --backend mxnet --dtype int8`` run it.
* ``onnxruntime``: ``<prefix>-NNNN-int8.onnx``, static QDQ quantization by NNCF (its ONNX backend: int8 weights per
  channel, uint8/int8 activations per tensor from min-max statistics of the calibration images, bias correction) of
  the ONNX export after onnxruntime's basic graph optimizations (each batchnorm folded into its convolution, so that
  every QuantizeLinear/DequantizeLinear pair around a convolution becomes one integer convolution).
* ``openvino``: ``<prefix>-NNNN-int8.xml`` + ``.bin``, NNCF's post-training quantization of the OpenVINO model read
  from the ONNX export (the same statistics), saved without compressing the float weights to float16.

The ONNX and IR files have their manifest beside them, ``<file>.json``. Every manifest says which records of which
file calibrated the model (``calibration.records``: positions in its ``.idx``, drawn with ``calibration.seed``), how
(``mode``), from which float32 model (``source``: its files' SHA-256), and the two top-1 scores (``accuracy``). A
model is written only when its top-1 is at least 99% of float32's on the same images (``RULE``), unless
``--accept-accuracy-loss`` says otherwise (the manifest then says so). Runtimes asked for ``--dtype int8`` take only a
model with such a manifest (``check_model_file``, ``checkpoint.check_precision``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

from common import ToolkitError, UsageError, check_bf16_cpu, check_dtype as check_device_dtype

log = logging.getLogger(__name__)

SCHEMA = "rn50-int8/1"
RULE = 0.99  # MLPerf: the INT8 model's top-1 at least 99% of the float32 model's
CALIB_MODES = ("naive", "entropy")
DTYPES = {"mxnet": ("float32", "float16", "bfloat16", "int8"), "onnxruntime": ("float32", "int8"),
          "openvino": ("float32", "bfloat16", "int8")}


class AccuracyError(ToolkitError):
    """The INT8 model fails the accuracy rule: nothing is written."""
    exit_status = 1


# --------------------------------------------------------------------------------------------------------------------
# Names, precisions and the model files' manifests


def int8_prefix(prefix: Path) -> Path:
    """The INT8 checkpoint's prefix beside the float32 one's."""
    return Path(f"{prefix}-int8")


def default_model_file(prefix: Path, epoch: int, backend: str, dtype: str) -> Path:
    """The file onnxruntime or openvino runs without ``--model-file``: ``tools/export_onnx.py``'s export, or the INT8
    model ``tools/quantize.py`` writes beside it."""
    stem = f"{prefix}-{epoch:04d}"
    if dtype != "int8":
        return Path(f"{stem}.onnx")
    return Path(f"{stem}-int8.onnx" if backend == "onnxruntime" else f"{stem}-int8.xml")


def manifest_path(model_file: Path) -> Path:
    return Path(f"{model_file}.json")


def check_dtype(backend: str, dtype: str, device: str) -> None:
    """``--dtype`` against the runtime and the device: a one-line ``UsageError`` naming what runs instead."""
    if dtype not in DTYPES[backend]:
        raise UsageError(f"--dtype {dtype}: --backend {backend} runs {', '.join(DTYPES[backend])}")
    if dtype == "int8":
        if device != "cpu":
            raise UsageError("--dtype int8 is for CPUs (MXNet's INT8 is oneDNN's); on a GPU use --dtype float16")
    elif backend == "mxnet":
        check_device_dtype(dtype, device)
    elif dtype == "bfloat16":
        check_bf16_cpu()


def read_manifest(path: Path) -> dict | None:
    """The JSON manifest at ``path``, None when there is none; a ``UsageError`` when it is not readable."""
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable manifest ({type(err).__name__}); write it again with "
                         "tools/quantize.py") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: not a readable manifest (not a JSON object)")
    return meta


def file_kind(path: Path) -> str:
    """``ir`` (OpenVINO's XML), ``mxnet`` (a checkpoint's symbol or params) or ``onnx`` (anything else: the runtime
    says when it is not)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip().startswith(b"<?xml") or b"<net " in head:
        return "ir"
    if head[:8] == (0x112).to_bytes(8, "little") or path.name.endswith(("-symbol.json", ".params", ".states")):
        return "mxnet"
    return "onnx"


def check_model_file(path: Path, backend: str, dtype: str) -> None:
    """The model file ``path`` exists, is of ``backend``'s kind, and is INT8 (with its manifest) exactly when
    ``dtype`` is: a one-line ``UsageError`` naming ``--model-file`` otherwise."""
    if not path.is_file():
        how = (f"tools/quantize.py --backend {backend} writes it" if dtype == "int8" else
               "export the checkpoint with tools/export_onnx.py PREFIX EPOCH")
        raise UsageError(f"--model-file {path}: file not found ({how})")
    kind = file_kind(path)
    if kind == "mxnet":
        raise UsageError(f"--model-file {path}: an MXNet checkpoint file, not a model {backend} runs; score it with "
                         "--backend mxnet --model-prefix PREFIX --load-epoch N (or export it: tools/export_onnx.py)")
    if kind == "ir" and backend != "openvino":
        raise UsageError(f"--model-file {path}: an OpenVINO IR model; run it with --backend openvino")
    meta = read_manifest(manifest_path(path))
    int8 = meta is not None and meta.get("precision") == "int8"
    if dtype == "int8":
        if not int8:
            raise UsageError(f"--model-file {path}: --dtype int8 takes an INT8 model with its manifest "
                             f"{manifest_path(path).name}, and there is none; make one with tools/quantize.py "
                             f"--backend {backend}")
        if meta.get("runtime") != backend:
            raise UsageError(f"--model-file {path}: quantized for --backend {meta.get('runtime')}, not {backend}")
    elif int8:
        raise UsageError(f"--model-file {path}: an INT8 model ({manifest_path(path).name}); run it with --dtype int8")


# --------------------------------------------------------------------------------------------------------------------
# Calibration images and scoring


@dataclasses.dataclass
class CalibrationSet:
    """``images`` (N, C, H, W float32): records ``records`` of ``rec``, preprocessed as the validation pass does."""
    rec: Path
    records: list
    seed: int
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, mode: str) -> dict:
        return {"mode": mode, "images": len(self), "file": str(self.rec), "bytes": self.rec.stat().st_size,
                "seed": self.seed, "records": self.records,
                "preprocessing": "validation (resize the shorter side, center crop, normalize)"}


def sample_library(val_dcfg, rec: Path, flag: str):
    """``loadgen.SampleLibrary`` over ``rec`` with ``val_dcfg``'s preprocessing; a ``UsageError`` naming ``flag``
    for a missing file or index."""
    from loadgen import SampleLibrary

    idx = rec.with_suffix(".idx")
    if not rec.is_file():
        raise UsageError(f"{flag} {rec}: file not found (tools/prepare_dataset.py writes train.rec and val.rec, "
                         "`make demo-data` the digits' set)")
    if not idx.is_file():
        raise UsageError(f"{flag} {rec}: its index {idx.name} is missing (tools/prepare_dataset.py writes it beside "
                         "the .rec)")
    return SampleLibrary(dataclasses.replace(val_dcfg, data_val=rec, data_val_idx=idx), None)


def calibration_set(val_dcfg, rec: Path, count: int, seed: int) -> CalibrationSet:
    """``count`` records of ``rec`` (the training set), drawn with ``seed``, through the validation preprocessing."""
    if count < 1:
        raise UsageError(f"--calib-images {count}: must be at least 1")
    lib = sample_library(val_dcfg, rec, "--data-train")
    if count > len(lib):
        raise UsageError(f"--calib-images {count}: {rec} has only {len(lib)} records")
    chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(len(lib), count, replace=False))
    lib.load(chosen)
    return CalibrationSet(rec, chosen, seed, lib.batch(chosen))


def score(runtime, lib, batch: int) -> float:
    """Top-1 (percent) of ``runtime`` on every sample of ``lib``, in batches of ``batch`` (loaded and freed as it
    goes)."""
    good = 0
    for start in range(0, len(lib), batch):
        chunk = list(range(start, min(start + batch, len(lib))))
        lib.load(chunk)
        good += int((runtime.predict(lib.batch(chunk)) == lib.labels[chunk]).sum())
        lib.unload(chunk)
    return 100.0 * good / max(1, len(lib))


def check_rule(top1_fp32: float, top1_int8: float, accept: bool) -> dict:
    """MLPerf's rule on the two scores: the manifest's ``accuracy`` block, or ``AccuracyError``."""
    ratio = top1_int8 / top1_fp32 if top1_fp32 > 0 else 1.0
    out = {"top1_float32": round(top1_fp32, 4), "top1_int8": round(top1_int8, 4), "ratio": round(ratio, 5),
           "rule": f"int8 top-1 >= {RULE:g} x float32 top-1", "passes": ratio >= RULE}
    if ratio < RULE:
        if not accept:
            raise AccuracyError(f"INT8 top-1 {top1_int8:.2f}% is {100 * ratio:.2f}% of float32's {top1_fp32:.2f}%, "
                                f"below MLPerf's {100 * RULE:g}%: nothing written (try more --calib-images or "
                                "--calib-mode entropy; --accept-accuracy-loss writes it anyway)")
        log.warning("INT8 top-1 %.2f%% is %.2f%% of float32's %.2f%%, below %g%%: written as "
                    "--accept-accuracy-loss asks", top1_int8, 100 * ratio, top1_fp32, 100 * RULE)
        out["accepted_below_rule"] = True
    return out


# --------------------------------------------------------------------------------------------------------------------
# The quantizers: float32 model and calibration images in, INT8 model out (in memory)


def quantize_mxnet(sym, arg: dict, aux: dict, calib: CalibrationSet, mode: str, batch: int):
    """MXNet's oneDNN INT8 model of ``sym`` (the scoring graph) with ``arg``/``aux``: (symbol, arg, aux)."""
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_model_mkldnn

    it = mx.io.NDArrayIter(calib.images, np.zeros(len(calib), np.float32), batch_size=min(batch, len(calib)),
                           label_name="softmax_label")
    qlog = logging.getLogger("mxnet.quantization")
    qlog.setLevel(logging.WARNING)  # it logs every layer's threshold at INFO
    return quantize_model_mkldnn(sym, arg, aux, ctx=mx.cpu(), excluded_sym_names=[], calib_mode=mode,
                                 calib_data=it, num_calib_examples=len(calib), quantized_dtype="auto",
                                 quantize_mode="smart", quantize_granularity="channel-wise", logger=qlog)


@contextlib.contextmanager
def _nncf_quiet():
    """NNCF writes its log and progress bars to stdout (its handler is made at import): to stderr here, so that a
    tool's stdout holds its result alone."""
    with contextlib.redirect_stdout(sys.stderr):
        import nncf

        nncf.set_log_level(logging.WARNING)
        yield nncf


def _nncf_dataset(calib: CalibrationSet, as_dict: bool):
    import nncf

    items = [calib.images[i:i + 1] for i in range(len(calib))]  # one image per item: subset_size counts images
    return nncf.Dataset(items, (lambda x: {"data": x}) if as_dict else None)


def quantize_onnx(src: Path, calib: CalibrationSet, workdir: Path):
    """NNCF's static QDQ quantization of the ONNX model ``src`` after onnxruntime's basic optimizations: an ONNX
    ``ModelProto``."""
    import onnx
    import onnxruntime as ort

    folded = workdir / "folded.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds batchnorm into the convs
    opts.optimized_model_filepath = str(folded)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    with _nncf_quiet() as nncf:
        return nncf.quantize(onnx.load(str(folded)), _nncf_dataset(calib, True), subset_size=len(calib))


def quantize_openvino(src: Path, calib: CalibrationSet):
    """NNCF's post-training INT8 quantization of the OpenVINO model read from ``src``: an ``openvino.Model``."""
    import openvino as ov

    with _nncf_quiet() as nncf:
        return nncf.quantize(ov.Core().read_model(str(src)), _nncf_dataset(calib, False), subset_size=len(calib))
