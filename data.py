"""Data: the ``--data-*`` flags, the choice of backend, MXNet's ``ImageRecordIter``, synthetic data.

Backends (``--data-backend``), as in NVIDIA's toolkit:

* ``dali-gpu`` / ``dali-cpu``: DALI pipelines on the ``.rec`` + ``.idx`` files (``dali.py``; the only module that
  imports DALI). ``dali-cpu`` needs no GPU at all.
* ``mxnet``: ``mx.io.ImageRecordIter`` with the same augmentation (random-resized-crop, flip, normalize).
* ``synthetic``: random data of the right shape and dtype, made once on each device (pure compute benchmarks).

Every backend gives an ``mx.io.DataIter`` whose ``next()`` returns a list of ``mx.io.DataBatch``, one per device
context: the pre-split form MXNet's ``Module.forward`` accepts (it is what DALI's MXNet plugin returns). Each
batch's ``pad`` counts the trailing samples that are padding, so a validation pass sees every image exactly once.
``provide_data``/``provide_label`` describe the whole batch of this process (all its devices).

Sharding: with ``W`` worker processes and ``D`` devices per process, the training and validation sets are cut into
``W * D`` shards (``shard = rank * D + device index``), so every image is seen once per epoch across all shards.
"""
from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np

import sys
import time

from common import Parser, UsageError, available_cores, float_list, int_list, num_gpus, run_main

BACKENDS = ("dali-gpu", "dali-cpu", "mxnet", "synthetic")
LAYOUTS = ("NCHW", "NHWC")
# ImageNet statistics on the 0-255 scale: 255 * (0.485, 0.456, 0.406) and 255 * (0.229, 0.224, 0.225)
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)
IMAGENET_TRAIN_IMAGES = 1281167
IMAGENET_VAL_IMAGES = 50000
LABEL_NAME = "softmax_label"


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("Data", "input files, backend, shape and normalization")
    g.add_argument("--data-root", type=Path, default=None,
                   help="folder with train.rec/.idx and val.rec/.idx (made by tools/prepare_dataset.py); fills in "
                        "whichever of --data-train/--data-train-idx/--data-val/--data-val-idx is not given")
    g.add_argument("--data-train", type=Path, default=None, help="training .rec")
    g.add_argument("--data-train-idx", type=Path, default=None, help="its .idx (default: the .rec with .idx)")
    g.add_argument("--data-val", type=Path, default=None, help="validation .rec")
    g.add_argument("--data-val-idx", type=Path, default=None, help="its .idx (default: the .rec with .idx)")
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


@dataclass(frozen=True)
class DataConfig:
    """Everything a backend needs, resolved and checked (see ``from_args``)."""
    backend: str
    train_rec: Path | None
    train_idx: Path | None
    val_rec: Path | None
    val_idx: Path | None
    image_shape: tuple[int, int, int]  # C, H, W
    layout: str  # of the batches: NCHW or NHWC
    dtype: str  # of the batches: float32 or float16
    batch_size: int  # per process (all its devices together)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    num_examples: int | None
    val_resize: int
    min_area: float = 0.05
    max_area: float = 1.0
    min_aspect: float = 3 / 4
    max_aspect: float = 4 / 3
    mirror: bool = True
    mxnet_threads: int | None = None
    seed: int | None = None
    dali: object = None  # dali.DaliConfig for the dali-* backends

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)


def default_backend(have_gpu: bool) -> str:
    return "dali-gpu" if have_gpu else "dali-cpu"


def config_from_args(args: argparse.Namespace, batch_size: int, dtype: str = "float32", have_gpu: bool = False,
                     seed: int | None = None) -> DataConfig:
    """Resolve the data flags into a checked ``DataConfig`` (raises ``UsageError`` naming the flag)."""
    backend = args.data_backend or default_backend(have_gpu)
    if len(args.image_shape) != 3 or args.image_shape[0] not in (3, 4) or min(args.image_shape[1:]) < 1:
        raise UsageError(f"--image-shape {','.join(map(str, args.image_shape))}: expected C,H,W with C 3 or 4")
    for flag, v in (("--rgb-mean", args.rgb_mean), ("--rgb-std", args.rgb_std)):
        if len(v) != 3:
            raise UsageError(f"{flag}: expected 3 comma-separated values, got {len(v)}")
    if min(args.rgb_std) <= 0:
        raise UsageError("--rgb-std: every value must be positive")
    if not 0 < args.min_random_area <= args.max_random_area <= 1:
        raise UsageError(f"--min-random-area {args.min_random_area} / --max-random-area {args.max_random_area}: "
                         "need 0 < min <= max <= 1")
    if not 0 < args.min_random_aspect_ratio <= args.max_random_aspect_ratio:
        raise UsageError("--min-random-aspect-ratio / --max-random-aspect-ratio: need 0 < min <= max")
    if args.num_examples is not None and args.num_examples < 1:
        raise UsageError(f"--num-examples {args.num_examples}: must be at least 1")
    if dtype not in ("float32", "float16"):
        dtype = "float32"  # other training dtypes (bfloat16) take float32 input and cast inside the graph
    crop = args.image_shape[1]
    val_resize = args.data_val_resize or max(crop, round(crop * 256 / 224))
    if val_resize < min(args.image_shape[1:]):
        raise UsageError(f"--data-val-resize {val_resize}: must be at least the crop size {crop}")
    train_rec, train_idx, val_rec, val_idx = _resolve_paths(args, backend)
    dali_cfg = None
    if backend.startswith("dali"):
        import dali  # only the DALI path needs nvidia.dali

        dali_cfg = dali.config_from_args(args, backend)
    return DataConfig(backend=backend, train_rec=train_rec, train_idx=train_idx, val_rec=val_rec, val_idx=val_idx,
                      image_shape=tuple(args.image_shape), layout=args.input_layout, dtype=dtype,
                      batch_size=batch_size, mean=tuple(args.rgb_mean), std=tuple(args.rgb_std),
                      num_classes=args.num_classes, num_examples=args.num_examples, val_resize=val_resize,
                      min_area=args.min_random_area, max_area=args.max_random_area,
                      min_aspect=args.min_random_aspect_ratio, max_aspect=args.max_random_aspect_ratio,
                      mirror=args.random_mirror, mxnet_threads=args.data_mxnet_threads, seed=seed, dali=dali_cfg)


def _resolve_paths(args, backend):
    root = args.data_root
    if backend == "synthetic":
        return None, None, None, None  # nothing is read
    if root is not None and not root.is_dir():
        raise UsageError(f"--data-root {root}: no such directory (make one with tools/prepare_dataset.py, or "
                         "`make demo-data` for the digits)")
    train = args.data_train or (root / "train.rec" if root else None)
    val = args.data_val or (root / "val.rec" if root else None)
    train_idx = args.data_train_idx or (train.with_suffix(".idx") if train else None)
    val_idx = args.data_val_idx or (val.with_suffix(".idx") if val else None)
    if train is None:
        raise UsageError(f"--data-backend {backend} reads RecordIO: give --data-root (a folder made by "
                         "tools/prepare_dataset.py) or --data-train, or use --data-backend synthetic")
    for flag, rec, idx in (("--data-train", train, train_idx), ("--data-val", val, val_idx)):
        if rec is None:
            continue
        if not rec.is_file():
            raise UsageError(f"{flag} {rec}: file not found (make it with tools/prepare_dataset.py)")
        if not idx.is_file():
            raise UsageError(f"{flag}-idx {idx}: file not found (DALI and shuffling need the .idx written beside "
                             "the .rec by tools/prepare_dataset.py or im2rec.py)")
    return train, train_idx, val, val_idx


def check_record_files(cfg: DataConfig) -> dict:
    """Check that every ``.idx`` indexes its ``.rec``; return the number of records per split."""
    from tools.recordio import check_index_matches

    counts = {}
    for split, flag, rec, idx in (("train", "--data-train-idx", cfg.train_rec, cfg.train_idx),
                                  ("val", "--data-val-idx", cfg.val_rec, cfg.val_idx)):
        if rec is None:
            continue
        try:
            counts[split] = check_index_matches(rec, idx)
        except (ValueError, OSError) as err:
            raise UsageError(f"{flag} {idx} does not match {rec}: {err}; rebuild both with "
                             "tools/prepare_dataset.py") from None
    return counts


def check_backend(cfg: DataConfig, contexts: Sequence) -> None:
    """Usage errors for a backend that cannot feed these devices."""
    kinds = {c.device_type for c in contexts}
    if cfg.backend == "dali-gpu" and kinds != {"gpu"}:
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


class DeviceIter(mx.io.DataIter):
    """Base of the toolkit's iterators: ``next()`` gives one ``DataBatch`` per device context.

    Subclasses set ``contexts``, ``batch_size`` (per process), ``provide_data``, ``provide_label`` and
    ``batches_per_epoch``, and implement ``next()`` and ``reset()``.
    """

    def _describe(self, cfg: DataConfig, contexts, dtype: str) -> None:
        self.contexts = list(contexts)
        self.batch_size = cfg.batch_size
        self.provide_data = [mx.io.DataDesc("data", (cfg.batch_size,) + cfg.sample_shape, np.dtype(dtype),
                                            layout=cfg.layout)]
        self.provide_label = [mx.io.DataDesc(LABEL_NAME, (cfg.batch_size,), np.float32, layout="N")]

    def __next__(self):
        return self.next()

    def _count_batch(self) -> None:
        """For iterators with a fixed epoch length: count one batch, StopIteration after ``batches_per_epoch``."""
        if self._i >= self.batches_per_epoch:
            raise StopIteration
        self._i += 1


class _SyntheticIter(DeviceIter):
    """One random batch per device, made once, returned ``batches`` times per epoch."""

    def __init__(self, cfg: DataConfig, contexts, batches: int, seed: int | None):
        self._describe(cfg, contexts, cfg.dtype)
        rng = np.random.default_rng(seed)
        per = cfg.batch_size // len(self.contexts)
        self._batches = []
        for ctx in self.contexts:
            data = mx.nd.array(rng.uniform(-1, 1, (per,) + cfg.sample_shape), ctx=ctx, dtype=cfg.dtype)
            label = mx.nd.array(rng.integers(0, cfg.num_classes, per), ctx=ctx, dtype="float32")
            self._batches.append(mx.io.DataBatch(data=[data], label=[label], pad=0))
        self.batches_per_epoch = batches
        self._i = 0

    def reset(self):
        self._i = 0

    def next(self):
        self._count_batch()
        return self._batches


class _RecordIterSplit(DeviceIter):
    """``mx.io.ImageRecordIter`` for the whole process batch, split into one slice per device.

    The slice is given the zero 4th channel, the NHWC layout and the float16 dtype where asked for, and put on its
    device; each slice's ``pad`` is its share of the batch's padding.
    """

    def __init__(self, cfg: DataConfig, contexts, train: bool, rank: int, num_workers: int, records: int):
        self._describe(cfg, contexts, cfg.dtype)
        self._cfg = cfg
        c, h, w = cfg.image_shape
        threads = cfg.mxnet_threads or available_cores()
        common = dict(data_shape=(3, h, w), batch_size=cfg.batch_size, preprocess_threads=threads,
                      mean_r=cfg.mean[0], mean_g=cfg.mean[1], mean_b=cfg.mean[2],
                      std_r=cfg.std[0], std_g=cfg.std[1], std_b=cfg.std[2],
                      num_parts=num_workers, part_index=rank, label_width=1, data_name="data",
                      label_name=LABEL_NAME)
        if train:
            seed = cfg.seed if cfg.seed is not None else random.randrange(2 ** 31)
            self._it = mx.io.ImageRecordIter(
                path_imgrec=str(cfg.train_rec), path_imgidx=str(cfg.train_idx), shuffle=True, seed=seed,
                random_resized_crop=True, min_random_area=cfg.min_area, max_random_area=cfg.max_area,
                min_aspect_ratio=cfg.min_aspect, max_aspect_ratio=cfg.max_aspect, rand_mirror=cfg.mirror,
                rand_crop=False, round_batch=False, **common)
        else:
            self._it = mx.io.ImageRecordIter(
                path_imgrec=str(cfg.val_rec), path_imgidx=str(cfg.val_idx), shuffle=False, resize=cfg.val_resize,
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
        batch = self._it.next()
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
        if cfg.layout == "NHWC":
            data = mx.nd.transpose(data, axes=(0, 2, 3, 1))
        if cfg.dtype != "float32":
            data = data.astype(cfg.dtype)
        n = len(self.contexts)
        k = cfg.batch_size // n
        pads = split_pad(pad, cfg.batch_size, n)
        return [mx.io.DataBatch(data=[data[i * k:(i + 1) * k].as_in_context(ctx)],
                                label=[label[i * k:(i + 1) * k].as_in_context(ctx)], pad=pads[i])
                for i, ctx in enumerate(self.contexts)]


class _LimitedIter(DeviceIter):
    """Cut epochs to ``batches`` batches of an inner iterator that keeps running across them.

    Used for ``--num-examples`` and ``--benchmark-iters``: the inner iterator is reset only when it runs out, so a
    short epoch never restarts (or, for DALI, re-seeds) the underlying pipeline.
    """

    def __init__(self, inner, batches: int):
        self._inner = inner
        self.contexts, self.batch_size = inner.contexts, inner.batch_size
        self.provide_data, self.provide_label = inner.provide_data, inner.provide_label
        self.batches_per_epoch = batches
        self._i = 0

    def reset(self):
        self._i = 0

    def next(self):
        self._count_batch()
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
              want_train: bool = True):
    """(train iterator or None, val iterator or None) for this process's ``contexts``; checks the inputs first."""
    check_backend(cfg, contexts)
    if cfg.backend == "synthetic":
        n_train = cfg.num_examples or IMAGENET_TRAIN_IMAGES
        train = _SyntheticIter(cfg, contexts, max(1, n_train // num_workers // cfg.batch_size), cfg.seed) \
            if want_train else None
        val = None
        if want_val:
            val = _SyntheticIter(cfg, contexts, max(1, math.ceil(IMAGENET_VAL_IMAGES / num_workers / cfg.batch_size)),
                                 None if cfg.seed is None else cfg.seed + 1)
        return train, val
    counts = check_record_files(cfg)
    if cfg.backend.startswith("dali"):
        import dali

        train = dali.get_rec_iter(cfg, contexts, train=True, rank=rank, num_workers=num_workers) \
            if want_train else None
        val = dali.get_rec_iter(cfg, contexts, train=False, rank=rank, num_workers=num_workers) \
            if want_val and cfg.val_rec else None
    else:
        cls = _RecordIterSplit
        train = cls(cfg, contexts, True, rank, num_workers, counts["train"]) if want_train else None
        val = cls(cfg, contexts, False, rank, num_workers, counts["val"]) if want_val and cfg.val_rec else None
    if cfg.num_examples is not None and train is not None:
        train = limit_batches(train, max(1, math.ceil(cfg.num_examples / num_workers / cfg.batch_size)))
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    gpus = num_gpus()
    if args.num_devices < 1:
        raise UsageError(f"-n {args.num_devices}: must be at least 1")
    if gpus and args.num_devices > gpus:
        raise UsageError(f"-n {args.num_devices}: only {gpus} GPU(s) visible")
    contexts = [mx.gpu(i) if gpus else mx.cpu(i) for i in range(args.num_devices)]
    cfg = config_from_args(args, args.batch_size, args.dtype, have_gpu=bool(gpus), seed=args.seed)
    train, val = get_iters(cfg, contexts)
    print(f"{cfg.backend}: train {time_iterator(train, args.iters, args.warmup):.1f} img/s", end="")
    if val is not None:
        print(f", val {time_iterator(val, args.iters, args.warmup):.1f} img/s", end="")
    print(f" (batch {cfg.batch_size}, {len(contexts)} device(s), {cfg.image_shape} {cfg.layout} {cfg.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
