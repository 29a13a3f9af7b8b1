"""Data: the ``--data-*`` flags, the choice of backend, the checks of the input files, MXNet's ``ImageRecordIter``,
synthetic data.

Backends (``--data-backend``), as in NVIDIA's toolkit:

* ``dali-gpu`` / ``dali-cpu``: DALI pipelines on the ``.rec`` + ``.idx`` files (``dali.py``; the only module that
  imports DALI). ``dali-cpu`` needs no GPU at all.
* ``mxnet``: ``mx.io.ImageRecordIter`` with the same augmentation (random-resized-crop, flip, normalize).
* ``synthetic``: random data of the right shape and dtype, made once on each device (pure compute benchmarks).

Every backend gives a ``datatypes.DataIterBase``: ``next()`` returns one ``mx.io.DataBatch`` per device.

Before any pipeline is built, every ``.idx`` entry is checked against its ``.rec`` (``recfile.scan``): each entry
must point at a record that ends where the next one starts, every label must be a class number below
``--num-classes``, and every record must start like an image. For the ``mxnet`` backend each JPEG's headers are also
parsed, because ``ImageRecordIter`` dies of SIGFPE on an image it cannot decode; DALI reports such an image as an
error, which ``dali.py`` turns into one line naming the record.

Sharding: with ``W`` worker processes and ``D`` devices per process, the training and validation sets are cut into
``W * D`` shards (``shard = rank * D + device index``), so every image is seen once per epoch across all shards.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np

import recfile
from common import (DataError, Parser, UsageError, available_cores, check_image_shape, config_from, float_list,
                    int_list, num_gpus, path_arg, run_main)
from datatypes import LABEL_NAME, RGB_MEAN, RGB_STD, DataConfig, DataIterBase

log = logging.getLogger(__name__)

BACKENDS = ("dali-gpu", "dali-cpu", "mxnet", "synthetic")
LAYOUTS = ("NCHW", "NHWC")
IMAGENET_TRAIN_IMAGES = 1281167
IMAGENET_VAL_IMAGES = 50000


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("Data", "input files, backend, shape and normalization")
    g.add_argument("--data-root", type=path_arg, default=None,
                   help="folder with train.rec/.idx and val.rec/.idx (made by tools/prepare_dataset.py); fills in "
                        "whichever of --data-train/--data-train-idx/--data-val/--data-val-idx is not given")
    g.add_argument("--data-train", type=path_arg, default=None, help="training .rec")
    g.add_argument("--data-train-idx", type=path_arg, default=None, help="its .idx (default: the .rec with .idx)")
    g.add_argument("--data-val", type=path_arg, default=None, help="validation .rec")
    g.add_argument("--data-val-idx", type=path_arg, default=None, help="its .idx (default: the .rec with .idx)")
    g.add_argument("--data-backend", choices=BACKENDS, default=None,
                   help="data pipeline (default: dali-gpu when MXNet sees a GPU, dali-cpu otherwise)")
    g.add_argument("--image-shape", type=int_list, default=(3, 224, 224),
                   help="C,H,W of the network input; C=4 adds the zero channel NVIDIA pads for fp16 NHWC convs")
    g.add_argument("--input-layout", choices=LAYOUTS, default="NCHW", help="layout of the batches")
    g.add_argument("--rgb-mean", type=float_list, default=RGB_MEAN, help="per-channel mean (0-255 scale)")
    g.add_argument("--rgb-std", type=float_list, default=RGB_STD, help="per-channel std (0-255 scale)")
    g.add_argument("--num-classes", type=int, default=1000, help="number of classes")
    g.add_argument("--num-examples", type=int, default=None,
                   help="training images per epoch (default: all of --data-train; ImageNet's 1281167 for synthetic)")
    g.add_argument("--num-val-examples", type=int, default=None,
                   help="synthetic validation images (default: ImageNet's share of the training images, 50000 per "
                        "1281167, at least one batch)")
    g.add_argument("--data-val-resize", type=int, default=None,
                   help="validation: resize the shorter side to this before the center crop "
                        "(default: 256/224 of the crop, i.e. 256 for 224)")
    g.add_argument("--data-mxnet-threads", type=int, default=None,
                   help="decode threads of the mxnet backend (default: cores available; ImageRecordIter itself "
                        "caps them at max(cores/2 - 1, 1))")
    a = parser.add_argument_group("Augmentation", "training-time augmentation (all backends but synthetic)")
    a.add_argument("--min-random-area", type=float, default=0.05, help="random-resized-crop: smallest area share")
    a.add_argument("--max-random-area", type=float, default=1.0, help="random-resized-crop: largest area share")
    a.add_argument("--min-random-aspect-ratio", type=float, default=3 / 4, help="smallest crop aspect ratio (w/h)")
    a.add_argument("--max-random-aspect-ratio", type=float, default=4 / 3, help="largest crop aspect ratio (w/h)")
    a.add_argument("--random-mirror", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flip")
    return g


def default_backend(have_gpu: bool) -> str:
    return "dali-gpu" if have_gpu else "dali-cpu"


def resolve(cfg: DataConfig, have_gpu: bool = False) -> DataConfig:
    """``cfg`` checked (``UsageError`` naming the flag) with its machine-dependent defaults filled in: the backend,
    the index paths, the validation resize, the dtype of the batches (float32 for all but float16 training)."""
    backend = cfg.data_backend or default_backend(have_gpu)
    shape = check_image_shape(cfg.image_shape)
    for flag, v in (("--rgb-mean", cfg.rgb_mean), ("--rgb-std", cfg.rgb_std)):
        if len(v) != 3 or not all(math.isfinite(x) for x in v):
            raise UsageError(f"{flag}: expected 3 comma-separated finite values, got {len(v)}")
    if min(cfg.rgb_std) <= 0:
        raise UsageError("--rgb-std: every value must be positive")
    if not 0 < cfg.min_random_area <= cfg.max_random_area <= 1:
        raise UsageError(f"--min-random-area {cfg.min_random_area} / --max-random-area {cfg.max_random_area}: "
                         "need 0 < min <= max <= 1")
    if not 0 < cfg.min_random_aspect_ratio <= cfg.max_random_aspect_ratio < math.inf:
        raise UsageError("--min-random-aspect-ratio / --max-random-aspect-ratio: need 0 < min <= max")
    for flag, v in (("--num-classes", cfg.num_classes), ("--num-examples", cfg.num_examples),
                    ("--num-val-examples", cfg.num_val_examples), ("--data-mxnet-threads", cfg.data_mxnet_threads),
                    ("--batch-size", cfg.batch_size)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    crop = shape[1]
    val_resize = cfg.data_val_resize or max(crop, round(crop * 256 / 224))
    if val_resize < min(shape[1:]):
        raise UsageError(f"--data-val-resize {val_resize}: must be at least the crop size {crop}")
    paths = _resolve_paths(cfg, backend)
    dali_cfg = cfg.dali
    if backend.startswith("dali") and dali_cfg is not None:
        import dali  # only the DALI path needs it

        dali_cfg = dali.resolve(dali_cfg, backend)
    return dataclasses.replace(cfg, data_backend=backend, image_shape=shape, data_val_resize=val_resize,
                               dtype=cfg.dtype if cfg.dtype == "float16" else "float32", dali=dali_cfg, **paths)


def _resolve_paths(cfg: DataConfig, backend: str) -> dict:
    root = cfg.data_root
    if backend == "synthetic":  # nothing is read
        return dict(data_train=None, data_train_idx=None, data_val=None, data_val_idx=None)
    if root is not None and not root.is_dir():
        raise UsageError(f"--data-root {root}: no such directory (make one with tools/prepare_dataset.py, or "
                         "`make demo-data` for the digits)")
    train = cfg.data_train or (root / "train.rec" if root else None)
    val = cfg.data_val or (root / "val.rec" if root else None)
    train_idx = cfg.data_train_idx or (train.with_suffix(".idx") if train else None)
    val_idx = cfg.data_val_idx or (val.with_suffix(".idx") if val else None)
    if train is None and val is None:
        raise UsageError(f"--data-backend {backend} reads RecordIO: give --data-root (a folder made by "
                         "tools/prepare_dataset.py) or --data-train/--data-val, or use --data-backend synthetic")
    for flag, rec, idx in (("--data-train", train, train_idx), ("--data-val", val, val_idx)):
        if rec is None:
            continue
        if not rec.is_file():
            how = f"--data-root {root} has no {rec.name}" if flag == "--data-train" and not cfg.data_train or \
                flag == "--data-val" and not cfg.data_val else f"{flag} {rec}: file not found"
            raise UsageError(f"{how} (make it with tools/prepare_dataset.py)")
        if not idx.is_file():
            raise UsageError(f"{flag}-idx {idx}: file not found (DALI and shuffling need the .idx written beside "
                             "the .rec by tools/prepare_dataset.py or im2rec.py)")
    return dict(data_train=train, data_train_idx=train_idx, data_val=val, data_val_idx=val_idx)


def check_record_files(cfg: DataConfig, want_train: bool = True, want_val: bool = True, progress=None) -> dict:
    """Check every ``.idx`` entry against its ``.rec`` (``recfile.scan``; with the ``mxnet`` backend also every
    JPEG's headers); return the number of records per split. A problem is a ``UsageError`` naming the record.
    ``progress`` is called now and then during long scans (``StopFlag.check`` stops them on a signal)."""
    counts = {}
    for split, rec, idx, wanted in (("train", cfg.data_train, cfg.data_train_idx, want_train),
                                    ("val", cfg.data_val, cfg.data_val_idx, want_val)):
        if rec is None or not wanted:
            continue
        try:
            t0 = time.perf_counter()
            headers = cfg.data_backend == "mxnet"
            log.info("checking the %s set %s: every index entry and label%s", split, rec,
                     ", every JPEG's headers (ImageRecordIter dies on one it cannot decode)" if headers else "")
            result = recfile.scan(rec, idx, num_classes=cfg.num_classes, headers=headers, progress=progress)
            log.info("the %s set: %d records checked in %.1f s", split, result.records, time.perf_counter() - t0)
        except (ValueError, OSError) as err:
            raise UsageError(f"the {split} index {idx} cannot be used with {rec}: {err}; rebuild both with "
                             "tools/prepare_dataset.py") from None
        _raise_for(result, split, rec, idx, cfg.num_classes)
        counts[split] = result.records
    return counts


def _raise_for(result: recfile.ScanReport, split: str, rec: Path, idx: Path, num_classes: int) -> None:
    def more(kind):
        n = result.counts[kind] - 1
        return f" (and {n} more)" if n else ""

    find = f"`python tools/check_rec.py {rec}` lists them all"
    if "index" in result.counts:
        raise UsageError(f"the {split} index {idx} does not match {rec}: {result.first('index')}{more('index')}; "
                         f"rebuild both with tools/prepare_dataset.py ({find})")
    if "label" in result.counts:
        lo, hi = result.labels
        raise UsageError(f"--num-classes {num_classes}: the {split} set {rec} has labels outside [0, "
                         f"{num_classes}): {result.first('label')}{more('label')}; its labels run from {lo:g} to "
                         f"{hi:g}; give the right --num-classes or rebuild the set with tools/prepare_dataset.py")
    if "image" in result.counts:
        raise UsageError(f"the {split} set {rec} has records that are not readable images: {result.first('image')}"
                         f"{more('image')}; {find}; rebuild the set with tools/prepare_dataset.py, or write a copy "
                         f"without them with `python tools/check_rec.py {rec} --write-good PREFIX`")


def check_backend(cfg: DataConfig, contexts: Sequence) -> None:
    """Usage errors for a backend that cannot feed these devices."""
    kinds = {c.device_type for c in contexts}
    if cfg.data_backend == "dali-gpu" and kinds != {"gpu"}:
        raise UsageError("--data-backend dali-gpu needs GPU devices, and MXNet sees none here; use "
                         "--data-backend dali-cpu (or mxnet, synthetic)")
    if cfg.batch_size % len(contexts):
        raise UsageError(f"batch size {cfg.batch_size} does not split evenly over {len(contexts)} devices")


# --------------------------------------------------------------------------------------------------------------------
# Iterators


def split_pad(pad: int, batch: int, parts: int) -> list[int]:
    """Padding of each of ``parts`` equal slices of a batch whose last ``pad`` samples are padding."""
    k = batch // parts
    real = batch - pad
    return [min(k, max(0, (i + 1) * k - real)) for i in range(parts)]


class _CountedIter(DataIterBase):
    """An iterator whose epochs are ``batches_per_epoch`` batches (set by ``_start``) of what ``_batch()`` gives."""

    def _start(self, batches: int) -> None:
        self.batches_per_epoch = batches
        self._i = 0

    def reset(self):
        self._i = 0

    def next(self):
        if self._i >= self.batches_per_epoch:
            raise StopIteration
        self._i += 1
        return self._batch()


class _SyntheticIter(_CountedIter):
    """One random batch per device, made once, returned ``batches`` times per epoch.

    Image ``j`` of the global batch (all workers' devices in rank order) is drawn from its own generator, seeded
    with ``(seed, j)``: the global batch is the same however it is split over devices and workers."""

    def __init__(self, cfg: DataConfig, contexts, batches: int, seed: int | None, rank: int = 0):
        self._describe(cfg, contexts, cfg.dtype)
        seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2 ** 63)
        per = cfg.batch_size // len(self.contexts)
        self._batches = []
        for d, ctx in enumerate(self.contexts):
            first = (rank * len(self.contexts) + d) * per
            gens = [np.random.default_rng((seed, j)) for j in range(first, first + per)]
            data = np.stack([g.uniform(-1, 1, cfg.sample_shape) for g in gens])
            label = np.array([g.integers(0, cfg.num_classes) for g in gens])
            self._batches.append(mx.io.DataBatch(data=[mx.nd.array(data, ctx=ctx, dtype=cfg.dtype)],
                                                 label=[mx.nd.array(label, ctx=ctx, dtype="float32")], pad=0))
        self._start(batches)

    def _batch(self):
        return self._batches


class _RecordIterSplit(DataIterBase):
    """``mx.io.ImageRecordIter`` for the whole process batch, split into one slice per device.

    The slice is given the zero 4th channel, the NHWC layout and the float16 dtype where asked for, and put on its
    device; each slice's ``pad`` is its share of the batch's padding.
    """

    def __init__(self, cfg: DataConfig, contexts, train: bool, rank: int, num_workers: int, records: int):
        self._describe(cfg, contexts, cfg.dtype)
        self._cfg = cfg
        c, h, w = cfg.image_shape
        threads = cfg.data_mxnet_threads or available_cores()
        common = dict(data_shape=(3, h, w), batch_size=cfg.batch_size, preprocess_threads=threads,
                      mean_r=cfg.rgb_mean[0], mean_g=cfg.rgb_mean[1], mean_b=cfg.rgb_mean[2],
                      std_r=cfg.rgb_std[0], std_g=cfg.rgb_std[1], std_b=cfg.rgb_std[2],
                      num_parts=num_workers, part_index=rank, label_width=1, data_name="data",
                      label_name=LABEL_NAME)
        if train:
            seed = cfg.seed if cfg.seed is not None else random.randrange(2 ** 31)
            self._it = mx.io.ImageRecordIter(
                path_imgrec=str(cfg.data_train), path_imgidx=str(cfg.data_train_idx), shuffle=True, seed=seed,
                random_resized_crop=True, min_random_area=cfg.min_random_area, max_random_area=cfg.max_random_area,
                min_aspect_ratio=cfg.min_random_aspect_ratio, max_aspect_ratio=cfg.max_random_aspect_ratio,
                rand_mirror=cfg.random_mirror,
                rand_crop=False, round_batch=False, **common)
        else:
            self._it = mx.io.ImageRecordIter(
                path_imgrec=str(cfg.data_val), path_imgidx=str(cfg.data_val_idx), shuffle=False,
                resize=cfg.data_val_resize,
                rand_crop=False, rand_mirror=False, round_batch=False, **common)
        # Both iterators use round_batch=False so that each epoch starts afresh and covers the whole part (with
        # round_batch=True the last batch borrows the next epoch's first images, which that epoch then skips).
        # MXNet 1.9.1's ImageRecordIter then reports pad=0 and may leave the tail of the last batch unfilled, so
        # the epoch end and the padding are counted here. With an .idx, dmlc's indexed splitter gives part r the
        # records [r*ceil(N/P), (r+1)*ceil(N/P)).
        step = math.ceil(records / num_workers)
        self._part_size = max(0, min(records, (rank + 1) * step) - min(records, rank * step))
        self._train = train
        self._seen = 0
        self.batches_per_epoch = math.ceil(self._part_size / cfg.batch_size)

    def reset(self):
        self._it.reset()
        self._seen = 0

    def next(self):
        if self._seen >= self._part_size:
            raise StopIteration
        try:
            batch = self._it.next()
        except mx.base.MXNetError as err:  # an image OpenCV refused outright (the scan caught the rest)
            rec = self._cfg.data_train if self._train else self._cfg.data_val
            reason = [ln for ln in str(err).splitlines() if ln.strip()][-1].strip()
            raise DataError(f"the {'training' if self._train else 'validation'} set {rec}: ImageRecordIter could "
                            f"not decode a record ({reason[:200]}); `python tools/check_rec.py {rec} --decode` "
                            "finds it") from None
        self._seen += self._cfg.batch_size
        data, label = batch.data[0], batch.label[0]
        pad = max(0, self._seen - self._part_size)
        if pad:  # the tail of the last batch may be uninitialized memory: fill it with this batch's real samples
            keep = mx.nd.array(np.arange(self._cfg.batch_size) % (self._cfg.batch_size - pad), dtype="int64")
            data, label = mx.nd.take(data, keep), mx.nd.take(label, keep)
        if self._train:
            pad = 0  # training uses the whole (filled) batch, like the DALI backends
        cfg = self._cfg
        if cfg.image_shape[0] == 4:
            data = mx.nd.concat(data, mx.nd.zeros_like(data[:, :1]), dim=1)
        if cfg.input_layout == "NHWC":
            data = mx.nd.transpose(data, axes=(0, 2, 3, 1))
        if cfg.dtype != "float32":
            data = data.astype(cfg.dtype)
        n = len(self.contexts)
        k = cfg.batch_size // n
        pads = split_pad(pad, cfg.batch_size, n)
        return [mx.io.DataBatch(data=[data[i * k:(i + 1) * k].as_in_context(ctx)],
                                label=[label[i * k:(i + 1) * k].as_in_context(ctx)], pad=pads[i])
                for i, ctx in enumerate(self.contexts)]


class _LimitedIter(_CountedIter):
    """Cut epochs to ``batches`` batches of an inner iterator that keeps running across them.

    Used for ``--num-examples`` and ``--benchmark-iters``: the inner iterator is reset only when it runs out, so a
    short epoch never restarts (or, for DALI, re-seeds) the underlying pipeline.
    """

    def __init__(self, inner, batches: int):
        self._inner = inner
        self.contexts, self.batch_size = inner.contexts, inner.batch_size
        self.provide_data, self.provide_label = inner.provide_data, inner.provide_label
        self._start(batches)

    def _batch(self):
        try:
            return self._inner.next()
        except StopIteration:
            self._inner.reset()
            return self._inner.next()


def limit_batches(it, batches: int | None):
    """``it`` cut to ``batches`` per epoch (or ``it`` itself when ``batches`` is None)."""
    if batches is None:
        return it
    return _LimitedIter(it, batches)


def get_iters(cfg: DataConfig, contexts: Sequence, rank: int = 0, num_workers: int = 1, want_val: bool = True,
              want_train: bool = True, max_batches: int | None = None, progress=None):
    """(train iterator or None, val iterator or None) for this process's ``contexts``; checks the inputs first
    (``progress``: see ``check_record_files``). ``max_batches`` (``--benchmark-iters``) cuts every training epoch
    and every validation pass to that many batches, as NVIDIA's benchmark mode does."""
    check_backend(cfg, contexts)
    if cfg.data_backend == "synthetic":
        n_train = cfg.num_examples or IMAGENET_TRAIN_IMAGES
        n_val = cfg.num_val_examples or round(n_train * IMAGENET_VAL_IMAGES / IMAGENET_TRAIN_IMAGES)
        train = _SyntheticIter(cfg, contexts, max(1, n_train // num_workers // cfg.batch_size), cfg.seed, rank) \
            if want_train else None
        val = _SyntheticIter(cfg, contexts, max(1, math.ceil(n_val / num_workers / cfg.batch_size)),
                             None if cfg.seed is None else cfg.seed + 1, rank) if want_val else None
    else:
        counts = check_record_files(cfg, want_train, want_val, progress)
        want_val = want_val and cfg.data_val is not None
        want_train = want_train and cfg.data_train is not None
        if cfg.data_backend.startswith("dali"):
            import dali

            train = dali.get_rec_iter(cfg, contexts, train=True, rank=rank, num_workers=num_workers) \
                if want_train else None
            val = dali.get_rec_iter(cfg, contexts, train=False, rank=rank, num_workers=num_workers) \
                if want_val else None
        else:
            cls = _RecordIterSplit
            train = cls(cfg, contexts, True, rank, num_workers, counts["train"]) if want_train else None
            val = cls(cfg, contexts, False, rank, num_workers, counts["val"]) if want_val else None
        if cfg.num_examples is not None and train is not None:
            train = limit_batches(train, max(1, math.ceil(cfg.num_examples / num_workers / cfg.batch_size)))
    if max_batches is not None:  # a pass never wraps around the (smaller) validation set
        train = limit_batches(train, max_batches) if train is not None else None
        val = limit_batches(val, min(max_batches, val.batches_per_epoch)) if val is not None else None
    # the images each pass goes over (all workers): MLPerf's train_samples and eval_samples
    if cfg.data_backend == "synthetic":
        counts = {"train": n_train, "val": n_val}
    elif cfg.num_examples is not None and "train" in counts:
        counts["train"] = min(counts["train"], cfg.num_examples)
    for it, split in ((train, "train"), (val, "val")):
        if it is not None:
            it.num_samples = counts.get(split)
    return train, val


# --------------------------------------------------------------------------------------------------------------------
# Command line: time a data pipeline alone (NVIDIA's --test-io), e.g.
#   python data.py --data-root data/demo --image-shape 3,32,32 --data-backend dali-cpu -b 64


def build_parser() -> Parser:
    import dali

    p = Parser(prog="data.py", description="Time a data pipeline alone: images per second of the training (and "
                                           "validation) iterator, decode and augmentation included.")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch per process (all devices)")
    p.add_argument("-n", "--num-devices", type=int, default=1, help="devices (CPU contexts when there is no GPU)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="dtype of the batches")
    p.add_argument("-i", "--iters", type=int, default=50, help="timed batches per pass")
    p.add_argument("--warmup", type=int, default=5, help="batches before timing starts")
    p.add_argument("--seed", type=int, default=None, help="seed of shuffling and augmentation")
    add_data_args(p)
    dali.add_dali_args(p)
    return p


def time_iterator(it, iters: int, warmup: int) -> float:
    """Images per second over ``iters`` batches after ``warmup`` (the iterator is restarted as needed)."""
    def pull():
        try:
            batches = it.next()
        except StopIteration:
            it.reset()
            batches = it.next()
        for b in batches:
            b.data[0].wait_to_read()

    for _ in range(warmup):
        pull()
    t0 = time.perf_counter()
    for _ in range(iters):
        pull()
    return iters * it.batch_size / (time.perf_counter() - t0)


def check_batch_memory(cfg: DataConfig, in_flight: int = 4) -> None:
    """``python data.py``'s own check: the batches in flight (the pipelines' prefetch queues, the batch being timed)
    must fit in memory; a one-line ``UsageError`` with the largest batch that does, instead of a MemoryError."""
    import memory

    per_image = int(np.prod(cfg.image_shape)) * np.dtype(cfg.dtype).itemsize * in_flight
    avail, source = memory.available_bytes()
    budget = int(avail * (1 - memory.MARGIN))
    if cfg.batch_size * per_image > budget:
        raise UsageError(f"-b {cfg.batch_size}: {in_flight} batches of {'x'.join(map(str, cfg.image_shape))} "
                         f"{cfg.dtype} images in flight need about {cfg.batch_size * per_image / 2**30:.1f} GiB; "
                         f"{avail / 2**30:.1f} GiB are available ({source}); the largest batch that fits is about "
                         f"{budget // per_image}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, v, low in (("-b", args.batch_size, 1), ("-n", args.num_devices, 1), ("-i", args.iters, 1),
                         ("--warmup", args.warmup, 0)):
        if v < low:
            raise UsageError(f"{flag} {v}: must be at least {low}")
    gpus = num_gpus()
    if gpus and args.num_devices > gpus:
        raise UsageError(f"-n {args.num_devices}: only {gpus} GPU(s) visible")
    contexts = [mx.gpu(i) if gpus else mx.cpu(i) for i in range(args.num_devices)]
    import dali

    cfg = resolve(config_from(DataConfig, args, dali=config_from(dali.DaliConfig, args)), have_gpu=bool(gpus))
    check_batch_memory(cfg)
    train, val = get_iters(cfg, contexts)
    print(f"{cfg.data_backend}: train {time_iterator(train, args.iters, args.warmup):.1f} img/s", end="")
    if val is not None:
        print(f", val {time_iterator(val, args.iters, args.warmup):.1f} img/s", end="")
    print(f" (batch {cfg.batch_size}, {len(contexts)} device(s), {cfg.image_shape} {cfg.input_layout} {cfg.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
