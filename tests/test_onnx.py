"""ONNX export (``tools/export_onnx.py``) of a real checkpoint (ResNet-50 v1.5 trained two iterations on the 32 px
digits): a symbolic batch dimension, weights that are not graph inputs, onnxruntime scoring as the checkpoint scores
in plain MXNet at batch 1 and 5, checkpoints of NVIDIA's FP16 recipe (float16, NHWC, 4 channels), one-line errors
that leave nothing behind, and the command line end to end."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import mxnet as mx
import numpy as np
import onnx
import pytest

import checkpoint
import resnet
import runtimes
from common import UsageError
from conftest import PY, ROOT, error_lines, run
from test_config import call
from tools import export_onnx

SHAPE = (3, 32, 32)
TOOL = ROOT / "tools" / "export_onnx.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root):
    """The prefix of a checkpoint trained in this process: two iterations of batch 8. Zero-init residual branches
    (as the demo recipe) keep its logits near 1 while the batchnorm statistics are still mostly their initial
    values; epsilon 1e-3 is not resnet.py's default, so the export must take it from the checkpoint's symbol."""
    import train

    prefix = tmp_path_factory.mktemp("onnx") / "m"
    assert train.main(["--cpu-devices", "1", "--batch-size", "8", "--num-epochs", "1", "--benchmark-iters", "2",
                       "--no-val", "--data-root", str(demo_root), "--image-shape", "3,32,32", "--num-classes", "10",
                       "--bn-gamma-init0", "--batchnorm-eps", "1e-3", "--seed", "1",
                       "--model-prefix", str(prefix)]) == 0
    return prefix


@pytest.fixture(scope="module")
def exported(trained):
    return export_onnx.export(trained, 1, image_shape=SHAPE)


@pytest.fixture(scope="module")
def images(demo_root):
    """The first 5 validation images, through the validation pipeline."""
    return export_onnx.val_images(demo_root / "val.rec", 5, SHAPE, 10)


def plain_mxnet_logits(prefix: Path, epoch: int, images: np.ndarray) -> np.ndarray:
    """The checkpoint as plain MXNet loads it (its own training symbol, fused batchnorm+relu included): the input of
    its SoftmaxOutput."""
    sym, arg, aux = mx.model.load_checkpoint(str(prefix), epoch)
    mod = mx.mod.Module(sym.get_children()[0], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", images.shape)], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def test_export_has_a_dynamic_batch_and_scores_like_the_checkpoint(trained, exported, images):
    assert exported == Path(f"{trained}-0001.onnx")
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    graph = proto.graph
    assert [i.name for i in graph.input] == ["data"]  # no initializer among the graph inputs
    assert not {i.name for i in graph.input} & {i.name for i in graph.initializer}
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == list(SHAPE)
    assert [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in graph.output] == \
        [("probabilities", ["N", 10]), ("logits", ["N", 10])]
    assert not {n.op_type for n in graph.node} & {"Cast", "Transpose"}  # float32 NCHW throughout

    assert images.shape == (5, *SHAPE) and images.dtype == np.float32
    session = runtimes.open_session("onnxruntime", exported, threads=2)
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    assert session.get_session_options().intra_op_num_threads == 2
    for n in (1, 5):  # one model, two batch sizes
        probs, logits = session.run(None, {"data": images[:n]})
        want = plain_mxnet_logits(trained, 1, images[:n])
        assert logits.shape == probs.shape == (n, 10)
        assert np.abs(logits - want).max() < 1e-3
        assert (logits.argmax(1) == want.argmax(1)).all()
        e = np.exp(want - want.max(1, keepdims=True))
        np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)
    agreement = export_onnx.compare(export_onnx.load(trained, 1), exported, images)
    assert agreement.images == agreement.top1_agree == 5 and agreement.problem(1e-3) is None


def test_both_loadgen_runtimes_answer_as_the_checkpoint_scores(trained, exported, images):
    """The checkpoint in LoadGen's mxnet runtime (its weights through ``checkpoint.load_for_inference``, as the export
    loads them) and its export in the onnxruntime runtime, both opened by name: the classes of the export's check.
    5 images run as bound batches of 4 and 1."""
    from datatypes import DataConfig

    spec = runtimes.ModelSpec("mxnet", "float32", "cpu", trained, 1, None, 10, SHAPE, "NCHW",
                              resnet.ModelConfig(batchnorm_eps=1e-3))
    dcfg = DataConfig(image_shape=SHAPE, num_classes=10, batch_size=8)
    mxnet_rt = runtimes.open_runtime("mxnet", spec, dcfg, 8, 1)
    onnx_rt = runtimes.open_runtime("onnxruntime",
                                    dataclasses.replace(spec, backend="onnxruntime", model_file=exported),
                                    dcfg, 8, 2)
    assert (mxnet_rt.name, mxnet_rt.describe()["batch_sizes"], onnx_rt.name) == ("mxnet", [1, 2, 4, 8], "onnxruntime")
    mxnet_rt.warm_up(8)
    onnx_rt.warm_up(8)
    _, logits = export_onnx.mxnet_outputs(export_onnx.load(trained, 1), images)
    assert mxnet_rt.predict(images).tolist() == onnx_rt.predict(images).tolist() == logits.argmax(1).tolist()
    with pytest.raises(UsageError, match=r"--model-file .*: it has 10 classes, --num-classes is 7"):
        runtimes.open_runtime("onnxruntime", dataclasses.replace(spec, backend="onnxruntime", model_file=exported,
                                                                 num_classes=7), dcfg, 8, 1)


def test_sample_photographs_are_preprocessed_as_validation():
    photos = export_onnx.sample_images(SHAPE)
    assert photos.shape == (2, *SHAPE) and photos.dtype == np.float32
    assert np.isfinite(photos).all() and -2.5 < photos.min() < photos.max() < 2.7  # (x - mean) / std of 0..255
    padded = export_onnx.sample_images((4, 32, 32))
    np.testing.assert_array_equal(padded[:, :3], photos)
    assert not padded[:, 3].any()


def test_an_fp16_nhwc_four_channel_checkpoint_exports_as_float32_nchw(trained, images, tmp_path):
    """NVIDIA's FP16 recipe saves float16 weights, NHWC convolutions (weights OHWI) and a zero 4th input channel;
    the export's graph is float32 NCHW and scores like the float32 original up to float16 rounding."""
    sym = resnet.get_symbol(num_classes=10, image_shape=(4, 32, 32), dtype="float16", input_dtype="float32",
                            input_layout="NHWC", conv_layout="NHWC", batchnorm_layout="NHWC", pooling_layout="NHWC",
                            batchnorm_eps=1e-3)
    arg, aux = checkpoint.load_params(checkpoint.for_scoring(trained, 1, {}))
    blob = {f"aux:{k}": v for k, v in aux.items()}
    for k, v in arg.items():
        if v.ndim == 4:
            v = v.transpose((0, 2, 3, 1))  # OIHW -> OHWI
        if k == "stem_conv_weight":  # weights for the 4th channel, which is always zero
            v = mx.nd.concat(v, mx.nd.random.normal(shape=v.shape[:3] + (1,)), dim=3)
        blob[f"arg:{k}"] = v.astype("float16") if k.endswith("_weight") or k == "fc_bias" else v
    model = {"num_layers": 50, "resnet_version": "1.5", "num_classes": 10, "image_channels": 4, "dtype": "float16"}
    checkpoint.save(tmp_path / "fp16", 1, False, symbol=sym, params=blob, write_states=None, meta={}, model=model)

    converted = export_onnx.load(tmp_path / "fp16", 1)
    assert converted.image_channels == 4 and converted.arg["stem_conv_weight"].shape == (64, 4, 7, 7)
    assert {v.dtype for v in [*converted.arg.values(), *converted.aux.values()]} == {np.float32}
    _, logits = export_onnx.mxnet_outputs(converted, np.concatenate([images, np.zeros_like(images[:, :1])], 1))
    _, want = export_onnx.mxnet_outputs(export_onnx.load(trained, 1), images)
    assert (logits.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(logits, want, atol=2e-3 * np.abs(want).max())  # float16 weights: 3 digits


def test_weights_without_a_manifest_must_match_the_rebuilt_layers(trained, tmp_path):
    for suffix in ("-symbol.json", "-0001.params"):
        os.symlink(f"{trained}{suffix}", tmp_path / f"plain{suffix}")
    with pytest.raises(UsageError, match=r"parameter fc_weight has shape \(10, 2048\), this model needs "
                                         r"\(1000, 2048\); check --num-classes \(it was trained for 10 classes\)"):
        export_onnx.load(tmp_path / "plain", 1)
    with pytest.raises(UsageError, match=r"plain-symbol.json: layer stage2_unit1_conv1 \(stride \(1, 1\)\) has stride "
                                         r"\(2, 2\) in ResNet-50 v1; set --num-layers and --resnet-version"):
        export_onnx.load(tmp_path / "plain", 1, num_classes=10, resnet_version="1")
    assert export_onnx.load(tmp_path / "plain", 1, num_classes=10).resnet_version == "1.5"


@pytest.fixture()
def quiet_env(monkeypatch):
    """``main`` sets MXNet's environment defaults; give them back after the test."""
    for key in ("OMP_NUM_THREADS", "MXNET_SUBGRAPH_VERBOSE"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("args,message", [
    (["{p}", "7"], "EPOCH 7: {p}-0007.params not found (checkpoints with that prefix: m-0001.params)"),
    (["{tmp}/none/m", "1"], "EPOCH 1: {tmp}/none/m-0001.params not found (checkpoints with that prefix: none)"),
    (["{p}", "1", "--image-shape", "3,32"], "--image-shape 3,32: expected C,H,W with C 3"),
    (["{p}", "1", "--image-shape", "4,32,32"], "the checkpoint is of a model with image_channels 3, the flags give "
                                               "4; set --image-shape as it was trained, or choose another PREFIX"),
    (["{p}", "1", "--num-classes", "7"], "the checkpoint is of a model with num_classes 10, the flags give 7"),
    (["{p}", "1", "--data-val", "{tmp}/val.rec"], "--data-val {tmp}/val.rec: file not found"),
    (["{p}", "1", "-o", "{tmp}"], "-o {tmp}: is a directory; give a file path"),
    (["{p}", "1", "--rtol=-1"], "--rtol -1: must be at least 0"),
    (["{tmp}/t", "1"], "EPOCH 1: {tmp}/t-0001.params has 1000 bytes, t-0001.json says"),
    (["{tmp}/s", "1"], "{tmp}/s-symbol.json: not found; a checkpoint is PREFIX-symbol.json with PREFIX-NNNN.params"),
])
def test_bad_input_is_one_line_and_leaves_nothing_behind(trained, tmp_path, args, message, capsys, quiet_env):
    # t: params truncated (its manifest says otherwise); s: a checkpoint without its symbol file
    (tmp_path / "t-symbol.json").symlink_to(f"{trained}-symbol.json")
    (tmp_path / "t-0001.json").symlink_to(f"{trained}-0001.json")
    (tmp_path / "t-0001.params").write_bytes(Path(f"{trained}-0001.params").read_bytes()[:1000])
    (tmp_path / "s-0001.json").symlink_to(f"{trained}-0001.json")
    (tmp_path / "s-0001.params").symlink_to(f"{trained}-0001.params")
    before = {d: sorted(os.listdir(d)) for d in (tmp_path, trained.parent)}
    argv = [a.format(p=trained, tmp=tmp_path) for a in args]
    assert call(export_onnx.main, argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], lines  # (the program name is pytest's in this process)
    assert message.format(p=trained, tmp=tmp_path) in lines[0]
    assert {d: sorted(os.listdir(d)) for d in before} == before


def test_a_failed_check_writes_nothing(trained, tmp_path, capsys, quiet_env):
    out = tmp_path / "out" / "m.onnx"
    assert call(export_onnx.main, [str(trained), "1", "--image-shape", "3,32,32", "-o", str(out), "--atol", "0",
                                   "--rtol", "0"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(
        r"m-0001: the ONNX model does not score like the checkpoint on 2 images of scikit-learn's sample "
        r"photographs: max \|logit diff\| \S+ \(allowed: --atol 0 \+ --rtol 0 x the largest \|logit\| \S+\), top-1 "
        r"agrees 2/2; nothing was written to .*m.onnx", lines[0]), lines
    assert os.listdir(out.parent) == []


def test_the_allowance_grows_with_the_logits():
    """float32 rounding scales with the activations: logits in the thousands (batchnorm statistics near their
    initial values) differ by more than 1e-3 without anything being wrong."""
    assert export_onnx.Agreement(2, 2.2e-3, 0.0, 2, max_logit=4869.0).problem() is None
    assert "max |logit diff| 2.2e-03 (allowed: --atol 0.001 + --rtol 1e-05 x the largest |logit| 3)" in \
        export_onnx.Agreement(2, 2.2e-3, 0.0, 2, max_logit=3.0).problem()
    assert "top-1 agrees 1/2" in export_onnx.Agreement(2, 1e-6, 1e-7, 1, max_logit=3.0).problem()


@pytest.mark.e2e
def test_command_line_exports_where_asked_and_prints_the_check(trained, demo_root, tmp_path):
    out = tmp_path / "served" / "rn50.onnx"
    res = run([PY, TOOL, trained, "1", "--image-shape", "3,32,32", "--data-val", demo_root / "val.rec",
               "--check-images", "5", "-o", out], cwd=tmp_path)  # runs from any folder
    assert res.returncode == 0, res.stderr
    m = re.fullmatch(r"exported (\S+) \(([\d.]+) MiB, batch dynamic\): max \|logit diff\| (\S+), max \|prob diff\| "
                     r"(\S+) over 5 images of val.rec, top-1 agrees 5/5\n", res.stdout)
    assert m, res.stdout
    assert Path(m[1]) == out and float(m[2]) == pytest.approx(out.stat().st_size / 2**20, abs=0.05)
    assert float(m[3]) < 1e-3 and float(m[4]) < 1e-5
    assert os.listdir(out.parent) == ["rn50.onnx"]
    assert not error_lines(res.stderr, "export_onnx.py") and "appears in graph inputs" not in res.stderr
