"""Data backends on CPU with real MXNet and DALI: shapes, dtypes, layouts, normalization, sharding, coverage."""
from __future__ import annotations

import collections
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import dali
import data
from conftest import PY, ROOT, run

IM2REC = Path(mx.__file__).parent / "tools" / "im2rec.py"
RECORD_BACKENDS = ("dali-cpu", "mxnet")


def make_cfg(root, backend, batch=8, shape="3,32,32", layout="NCHW", dtype="float32", seed=3, **fields):
    """A resolved DataConfig, built directly (as train.py builds it from the flags)."""
    shape = tuple(map(int, shape.split(",")))
    return data.resolve(data.DataConfig(data_root=root, data_backend=backend, image_shape=shape, input_layout=layout,
                                        batch_size=batch, dtype=dtype, seed=seed,
                                        dali=dali.DaliConfig(dali_threads=2), **fields))


def cpus(n):
    return [mx.cpu(i) for i in range(n)]


def real_labels(batches):
    """Labels of the non-padding samples of one iterator step (a list of per-device batches)."""
    out = []
    for b in batches:
        lab = b.label[0].asnumpy()
        out.extend(lab[: len(lab) - b.pad].astype(int).tolist())
    return out


@pytest.mark.parametrize("backend", ("dali-cpu", "mxnet", "synthetic"))
@pytest.mark.parametrize("layout,dtype,channels", [("NCHW", "float32", 3), ("NHWC", "float16", 4)])
@pytest.mark.parametrize("ndev", (1, 2))
def test_batches_have_the_right_form(demo_root, backend, layout, dtype, channels, ndev):
    cfg = make_cfg(demo_root, backend, batch=16, shape=f"{channels},32,32", layout=layout, dtype=dtype,
                   num_examples=64, num_classes=10)
    train, val = data.get_iters(cfg, cpus(ndev))
    want = (8 * (2 // ndev),) + ((channels, 32, 32) if layout == "NCHW" else (32, 32, channels))
    assert train.provide_data[0].shape == (16,) + want[1:]
    assert train.provide_data[0].layout == layout
    assert train.provide_label[0].name == "softmax_label"
    for it in (train, val):
        steps = 0
        for _, batches in zip(range(30), it):  # synthetic val is ImageNet-sized: 30 steps are enough
            steps += 1
            assert len(batches) == ndev
            for b in batches:
                x, y = b.data[0], b.label[0]
                assert x.shape == want and x.dtype == np.dtype(dtype)
                assert y.shape == (want[0],)
                labels = y.asnumpy()
                assert labels.min() >= 0 and labels.max() <= 9 and np.all(labels == labels.round())
                if channels == 4:
                    pad_channel = x.asnumpy()[:, 3] if layout == "NCHW" else x.asnumpy()[..., 3]
                    if backend != "synthetic":
                        assert np.all(pad_channel == 0)
        assert steps >= 1
    assert train.batches_per_epoch == 4  # --num-examples 64 / batch 16


@pytest.mark.parametrize("backend", RECORD_BACKENDS)
def test_normalization_and_rgb_order(solid_rec, backend):
    """Solid (200,100,50) and (20,180,240) images come out as (rgb - mean) / std, channel by channel."""
    root, colours = solid_rec
    cfg = make_cfg(root, backend, batch=4, shape="3,24,24")
    train, val = data.get_iters(cfg, cpus(1))
    mean, std = np.array(data.RGB_MEAN), np.array(data.RGB_STD)
    expected = {c: (np.array(rgb) - mean) / std for c, rgb in enumerate(colours)}
    for it in (train, val):
        for batches in it:
            b = batches[0]
            x, y = b.data[0].asnumpy(), b.label[0].asnumpy().astype(int)
            for i in range(len(y) - b.pad):
                got = x[i].reshape(3, -1).mean(axis=1)
                assert np.allclose(got, expected[y[i]], atol=0.03), (backend, got, expected[y[i]])


@pytest.mark.parametrize("backend", RECORD_BACKENDS)
@pytest.mark.parametrize("ndev,workers", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_validation_sees_every_image_exactly_once(unique_rec, backend, ndev, workers):
    """21 val images, each its own class, batch 8: padding is marked, never counted, over devices and workers."""
    seen = collections.Counter()
    for rank in range(workers):
        cfg = make_cfg(unique_rec, backend, batch=4 * ndev, shape="3,32,32")
        _, val = data.get_iters(cfg, cpus(ndev), rank=rank, num_workers=workers)
        for _ in range(2):  # a second pass after reset is the same
            epoch = collections.Counter()
            for batches in val:
                epoch.update(real_labels(batches))
            val.reset()
            assert sum(epoch.values()) * workers >= 21 - workers
        seen.update(epoch)
    assert seen == collections.Counter(range(21))


@pytest.mark.parametrize("backend", RECORD_BACKENDS)
def test_training_epoch_covers_every_image_and_reshuffles(unique_rec, backend):
    cfg = make_cfg(unique_rec, backend, batch=4, shape="3,32,32")
    train, _ = data.get_iters(cfg, cpus(2))
    orders = []
    for _ in range(2):
        labels = [lbl for batches in train for lbl in real_labels(batches)]
        train.reset()
        assert set(range(23)) <= set(labels)  # 23 images over 2 shards: all seen in every epoch
        assert len(labels) == 24  # 6 steps of 2 x 2: shards of 12 and 11 images, the short one filled up
        orders.append(labels)
    assert orders[0] != orders[1]


def test_training_shards_split_the_set(unique_rec):
    """Two workers' first epochs see disjoint halves of the training set that together make all of it."""
    seen = []
    for rank in range(2):  # shards of 12 and 11 images; a batch of 11 stays inside each
        cfg = make_cfg(unique_rec, "dali-cpu", batch=11, shape="3,32,32")
        train, _ = data.get_iters(cfg, cpus(1), rank=rank, num_workers=2)
        seen.append(set(real_labels(train.next())))
    assert len(seen[0]) == len(seen[1]) == 11
    assert not seen[0] & seen[1]


@pytest.mark.parametrize("backend", RECORD_BACKENDS)
@pytest.mark.e2e
def test_reads_a_rec_made_by_mxnet_im2rec(jpeg_tree, tmp_path, backend):
    for split in ("train", "val"):
        run([PY, IM2REC, "--list", "--recursive", tmp_path / split, jpeg_tree], check=True)
        run([PY, IM2REC, "--pass-through", tmp_path / split, jpeg_tree], check=True)
    cfg = make_cfg(tmp_path, backend, batch=5, shape="3,64,64")
    train, val = data.get_iters(cfg, cpus(1))
    labels = [lbl for batches in val for lbl in real_labels(batches)]
    assert sorted(labels) == [0] * 5 + [1] * 5
    assert train.next()[0].data[0].shape == (5, 3, 64, 64)


def test_num_examples_cuts_epochs_without_restarting(demo_root):
    cfg = make_cfg(demo_root, "dali-cpu", batch=32, num_examples=100)
    train, _ = data.get_iters(cfg, cpus(1))
    for _ in range(3):
        assert sum(1 for _ in train) == 4
        train.reset()


def test_val_resize_default_scales_with_the_crop(demo_root):
    assert make_cfg(demo_root, "mxnet", shape="3,224,224").data_val_resize == 256
    assert make_cfg(demo_root, "mxnet", shape="3,32,32").data_val_resize == 37
    assert make_cfg(demo_root, "mxnet", data_val_resize=40).data_val_resize == 40


@pytest.mark.e2e
def test_data_cli_times_a_pipeline(demo_root):
    res = run([PY, ROOT / "data.py", "--data-root", demo_root, "--image-shape", "3,32,32", "-b", "32", "-i", "5"],
              check=True)
    assert res.stdout.startswith("dali-cpu: train ") and " img/s" in res.stdout


@pytest.fixture()
def broken_roots(demo_root, tmp_path):
    no_rec = tmp_path / "no_rec"
    no_rec.mkdir()
    no_idx = tmp_path / "no_idx"
    no_idx.mkdir()
    (no_idx / "train.rec").write_bytes((demo_root / "train.rec").read_bytes())
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "train.rec").write_bytes((demo_root / "train.rec").read_bytes())
    (mismatch / "train.idx").write_bytes((demo_root / "val.idx").read_bytes())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    rec = (demo_root / "train.rec").read_bytes()
    (truncated / "train.rec").write_bytes(rec[: len(rec) - 100])
    (truncated / "train.idx").write_bytes((demo_root / "train.idx").read_bytes())
    for d in (mismatch, truncated):  # a good val pair, so that the train pair is what fails
        for ext in ("rec", "idx"):
            (d / f"val.{ext}").write_bytes((demo_root / f"val.{ext}").read_bytes())
    return {"no_rec": no_rec, "no_idx": no_idx, "mismatch": mismatch, "truncated": truncated}


@pytest.mark.parametrize("case,args,expect", [
    ("missing_root", ["--data-root", "{tmp}/nowhere"], "--data-root {tmp}/nowhere: no such directory"),
    ("no_root", [], "--data-backend dali-cpu reads RecordIO: give --data-root"),
    ("no_rec", ["--data-root", "{no_rec}"], "--data-root {no_rec} has no train.rec"),
    ("no_idx", ["--data-root", "{no_idx}"], "--data-train-idx {no_idx}/train.idx: file not found"),
    ("mismatch", ["--data-root", "{mismatch}"], "the train index {mismatch}/train.idx does not match "
                                                "{mismatch}/train.rec: record 0 (key"),
    ("truncated", ["--data-root", "{truncated}"], "the train index {truncated}/train.idx does not match "
                                                  "{truncated}/train.rec: record 1436"),
    ("backend", ["--data-backend", "tfrecord"], "argument --data-backend: invalid choice: 'tfrecord'"),
    ("gpu", ["--data-root", "{demo}", "--data-backend", "dali-gpu"], "--data-backend dali-gpu needs GPU devices"),
])
@pytest.mark.e2e
def test_bad_input_is_one_line_and_exit_2(case, args, expect, broken_roots, demo_root, tmp_path):
    if case == "gpu" and data.num_gpus():
        pytest.skip("this machine has a GPU MXNet can use")
    fill = dict(tmp=tmp_path, demo=demo_root, **broken_roots)
    res = run([PY, ROOT / "data.py", *[a.format(**fill) for a in args]])
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "ImageRecordIOParser2" not in ln]
    assert len(lines) == 1 and expect.format(**fill) in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.gpu
def test_dali_gpu_pipeline_on_the_gpu(demo_root):
    """dali-gpu's pipelines (nvJPEG decode, GPU resize and normalize) give fp16 NHWC batches with the pad channel."""
    cfg = make_cfg(demo_root, "dali-gpu", batch=32, shape="4,32,32", layout="NHWC", dtype="float16")
    for make in (dali.train_pipeline, dali.val_pipeline):
        pipe = make(cfg, 0, 1, batch_size=32, num_threads=2, device_id=0, seed=1)
        pipe.build()
        images, labels = pipe.run()
        x = np.array(images.as_cpu().as_tensor())
        assert x.shape == (32, 32, 32, 4) and x.dtype == np.float16
        assert np.all(x[..., 3] == 0)
        assert np.array(labels.as_tensor()).max() <= 9
