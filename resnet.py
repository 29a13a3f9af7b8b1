"""Symbolic (``mx.sym``) ResNet: v1.5 by default, v1 on request; depths 18, 34, 50, 101, 152.

ResNet v1.5 is ResNet v1 (He et al., 2015) with the stride of each downsampling bottleneck moved from the first 1x1
convolution to the 3x3 one, so the 3x3 sees every input pixel (about +0.5% top-1, about 5% slower; NVIDIA's
description). ResNet-50 v1.5 with 1000 classes has 25,557,032 trainable parameters (convolutions without bias,
batchnorm gamma/beta, the classifier).

Layouts: the data arrives in ``input_layout``; convolutions, batchnorm and pooling each run in their own layout
(NCHW or NHWC; NHWC needs cuDNN). A transpose is inserted only where the running layout changes, so NVIDIA's FP16
recipe (NCHW input, NHWC everything else) gets exactly one. Dtype: float32 or float16; float32 input is cast when the
network computes in float16, and the classifier output is cast back to float32 before the softmax.

Initialization (He/MSRA): ``Xavier(gaussian, in, 2)`` for convolutions and the classifier, gamma 1 and beta 0 for
batchnorm, and optionally gamma 0 on the last batchnorm of each residual branch (``--bn-gamma-init0``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import mxnet as mx
import numpy as np

from common import UsageError, finite_float

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "bfloat16")
BF16 = np.dtype([("bfloat16", np.uint16)])  # MXNet's bfloat16 (mxnet.contrib.amp.amp.bfloat16)


def add_model_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("Model", "the ResNet symbol")
    g.add_argument("--num-layers", type=int, choices=sorted(DEPTHS), default=50, help="ResNet depth")
    g.add_argument("--resnet-version", choices=("1.5", "1"), default="1.5",
                   help="1.5: stride on the 3x3 conv of each downsampling bottleneck; 1: on the first 1x1")
    g.add_argument("--conv-layout", choices=LAYOUTS, default="NCHW", help="layout of the convolutions")
    g.add_argument("--batchnorm-layout", choices=LAYOUTS, default="NCHW", help="layout of batchnorm")
    g.add_argument("--pooling-layout", choices=LAYOUTS, default="NCHW", help="layout of pooling")
    g.add_argument("--batchnorm-eps", type=finite_float, default=1e-5, help="batchnorm epsilon")
    g.add_argument("--batchnorm-mom", type=finite_float, default=0.9, help="batchnorm moving-average momentum")
    g.add_argument("--bn-gamma-init0", action="store_true",
                   help="start the last batchnorm of every residual branch at gamma 0 (zero-init residual)")
    g.add_argument("--conv-workspace", type=int, default=256, help="convolution workspace, MB (cuDNN)")
    g.add_argument("--fuse-bn-relu", type=int, choices=(0, 1), default=1,
                   help="fuse each batchnorm with the relu after it where the MXNet build has such an operator "
                        "for the devices in use (CPU: oneDNN's BatchNormWithReLU; GPU: NGC builds); otherwise the "
                        "unfused graph, with a log line saying so")
    g.add_argument("--fuse-bn-add-relu", type=int, choices=(0, 1), default=0,
                   help="fuse the last batchnorm of each residual block with the shortcut add and the relu where "
                        "the build has BatchNormAddRelu (NGC GPU containers); otherwise the unfused graph")
    return g


@dataclass(frozen=True)
class ModelConfig:
    """The model flags (field names are the flags' names)."""
    num_layers: int = 50
    resnet_version: str = "1.5"
    conv_layout: str = "NCHW"
    batchnorm_layout: str = "NCHW"
    pooling_layout: str = "NCHW"
    batchnorm_eps: float = 1e-5
    batchnorm_mom: float = 0.9
    bn_gamma_init0: bool = False
    conv_workspace: int = 256
    fuse_bn_relu: int = 1
    fuse_bn_add_relu: int = 0

    def __post_init__(self):
        if not 0 < self.batchnorm_eps < 1:
            raise UsageError(f"--batchnorm-eps {self.batchnorm_eps}: must be in (0, 1)")
        if not 0 <= self.batchnorm_mom < 1:
            raise UsageError(f"--batchnorm-mom {self.batchnorm_mom}: must be in [0, 1)")
        if self.conv_workspace < 1:
            raise UsageError(f"--conv-workspace {self.conv_workspace}: must be at least 1 (MB)")


def bn_relu_fusion(requested: bool, device_type: str) -> str | None:
    """The fused batchnorm+relu to use on ``device_type`` ("cpu"/"gpu"), or None for the unfused graph.

    CPU: the CPU build of MXNet 1.9 has ``_contrib_BatchNormWithReLU`` (oneDNN, CPU kernels only): same parameters
    and outputs as BatchNorm followed by relu, one pass over the activations instead of two (about 2% faster RN50
    training on CPU). GPU: NVIDIA's NGC builds give BatchNorm an ``act_type``; the PyPI GPU builds have neither.
    """
    if not requested:
        return None
    if device_type == "cpu" and hasattr(mx.sym.contrib, "BatchNormWithReLU"):
        return "contrib"
    if device_type == "gpu" and "act_type" in (mx.sym.BatchNorm.__doc__ or ""):
        return "act_type"
    return None


def bn_add_relu_fusion(requested: bool, device_type: str) -> str | None:
    """``"ngc"`` where the build has NVIDIA's fused batchnorm+add+relu (``BatchNormAddRelu``, NGC GPU builds)."""
    if requested and device_type == "gpu" and hasattr(mx.sym, "BatchNormAddRelu"):
        return "ngc"
    return None


def fusion_notes(m: ModelConfig, device_type: str) -> list[str]:
    """One line per fusion flag asked for that this MXNet build cannot honour on ``device_type``."""
    notes = []
    if m.fuse_bn_relu and bn_relu_fusion(True, device_type) is None:
        notes.append(f"--fuse-bn-relu 1: this MXNet build has no fused batchnorm+relu for {device_type.upper()} "
                     "(NGC GPU containers and the CPU build do); using batchnorm, then relu")
    if m.fuse_bn_add_relu and bn_add_relu_fusion(True, device_type) is None:
        notes.append(f"--fuse-bn-add-relu 1: this MXNet build has no BatchNormAddRelu for {device_type.upper()} "
                     "(NGC GPU containers do); using batchnorm, add, relu")
    return notes


class _Builder:
    """Carries the settings and the running layout; inserts a transpose only when the layout changes."""

    def __init__(self, dtype, input_layout, conv_layout, bn_layout, pool_layout, eps, mom, workspace, gamma0,
                 fuse_bn_relu=None, fuse_bn_add_relu=None, bf16_weights=False):
        self.dtype, self.fuse_bn_relu, self.fuse_bn_add_relu = dtype, fuse_bn_relu, fuse_bn_add_relu
        self.bf16_weights = bf16_weights
        self.layout = input_layout
        self.conv_layout, self.bn_layout, self.pool_layout = conv_layout, bn_layout, pool_layout
        self.eps, self.mom, self.workspace, self.gamma0 = eps, mom, workspace, gamma0

    def to(self, x, layout):
        if layout == self.layout:
            return x
        axes = (0, 2, 3, 1) if layout == "NHWC" else (0, 3, 1, 2)
        self.layout = layout
        return mx.sym.transpose(x, axes=axes)

    def weight(self, name):
        """A weight variable: in bfloat16 the fp32 master weight, cast to bfloat16 inside the graph (its gradient is
        cast back to fp32 by the cast's backward); for scoring (``bf16_weights``) a bfloat16 variable, the weights
        cast once when loaded (``checkpoint.load_for_inference``): a cast inside the graph makes a new array every
        forward, and oneDNN's fused convolution then folds its batchnorm into it and reorders it again each time
        (measured: 111 against 183 img/s, ResNet-50 at 224 px, batch 32, 2 cores with AMX; the outputs are
        identical)."""
        if self.dtype != "bfloat16":
            return {}
        if self.bf16_weights:
            return {"weight": mx.sym.Variable(f"{name}_weight", dtype=BF16)}
        w = mx.sym.Variable(f"{name}_weight", dtype="float32")
        return {"weight": mx.sym.amp_cast(w, dtype=BF16, name=f"{name}_weight_bf16")}

    def conv(self, x, channels, kernel, stride, name):
        x = self.to(x, self.conv_layout)
        pad = (kernel // 2, kernel // 2)
        return mx.sym.Convolution(x, num_filter=channels, kernel=(kernel, kernel), stride=(stride, stride), pad=pad,
                                  no_bias=True, workspace=self.workspace, layout=self.conv_layout, name=name,
                                  **self.weight(name))

    def bn(self, x, name, relu=True, zero_gamma=False, addend=None):
        x = self.to(x, self.bn_layout)
        kwargs = {}
        if self.dtype == "bfloat16":  # bfloat16 activations, fp32 parameters and statistics
            kwargs = {k: mx.sym.Variable(f"{name}_{k}", dtype="float32") for k in ("beta", "moving_mean", "moving_var")}
        if zero_gamma and self.gamma0:
            kwargs["gamma"] = mx.sym.Variable(f"{name}_gamma", init=mx.init.Zero(), dtype="float32")
        elif self.dtype == "bfloat16":
            kwargs["gamma"] = mx.sym.Variable(f"{name}_gamma", dtype="float32")
        kwargs.update(fix_gamma=False, eps=self.eps, momentum=self.mom, axis=1 if self.bn_layout == "NCHW" else 3,
                      name=name)
        if addend is not None:  # NGC's batchnorm + add + relu
            return mx.sym.BatchNormAddRelu(data=x, addend=self.to(addend, self.bn_layout), **kwargs)
        if relu and self.fuse_bn_relu == "contrib":
            return mx.sym.contrib.BatchNormWithReLU(x, **kwargs)
        if relu and self.fuse_bn_relu == "act_type":
            return mx.sym.BatchNorm(x, act_type="relu", **kwargs)
        x = mx.sym.BatchNorm(x, **kwargs)
        return mx.sym.Activation(x, act_type="relu", name=f"{name}_relu") if relu else x

    def pool(self, x, kernel, stride, pool_type, name, global_pool=False):
        x = self.to(x, self.pool_layout)
        return mx.sym.Pooling(x, kernel=(kernel, kernel), stride=(stride, stride), pad=(kernel // 2, kernel // 2),
                              pool_type=pool_type, global_pool=global_pool, layout=self.pool_layout, name=name)


def _bottleneck(b: _Builder, x, channels, stride, downsample, v15, name):
    s1, s3 = (1, stride) if v15 else (stride, 1)
    y = b.bn(b.conv(x, channels // 4, 1, s1, f"{name}_conv1"), f"{name}_bn1")
    y = b.bn(b.conv(y, channels // 4, 3, s3, f"{name}_conv2"), f"{name}_bn2")
    shortcut = b.bn(b.conv(x, channels, 1, stride, f"{name}_sc"), f"{name}_sc_bn", relu=False) if downsample else x
    y = b.conv(y, channels, 1, 1, f"{name}_conv3")
    if b.fuse_bn_add_relu:
        return b.bn(y, f"{name}_bn3", zero_gamma=True, addend=shortcut)
    y = b.bn(y, f"{name}_bn3", relu=False, zero_gamma=True)
    return _add_relu(b, y, shortcut, name)


def _basic(b: _Builder, x, channels, stride, downsample, v15, name):
    y = b.bn(b.conv(x, channels, 3, stride, f"{name}_conv1"), f"{name}_bn1")
    y = b.bn(b.conv(y, channels, 3, 1, f"{name}_conv2"), f"{name}_bn2", relu=False, zero_gamma=True)
    shortcut = b.bn(b.conv(x, channels, 1, stride, f"{name}_sc"), f"{name}_sc_bn", relu=False) if downsample else x
    return _add_relu(b, y, shortcut, name)


def _add_relu(b: _Builder, y, shortcut, name):
    # both operands leave a batchnorm (or the previous block's relu, which runs in the batchnorm layout)
    return mx.sym.Activation(y + shortcut, act_type="relu", name=f"{name}_relu")


def get_symbol(num_classes: int = 1000, num_layers: int = 50, image_shape=(3, 224, 224), version: str = "1.5",
               dtype: str = "float32", input_dtype: str | None = None, input_layout: str = "NCHW",
               conv_layout: str = "NCHW", batchnorm_layout: str = "NCHW", pooling_layout: str = "NCHW",
               batchnorm_eps: float = 1e-5, batchnorm_mom: float = 0.9, bn_gamma_init0: bool = False,
               conv_workspace: int = 256, label_smoothing: float = 0.0,
               fuse_bn_relu: str | None = None, fuse_bn_add_relu: str | None = None,
               loss_scale: float = 1.0, bf16_weights: bool = False) -> mx.sym.Symbol:
    """The training symbol: ResNet -> ``SoftmaxOutput`` named ``softmax`` (label ``softmax_label``).

    ``input_dtype`` is the dtype of the ``data`` variable (default: ``dtype``); ``image_shape`` is C,H,W and only
    its channel count matters (any H, W >= 32 works). ``fuse_bn_relu``/``fuse_bn_add_relu`` are what
    ``bn_relu_fusion``/``bn_add_relu_fusion`` returned. ``loss_scale`` multiplies the loss gradient (static loss
    scaling; the optimizer divides it out again). ``bf16_weights`` (scoring in bfloat16): the convolution and
    classifier weights are bfloat16 variables (``_Builder.weight``).
    """
    if num_layers not in DEPTHS:
        raise ValueError(f"num_layers {num_layers}: choose one of {sorted(DEPTHS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype}: the symbol is built in one of {', '.join(DTYPES)}")
    block_kind, units = DEPTHS[num_layers]
    block = _bottleneck if block_kind == "bottleneck" else _basic
    widths = (256, 512, 1024, 2048) if block_kind == "bottleneck" else (64, 128, 256, 512)
    b = _Builder(dtype, input_layout, conv_layout, batchnorm_layout, pooling_layout, batchnorm_eps, batchnorm_mom,
                 conv_workspace, bn_gamma_init0, fuse_bn_relu, fuse_bn_add_relu, bf16_weights)
    data = mx.sym.Variable("data", dtype=input_dtype or dtype)
    if dtype == "bfloat16":
        x = mx.sym.amp_cast(data, dtype=BF16, name="data_bf16")
    else:
        x = mx.sym.Cast(data, dtype=dtype) if (input_dtype or dtype) != dtype else data
    x = b.bn(b.conv(x, 64, 7, 2, "stem_conv"), "stem_bn")
    x = b.pool(x, 3, 2, "max", "stem_pool")
    for stage, (n, width) in enumerate(zip(units, widths)):
        for unit in range(n):
            stride = 2 if unit == 0 and stage > 0 else 1
            downsample = unit == 0 and (stage > 0 or block_kind == "bottleneck")
            x = block(b, x, width, stride, downsample, version == "1.5", f"stage{stage + 1}_unit{unit + 1}")
    x = b.pool(x, 7, 1, "avg", "global_pool", global_pool=True)
    x = mx.sym.Flatten(x)
    fc = {}
    if dtype == "bfloat16":
        bias = mx.sym.Variable("fc_bias", dtype=BF16) if bf16_weights else \
            mx.sym.amp_cast(mx.sym.Variable("fc_bias", dtype="float32"), dtype=BF16, name="fc_bias_bf16")
        fc = {"bias": bias, **b.weight("fc")}
    x = mx.sym.FullyConnected(x, num_hidden=num_classes, name="fc", **fc)
    if dtype == "bfloat16":
        x = mx.sym.amp_cast(x, dtype="float32", name="fc_fp32")
    elif dtype != "float32":
        x = mx.sym.Cast(x, dtype="float32")
    return mx.sym.SoftmaxOutput(x, name="softmax", smooth_alpha=label_smoothing, grad_scale=loss_scale)


def identity(m: ModelConfig, num_classes: int, image_shape, dtype: str) -> dict:
    """The model a checkpoint belongs to, as its manifest records it (``checkpoint.MODEL_FLAGS`` names the flag of
    each field): depth, version, classes, input channels, dtype."""
    return {"num_layers": m.num_layers, "resnet_version": m.resnet_version, "num_classes": num_classes,
            "image_channels": image_shape[0] if image_shape else None, "dtype": dtype}


def build(m: ModelConfig, *, num_classes: int, image_shape, dtype: str, input_dtype: str, input_layout: str,
          label_smoothing: float = 0.0, device_type: str = "cpu", for_training: bool = True,
          loss_scale: float = 1.0) -> mx.sym.Symbol:
    """The symbol the model flags describe. For scoring (``for_training=False``) batchnorm+relu stays unfused: on
    CPU, MXNet's oneDNN subgraph pass then folds each batchnorm into its convolution, which beats the fused op; and
    in bfloat16 the weights are bfloat16 variables (``get_symbol``'s ``bf16_weights``)."""
    return get_symbol(num_classes=num_classes, num_layers=m.num_layers, image_shape=image_shape,
                      version=m.resnet_version, dtype=dtype, input_dtype=input_dtype, input_layout=input_layout,
                      conv_layout=m.conv_layout, batchnorm_layout=m.batchnorm_layout,
                      pooling_layout=m.pooling_layout, batchnorm_eps=m.batchnorm_eps,
                      batchnorm_mom=m.batchnorm_mom, bn_gamma_init0=m.bn_gamma_init0,
                      conv_workspace=m.conv_workspace, label_smoothing=label_smoothing,
                      fuse_bn_relu=bn_relu_fusion(bool(m.fuse_bn_relu) and for_training, device_type),
                      fuse_bn_add_relu=bn_add_relu_fusion(bool(m.fuse_bn_add_relu), device_type),
                      loss_scale=loss_scale, bf16_weights=dtype == "bfloat16" and not for_training)


def initializer() -> mx.init.Initializer:
    """He (MSRA) normal for weights; MXNet's defaults (gamma 1, beta 0, moving stats 0/1) for the rest."""
    return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)


def count_parameters(sym: mx.sym.Symbol, data_shape) -> int:
    """Trainable parameters (arguments other than data and label), from shape inference."""
    arg_shapes, _, _ = sym.infer_shape(data=data_shape)
    total = 0
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name in ("data", "softmax_label"):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
