#!/usr/bin/env python3
"""Export a checkpoint of the toolkit to ONNX (``mx.onnx.export_model``) for serving outside MXNet, and check the
exported model against the checkpoint on real images before it is put in place.

    python tools/export_onnx.py runs/demo/model 30 --image-shape 3,32,32 --data-val data/demo/val.rec
    python tools/export_onnx.py /ckpt/rn50 90 -o /models/rn50.onnx

The checkpoint (``PREFIX-symbol.json`` + ``PREFIX-NNNN.params``) is found and verified as ``--only-inference`` finds it
(``checkpoint.for_scoring``: the manifest's sizes and SHA-256, the model it records). The graph exported is the
inference ResNet rebuilt by ``resnet.get_symbol`` in float32, NCHW, without fused operators: the classifier's output
(the logits) followed by ``softmax``, not the training graph's ``SoftmaxOutput`` (whose label input mx2onnx cannot
convert) nor its training-only parts (fp16/bf16 casts, NHWC transposes, fused batchnorm+relu, which ONNX runtimes do not
need or know). The weights are made to fit it (``checkpoint.load_for_inference``, as LoadGen's mxnet runtime loads
them): float32, and convolution weights of an NHWC graph (NVIDIA's FP16 recipe) transposed from OHWI to OIHW, as the
checkpoint's own ``-symbol.json`` says. The model, depth and class count come from the checkpoint's manifest;
``--num-layers``, ``--resnet-version`` and ``--num-classes`` are needed only for plain MXNet weights without one (and
must agree with it otherwise).

The ONNX model: input ``data`` (N, C, H, W) float32, RGB, normalized as validation does it ((x - mean) / std, the
ImageNet statistics on the 0-255 scale; C = 4 adds the zero channel of NVIDIA's FP16 recipe), N symbolic (any batch);
outputs ``probabilities`` and ``logits``, both (N, classes). The weights are initializers only, not graph inputs, so
runtimes can fold constants.

The check: the exported model in onnxruntime (CPU; a session opened as LoadGen's onnxruntime runtime opens it,
``runtimes.open_session``) and the checkpoint in MXNet (a Module bound for inference) score the same batch: the first
``--check-images`` images of ``--data-val`` through the toolkit's validation pipeline (``dali-cpu``: resize the shorter
side to 256/224 of the crop, center crop, normalize), or without ``--data-val`` the two photographs shipped in
scikit-learn, preprocessed the same way. The model is written (to a temporary file, renamed into place) only when every
image's top-1 class agrees and the logits differ by at most ``--atol`` + ``--rtol`` x the largest |logit| (float32
rounding grows with the activations: a checkpoint early in training, whose batchnorm statistics are still near their
initial values, can have logits in the thousands).

Exit status: 0 when exported and checked; 1 when the check failed (nothing written); 2 for bad input (flags, a
missing or damaged checkpoint); 4 for a record of ``--data-val`` that cannot be decoded; 5 for an output that cannot
be written.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import check_image_shape as common_check_image_shape  # noqa: E402
from common import (Parser, ToolkitError, UsageError, atomic_path, available_cores, check_writable,  # noqa: E402
                    finite_float, int_list, path_arg, run_main)
from runtimes import open_session  # noqa: E402

DEFAULT_SHAPE = (3, 224, 224)
DEFAULT_ATOL = 1e-3  # |logit difference| accepted, plus DEFAULT_RTOL x the largest |logit|
DEFAULT_RTOL = 1e-5  # float32 rounding measured: 5e-7 to 1.2e-6 of the largest |logit| (ResNet-50, 32 and 224 px)
# the model of weights without a manifest, unless the flags say otherwise
DEFAULTS = {"num_layers": 50, "resnet_version": "1.5", "num_classes": 1000, "image_channels": 3}
OUTPUTS = ("probabilities", "logits")
BATCH_DIM = "N"
BATCHNORM_OPS = ("BatchNorm", "_contrib_BatchNormWithReLU", "BatchNormAddRelu")  # plain and fused (resnet.py)
LAYER_OPS = ("Convolution", "Pooling", "FullyConnected", *BATCHNORM_OPS)
LAYER_ATTRS = ("kernel", "stride", "pad", "num_filter", "num_hidden", "pool_type", "global_pool", "eps", "fix_gamma")


class CheckFailed(ToolkitError):
    """The exported model does not score like the checkpoint (``run_main`` prints it as one line, exit 1)."""

    exit_status = 1


@dataclass(frozen=True)
class InferenceModel:
    """A checkpoint made ready for export: the float32 NCHW inference symbol (outputs ``OUTPUTS``) and the weights
    that fit it."""
    name: str  # the checkpoint's files without their suffixes, e.g. runs/demo/model-0030
    symbol: object  # mx.sym.Symbol
    arg: dict
    aux: dict
    num_layers: int
    resnet_version: str
    num_classes: int
    image_channels: int


def default_output(prefix: Path, epoch: int) -> Path:
    """``PREFIX-NNNN.onnx``, beside the checkpoint."""
    import checkpoint

    return Path(checkpoint.name(Path(prefix), epoch) + ".onnx")


def check_image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as C,H,W for the exported model (``common.check_image_shape``: ResNet's five halvings need 32 px)."""
    return common_check_image_shape(shape, min_side=32)


def load(prefix: Path, epoch: int, num_layers: int | None = None, num_classes: int | None = None,
         resnet_version: str | None = None, image_channels: int | None = None) -> InferenceModel:
    """The checkpoint ``epoch`` of ``prefix`` as an ``InferenceModel``. Arguments left None are taken from its
    manifest (``DEFAULTS`` for weights without one); those given must agree with it. The rebuilt graph must have
    the checkpoint's own layers (kernels, strides, batchnorm epsilon, ...; ``PREFIX-symbol.json``). Every fault is a
    one-line ``UsageError`` naming the file or the flag."""
    import mxnet as mx

    import checkpoint
    import resnet

    given = {"num_layers": num_layers, "resnet_version": resnet_version, "num_classes": num_classes,
             "image_channels": image_channels}
    try:
        ckpt = checkpoint.for_scoring(Path(prefix), epoch, {k: v for k, v in given.items() if v is not None})
    except UsageError as err:  # its messages name train.py's flags for what are this tool's arguments here
        raise UsageError(str(err).replace(f"--load-epoch {epoch}:", f"EPOCH {epoch}:", 1)
                         .replace("--model-prefix", "PREFIX")) from None
    saved = ckpt.meta.get("model") or {}
    model = {k: v if v is not None else saved.get(k, DEFAULTS[k]) for k, v in given.items()}
    path = ckpt.files["symbol"]
    nodes = _saved_nodes(path)
    eps = next((float(n["attrs"]["eps"]) for n in nodes if n["op"] in BATCHNORM_OPS and "eps" in n.get("attrs", {})),
               resnet.ModelConfig.batchnorm_eps)
    train_sym = resnet.get_symbol(num_classes=model["num_classes"], num_layers=model["num_layers"],
                                  version=model["resnet_version"], batchnorm_eps=eps)
    layouts = {f"{n['name']}_weight": n.get("attrs", {}).get("layout") for n in nodes if n["op"] == "Convolution"}
    arg, aux = checkpoint.load_for_inference(ckpt, train_sym, (1, model["image_channels"], 224, 224),
                                             lambda k, v: _to_nchw_float32(v, layouts.get(k)))
    _check_same_layers(path, nodes, json.loads(train_sym.tojson())["nodes"], model)
    logits = train_sym.get_children()[0]  # the classifier's output, below SoftmaxOutput
    symbol = mx.sym.Group([mx.sym.softmax(logits, axis=1, name=OUTPUTS[0]), mx.sym.identity(logits, name=OUTPUTS[1])])
    return InferenceModel(ckpt.name, symbol, arg, aux, **model)


def _saved_nodes(path: Path) -> list[dict]:
    """The nodes of the checkpoint's own symbol (MXNet's JSON)."""
    try:
        return json.loads(path.read_text())["nodes"]
    except FileNotFoundError:
        raise UsageError(f"{path}: not found; a checkpoint is PREFIX-symbol.json with PREFIX-NNNN.params (the "
                         "symbol is written with every checkpoint)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: not a readable MXNet symbol ({type(err).__name__})") from None


def _to_nchw_float32(value, layout: str | None):
    """A weight as the float32 NCHW graph needs it: an NHWC convolution's weight is OHWI, transposed to OIHW (other
    weights and the batchnorm statistics have no layout)."""
    value = value.astype("float32")
    return value.transpose((0, 3, 1, 2)) if layout == "NHWC" else value


def _check_same_layers(path: Path, saved: list[dict], rebuilt: list[dict], model: dict) -> None:
    """A ``UsageError`` when a layer of the checkpoint's symbol is missing from the rebuilt graph or computes
    something else there (layouts, dtypes and fusions aside). ResNet v1 and v1.5 have the same weight shapes; only
    the strides tell them apart."""
    mine = {n["name"]: n.get("attrs", {}) for n in rebuilt}
    for node in saved:
        if node["op"] not in LAYER_OPS:
            continue
        attrs = node.get("attrs", {})
        other = mine.get(node["name"])
        diff = [a for a in LAYER_ATTRS if other is None or attrs.get(a) != other.get(a)]
        if diff:
            got = "is missing" if other is None else f"has {diff[0]} {other.get(diff[0])}"
            raise UsageError(f"{path}: layer {node['name']} ({diff[0]} {attrs.get(diff[0])}) {got} in ResNet-"
                             f"{model['num_layers']} v{model['resnet_version']}; set --num-layers and "
                             "--resnet-version as the checkpoint was trained")


def write_onnx(model: InferenceModel, path: Path, image_shape: Sequence[int] = DEFAULT_SHAPE) -> None:
    """Export ``model`` to ``path`` with a symbolic batch dimension, the weights as initializers only (not graph
    inputs), then ``onnx.checker.check_model``."""
    import mxnet as mx
    import onnx

    c, h, w = check_image_shape(image_shape)
    if c != model.image_channels:
        raise UsageError(f"--image-shape {c},{h},{w}: the checkpoint {model.name} was trained on "
                         f"{model.image_channels}-channel input; give {model.image_channels},{h},{w}")
    mx.onnx.export_model(model.symbol, {**model.arg, **model.aux}, in_shapes=[(1, c, h, w)], in_types=[np.float32],
                         onnx_file_path=str(path), dynamic=True, dynamic_input_shapes=[(None, c, h, w)])
    proto = onnx.load(str(path))
    graph = proto.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]  # mx2onnx leaves constants no node reads
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM  # "N" instead of an unnamed unknown
    for value in graph.output:
        value.type.tensor_type.shape.dim[1].dim_value = model.num_classes
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export(prefix: Path, epoch: int, output: Path | None = None, image_shape: Sequence[int] = DEFAULT_SHAPE,
           num_layers: int | None = None, num_classes: int | None = None,
           resnet_version: str | None = None) -> Path:
    """Export checkpoint ``epoch`` of ``prefix`` to ``output`` (default ``PREFIX-NNNN.onnx``), atomically; returns
    the path. No check against MXNet: the command line (``main``) adds it."""
    output = Path(output) if output is not None else default_output(prefix, epoch)
    model = load(prefix, epoch, num_layers, num_classes, resnet_version, check_image_shape(image_shape)[0])
    with atomic_path(output, "writing the ONNX model") as tmp:
        write_onnx(model, tmp, image_shape)
    return output


# --------------------------------------------------------------------------------------------------------------------
# The check


def val_images(rec: Path, count: int, image_shape: Sequence[int], num_classes: int) -> np.ndarray:
    """The first ``count`` images of the validation set ``rec`` (fewer if it holds fewer), as the validation pass
    gets them (the ``dali-cpu`` pipeline): (n, C, H, W) float32."""
    import mxnet as mx

    import dali
    import data

    cfg = data.resolve(data.DataConfig(data_val=Path(rec), data_backend="dali-cpu", image_shape=tuple(image_shape),
                                       num_classes=num_classes, batch_size=count, dali=dali.DaliConfig()))
    _, it = data.get_iters(cfg, [mx.cpu()], want_train=False, max_batches=1)
    batch = it.next()[0]
    return batch.data[0].asnumpy()[:count - batch.pad]


def sample_images(image_shape: Sequence[int]) -> np.ndarray:
    """The two photographs shipped in scikit-learn (china, flower), preprocessed as validation does: the shorter
    side resized to 256/224 of the crop, center crop, normalized; (2, C, H, W) float32."""
    import cv2
    from sklearn.datasets import load_sample_images

    from datatypes import RGB_MEAN, RGB_STD

    c, h, w = image_shape
    shorter = max(h, round(h * 256 / 224))  # data.resolve's default --data-val-resize
    out = []
    for rgb in load_sample_images().images:
        scale = shorter / min(rgb.shape[:2])
        size = (max(w, round(rgb.shape[1] * scale)), max(h, round(rgb.shape[0] * scale)))
        img = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        img = (img[y:y + h, x:x + w].astype(np.float32) - RGB_MEAN) / RGB_STD
        out.append(img.transpose(2, 0, 1))
    images = np.stack(out).astype(np.float32)
    if c == 4:
        images = np.concatenate([images, np.zeros_like(images[:, :1])], axis=1)
    return images


@dataclass(frozen=True)
class Agreement:
    """How closely onnxruntime scores like MXNet on one batch."""
    images: int
    max_logit_diff: float
    max_prob_diff: float
    top1_agree: int  # images whose top-1 class is the same in both
    max_logit: float  # the largest |logit| (MXNet's): the scale of the rounding differences

    def problem(self, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> str | None:
        """None when the top-1 classes agree and the logits differ by at most ``atol + rtol * max_logit``; else
        what differs."""
        if self.max_logit_diff <= atol + rtol * self.max_logit and self.top1_agree == self.images:
            return None
        return (f"max |logit diff| {self.max_logit_diff:.1e} (allowed: --atol {atol:g} + --rtol {rtol:g} x the "
                f"largest |logit| {self.max_logit:.3g}), top-1 agrees {self.top1_agree}/{self.images}")


def mxnet_outputs(model: InferenceModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) of ``model`` in MXNet: a Module bound for inference on the CPU."""
    import mxnet as mx

    mod = mx.mod.Module(model.symbol, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", images.shape)], for_training=False)
    mod.set_params(model.arg, model.aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    probs, logits = (o.asnumpy() for o in mod.get_outputs())
    return probs, logits


def compare(model: InferenceModel, onnx_path: Path, images: np.ndarray, threads: int | None = None) -> Agreement:
    """Score ``images`` with the ONNX model in onnxruntime and with ``model`` in MXNet."""
    probs, logits = mxnet_outputs(model, images)
    ort_probs, ort_logits = open_session("onnxruntime", onnx_path, threads).run(list(OUTPUTS), {"data": images})
    return Agreement(len(images), float(np.abs(ort_logits - logits).max()), float(np.abs(ort_probs - probs).max()),
                     int((ort_logits.argmax(1) == logits.argmax(1)).sum()), float(np.abs(logits).max()))


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> Parser:
    p = Parser(prog="export_onnx.py", description="Export a checkpoint to ONNX (batch dynamic) and check it against "
                                                  "MXNet on real images.")
    p.add_argument("prefix", type=path_arg, help="checkpoint prefix: PREFIX-symbol.json, PREFIX-NNNN.params")
    p.add_argument("epoch", type=int, help="the checkpoint's number NNNN")
    p.add_argument("-o", "--output", type=path_arg, default=None, help="ONNX file (default: PREFIX-NNNN.onnx)")
    p.add_argument("--image-shape", type=int_list, default=DEFAULT_SHAPE,
                   help="C,H,W of the model input (the ONNX input is N,C,H,W, N any batch)")
    p.add_argument("--num-layers", type=int, default=None,
                   help="ResNet depth (default: the checkpoint's manifest; 50 without one)")
    p.add_argument("--resnet-version", choices=("1.5", "1"), default=None,
                   help="ResNet version (default: the checkpoint's manifest; 1.5 without one)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes (default: the checkpoint's manifest; 1000 without one)")
    p.add_argument("--data-val", type=path_arg, default=None,
                   help="validation .rec (with its .idx beside it) whose first images the check scores (default: "
                        "the two photographs shipped in scikit-learn)")
    p.add_argument("--check-images", type=int, default=8, help="images of --data-val the check scores")
    p.add_argument("--atol", type=finite_float, default=DEFAULT_ATOL,
                   help="|logit difference| between onnxruntime and MXNet the check accepts, plus --rtol x the "
                        "largest |logit|")
    p.add_argument("--rtol", type=finite_float, default=DEFAULT_RTOL,
                   help="the check's allowance per unit of the largest |logit|")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))  # before MXNet loads: all cores, not half
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # binding the check's graph would log the oneDNN fusion
    shape = check_image_shape(args.image_shape)
    if args.epoch < 0:
        raise UsageError(f"EPOCH {args.epoch}: must be at least 0 (the NNNN of PREFIX-NNNN.params)")
    if args.check_images < 1:
        raise UsageError(f"--check-images {args.check_images}: must be at least 1")
    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value < 0:
            raise UsageError(f"{flag} {value:g}: must be at least 0")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes}: must be at least 1")
    if args.data_val is not None:
        idx = args.data_val.with_suffix(".idx")
        for path, what in ((args.data_val, "file not found"), (idx, f"its index {idx.name} is not beside it")):
            if not path.is_file():
                raise UsageError(f"--data-val {args.data_val}: {what} (make the pair with "
                                 "tools/prepare_dataset.py), or leave --data-val out to check on sample photographs")
    logging.basicConfig(level=logging.WARNING, format="export_onnx.py: %(levelname)s: %(message)s")
    model = load(args.prefix, args.epoch, args.num_layers, args.num_classes, args.resnet_version, shape[0])
    output = args.output or default_output(args.prefix, args.epoch)
    check_writable(output, "-o")  # after the checkpoint is found: it makes the output's folder
    if args.data_val is not None:
        images, source = val_images(args.data_val, args.check_images, shape, model.num_classes), args.data_val.name
    else:
        images, source = sample_images(shape), "scikit-learn's sample photographs"
    with atomic_path(output, "writing the ONNX model") as tmp:
        write_onnx(model, tmp, shape)
        agreement = compare(model, tmp, images)
        problem = agreement.problem(args.atol, args.rtol)
        if problem:
            raise CheckFailed(f"{model.name}: the ONNX model does not score like the checkpoint on {agreement.images} "
                              f"images of {source}: {problem}; nothing was written to {output}")
        size = tmp.stat().st_size
    print(f"exported {output} ({size / 2**20:.1f} MiB, batch dynamic): max |logit diff| "
          f"{agreement.max_logit_diff:.1e}, max |prob diff| {agreement.max_prob_diff:.1e} over {agreement.images} "
          f"images of {source}, top-1 agrees {agreement.top1_agree}/{agreement.images}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
