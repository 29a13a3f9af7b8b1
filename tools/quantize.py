#!/usr/bin/env python3
"""Post-training INT8 quantization of a checkpoint (MXNet) or of its ONNX export (onnxruntime, OpenVINO), under
MLPerf's accuracy rule: calibrated on images of the training set, scored against float32 on the validation set, and
written only when INT8 keeps at least 99% of float32's top-1.

    python tools/quantize.py --model-prefix runs/demo/model --load-epoch 30 --data-root data/demo \\
        --image-shape 3,32,32 --num-classes 10                                  # -> runs/demo/model-int8-0030.*
    python tools/quantize.py --backend openvino --model-prefix runs/demo/model --load-epoch 30 ...
                                                                                # -> runs/demo/model-0030-int8.xml

What each backend reads and writes, and the manifest: ``calibration.py``. The steps:

1. ``--calib-images`` records of ``--data-train`` (default ``<data-root>/train.rec``), drawn with ``--calib-seed``,
   decoded and preprocessed as the validation pass does it (LoadGen's sample library: resize, center crop, normalize).
2. The float32 model (``--model-prefix``/``--load-epoch``; for onnxruntime and openvino ``--model-file``, default
   the ``<prefix>-<epoch:04d>.onnx`` of ``tools/export_onnx.py``) quantized with them: ``--calib-mode naive`` or
   ``entropy`` for MXNet; NNCF's min-max statistics for the other two.
3. The INT8 model written to a temporary folder beside ``--output``, then the float32 and the INT8 model scored on
   ``--data-val`` (default ``<data-root>/val.rec``; ``--count`` its first N images) through the runtime as
   ``loadgen.py`` opens it (``runtimes.open_runtime``, batches of ``--batch-size``).
4. INT8 top-1 below 99% of float32's: one line, exit 1, nothing written (``--accept-accuracy-loss`` writes it, and
   the manifest says so). Otherwise the files are moved into place, the manifest last.

Exit status: 0 written; 1 the accuracy rule failed; 2 bad input (flags, a missing checkpoint, model file or
calibration data); 4 a record that cannot be decoded; 5 an output that cannot be written; 130/143 a signal (nothing
written).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (Parser, Stopped, UsageError, available_cores, check_writable, enable_amx, int_list,  # noqa: E402
                    output_error, path_arg, run_main, setup_logging, write_json)

log = logging.getLogger("quantize")
BACKENDS = ("mxnet", "onnxruntime", "openvino")


def build_parser() -> Parser:
    import resnet

    p = Parser(prog="quantize.py", description="INT8 post-training quantization (MXNet oneDNN, onnxruntime QDQ, "
                                               "OpenVINO) under MLPerf's 99%% accuracy rule.")
    p.add_argument("--backend", choices=BACKENDS, default="mxnet", help="the runtime whose INT8 model is made")
    p.add_argument("--model-prefix", type=path_arg, required=True, help="the float32 checkpoint's prefix")
    p.add_argument("--load-epoch", type=int, required=True, help="the checkpoint's number NNNN")
    p.add_argument("--model-file", type=path_arg, default=None,
                   help="onnxruntime, openvino: the float32 ONNX model (default: <prefix>-<epoch:04d>.onnx, as "
                        "tools/export_onnx.py writes it)")
    p.add_argument("--output", type=path_arg, default=None,
                   help="mxnet: the INT8 checkpoint's prefix (default <prefix>-int8); onnxruntime, openvino: the "
                        "INT8 file (default <prefix>-<epoch:04d>-int8.onnx or .xml)")
    p.add_argument("--num-classes", type=int, default=1000, help="number of classes")
    p.add_argument("--image-shape", type=int_list, default=(3, 224, 224), help="C,H,W of the network input")
    resnet.add_model_args(p)
    c = p.add_argument_group("Calibration and scoring")
    c.add_argument("--data-root", type=path_arg, default=None, help="folder with train.rec/.idx and val.rec/.idx")
    c.add_argument("--data-train", type=path_arg, default=None,
                   help="the calibration images' .rec (default <data-root>/train.rec; its .idx beside it)")
    c.add_argument("--data-val", type=path_arg, default=None,
                   help="the scoring images' .rec (default <data-root>/val.rec; its .idx beside it)")
    c.add_argument("--data-val-resize", type=int, default=None,
                   help="resize the shorter side to this before the center crop (default: 256/224 of the crop)")
    c.add_argument("--calib-images", type=int, default=256, help="training images the ranges are measured on")
    c.add_argument("--calib-mode", choices=("naive", "entropy"), default=None,
                   help="mxnet: naive (min/max, the default) or entropy (KL-optimal thresholds); the others use "
                        "NNCF's min-max statistics")
    c.add_argument("--calib-seed", type=int, default=0, help="seed of the draw of calibration images")
    c.add_argument("--batch-size", type=int, default=32, help="batch of calibration and scoring")
    c.add_argument("--count", type=int, default=None, help="score the first N validation images (default: all)")
    c.add_argument("--accept-accuracy-loss", action="store_true",
                   help="write the INT8 model even below 99%% of float32's top-1 (the manifest says so)")
    return p


def check_args(args) -> None:
    for flag, value, low in (("--load-epoch", args.load_epoch, 0), ("--calib-images", args.calib_images, 1),
                             ("--batch-size", args.batch_size, 1), ("--count", args.count, 1),
                             ("--num-classes", args.num_classes, 1), ("--calib-seed", args.calib_seed, 0)):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if args.backend == "mxnet" and args.model_file is not None:
        raise UsageError("--model-file is the ONNX model of --backend onnxruntime or openvino; --backend mxnet "
                         "quantizes --model-prefix/--load-epoch")
    if args.backend != "mxnet" and args.calib_mode == "entropy":
        raise UsageError(f"--calib-mode entropy is MXNet's; --backend {args.backend} calibrates with NNCF's min-max "
                         "statistics (leave --calib-mode out)")
    if args.data_root is None and (args.data_train is None or args.data_val is None):
        raise UsageError("give --data-root (a folder with train.rec and val.rec, made by tools/prepare_dataset.py or "
                         "`make demo-data`), or --data-train and --data-val")


def spec_for(args, dtype: str, model_file: Path | None = None, prefix: Path | None = None):
    """The ``runtimes.ModelSpec`` of one of the two models, as ``loadgen.py`` would make it."""
    import loadgen

    ns = copy.copy(args)
    ns.dtype, ns.input_layout = dtype, "NCHW"
    ns.model_file = model_file if args.backend != "mxnet" else None
    if prefix is not None:
        ns.model_prefix = prefix
    return loadgen.model_spec(ns, gpus=0)


def _score(backend: str, spec, dcfg, val, batch: int) -> float:
    import calibration
    from runtimes import open_runtime

    runtime = open_runtime(backend, spec, dcfg, batch, 1)
    runtime.warm_up(batch)
    return calibration.score(runtime, val, batch)


def main(argv: Sequence[str] | None = None) -> int:
    """SIGINT/SIGTERM stop the work where it is (the staged files are removed): one line, 128 + the signal."""
    def stop(signum, frame):
        raise Stopped(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(argv)
    except Stopped as err:
        print(f"quantize.py: stopped by {err}; nothing was written", file=sys.stderr)
        return 128 + err.signum
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))  # before MXNet loads: all cores, not half
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    enable_amx()
    setup_logging()
    import calibration
    import checkpoint

    fp32 = spec_for(args, "float32", args.model_file)  # the flags checked before any file is read
    dcfg, val, val_rec, train_rec = _data(args)
    model = {"num_layers": fp32.model.num_layers, "resnet_version": fp32.model.resnet_version,
             "num_classes": args.num_classes, "image_channels": fp32.image_shape[0], "dtype": "float32"}
    ckpt = checkpoint.for_scoring(args.model_prefix, args.load_epoch, model)
    output, source = _output(args, ckpt, fp32)
    mode = args.calib_mode or "naive" if args.backend == "mxnet" else "nncf-minmax"

    t0 = time.perf_counter()
    calib = calibration.calibration_set(dcfg, train_rec, args.calib_images, args.calib_seed)
    log.info("calibration: %d images of %s (%s)", len(calib), train_rec, mode)
    top1_fp32 = _score(args.backend, fp32, dcfg, val, args.batch_size)
    log.info("float32 top-1 %.2f%% on %d images of %s", top1_fp32, len(val), val_rec)
    parent = Path(output).parent
    parent.mkdir(parents=True, exist_ok=True)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{Path(output).name}.", suffix=".tmp", dir=parent))
    except OSError as err:
        raise output_error(Path(output), err, "writing the INT8 model") from None
    try:
        meta = {"schema": calibration.SCHEMA, "precision": "int8", "runtime": args.backend, "source": source,
                "quantization": {"granularity": "channel-wise weights, per-tensor activations",
                                 **calib.describe(mode)}}
        if args.backend == "mxnet":
            staged, manifest = _stage_mxnet(args, ckpt, fp32, calib, mode, work / Path(output).name, meta, model)
            int8 = spec_for(args, "int8", prefix=work / Path(output).name)
        else:
            staged, manifest = _stage_file(args, fp32, calib, work, Path(output).name, meta)
            int8 = spec_for(args, "int8", staged[0])
        top1_int8 = _score(args.backend, int8, dcfg, val, args.batch_size)
        meta = calibration.read_manifest(manifest)
        meta["accuracy"] = {"file": str(val_rec), "images": len(val),
                            **calibration.check_rule(top1_fp32, top1_int8, args.accept_accuracy_loss)}
        write_json(manifest, meta)
        moved = _move_into_place(staged + [manifest], parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {', '.join(str(p) for p in moved)}: INT8 top-1 {top1_int8:.2f}% against float32 "
          f"{top1_fp32:.2f}% on {len(val)} images of {val_rec} ({100 * top1_int8 / max(top1_fp32, 1e-9):.2f}%), "
          f"calibrated on {len(calib)} images of {train_rec} ({mode}), {time.perf_counter() - t0:.0f} s")
    return 0


def _data(args):
    """(the validation data config, the validation sample library cut to ``--count``, val.rec, train.rec), every
    file checked before any output is made."""
    import calibration
    import loadgen
    from datatypes import RGB_MEAN, RGB_STD

    val_rec = args.data_val or args.data_root / "val.rec"
    train_rec = args.data_train or args.data_root / "train.rec"
    ns = copy.copy(args)
    ns.data_val, ns.rgb_mean, ns.rgb_std, ns.input_layout = val_rec, RGB_MEAN, RGB_STD, "NCHW"
    dcfg = loadgen.data_config(ns, args.batch_size)
    for given, rec in ((args.data_val, val_rec), (args.data_train, train_rec)):
        if given is None and not rec.is_file():
            raise UsageError(f"--data-root {args.data_root} has no {rec.name} (tools/prepare_dataset.py writes "
                             "train.rec and val.rec, `make demo-data` the digits' set)")
    val = calibration.sample_library(dcfg, val_rec, "--data-val")
    train = calibration.sample_library(dcfg, train_rec, "--data-train")
    if args.calib_images > len(train):
        raise UsageError(f"--calib-images {args.calib_images}: {train_rec} has only {len(train)} records")
    if args.count is not None:
        if args.count > len(val):
            raise UsageError(f"--count {args.count}: {val_rec} has only {len(val)} records")
        val.pairs, val.labels = val.pairs[:args.count], val.labels[:args.count]
    return dcfg, val, val_rec, train_rec


def _output(args, ckpt, fp32) -> tuple:
    """(the INT8 model's prefix or file, the manifest's ``source``), the output checked writable."""
    import calibration
    import checkpoint

    if args.backend == "mxnet":
        output = args.output or calibration.int8_prefix(args.model_prefix)
        check_writable(checkpoint.paths(output, args.load_epoch)["params"], "--output")
        return output, {"checkpoint": ckpt.name, "params_sha256": checkpoint.sha256(ckpt.files["params"])}
    calibration.check_model_file(fp32.model_file, args.backend, "float32")
    output = args.output or calibration.default_model_file(args.model_prefix, args.load_epoch, args.backend, "int8")
    if args.backend == "openvino" and output.suffix != ".xml":
        raise UsageError(f"--output {output}: OpenVINO's IR is an .xml file (with its .bin beside it)")
    check_writable(output, "--output")
    return output, {"checkpoint": ckpt.name, "model_file": str(fp32.model_file),
                    "sha256": checkpoint.sha256(fp32.model_file)}


def _stage_mxnet(args, ckpt, fp32, calib, mode: str, prefix: Path, meta: dict, model: dict):
    """The INT8 checkpoint under ``prefix`` (in the work folder): (its files but the manifest, the manifest)."""
    import calibration
    import checkpoint
    from runtimes import inference_symbol

    sym = inference_symbol(fp32)
    arg, aux = checkpoint.load_for_inference(ckpt, sym, (args.batch_size, *fp32.image_shape))
    qsym, qarg, qaux = calibration.quantize_mxnet(sym, arg, aux, calib, mode, args.batch_size)
    params = {**{f"arg:{k}": v for k, v in qarg.items()}, **{f"aux:{k}": v for k, v in qaux.items()}}
    saved = checkpoint.save(prefix, args.load_epoch, False, symbol=qsym, params=params, write_states=None,
                            meta=meta, model={**model, "dtype": "int8"})
    return [saved.files["symbol"], saved.files["params"]], saved.files["manifest"]


def _stage_file(args, fp32, calib, work: Path, name: str, meta: dict):
    """The INT8 model file(s) of onnxruntime or openvino in the work folder: (the files, the manifest)."""
    import calibration
    import checkpoint

    path = work / name
    if args.backend == "onnxruntime":
        import onnx

        onnx.save(calibration.quantize_onnx(fp32.model_file, calib, work), str(path))
        files = [path]
    else:
        import openvino as ov

        ov.save_model(calibration.quantize_openvino(fp32.model_file, calib), str(path), compress_to_fp16=False)
        files = [path, path.with_suffix(".bin")]
    meta = {**meta, "files": {f.suffix[1:]: {"name": f.name, "bytes": f.stat().st_size, "sha256": checkpoint.sha256(f)}
                              for f in files}}
    manifest = calibration.manifest_path(path)
    write_json(manifest, meta)
    return files, manifest


def _move_into_place(files: list, parent: Path) -> list:
    """Move the staged files into ``parent`` in order (the manifest last)."""
    moved = []
    for f in files:
        dest = parent / f.name
        try:
            os.replace(f, dest)
        except OSError as err:
            raise output_error(dest, err, "writing the INT8 model") from None
        moved.append(dest)
    return moved


if __name__ == "__main__":
    sys.exit(run_main(main))
