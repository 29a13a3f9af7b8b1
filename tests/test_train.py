"""Training end to end on CPU: the symbol, runner/train.py, checkpoints, report, resume, signals, NaN stop, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import mxnet as mx
import numpy as np
import pytest

import dist
import resnet
from common import config_from
from conftest import PY, ROOT, params_of, run, run_until

RUNNER = ROOT / "runner"
TINY = ["--image-shape", "3,32,32", "--num-classes", "10", "--disp-batches", "1"]
SYNTH = ["--data-backend", "synthetic", "--num-examples", "64", *TINY]


# ------------------------------------------------------------------------------------------------ the symbol


@pytest.mark.parametrize("depth,params", [(18, 11689512), (34, 21797672), (50, 25557032), (101, 44549160),
                                          (152, 60192808)])
def test_parameter_counts(depth, params):
    """ResNet-50 v1.5 with 1000 classes has exactly 25,557,032 trainable parameters (the others as torchvision)."""
    assert resnet.count_parameters(resnet.get_symbol(num_layers=depth), (1, 3, 224, 224)) == params


def conv_strides(sym) -> dict:
    return {name: eval(attrs["stride"]) for name, attrs in sym.attr_dict().items()
            if name.endswith(("conv1", "conv2", "conv3", "_sc")) and "stride" in attrs}


def test_stride_on_the_3x3_in_v15_and_on_the_1x1_in_v1():
    v15 = conv_strides(resnet.get_symbol(num_layers=50))
    v1 = conv_strides(resnet.get_symbol(num_layers=50, version="1"))
    for stage in (2, 3, 4):
        u = f"stage{stage}_unit1"
        assert v15[f"{u}_conv1"] == (1, 1) and v15[f"{u}_conv2"] == (2, 2)
        assert v1[f"{u}_conv1"] == (2, 2) and v1[f"{u}_conv2"] == (1, 1)
        assert v15[f"{u}_sc"] == v1[f"{u}_sc"] == (2, 2)
    assert v15["stage1_unit1_conv2"] == (1, 1)
    # same parameters, different compute: v1.5's 3x3 runs at the higher resolution
    assert v15.keys() == v1.keys()


def ops(sym, op):
    return [n for n in json.loads(sym.tojson())["nodes"] if n["op"] == op]


def test_one_transpose_where_the_layout_changes():
    nchw = resnet.get_symbol(num_layers=50)
    assert ops(nchw, "transpose") == []
    mixed = resnet.get_symbol(num_layers=50, input_layout="NCHW", conv_layout="NHWC", batchnorm_layout="NHWC",
                              pooling_layout="NHWC")
    assert len(ops(mixed, "transpose")) == 1
    assert all(n["attrs"]["layout"] == "NHWC" for n in ops(mixed, "Convolution"))
    assert all(n["attrs"]["axis"] == "3" for n in ops(mixed, "BatchNorm"))


def test_float16_symbol_casts_in_and_out():
    sym = resnet.get_symbol(num_layers=50, dtype="float16", input_dtype="float32")
    casts = ops(sym, "Cast")
    assert [c["attrs"]["dtype"] for c in casts] == ["float16", "float32"]  # input to fp16, logits back to fp32
    arg_types, out_types, _ = sym.infer_type(data="float32")
    types = dict(zip(sym.list_arguments(), arg_types))
    assert types["stem_conv_weight"] == np.float16 and out_types == [np.float32]
    assert len(ops(resnet.get_symbol(dtype="float16", input_dtype="float16"), "Cast")) == 1  # data already fp16


def test_fused_bn_relu_matches_the_unfused_graph():
    """oneDNN's BatchNormWithReLU (the CPU default) has BatchNorm's parameters and gives the same outputs,
    gradients and moving statistics as BatchNorm followed by relu."""
    fusion = resnet.bn_relu_fusion(True, "cpu")
    assert fusion == "contrib" and resnet.bn_relu_fusion(False, "cpu") is None
    assert resnet.bn_relu_fusion(True, "gpu") is None  # no GPU kernel for it in the PyPI builds
    plain = resnet.get_symbol(num_layers=18, num_classes=10)
    fused = resnet.get_symbol(num_layers=18, num_classes=10, fuse_bn_relu=fusion)
    assert plain.list_arguments() == fused.list_arguments()
    assert plain.list_auxiliary_states() == fused.list_auxiliary_states()
    assert len(ops(fused, "_contrib_BatchNormWithReLU")) == 9 and len(ops(fused, "BatchNorm")) == 11
    rng = np.random.default_rng(0)
    data = mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 32)))
    label = mx.nd.array([1, 2, 3, 4])
    results = []
    for sym in (plain, fused):
        mx.random.seed(0)
        mod = mx.mod.Module(sym, context=mx.cpu())
        mod.bind(data_shapes=[("data", data.shape)], label_shapes=[("softmax_label", label.shape)])
        mod.init_params(resnet.initializer())
        mod.forward_backward(mx.io.DataBatch([data], [label]))
        grads = {n: g[0].asnumpy() for n, g in zip(mod._exec_group.param_names, mod._exec_group.grad_arrays)}
        results.append((mod.get_outputs()[0].asnumpy(), grads, mod.get_params()[1]))
    (out_a, grad_a, aux_a), (out_b, grad_b, aux_b) = results
    np.testing.assert_allclose(out_a, out_b, rtol=1e-4, atol=1e-6)
    for name in grad_a:
        np.testing.assert_allclose(grad_a[name], grad_b[name], rtol=1e-3, atol=1e-5, err_msg=name)
    for name in aux_a:
        np.testing.assert_allclose(aux_a[name].asnumpy(), aux_b[name].asnumpy(), rtol=1e-4, atol=1e-6)


def test_small_inputs_work():
    sym = resnet.get_symbol(num_layers=50, num_classes=10)
    assert sym.infer_shape(data=(2, 3, 32, 32))[1] == [(2, 10)]


def test_optimizer_recipe_no_weight_decay_on_biases_and_betas():
    import fit
    import train

    args = train.build_parser().parse_args(["--batch-size", "4", "--wd", "1e-4", "--mom", "0.9"])
    cfg = config_from(fit.FitConfig, args)
    sym = resnet.get_symbol(num_layers=18, num_classes=10)
    mod = mx.mod.Module(sym, context=mx.cpu())
    mod.bind(data_shapes=[("data", (4, 3, 32, 32))], label_shapes=[("softmax_label", (4,))])
    mod.init_params(resnet.initializer())
    fit.init_optimizer(mod, cfg, fit.Schedule(cfg, 10), 1, dist.Solo())
    opt = mod._optimizer
    assert (opt.momentum, opt.wd, opt.multi_precision, opt.rescale_grad) == (0.9, 1e-4, True, 1 / 4)
    assert opt.wd_mult["fc_bias"] == 0 and opt.wd_mult["stem_bn_beta"] == 0
    assert opt.wd_mult.get("fc_weight", 1.0) == 1.0 and opt.wd_mult.get("stem_bn_gamma", 1.0) == 1.0


def test_lr_schedule_warmup_steps_and_cosine():
    import fit
    import train

    args = train.build_parser().parse_args(["--lr", "0.8", "--warmup-epochs", "5", "--num-epochs", "90"])
    s = fit.Schedule(config_from(fit.FitConfig, args), iters_per_epoch=100)
    assert s.lr_at(0) == pytest.approx(0.8 / 500) and s.lr_at(249) == pytest.approx(0.4)
    assert s.lr_at(500) == s.lr_at(2999) == 0.8
    assert s.lr_at(3000) == pytest.approx(0.08) and s.lr_at(6000) == pytest.approx(0.008)
    assert s.lr_at(8999) == pytest.approx(0.0008)
    args = train.build_parser().parse_args(["--lr", "0.8", "--warmup-epochs", "0", "--num-epochs", "10",
                                            "--lr-schedule", "cosine"])
    c = fit.Schedule(config_from(fit.FitConfig, args), iters_per_epoch=10)
    assert c.lr_at(0) == 0.8 and c.lr_at(50) == pytest.approx(0.4) and c.lr_at(100) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------ runs


@pytest.mark.e2e
def test_two_iterations_write_checkpoint_and_report(demo_root, tmp_path):
    prefix, rep = tmp_path / "m", tmp_path / "report.json"
    res = run([RUNNER, "-n", "1", "-b", "32", "-e", "1", "--data-root", demo_root, "--model-prefix", prefix,
               "--report", rep, "--benchmark-iters", "2", "--seed", "1", *TINY], check=True)
    assert (tmp_path / "m-symbol.json").is_file() and (tmp_path / "m-0001.params").is_file()
    r = json.loads(rep.read_text())
    assert (r["model"], r["ngpus"], r["status"], r["schema"], r["dtype"]) == \
        ("resnet50", 1, "completed", "rn50-report/1", "float32")
    assert isinstance(r["total_duration"], float) and r["total_duration"] > 0
    assert isinstance(r["cmd"], list) and r["cmd"][0].endswith("train.py")
    assert r["global_batch_size"] == 32 and r["device"] == {"type": "cpu", "count": 1, "names": ["cpu(0)"]}
    assert r["config"]["lr"] == pytest.approx(0.1 * 32 / 256) and r["epochs"] == [0]
    m = r["metrics"]
    for split in ("train", "val"):
        for key in ("top1", "top5", "loss", "time", "total_ips"):
            values = m[f"{split}.{key}"]
            assert isinstance(values, list) and len(values) == 1 and isinstance(values[0], float)
    assert m["train.iters"] == [2] and m["val.iters"] == [2] and m["train.warmup_iters"] == [1]  # both cut to 2
    assert 0 <= m["train.top1"][0] <= m["train.top5"][0] <= 100
    assert m["train.total_ips"][0] == pytest.approx(32 / m["train.time"][0])
    assert "Epoch[0] Batch[2/2]" in res.stderr and "img/s" in res.stderr


@pytest.mark.e2e
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path):
    common = ["-n", "1", "-b", "8", "-e", "2", "--seed", "7", "--no-val", "--warmup-epochs", "1", "--num-layers", "18",
              *SYNTH]
    run([RUNNER, *common, "--model-prefix", tmp_path / "full"], check=True)
    code, err = run_until([RUNNER, *common, "--model-prefix", tmp_path / "cut", "--report", tmp_path / "r.json"],
                          "Epoch[1] Batch[3/8]")
    assert code == 128 + signal.SIGTERM
    assert "SIGTERM: stopped in epoch 1 after" in err and "with --resume (or --load-epoch 2)" in err
    meta = json.loads((tmp_path / "cut-0002-partial.json").read_text())
    assert meta["partial"] and 3 <= meta["batch"] < 8
    assert not (tmp_path / "cut-0002.params").exists()  # plain MXNet loaders never take it for epoch 2
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"
    run([RUNNER, *common, "--model-prefix", tmp_path / "cut", "--load-epoch", "2", "--report", tmp_path / "r.json"],
        check=True)
    report = json.loads((tmp_path / "r.json").read_text())  # epoch 0 from the first run, epoch 1 resumed
    assert report["epochs"] == [0, 1] and report["metrics"]["train.iters"] == [8, 8 - meta["batch"]], report
    assert report["resumed"] == [{"checkpoint": f"{tmp_path / 'cut'}-0002-partial", "epoch": 1}]
    assert not json.loads((tmp_path / "cut-0002.json").read_text())["partial"]
    assert not (tmp_path / "cut-0002-partial.json").exists()  # superseded by the complete epoch
    full, resumed = params_of(tmp_path / "full-0002.params"), params_of(tmp_path / "cut-0002.params")
    assert full.keys() == resumed.keys()
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)


@pytest.mark.e2e
def test_sigint_stops_at_an_iteration_boundary_without_checkpoint_prefix(tmp_path):
    code, err = run_until([RUNNER, "-n", "1", "-b", "8", "-e", "3", "--no-val", "--report", tmp_path / "r.json",
                           *SYNTH], "Epoch[0] Batch[2/8]", sig=signal.SIGINT)
    assert code == 128 + signal.SIGINT and "SIGINT: stopped in epoch 0" in err and "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"


@pytest.mark.e2e
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    base = ["-n", "1", "-b", "8", "--seed", "3", "--no-val", "--warmup-epochs", "0", "--model-prefix",
            tmp_path / "m", *SYNTH]
    run([RUNNER, *base, "-e", "1"], check=True)
    good = (tmp_path / "m-0001.params").read_bytes()
    res = run([RUNNER, *base, "-e", "3", "--load-epoch", "1", "-l", "1e12", "--report", tmp_path / "r.json"])
    assert res.returncode == 3
    assert "the loss became NaN or infinite in epoch 1" in res.stderr and f"{tmp_path / 'm'}-0001" in res.stderr
    assert (tmp_path / "m-0001.params").read_bytes() == good
    assert not (tmp_path / "m-0002.params").exists()
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "diverged"


@pytest.mark.e2e
def test_checkpoint_loads_with_plain_mxnet(demo_root, tmp_path):
    """mx.model.load_checkpoint into a Module reproduces the reported val top-1; SymbolBlock.imports loads it."""
    import data
    import dali

    prefix, rep = tmp_path / "m", tmp_path / "r.json"
    run([RUNNER, "-n", "1", "-b", "32", "-e", "1", "--data-root", demo_root, "--model-prefix", prefix,
         "--report", rep, "--num-examples", "192", "--seed", "2", *TINY], check=True)  # 6 iterations, whole val
    reported = json.loads(rep.read_text())["metrics"]["val.top1"][-1]

    sym, arg, aux = mx.model.load_checkpoint(str(prefix), 1)
    cfg = data.resolve(data.DataConfig(data_root=demo_root, image_shape=(3, 32, 32), num_classes=10, batch_size=32,
                                       dali=dali.DaliConfig()))
    _, val = data.get_iters(cfg, [mx.cpu()], want_train=False)
    mod = mx.mod.Module(sym, context=mx.cpu())
    mod.bind(data_shapes=val.provide_data, label_shapes=val.provide_label, for_training=False)
    mod.set_params(arg, aux)
    correct = total = 0
    first = None
    for batches in val:
        mod.forward(batches, is_train=False)
        out = mod.get_outputs()[0].asnumpy()
        b = batches[0]
        real = out.shape[0] - b.pad
        correct += int((out[:real].argmax(1) == b.label[0].asnumpy()[:real]).sum())
        total += real
        if first is None:
            first = (b.data[0].copy(), b.label[0].copy(), out)
    assert total == 360 and 100.0 * correct / total == pytest.approx(reported, abs=1e-9)

    net = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data", "softmax_label"], f"{prefix}-0001.params")
    out = net(first[0], first[1]).asnumpy()
    # same predictions; probabilities agree to fused (Module: oneDNN conv+BN) vs unfused (Gluon) rounding
    assert (out.argmax(1) == first[2].argmax(1)).all()
    np.testing.assert_allclose(out, first[2], atol=1e-3)


@pytest.mark.e2e
def test_only_inference_scores_a_checkpoint(demo_root, tmp_path):
    prefix = tmp_path / "m"
    run([RUNNER, "-n", "1", "-b", "32", "-e", "1", "--data-root", demo_root, "--model-prefix", prefix,
         "--benchmark-iters", "2", "--no-val", *TINY], check=True)
    res = run([RUNNER, "-n", "1", "-b", "32", "-e", "2", "--data-root", demo_root, "--model-prefix", prefix,
               "--load-epoch", "1", "--only-inference", "--report", tmp_path / "s.json", *TINY], check=True)
    m = json.loads((tmp_path / "s.json").read_text())["metrics"]
    assert len(m["val.top1"]) == 2 and m["val.top1"][0] == m["val.top1"][1] and m["val.iters"] == [12, 12]
    for q in ("avg", "p50", "p90", "p95", "p99", "p100"):
        assert m[f"val.latency_ms_{q}"][0] > 0
    assert m["val.latency_ms_p50"][0] <= m["val.latency_ms_p99"][0] <= m["val.latency_ms_p100"][0]
    assert "Score[1]: top-1" in res.stderr


@pytest.mark.e2e
def test_two_cpu_devices_train(tmp_path):
    res = run([RUNNER, "-n", "2", "-b", "4", "-e", "1", "--no-val", "--report", tmp_path / "r.json", *SYNTH],
              check=True)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["ngpus"] == 2 and r["global_batch_size"] == 8 and r["device"]["names"] == ["cpu(0)", "cpu(1)"]
    assert "on cpu(0),cpu(1)" in res.stderr


@pytest.mark.e2e
def test_runner_scales_batch_and_lr_and_sets_threads():
    res = run([RUNNER, "-n", "2", "-b", "16", "-l", "0.1", "--dry-run", "--data-root", "x", "--seed", "1"],
              check=True)
    env, cmd = res.stdout.splitlines()
    assert "OMP_NUM_THREADS=" in env
    assert "--batch-size 32 " in cmd and "--lr 0.0125 " in cmd and "--cpu-devices 2" in cmd
    assert cmd.endswith("--seed 1")  # unknown flags go through to train.py, last


REFAULT = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def touch():  # a 64 MiB block, every page written, then freed
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(ctypes.c_void_p(p))
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.e2e
def test_runner_malloc_settings_keep_freed_memory():
    """The allocator settings the runner gives CPU scoring: a big block freed and allocated again costs no new page
    faults, where glibc's defaults map it afresh (16,384 faults for 64 MiB)."""
    def env_of(*flags):
        line = run([RUNNER, "-n", "1", "-b", "8", "--dry-run", "--data-root", "x", *flags], check=True).stdout
        return dict(kv.split("=", 1) for kv in line.splitlines()[0].split())

    assert not any(k.startswith("MALLOC_") for k in env_of())  # training: glibc's defaults
    env = env_of("--only-inference")
    assert {"MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} <= set(env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    default = int(subprocess.run([PY, "-c", REFAULT], env=clean, check=True, capture_output=True).stdout)
    tuned = int(subprocess.run([PY, "-c", REFAULT], env=dict(clean, **env), check=True, capture_output=True).stdout)
    assert default > 10_000 and tuned < 1_000, (default, tuned)


@pytest.mark.e2e
def test_train_help_lists_every_group_with_defaults():
    out = run([PY, ROOT / "train.py", "-h"], check=True).stdout
    for group in ("Training:", "Model:", "Data:", "Augmentation:", "DALI:"):
        assert group in out
    assert "(default: 90)" in out and "--lr-step-epochs" in out and "--dali-threads" in out


@pytest.mark.parametrize("args,expect", [
    (["--dtype", "float16"], "--dtype float16 needs a GPU"),
    (["-n", "64"], "-n 64: no GPU here, and -n counts CPU devices, at most one per core"),
    (["-b", "0"], "-b 0: the batch per device must be at least 1"),
    (["--model-prefix", "{tmp}/none", "--load-epoch", "3"], "--load-epoch 3: {tmp}/none-0003.params not found"),
])
@pytest.mark.e2e
def test_runner_usage_errors(args, expect, tmp_path):
    res = run([RUNNER, "-e", "1", *SYNTH, *[a.format(tmp=tmp_path) for a in args]])
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect.format(tmp=tmp_path) in lines[0] and "Traceback" not in res.stderr


@pytest.mark.e2e
def test_global_batch_smaller_than_devices_is_a_usage_error():
    res = run([PY, ROOT / "train.py", "--cpu-devices", "2", "--batch-size", "1", *SYNTH])
    assert res.returncode == 2
    assert res.stderr.strip() == ("train.py: error: --batch-size 1: the global batch must be a multiple of the 2 "
                                  "devices (at least one image per device)")
