"""Checkpoints that cannot lie (in process): the manifest, incomplete and corrupt files, another model, partial
checkpoints beside complete ones, retention, stale temporaries."""
from __future__ import annotations

import json
import logging

import mxnet as mx
import numpy as np
import pytest

import checkpoint
import resnet
from common import UsageError

MODEL = {"num_layers": 50, "resnet_version": "1.5", "num_classes": 10, "image_channels": 3, "dtype": "float32"}


def tiny_symbol():
    x = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=4, name="fc")
    return mx.sym.SoftmaxOutput(x, name="softmax")


def write(prefix, epoch, partial=False, model=MODEL, value=1.0, states=True):
    params = {"arg:fc_weight": mx.nd.full((4, 8), value), "arg:fc_bias": mx.nd.zeros((4,)),
              "aux:bn_moving_mean": mx.nd.ones((3,))}

    def write_states(path):
        with open(path, "wb") as f:
            f.write(b"momentum" * 64)

    return checkpoint.save(prefix, epoch, partial, symbol=tiny_symbol(), params=params,
                           write_states=write_states if states else None,
                           meta={"batch": 7 if partial else 0, "step": 100 * epoch}, model=model)


def test_save_writes_mxnet_files_and_a_manifest(tmp_path):
    prefix = tmp_path / "m"
    ckpt = write(prefix, 3)
    sym, arg, aux = mx.model.load_checkpoint(str(prefix), 3)  # plain MXNet reads it
    assert set(arg) == {"fc_weight", "fc_bias"} and set(aux) == {"bn_moving_mean"}
    manifest = json.loads((tmp_path / "m-0003.json").read_text())
    assert manifest["epoch"] == 3 and manifest["partial"] is False and manifest["model"] == MODEL
    assert manifest["files"]["params"]["bytes"] == (tmp_path / "m-0003.params").stat().st_size
    assert len(manifest["files"]["states"]["sha256"]) == 64
    assert checkpoint.problem(ckpt) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_partial_checkpoints_are_not_epochs_for_plain_mxnet(tmp_path):
    prefix = tmp_path / "m"
    write(prefix, 2, partial=True)
    assert (tmp_path / "m-0002-partial.params").is_file() and not (tmp_path / "m-0002.params").exists()
    with pytest.raises(Exception):
        mx.model.load_checkpoint(str(prefix), 2)
    ckpt = checkpoint.for_resume(prefix, 2, MODEL)
    assert ckpt.partial and ckpt.meta["batch"] == 7


def test_resume_takes_the_newest_in_training_order(tmp_path):
    prefix = tmp_path / "m"
    write(prefix, 1)
    write(prefix, 2, partial=True)  # stopped in epoch 2: after epoch 1, before epoch 2
    assert checkpoint.for_resume(prefix, None, MODEL).name == f"{prefix}-0002-partial"
    write(prefix, 2)
    assert checkpoint.for_resume(prefix, None, MODEL).name == f"{prefix}-0002"
    assert checkpoint.for_resume(prefix, 2, MODEL).partial is False  # the complete one wins over the partial one
    assert checkpoint.for_resume(tmp_path / "none", None, MODEL) is None


def test_an_interrupted_save_is_passed_over_with_a_warning(tmp_path, caplog):
    """A save that did not finish has no manifest: the resume falls back and says to which checkpoint."""
    prefix = tmp_path / "m"
    write(prefix, 1)
    write(prefix, 2)
    (tmp_path / "m-0002.json").unlink()
    with caplog.at_level(logging.WARNING):
        ckpt = checkpoint.for_resume(prefix, 2, MODEL)
    assert ckpt.name == f"{prefix}-0001"
    assert f"{prefix}-0002 skipped ({prefix}-0002.json is missing" in caplog.text
    assert f"resuming from {prefix}-0001, the newest complete checkpoint before it" in caplog.text
    assert checkpoint.for_resume(prefix, None, MODEL).name == f"{prefix}-0001"
    (tmp_path / "m-0001.json").unlink()
    with pytest.raises(UsageError, match=r"--load-epoch 2: no complete checkpoint to resume from"):
        checkpoint.for_resume(prefix, 2, MODEL)


def test_resume_with_only_an_incomplete_checkpoint_starts_afresh(tmp_path, caplog):
    """A requeued job whose only checkpoint was cut inside its first save: --resume starts afresh, naming the
    incomplete files, as with no checkpoint at all; --load-epoch of it stays an error."""
    prefix = tmp_path / "m"
    write(prefix, 1, partial=True)
    (tmp_path / "m-0001-partial.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert checkpoint.for_resume(prefix, None, MODEL) is None
    assert f"--resume: no complete checkpoint under {prefix} ({prefix}-0001-partial.json is missing" in caplog.text
    assert "starting afresh" in caplog.text
    with pytest.raises(UsageError, match=r"--load-epoch 1: no complete checkpoint to resume from"):
        checkpoint.for_resume(prefix, 1, MODEL)


def test_a_resumed_report_keeps_the_earlier_epochs(tmp_path):
    """The report of a resumed run starts with the earlier run's epochs before the checkpoint (the interrupted
    epoch's partial numbers are dropped: it is trained again), and records the resume."""
    from report import Report

    def report():
        return Report(tmp_path / "r.json", num_layers=50, device_type="cpu", device_names=["cpu(0)"],
                      dtype="float32", global_batch_size=8, config={})

    first = report()
    first.add_epoch(0, train={"total_ips": 10.0, "iters": 4}, val={"top1": 50.0})
    first.add_epoch(1, train={"total_ips": 11.0, "iters": 4}, val={"top1": 60.0})
    first.add_checkpoint(str(tmp_path / "m"), 2, False)
    first.add_epoch(2, train={"total_ips": 12.0, "iters": 2})  # stopped in epoch 2
    first.add_checkpoint(str(tmp_path / "m"), 3, True)
    first.save("interrupted")
    second = report()
    second.keep_history(2, f"{tmp_path / 'm'}-0002")
    second.add_epoch(2, train={"total_ips": 13.0, "iters": 4}, val={"top1": 70.0})
    second.save("completed")
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["epochs"] == [0, 1, 2] and r["metrics"]["train.total_ips"] == [10.0, 11.0, 13.0]
    assert r["metrics"]["val.top1"] == [50.0, 60.0, 70.0] and r["status"] == "completed"
    assert r["resumed"] == [{"checkpoint": f"{tmp_path / 'm'}-0002", "epoch": 2}]
    assert [c["epoch"] for c in r["checkpoints"]] == [2]


@pytest.mark.parametrize("damage,what", [
    ("truncate-params", r"m-0002.params has \d+ bytes, m-0002.json says \d+ \(truncated\?\)"),
    ("flip-states", r"m-0002.states does not match the SHA-256 in m-0002.json"),
    ("garble-manifest", r"m-0002.json is not a readable manifest"),
    ("drop-states", r"m-0002.states is missing, though m-0002.json lists it"),
])
def test_a_corrupt_checkpoint_is_a_usage_error_naming_the_file(tmp_path, damage, what):
    prefix = tmp_path / "m"
    write(prefix, 1)
    write(prefix, 2)
    if damage == "truncate-params":
        data = (tmp_path / "m-0002.params").read_bytes()
        (tmp_path / "m-0002.params").write_bytes(data[:-10])
    elif damage == "flip-states":
        data = bytearray((tmp_path / "m-0002.states").read_bytes())
        data[100] ^= 1
        (tmp_path / "m-0002.states").write_bytes(bytes(data))
    elif damage == "garble-manifest":
        (tmp_path / "m-0002.json").write_text('{"epoch": 2, "fil')
    else:
        (tmp_path / "m-0002.states").unlink()
    for epoch in (2, None):
        with pytest.raises(UsageError, match=what):
            checkpoint.for_resume(prefix, epoch, MODEL)


@pytest.mark.parametrize("key,value,flag", [("num_layers", 18, "--num-layers"), ("num_classes", 1000, "--num-classes"),
                                            ("dtype", "float16", "--dtype"), ("image_channels", 4, "--image-shape")])
def test_a_checkpoint_of_another_model_names_the_flag(tmp_path, key, value, flag):
    prefix = tmp_path / "m"
    write(prefix, 1, model={**MODEL, key: value})
    for find in (lambda: checkpoint.for_resume(prefix, 1, MODEL), lambda: checkpoint.for_scoring(prefix, 1, MODEL)):
        with pytest.raises(UsageError, match=rf"m-0001.json: the checkpoint is of a model with {key} {value}, the "
                                             rf"flags give {MODEL[key]}; set {flag} as it was trained"):
            find()


def test_weights_without_a_manifest_are_scored_with_a_warning_and_checked_by_shape(tmp_path, caplog):
    sym = resnet.get_symbol(num_layers=18, num_classes=10)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 32, 32))
    want_arg = {n: s for n, s in zip(sym.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    want_aux = dict(zip(sym.list_auxiliary_states(), aux_shapes))
    other = resnet.get_symbol(num_layers=18, num_classes=7)
    mod = mx.mod.Module(other, context=mx.cpu())
    mod.bind(data_shapes=[("data", (1, 3, 32, 32))], for_training=False, label_shapes=[("softmax_label", (1,))])
    mod.init_params(resnet.initializer())
    mod.save_checkpoint(str(tmp_path / "plain"), 4)  # plain MXNet: params and symbol, no manifest
    with caplog.at_level(logging.WARNING):
        ckpt = checkpoint.for_scoring(tmp_path / "plain", 4, MODEL)
    assert "no manifest, so its completeness cannot be checked" in caplog.text
    arg, aux = checkpoint.load_params(ckpt)
    with pytest.raises(UsageError, match=r"parameter fc_weight has shape \(7, 512\), this model needs \(10, 512\); "
                                         r"check --num-classes \(it was trained for 7 classes\)"):
        checkpoint.check_shapes(ckpt.files["params"], arg, aux, want_arg, want_aux)
    deeper = {n: mx.nd.zeros(s) for n, s in want_arg.items()}
    deeper["stage3_unit9_conv1_weight"] = mx.nd.zeros((1,))
    with pytest.raises(UsageError, match=r"its parameters are not this model's \(0 missing, 1 unexpected, e.g. "
                                         r"stage3_unit9_conv1_weight\); was it trained with another --num-layers"):
        checkpoint.check_shapes(ckpt.files["params"], deeper, {n: mx.nd.zeros(s) for n, s in want_aux.items()},
                                want_arg, want_aux)
    (tmp_path / "plain-0004.params").write_bytes(b"\x12\x01" * 50)
    with pytest.raises(UsageError, match=r"plain-0004.params: cannot be read as MXNet parameters"):
        checkpoint.load_params(ckpt)


def test_missing_checkpoint_lists_what_exists(tmp_path):
    write(tmp_path / "m", 1)
    with pytest.raises(UsageError, match=r"--load-epoch 5: .*m-0005.params not found \(checkpoints with that "
                                         r"prefix: m-0001.params\)"):
        checkpoint.for_resume(tmp_path / "m", 5, MODEL)


def test_prune_keeps_the_newest_and_drops_superseded_partials(tmp_path):
    prefix = tmp_path / "m"
    for e in (1, 2, 3):
        write(prefix, e)
    write(prefix, 4, partial=True)
    newest = write(prefix, 4)
    removed = checkpoint.prune(prefix, newest, keep=2)
    assert sorted(removed) == sorted([f"{prefix}-0004-partial", f"{prefix}-0001", f"{prefix}-0002"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0003.json", "m-0003.params", "m-0003.states",
                                                           "m-0004.json", "m-0004.params", "m-0004.states",
                                                           "m-symbol.json"]
    assert checkpoint.prune(prefix, newest, keep=None) == []


def test_a_partial_checkpoint_newer_than_the_complete_one_survives_pruning(tmp_path):
    prefix = tmp_path / "m"
    first = write(prefix, 1)
    write(prefix, 3, partial=True)
    assert checkpoint.prune(prefix, first, keep=1) == []
    assert (tmp_path / "m-0003-partial.json").is_file()


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".m-0002.params.x1y2.tmp").write_bytes(b"half")
    (tmp_path / ".other-0002.params.x.tmp").write_bytes(b"not ours")
    assert checkpoint.remove_stale_temporaries(tmp_path / "m") == [".m-0002.params.x1y2.tmp"]
    assert (tmp_path / ".other-0002.params.x.tmp").exists()


def test_no_space_for_a_checkpoint_is_refused_before_writing(tmpfs):
    disk = tmpfs("1m")
    write(disk / "m", 1)  # small: fits
    big = {"arg:w": mx.nd.zeros((1 << 20,))}  # 4 MiB of weights, 8 with momentum
    with pytest.raises(Exception, match=r"m-0002.params: no space left on device for a checkpoint \(about 8 MiB "
                                        r"needed, 1 MiB free\); free some space or choose another --model-prefix"):
        checkpoint.save(disk / "m", 2, False, symbol=tiny_symbol(), params=big, write_states=lambda p: None,
                        meta={}, model=MODEL)
    assert sorted(p.name for p in disk.iterdir()) == ["m-0001.json", "m-0001.params", "m-0001.states",
                                                       "m-symbol.json"]


def test_a_write_that_runs_out_of_space_keeps_the_old_file(tmpfs):
    """MXNet reports a full disk as 'FileStream.Write incomplete': it becomes one line naming the file."""
    from common import OutputError, atomic_path

    disk = tmpfs("2m")
    target = disk / "w.params"
    target.write_bytes(b"last good")
    with pytest.raises(OutputError, match=r"w.params: no space left on device while writing it"):
        with atomic_path(target) as tmp:
            mx.nd.save(str(tmp), {"a": mx.nd.ones((1 << 20,))})  # 4 MiB into 2
    assert target.read_bytes() == b"last good" and [p.name for p in disk.iterdir()] == ["w.params"]
    with pytest.raises(OutputError, match=r"x.json: no space left on device while writing it"):
        with atomic_path(disk / "x.json") as tmp:
            tmp.write_bytes(np.zeros(3 << 20, np.uint8).tobytes())
