"""Mixed precision: the FP16 (GPU) symbol's structure checked on CPU, BF16 on CPU, static loss scaling, fusions."""
from __future__ import annotations

import json
import shlex

import mxnet as mx
import numpy as np
import pytest

import amp
import common
import resnet
from common import config_from
from conftest import PY, ROOT, run

TINY = ["--image-shape", "3,32,32", "--num-classes", "10"]
SYNTH = ["--data-backend", "synthetic", "--num-examples", "64", *TINY]
HAS_BF16 = bool(common.cpu_bf16_flags())


def ops(sym, op):
    return [n for n in json.loads(sym.tojson(remove_amp_cast=False))["nodes"] if n["op"] == op]


def train_args_of_runner(*runner_args):
    """train.py's parsed flags for a runner command, as the runner would build them on an 8-GPU machine."""
    import train

    out = run([ROOT / "runner", *runner_args, "--dry-run", "--assume-gpus", "8"], check=True).stdout
    argv = shlex.split(out.strip().splitlines()[1])
    return train.build_parser().parse_args(argv[2:])  # drop the interpreter and train.py


def model_symbol(args, num_classes, shape, dtype, input_dtype, layout, device_type):
    """The training symbol train.py builds from these parsed flags."""
    return resnet.build(config_from(resnet.ModelConfig, args), num_classes=num_classes, image_shape=shape, dtype=dtype,
                        input_dtype=input_dtype, input_layout=layout, device_type=device_type,
                        loss_scale=1.0 if args.amp or args.loss_scale is None else args.loss_scale)


@pytest.mark.e2e
def test_fp16_symbol_structure_as_the_runner_builds_it():
    """NHWC convolution/batchnorm/pooling, no transpose (the pipeline delivers NHWC); the 4-channel fp16 input from
    the pipeline; fp16 weights (fp32 master copies live in the optimizer), fp32 batchnorm parameters; logits cast
    to fp32 before the softmax; the parameter count of the 4-channel stem."""
    args = train_args_of_runner("-n", "1", "-b", "208")
    assert (args.dtype, args.input_layout, args.conv_layout, args.batchnorm_layout, args.pooling_layout) == \
        ("float16", "NHWC", "NHWC", "NHWC", "NHWC")
    assert tuple(args.image_shape) == (4, 224, 224) and args.fuse_bn_relu == 1 and args.fuse_bn_add_relu == 1
    sym = model_symbol(args, 1000, (4, 224, 224), "float16", "float16", "NHWC", device_type="gpu")
    assert ops(sym, "transpose") == []  # the pipeline already delivers NHWC
    assert all(n["attrs"]["layout"] == "NHWC" for n in ops(sym, "Convolution") + ops(sym, "Pooling"))
    assert all(n["attrs"]["axis"] == "3" for n in ops(sym, "BatchNorm"))
    assert [c["attrs"]["dtype"] for c in ops(sym, "Cast")] == ["float32"]  # fp16 data in, fp32 logits out
    arg_types, out_types, aux_types = sym.infer_type(data="float16")
    types = dict(zip(sym.list_arguments(), arg_types))
    assert types["data"] == np.float16 and out_types == [np.float32]
    assert {types[n] for n in types if n.endswith("_weight")} == {np.float16}
    assert {types[n] for n in types if n.endswith(("_gamma", "_beta"))} == {np.float32}
    assert set(aux_types) == {np.float32}
    assert resnet.count_parameters(sym, (1, 224, 224, 4)) == 25557032 + 64 * 7 * 7


@pytest.mark.e2e
def test_fp16_symbol_with_the_amp_loss_scaler():
    """--amp adds one fp32 input (the scale) at the fp32 logits; everything else is the FP16 graph unchanged."""

    args = train_args_of_runner("-n", "1", "-b", "208", "--amp")
    assert args.amp and args.loss_scale is None
    sym = model_symbol(args, 1000, (4, 224, 224), "float16", "float16", "NHWC", device_type="gpu")
    assert ops(sym, "SoftmaxOutput")[0]["attrs"]["grad_scale"] == "1.0"  # the scale is applied in the graph
    scaled = amp.add_loss_scaler(sym)
    assert scaled.list_arguments() == sym.list_arguments()[:-1] + [amp.AMP_SCALE, "softmax_label"]
    arg_types, out_types, _ = scaled.infer_type(data="float16")
    types = dict(zip(scaled.list_arguments(), arg_types))
    assert types[amp.AMP_SCALE] == np.float32 and out_types == [np.float32]
    assert [c["attrs"]["dtype"] for c in ops(scaled, "Cast")] == ["float32"]
    assert ops(scaled, "SoftmaxOutput")[0]["attrs"] == ops(sym, "SoftmaxOutput")[0]["attrs"]


def test_fp16_symbol_with_nchw_input_has_one_transpose():
    sym = resnet.get_symbol(dtype="float16", input_dtype="float32", input_layout="NCHW", conv_layout="NHWC",
                            batchnorm_layout="NHWC", pooling_layout="NHWC")
    assert len(ops(sym, "transpose")) == 1 and [c["attrs"]["dtype"] for c in ops(sym, "Cast")] == ["float16",
                                                                                                    "float32"]


@pytest.mark.e2e
def test_fusion_flags_fall_back_with_a_note(tmp_path):
    """This CPU build has no BatchNormAddRelu: the run says so and trains the unfused graph."""
    res = run([ROOT / "runner", "-n", "1", "-b", "4", "-e", "1", "--benchmark-iters", "2", "--no-val", *SYNTH,
               "--fuse-bn-add-relu", "1"], check=True)
    assert "--fuse-bn-add-relu 1: this MXNet build has no BatchNormAddRelu for CPU" in res.stderr
    import train

    args = train.build_parser().parse_args(["--fuse-bn-add-relu", "1", "--fuse-bn-relu", "1"])
    mcfg = config_from(resnet.ModelConfig, args)
    assert resnet.fusion_notes(mcfg, "cpu") and len(resnet.fusion_notes(mcfg, "gpu")) == 2  # PyPI builds: neither
    sym = model_symbol(args, 10, (3, 32, 32), "float32", "float32", "NCHW", device_type="cpu")
    assert ops(sym, "BatchNormAddRelu") == [] and len(ops(sym, "_contrib_BatchNormWithReLU")) == 33


def test_bf16_symbol_keeps_fp32_parameters_statistics_and_loss():
    sym = resnet.get_symbol(dtype="bfloat16", input_dtype="float32")
    assert resnet.count_parameters(sym, (1, 3, 224, 224)) == 25557032
    casts = ops(sym, "amp_cast")
    assert len(casts) == 1 + 53 + 2 + 1  # data, every conv weight, fc weight and bias, logits back to fp32
    arg_types, out_types, aux_types = sym.infer_type(data="float32")
    assert set(arg_types) == {np.float32} and out_types == [np.float32] and set(aux_types) == {np.float32}
    inner = sym.get_internals()
    names = inner.list_outputs()
    _, types, _ = inner.infer_type(data="float32")
    t = dict(zip(names, types))
    assert np.dtype(t["stage1_unit1_conv1_output"]).names == ("bfloat16",)  # activations in bfloat16
    assert np.dtype(t["stage4_unit3_relu_output"]).names == ("bfloat16",)
    assert t["fc_fp32_output"] == np.float32


def _bf16_outputs(sym, arg, aux, x):
    import checkpoint

    mod = mx.mod.Module(sym, context=mx.cpu(), data_names=["data"], label_names=["softmax_label"])
    mod.bind(data_shapes=[("data", x.shape)], label_shapes=[("softmax_label", (len(x),))], for_training=False)
    mod.init_params(None, arg_params=checkpoint.to_declared_dtypes(sym, arg), aux_params=aux, allow_missing=False)
    mod.forward(mx.io.DataBatch([mx.nd.array(x)], None), is_train=False)
    return mod.get_outputs()[0].asnumpy()


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has neither AVX512_BF16 nor AMX-BF16")
def test_bf16_scoring_binds_bf16_weights_with_the_same_outputs():
    """The scoring graph declares its convolution and classifier weights bfloat16 (cast once at load, not every
    forward inside the graph, which made oneDNN refold and reorder every weight per batch): no weight cast remains,
    and the probabilities are bit-identical to those of the graph that casts in the graph, on real weights."""
    parser = __import__("argparse").ArgumentParser()
    resnet.add_model_args(parser)
    m = config_from(resnet.ModelConfig, parser.parse_args(["--num-layers", "18"]))
    kw = dict(num_classes=10, image_shape=(3, 32, 32), dtype="bfloat16", input_dtype="float32", input_layout="NCHW")
    scoring = resnet.build(m, for_training=False, **kw)
    casting = resnet.get_symbol(num_layers=18, **{k: v for k, v in kw.items()})
    assert len(ops(scoring, "amp_cast")) == 2 and len(ops(casting, "amp_cast")) == 1 + 20 + 2 + 1  # data, logits
    rng = np.random.default_rng(0)
    arg_shapes, _, aux_shapes = casting.infer_shape(data=(4, 3, 32, 32))
    arg = {n: mx.nd.array(rng.normal(0, 0.1, s)) for n, s in zip(casting.list_arguments(), arg_shapes)
           if n not in ("data", "softmax_label")}
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s)) for n, s in zip(casting.list_auxiliary_states(), aux_shapes)}
    x = rng.normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    want = _bf16_outputs(casting, arg, aux, x)
    got = _bf16_outputs(scoring, arg, aux, x)
    assert np.array_equal(got, want) and not np.allclose(want, want[:1])


@pytest.mark.e2e
def test_bf16_usage_errors(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    monkeypatch.setenv("RN50_CPUINFO", str(cpuinfo))
    res = run([ROOT / "runner", "-n", "1", "--dtype", "bfloat16"])
    assert res.returncode == 2 and res.stderr.strip() == (
        "runner: error: --dtype bfloat16 needs a CPU with AVX512_BF16 or AMX-BF16 (none in /proc/cpuinfo here; "
        "oneDNN would emulate it, slower than float32); use --dtype float32")
    res = run([PY, ROOT / "train.py", "--dtype", "bfloat16", *SYNTH])
    assert res.returncode == 2 and "needs a CPU with AVX512_BF16" in res.stderr
    monkeypatch.delenv("RN50_CPUINFO")
    res = run([ROOT / "runner", "-n", "1", "--dtype", "bfloat16", "--dry-run", "--assume-gpus", "1"])
    assert res.returncode == 2 and "--dtype bfloat16 is for CPU devices" in res.stderr


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has neither AVX512_BF16 nor AMX-BF16")
@pytest.mark.e2e
def test_bf16_trains_scores_and_reports_its_dtype(tmp_path):
    report = tmp_path / "r.json"
    run([ROOT / "runner", "-n", "1", "-b", "8", "-e", "1", "--benchmark-iters", "3", "--dtype", "bfloat16",
         "--no-val", "--report", report, "--model-prefix", tmp_path / "m", *SYNTH], check=True)
    r = json.loads(report.read_text())
    assert r["dtype"] == "bfloat16" and r["status"] == "completed" and np.isfinite(r["metrics"]["train.loss"][0])
    saved, arg, _ = mx.model.load_checkpoint(str(tmp_path / "m"), 1)
    assert {v.dtype for v in arg.values()} == {np.float32}  # fp32 master weights in the checkpoint
    assert ops(saved, "amp_cast") == []  # MXNet saves the graph without the casts: a float32 graph
    res = run([ROOT / "runner", "-n", "1", "-b", "8", "-e", "1", "--benchmark-iters", "2", "--dtype", "bfloat16",
               "--only-inference", "--model-prefix", tmp_path / "m", "--load-epoch", "1", *SYNTH], check=True)
    assert "Score[0]: top-1" in res.stderr


@pytest.mark.e2e
def test_static_loss_scaling_gives_the_same_weights(tmp_path):
    """A power-of-two loss scale multiplies every gradient exactly and the update divides it out exactly."""
    params = []
    for scale in ("1", "128"):
        prefix = tmp_path / f"s{scale}"
        run([ROOT / "runner", "-n", "1", "-b", "4", "-e", "1", "--benchmark-iters", "3", "--no-val", "--seed", "0",
             "--loss-scale", scale, "--model-prefix", prefix, *SYNTH], check=True)
        params.append(mx.nd.load(f"{prefix}-0001.params"))
    assert params[0].keys() == params[1].keys()
    for k in params[0]:
        np.testing.assert_array_equal(params[0][k].asnumpy(), params[1][k].asnumpy(), err_msg=k)
    moved = mx.nd.load(f"{tmp_path / 's1'}-0001.params")["arg:fc_weight"].asnumpy()
    assert np.abs(moved).sum() > 0


def _amp_module(scale: float, window: int = 2000, batch: int = 4):
    """A ResNet-18 at 32 px with the --amp loss scaler, bound, initialized (seeded) and with its optimizer."""

    mx.random.seed(0)
    sym = amp.add_loss_scaler(resnet.get_symbol(num_classes=10, num_layers=18, image_shape=(3, 32, 32)))
    mod = mx.mod.Module(sym, context=mx.cpu(), label_names=["softmax_label"], fixed_param_names=[amp.AMP_SCALE])
    mod.bind(data_shapes=[("data", (batch, 3, 32, 32))], label_shapes=[("softmax_label", (batch,))])
    mod.init_params(resnet.initializer(), arg_params={amp.AMP_SCALE: mx.nd.ones((1,))}, allow_missing=True)
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1, "momentum": 0.9})
    rng = np.random.default_rng(0)
    batch_ = mx.io.DataBatch(data=[mx.nd.array(rng.uniform(-1, 1, (batch, 3, 32, 32)))],
                             label=[mx.nd.array(rng.integers(0, 10, batch))])
    return mod, amp.DynamicLossScaler(mod, scale, window, batch), batch_


def _weights(mod):
    arg, _ = mod.get_params()
    return {k: v.asnumpy().copy() for k, v in arg.items()}


def test_amp_loss_scaler_scales_gradients_not_outputs():
    """The scale multiplies every gradient exactly (a power of two) and leaves the forward pass bit for bit."""
    mod, scaler, batch = _amp_module(1.0)
    mod.forward_backward(batch)
    out1 = mod.get_outputs()[0].asnumpy()
    g1 = [g[0].asnumpy() for g in mod._exec_group.grad_arrays if g[0] is not None]
    scaler.set(2.0 ** 10)
    mod.forward_backward(batch)
    np.testing.assert_array_equal(mod.get_outputs()[0].asnumpy(), out1)
    g2 = [g[0].asnumpy() for g in mod._exec_group.grad_arrays if g[0] is not None]
    assert len(g1) == len(g2) > 20
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(b, a * 2.0 ** 10)
    assert mod._optimizer.rescale_grad == 1.0 / (4 * 2.0 ** 10)


def test_amp_overflow_skips_the_update_and_halves_the_scale():
    """An fp16 overflow as it happens on a GPU: the loss gradient, scaled in fp32, passes through fp16 (a Cast,
    which runs on CPU). With 10 classes and near-uniform softmax the true class's gradient is about -0.9, so at
    2^17 it overflows fp16 (max 65504) and at 2^16 it does not."""

    data = mx.sym.Variable("data")
    x = mx.sym.FullyConnected(data, num_hidden=10, name="fc")
    x = mx.sym.Cast(mx.sym.Cast(x, dtype="float16"), dtype="float32")
    sym = amp.add_loss_scaler(mx.sym.SoftmaxOutput(x, name="softmax"))
    mod = mx.mod.Module(sym, context=mx.cpu(), label_names=["softmax_label"], fixed_param_names=[amp.AMP_SCALE])
    mod.bind(data_shapes=[("data", (4, 8))], label_shapes=[("softmax_label", (4,))])
    mod.init_params(mx.init.Zero(), arg_params={amp.AMP_SCALE: mx.nd.ones((1,))}, allow_missing=True)
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1})
    batch = mx.io.DataBatch(data=[mx.nd.ones((4, 8))], label=[mx.nd.array([0, 1, 2, 3])])
    scaler = amp.DynamicLossScaler(mod, 2.0 ** 17, 2000, 4)
    mod.forward_backward(batch)
    assert np.isinf(mod._exec_group.grad_arrays[0][0].asnumpy()).any()
    assert scaler.step(mod.update) is False and scaler.scale == 2.0 ** 16 and scaler.skipped == 1
    assert not mod.get_params()[0]["fc_weight"].asnumpy().any()  # skipped: still the zeros it started with
    mod.forward_backward(batch)
    assert scaler.step(mod.update) is True and scaler.scale == 2.0 ** 16
    w = mod.get_params()[0]["fc_weight"].asnumpy()
    assert np.isfinite(w).all() and w.any()
    # the update divided the scale out: the unscaled step. Class 0 is the label of 1 of the 4 rows (all ones), so
    # its gradient is (0.1 - 1) + 3 * 0.1 = -0.6 per input, / batch 4, x lr 0.1 = +0.015 (fp16 rounding aside)
    np.testing.assert_allclose(w[0], np.full(8, 0.015), rtol=1e-3)


def test_amp_scale_doubles_after_a_window_of_clean_iterations():

    mod, scaler, batch = _amp_module(2.0 ** 23, window=2)
    seen = []
    for _ in range(4):
        mod.forward_backward(batch)
        assert scaler.step(mod.update) is True
        seen.append(scaler.scale)
    assert seen == [2.0 ** 23, 2.0 ** 24, 2.0 ** 24, 2.0 ** 24] and amp.AMP_MAX_SCALE == 2.0 ** 24


@pytest.mark.e2e
def test_amp_through_the_runner(tmp_path):
    """--amp end to end: the same weights as an unscaled run (power-of-two scales, no overflow), the scale in the
    report, a checkpoint without the scaler that plain MXNet loads, and a resume that continues from its scale."""
    params = []
    for extra in ([], ["--amp", "--amp-scale-window", "2"]):
        prefix = tmp_path / ("amp" if extra else "plain")
        run([ROOT / "runner", "-n", "1", "-b", "4", "-e", "1", "--benchmark-iters", "3", "--no-val", "--seed", "0",
             "--model-prefix", prefix, "--report", f"{prefix}.json", *extra, *SYNTH], check=True)
        params.append(mx.nd.load(f"{prefix}-0001.params"))
    assert params[0].keys() == params[1].keys()
    for k in params[0]:
        np.testing.assert_array_equal(params[0][k].asnumpy(), params[1][k].asnumpy(), err_msg=k)
    m = json.loads((tmp_path / "amp.json").read_text())["metrics"]
    assert m["train.loss_scale"] == [2.0 ** 17] and m["train.amp_skipped"] == [0]  # 3 clean iterations, window 2
    assert json.loads((tmp_path / "amp-0001.json").read_text())["loss_scale"] == 2.0 ** 17
    sym, _, _ = mx.model.load_checkpoint(str(tmp_path / "amp"), 1)
    assert "amp_loss_scale" not in sym.list_arguments() and ops(sym, "BlockGrad") == []
    res = run([ROOT / "runner", "-n", "1", "-b", "4", "-e", "2", "--benchmark-iters", "1", "--no-val", "--amp",
               "--model-prefix", tmp_path / "amp", "--load-epoch", "1", "--report", tmp_path / "r2.json", *SYNTH],
              check=True)
    assert "resuming from" in res.stderr
    assert json.loads((tmp_path / "r2.json").read_text())["metrics"]["train.loss_scale"] == [2.0 ** 17]


@pytest.mark.e2e
def test_amp_usage_error(tmp_path):
    res = run([ROOT / "runner", "-n", "1", "-b", "4", "--amp", "--amp-scale-window", "0", *SYNTH])
    assert res.returncode == 2 and "--amp-scale-window 0: must be at least 1" in res.stderr
    res = run([ROOT / "runner", "-n", "1", "-b", "4", "--amp", "--loss-scale", "1e9", *SYNTH])
    assert res.returncode == 2 and "--loss-scale 1e+09: with --amp at most 2^24" in res.stderr
