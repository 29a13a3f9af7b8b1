"""Faults a user hits, end to end through the runner: signals in validation, scoring and saving, a kill while
saving, corrupt checkpoints, corrupt records, labels out of range, outputs that cannot be written, a full disk,
NVIDIA's benchmark protocol. Each bad case: one error line, a non-zero exit, no traceback, nothing half-written."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import checkpoint
from conftest import ROOT, copy_set, error_lines, params_of, run, run_until

pytestmark = pytest.mark.e2e

RUNNER = ROOT / "runner"
TINY = ["--image-shape", "3,32,32", "--num-classes", "10", "--disp-batches", "1"]
SYNTH = ["--data-backend", "synthetic", "--num-examples", "64", *TINY]


def one_error(res_or_stderr, expect: str, prog: str = "train.py") -> str:
    stderr = res_or_stderr if isinstance(res_or_stderr, str) else res_or_stderr.stderr
    lines = error_lines(stderr, prog)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert expect in lines[0], lines[0]
    return lines[0]


def no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root):
    """A one-epoch checkpoint of ResNet-50 on the digits (2 iterations)."""
    d = tmp_path_factory.mktemp("trained")
    run([RUNNER, "-n", "1", "-b", "32", "-e", "1", "--data-root", demo_root, "--model-prefix", d / "m",
         "--benchmark-iters", "2", "--no-val", "--seed", "1", *TINY], check=True)
    return d


# ------------------------------------------------------------------------------------------------ signals


def test_signal_during_validation_checkpoints_the_epoch_and_resumes_exactly(tmp_path):
    """Validation used to ignore signals until its pass ended; now it stops within a batch, the trained epoch is
    checkpointed as complete, and a resume ends with the weights of an uninterrupted run."""
    common = ["-n", "1", "-b", "8", "-e", "2", "--seed", "5", "--warmup-epochs", "0", "--num-layers", "18", *SYNTH]
    run([RUNNER, *common, "--no-val", "--model-prefix", tmp_path / "full"], check=True)
    t0 = time.monotonic()
    code, err = run_until([RUNNER, *common, "--num-val-examples", "40000", "--model-prefix", tmp_path / "cut",
                           "--report", tmp_path / "r.json"], "Epoch[0] validation: 5000 batches")
    assert code == 128 + signal.SIGTERM and time.monotonic() - t0 < 120, err[-2000:]
    assert "SIGTERM: stopped after epoch 0; checkpoint" in err and "--resume" in err and "Traceback" not in err
    assert checkpoint.problem(checkpoint.listing(tmp_path / "cut")[-1]) is None
    assert [c.name for c in checkpoint.listing(tmp_path / "cut")] == [f"{tmp_path / 'cut'}-0001"]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["status"] == "interrupted" and r["epochs"] == [0] and "val.top1" not in r["metrics"]
    run([RUNNER, *common, "--no-val", "--model-prefix", tmp_path / "cut", "--resume"], check=True)
    full, resumed = params_of(tmp_path / "full-0002.params"), params_of(tmp_path / "cut-0002.params")
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)


def test_signal_during_scoring_stops_within_a_batch(tmp_path, trained):
    code, err = run_until([RUNNER, "-n", "1", "-b", "4", "-e", "50", "--data-backend", "synthetic",
                           "--num-val-examples", "800", "--model-prefix", trained / "m", "--load-epoch", "1",
                           "--only-inference", "--report", tmp_path / "s.json", *TINY], "Score[0]",
                          sig=signal.SIGINT)
    assert code == 128 + signal.SIGINT and "SIGINT: scoring stopped in pass 1 after" in err
    assert "Traceback" not in err
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["status"] == "interrupted" and r["epochs"] == [0, 1] and r["metrics"]["val.iters"][1] < 200


def test_signal_during_the_start_up_check_stops_it(tmp_path):
    """The check of every record (seconds for ImageNet with the mxnet backend) stops on a signal, before any work."""
    import cv2

    import recfile

    ok, jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    for split, n in (("train", 300_000), ("val", 8)):
        with open(tmp_path / f"{split}.rec", "wb") as f:
            w = recfile.IndexedRecordWriter(f)
            for i in range(n):
                w.write(i, recfile.pack_image_record(i % 10, i, jpeg.tobytes()))
        with open(tmp_path / f"{split}.idx", "wb") as f:
            w.write_index(f)
    code, err = run_until([RUNNER, "-n", "1", "-b", "8", "-e", "1", "--data-root", tmp_path, "--data-backend",
                           "mxnet", "--report", tmp_path / "r.json", *TINY], "checking the train set")
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM: stopped before the first iteration" in err and "Traceback" not in err
    assert "records checked" not in err.split("checking the train set")[1]  # the scan itself was cut short
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"


def test_signal_during_saving_finishes_the_checkpoint_then_stops(tmp_path):
    code, err = run_until([RUNNER, "-n", "1", "-b", "8", "-e", "3", "--no-val", "--seed", "2",
                           "--model-prefix", tmp_path / "m", *SYNTH], "writing checkpoint")
    assert code == 128 + signal.SIGTERM and "SIGTERM: stopped after epoch 0; checkpoint" in err, err[-2000:]
    ckpts = checkpoint.listing(tmp_path / "m")
    assert [c.name for c in ckpts] == [f"{tmp_path / 'm'}-0001"] and checkpoint.problem(ckpts[0]) is None
    no_temporaries(tmp_path)


def test_a_kill_while_saving_is_passed_over_on_resume(tmp_path):
    """SIGKILL after the params of epoch 2 are in place but before its manifest: the resume does not take them for a
    complete checkpoint; it says it falls back to epoch 1, removes the stale temporaries and finishes."""
    prefix = tmp_path / "m"
    cmd = [str(a) for a in [RUNNER, "-n", "1", "-b", "8", "-e", "3", "--no-val", "--seed", "2",
                            "--model-prefix", prefix, *SYNTH]]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    params, manifest = tmp_path / "m-0002.params", tmp_path / "m-0002.json"
    deadline = time.monotonic() + 300
    try:
        while not params.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        p.kill()
    finally:
        p.wait(timeout=60)
    assert params.exists() and not manifest.exists(), "the kill did not land inside the save; rerun"
    res = run([RUNNER, *cmd[1:], "--resume"], check=True)
    assert (f"--resume: {prefix}-0002 skipped ({prefix}-0002.json is missing (its save did not finish" in res.stderr
            and f"resuming from {prefix}-0001, the newest complete checkpoint before it" in res.stderr)
    assert [c.name for c in checkpoint.listing(prefix)] == [f"{prefix}-{e:04d}" for e in (1, 2, 3)]
    assert all(checkpoint.problem(c) is None for c in checkpoint.listing(prefix))
    no_temporaries(tmp_path)


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("damage,flags,expect", [
    ("truncate", ["--load-epoch", "1"], "m-0001.params has"),
    ("manifest", ["--resume"], "m-0001.json is not a readable manifest"),
    ("none", ["--load-epoch", "1", "--num-layers", "18"], "the checkpoint is of a model with num_layers 50, the "
                                                          "flags give 18; set --num-layers as it was trained"),
    ("none", ["--load-epoch", "1", "--num-classes", "7"], "the checkpoint is of a model with num_classes 10, the "
                                                          "flags give 7; set --num-classes"),
])
def test_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path, trained, demo_root, damage, flags, expect):
    d = tmp_path / "c"
    d.mkdir()
    for f in trained.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    if damage == "truncate":
        (d / "m-0001.params").write_bytes((d / "m-0001.params").read_bytes()[:-1000])
    elif damage == "manifest":
        (d / "m-0001.json").write_text("{")
    res = run([RUNNER, "-n", "1", "-b", "32", "-e", "2", "--data-root", demo_root, "--model-prefix", d / "m",
               *TINY, *flags])
    assert res.returncode == 2
    one_error(res, expect)


# ------------------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("backend,mode,fault,code,expect", [
    ("dali-cpu", "train", "bad-header", 4, "the training set {root}/train.rec: record 5 (key {key}, byte {off}) "
                                           "cannot be decoded"),
    ("dali-cpu", "score", "bad-header", 4, "the validation set {root}/val.rec: record 5 (key {key}, byte {off}) "
                                           "cannot be decoded"),
    ("dali-cpu", "train", "text", 2, "the train set {root}/train.rec has records that are not readable images: "
                                     "record 5 (key {key}, byte {off}): not an image"),
    ("mxnet", "train", "bad-header", 2, "the train set {root}/train.rec has records that are not readable images: "
                                        "record 5 (key {key}, byte {off}): corrupt JPEG"),
    ("mxnet", "score", "garbage", 2, "the val set {root}/val.rec has records that are not readable images: "
                                     "record 5 (key {key}, byte {off}): not an image"),
])
def test_a_corrupt_record_is_one_line_naming_it(tmp_path, demo_root, backend, mode, fault, code, expect):
    """ImageRecordIter used to die of SIGFPE and DALI with a traceback; the start-up check finds what it can, and a
    record DALI cannot decode later stops the run with a checkpoint and the record's number and key."""
    split = "val" if mode == "score" else "train"
    root = copy_set(demo_root, tmp_path / "set", fault, split=split)
    key, off = __import__("recfile").read_index(root / f"{split}.idx")[5]
    args = [RUNNER, "-n", "1", "-b", "32", "-e", "2", "--data-root", root, "--data-backend", backend,
            "--report", tmp_path / "r.json", "--model-prefix", tmp_path / "m", "--seed", "3", "--num-layers", "18",
            *TINY]
    res = run(args + (["--only-inference"] if mode == "score" else ["--no-val"]))
    assert res.returncode == code, res.stderr[-2000:]
    line = one_error(res, expect.format(root=root, key=key, off=off))
    assert "tools/check_rec.py" in line
    r = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else None
    if code == 4:
        assert r["status"] == "failed" and r["error"] == line.split("error: ", 1)[1]
    if code == 4 and mode == "train":  # the iterations before the bad record are kept in a partial checkpoint
        ckpt = checkpoint.listing(tmp_path / "m")[-1]
        assert ckpt.partial and checkpoint.problem(ckpt) is None
    no_temporaries(tmp_path)


@pytest.mark.parametrize("fault,label", [("label-1", "-1"), ("label-high", "1000")])
def test_labels_outside_the_classes_are_a_usage_error(tmp_path, demo_root, fault, label):
    root = copy_set(demo_root, tmp_path / "set", fault)
    res = run([RUNNER, "-n", "1", "-b", "32", "-e", "1", "--data-root", root, *TINY])
    assert res.returncode == 2
    one_error(res, f"--num-classes 10: the train set {root}/train.rec has labels outside [0, 10): record 5")
    assert f"label {label} is outside [0, 10)" in res.stderr


# ------------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("flag", ["--model-prefix", "--report"])
def test_an_unwritable_output_is_refused_before_work(tmp_path, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "out" / ("m" if flag == "--model-prefix" else "r.json")
    t0 = time.monotonic()
    res = run([RUNNER, "-n", "1", "-b", "8", "-e", "1", *SYNTH, flag, target])
    assert res.returncode == 2 and time.monotonic() - t0 < 60
    one_error(res, f"{flag} {target if flag == '--report' else str(target) + '-symbol.json'}: cannot write there")
    assert "Epoch[0]" not in res.stderr  # refused before the first iteration


def test_a_full_disk_keeps_the_last_checkpoint_and_reports_it(tmp_path, tmpfs):
    disk = tmpfs("250m")  # ResNet-50 with 10 classes: 94 MB of weights + 94 MB of momentum; one checkpoint fits
    res = run([RUNNER, "-n", "1", "-b", "8", "-e", "3", "--no-val", "--model-prefix", disk / "m",
               "--report", disk / "r.json", *SYNTH])
    assert res.returncode == 5, res.stderr[-2000:]
    one_error(res, f"{disk}/m-0002.params: no space left on device for a checkpoint")
    assert "checked before epoch 1 is trained" in res.stderr and "Epoch[1] Batch" not in res.stderr  # no lost work
    assert [c.name for c in checkpoint.listing(disk / "m")] == [f"{disk / 'm'}-0001"]
    assert checkpoint.problem(checkpoint.listing(disk / "m")[0]) is None
    r = json.loads((disk / "r.json").read_text())
    assert r["status"] == "failed" and "no space left" in r["error"] and r["epochs"] == [0]


def test_a_disk_too_small_for_one_checkpoint_is_found_before_any_work(tmp_path, tmpfs):
    disk = tmpfs("20m")
    res = run([RUNNER, "-n", "1", "-b", "8", "-e", "3", "--no-val", "--model-prefix", disk / "m", *SYNTH])
    assert res.returncode == 5, res.stderr[-2000:]
    one_error(res, f"{disk}/m-0001.params: no space left on device for a checkpoint")
    assert "checked before epoch 0 is trained" in res.stderr and "Batch[" not in res.stderr
    no_temporaries(disk)
    no_temporaries(disk)


# ------------------------------------------------------------------------------------------------ benchmarks


def test_nvidia_benchmark_protocol_cuts_validation(tmp_path):
    """`./runner ... --benchmark-iters I -e E` without --no-val (NVIDIA's benchmark.py): validation is cut to I
    batches too, instead of a full pass over 50,000 synthetic images."""
    t0 = time.monotonic()
    run([RUNNER, "-n", "1", "-b", "8", "-e", "2", "--benchmark-iters", "4", "--data-backend", "synthetic",
         "--no-metrics", "--report", tmp_path / "r.json", "--image-shape", "3,32,32", "--num-classes", "10"],
        check=True)
    assert time.monotonic() - t0 < 180
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert m["train.iters"] == [4, 4] and m["val.iters"] == [4, 4]


def test_synthetic_validation_is_sized_like_the_training_set(tmp_path):
    run([RUNNER, "-n", "1", "-b", "8", "-e", "1", "--report", tmp_path / "r.json", "--data-backend", "synthetic",
         "--num-examples", "320", "--num-layers", "18", *TINY], check=True)
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert m["train.iters"] == [40] and m["val.iters"] == [2]  # 320 * 50000 / 1281167 = 12 images: 2 batches of 8
