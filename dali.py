"""DALI pipelines for the ``dali-gpu`` and ``dali-cpu`` backends; the only module that imports ``nvidia.dali``.

Training: MXNet RecordIO reader (shuffled every epoch, sharded) -> decode fused with the random crop (area
``--min/max-random-area``, aspect ``--min/max-random-aspect-ratio``; only the crop window is decoded) -> resize to
the image shape -> random horizontal flip + normalize + layout/dtype (+ the zero 4th channel) in one
``crop_mirror_normalize``. Validation: decode -> resize the shorter side to ``--data-val-resize`` -> center crop +
normalize. ``dali-gpu`` decodes with nvJPEG (``mixed``: hardware decoder where the GPU has one) and resizes and
normalizes on the GPU; ``dali-cpu`` runs every operator on the CPU (``device_id=None``), so it needs no GPU at all.

One pipeline per device. The iterator is DALI's ``DALIClassificationIterator`` over those pipelines, which returns
one ``DataBatch`` per device. Each shard's last batch is padded with its last sample, so every training epoch covers
the whole shard; validation marks that padding in ``pad`` (``LastBatchPolicy.PARTIAL``), so a validation pass counts
every image exactly once.

A record DALI cannot decode fails the whole pipeline; DALI's message names the ``.rec`` and the record's byte offset,
which ``DaliIter`` turns into a ``common.DataError`` naming the record number and key (from the ``.idx``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np

import recfile
from common import DataError, UsageError, available_cores
from datatypes import LABEL_NAME, DataConfig, DataIterBase

# nvidia.dali itself is imported only when a pipeline is built (`_dali()`): the flags and the config need none of
# it, and a process that never reads data through DALI (synthetic data, ImageRecordIter) never loads it.


@functools.lru_cache(maxsize=None)
def _dali():
    import nvidia.dali as nd
    import nvidia.dali.fn
    import nvidia.dali.types
    from nvidia.dali.plugin import mxnet as plugin

    return nd, plugin


def preload() -> None:
    """Load DALI's libraries now. A process that imports ``horovod.mxnet`` must load DALI first: the other way round
    (Horovod 0.28.1 built against mxnet 1.9.1, DALI 1.35), DALI's first pipeline aborts the process with glibc's
    "free(): invalid size"."""
    _dali()


def add_dali_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("DALI", "DALI pipelines (dali-gpu and dali-cpu backends only)")
    g.add_argument("--dali-threads", type=int, default=None,
                   help="CPU threads per training pipeline (default: 4 with dali-gpu, the cores available with "
                        "dali-cpu)")
    g.add_argument("--dali-validation-threads", type=int, default=None,
                   help="CPU threads per validation pipeline (default: as --dali-threads)")
    g.add_argument("--dali-prefetch-queue", type=int, default=2, help="batches prefetched by each pipeline")
    g.add_argument("--dali-nvjpeg-memory-padding", type=int, default=64,
                   help="nvJPEG host and device memory padding, MB (dali-gpu)")
    g.add_argument("--dali-nvjpeg-width-hint", type=int, default=5980,
                   help="nvJPEG preallocation width hint, px (dali-gpu; the largest ImageNet image)")
    g.add_argument("--dali-nvjpeg-height-hint", type=int, default=6430,
                   help="nvJPEG preallocation height hint, px (dali-gpu)")
    g.add_argument("--dali-hw-decoder-load", type=float, default=0.65,
                   help="share of images sent to the GPU's hardware JPEG decoder where there is one (dali-gpu)")
    g.add_argument("--dali-fuse-decoder", action=argparse.BooleanOptionalAction, default=True,
                   help="decode only the random crop window (ROI decode) instead of the whole image")
    g.add_argument("--dali-dont-use-mmap", action="store_true", help="read the .rec with plain reads, not mmap")
    g.add_argument("--dali-separ-val", action="store_true",
                   help="each worker process validates on the whole val set instead of its shard")
    return g


@dataclass(frozen=True)
class DaliConfig:
    """The DALI flags (field names are the flags' names); ``resolve`` fills in the defaults that depend on the
    backend and checks the values."""
    dali_threads: int | None = None
    dali_validation_threads: int | None = None
    dali_prefetch_queue: int = 2
    dali_nvjpeg_memory_padding: int = 64
    dali_nvjpeg_width_hint: int = 5980
    dali_nvjpeg_height_hint: int = 6430
    dali_hw_decoder_load: float = 0.65
    dali_fuse_decoder: bool = True
    dali_dont_use_mmap: bool = False
    dali_separ_val: bool = False
    gpu: bool = False  # decode and augment on the GPU (dali-gpu)


def resolve(d: DaliConfig, backend: str) -> DaliConfig:
    gpu = backend == "dali-gpu"
    threads = d.dali_threads if d.dali_threads is not None else 4 if gpu else available_cores()
    val_threads = d.dali_validation_threads if d.dali_validation_threads is not None else threads
    for flag, v in (("--dali-threads", threads), ("--dali-validation-threads", val_threads),
                    ("--dali-prefetch-queue", d.dali_prefetch_queue),
                    ("--dali-nvjpeg-width-hint", d.dali_nvjpeg_width_hint),
                    ("--dali-nvjpeg-height-hint", d.dali_nvjpeg_height_hint)):
        if v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    if d.dali_nvjpeg_memory_padding < 0:
        raise UsageError(f"--dali-nvjpeg-memory-padding {d.dali_nvjpeg_memory_padding}: must be at least 0")
    if not 0.0 <= d.dali_hw_decoder_load <= 1.0:
        raise UsageError(f"--dali-hw-decoder-load {d.dali_hw_decoder_load}: must be between 0 and 1")
    return dataclasses.replace(d, gpu=gpu, dali_threads=threads, dali_validation_threads=val_threads)


def _decoder_args(d: DaliConfig) -> dict:
    if not d.gpu:
        return dict(device="cpu")
    pad = d.dali_nvjpeg_memory_padding << 20
    return dict(device="mixed", device_memory_padding=pad, host_memory_padding=pad,
                preallocate_width_hint=d.dali_nvjpeg_width_hint, preallocate_height_hint=d.dali_nvjpeg_height_hint,
                hw_decoder_load=d.dali_hw_decoder_load)


def _normalize(images, cfg: DataConfig, mirror):
    fn, types = _dali()[0].fn, _dali()[0].types
    c, h, w = cfg.image_shape
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT,
        output_layout="CHW" if cfg.input_layout == "NCHW" else "HWC", crop=(h, w), mean=list(cfg.rgb_mean),
        std=list(cfg.rgb_std), mirror=mirror, pad_output=c == 4)


def _train_graph(cfg: DataConfig, shard_id: int, num_shards: int):
    fn, types = _dali()[0].fn, _dali()[0].types
    d = cfg.dali
    jpegs, labels = fn.readers.mxnet(path=[str(cfg.data_train)], index_path=[str(cfg.data_train_idx)],
                                     random_shuffle=True, shard_id=shard_id, num_shards=num_shards,
                                     pad_last_batch=True, dont_use_mmap=d.dali_dont_use_mmap, name="Reader")
    _, h, w = cfg.image_shape
    area = [cfg.min_random_area, cfg.max_random_area]
    aspect = [cfg.min_random_aspect_ratio, cfg.max_random_aspect_ratio]
    if d.dali_fuse_decoder:
        images = fn.decoders.image_random_crop(jpegs, output_type=types.RGB, random_area=area,
                                               random_aspect_ratio=aspect, num_attempts=100, **_decoder_args(d))
        images = fn.resize(images, resize_x=w, resize_y=h)
    else:
        images = fn.decoders.image(jpegs, output_type=types.RGB, **_decoder_args(d))
        images = fn.random_resized_crop(images, size=(h, w), random_area=area, random_aspect_ratio=aspect,
                                        num_attempts=100)
    mirror = fn.random.coin_flip(probability=0.5) if cfg.random_mirror else 0
    return _normalize(images, cfg, mirror), labels


def _val_graph(cfg: DataConfig, shard_id: int, num_shards: int):
    fn = _dali()[0].fn
    d = cfg.dali
    jpegs, labels = fn.readers.mxnet(path=[str(cfg.data_val)], index_path=[str(cfg.data_val_idx)],
                                     random_shuffle=False, shard_id=shard_id, num_shards=num_shards,
                                     pad_last_batch=True, stick_to_shard=True, dont_use_mmap=d.dali_dont_use_mmap,
                                     name="Reader")
    return _val_ops(jpegs, cfg), labels


def _val_ops(jpegs, cfg: DataConfig):
    """Validation's preprocessing of encoded images: decode, resize the shorter side, center crop, normalize."""
    fn, types = _dali()[0].fn, _dali()[0].types
    images = fn.decoders.image(jpegs, output_type=types.RGB, **_decoder_args(cfg.dali))
    images = fn.resize(images, resize_shorter=cfg.data_val_resize)
    return _normalize(images, cfg, 0)


def _fed_val_graph(cfg: DataConfig):
    fn, types = _dali()[0].fn, _dali()[0].types
    return _val_ops(fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1), cfg)


def train_pipeline(cfg: DataConfig, shard_id: int, num_shards: int, **pipeline_kwargs):
    """The training pipeline of one shard (``pipeline_kwargs``: batch_size, num_threads, device_id, seed, ...)."""
    return _dali()[0].pipeline_def(_train_graph)(cfg, shard_id, num_shards, **pipeline_kwargs)


def val_pipeline(cfg: DataConfig, shard_id: int, num_shards: int, **pipeline_kwargs):
    """The validation pipeline of one shard."""
    return _dali()[0].pipeline_def(_val_graph)(cfg, shard_id, num_shards, **pipeline_kwargs)


def fed_val_pipeline(cfg: DataConfig, **pipeline_kwargs):
    """Validation's preprocessing for encoded images fed by the caller (``feed_input("jpegs", [uint8 arrays])``)
    rather than read from ``val.rec``: what the LoadGen sample library loads its samples with."""
    return _dali()[0].pipeline_def(_fed_val_graph)(cfg, **pipeline_kwargs)


def time_pipeline(cfg: DataConfig, train: bool, iters: int, warmup: int = 5, device_id: int | None = None) -> float:
    """img/s of one pipeline (the whole ``cfg.batch_size``) run directly, without the MXNet iterator: what a
    machine can measure whose MXNet build cannot use its GPU (the PyPI wheels on Hopper). ``pipe.run()`` returns
    when the batch's outputs are complete, GPU work included, so each batch is timed to its end."""
    d = cfg.dali
    make = train_pipeline if train else val_pipeline
    threads = d.dali_threads if train else d.dali_validation_threads
    pipe = make(cfg, 0, 1, batch_size=cfg.batch_size, num_threads=threads, device_id=device_id if d.gpu else None,
                seed=1, prefetch_queue_depth=d.dali_prefetch_queue)
    pipe.build()
    for _ in range(warmup):
        pipe.run()
    t0 = time.perf_counter()
    for _ in range(iters):
        pipe.run()
    rate = iters * cfg.batch_size / (time.perf_counter() - t0)
    del pipe
    return rate


class DaliIter(DataIterBase):
    """DALI's MXNet iterator over one pipeline per device, with the whole-process ``provide_data``."""

    def __init__(self, cfg: DataConfig, contexts: Sequence, train: bool, rank: int, num_workers: int):
        self._describe(cfg, contexts, cfg.dtype)
        d = cfg.dali
        n = len(self.contexts)
        if not train and d.dali_separ_val:
            rank, num_workers = 0, 1
        self._train = train
        self._rec, self._idx = (cfg.data_train, cfg.data_train_idx) if train else (cfg.data_val, cfg.data_val_idx)
        pipes = []
        for i, ctx in enumerate(self.contexts):
            shard = rank * n + i
            seed = -1 if cfg.seed is None else cfg.seed * 1000 + shard + (0 if train else 500)
            make = train_pipeline if train else val_pipeline
            pipes.append(make(cfg, shard, num_workers * n, batch_size=cfg.batch_size // n,
                              num_threads=d.dali_threads if train else d.dali_validation_threads,
                              device_id=ctx.device_id if d.gpu else None, seed=seed,
                              prefetch_queue_depth=d.dali_prefetch_queue))
        # Both readers pad each shard's last batch (with its last sample), so every epoch starts at the beginning
        # of a shard and covers all of it (wrapping into the next epoch instead would skip those images there).
        # The iterator marks that padding in `pad` (PARTIAL; with reader_name it reads the shard sizes from the
        # readers). Validation keeps the mark; training replaces the padding by the batch's own real samples.
        plugin = _dali()[1]
        try:
            for p in pipes:
                p.build()
            # the iterator runs the pipelines for its first batch here already
            self._it = plugin.DALIClassificationIterator(pipes, reader_name="Reader",
                                                         last_batch_policy=plugin.LastBatchPolicy.PARTIAL,
                                                         label_name=LABEL_NAME)
        except RuntimeError as err:
            raise self._data_error(err) from None
        self.batches_per_epoch = -(-self._it.size // (cfg.batch_size // n))

    def reset(self):
        self._it.reset()

    def next(self):
        try:
            batches = self._it.next()
        except RuntimeError as err:
            raise self._data_error(err) from None
        if self._train:
            for b in batches:
                if b.pad:
                    fill_padding(b)
        return batches

    def _data_error(self, err: RuntimeError) -> DataError:
        return DataError(describe_failure(str(err), "training" if self._train else "validation", self._rec,
                                          self._idx))


_WHERE = re.compile(r"File: (?P<file>.+?) at index (?P<offset>\d+)")


def describe_failure(message: str, split: str, rec: Path, idx: Path) -> str:
    """One line for a DALI pipeline failure: the record (number and key, from the byte offset DALI names, looked up
    in the ``.idx``), DALI's reason, and how to find and fix such records."""
    reason = "the pipeline failed"
    for line in message.splitlines():
        if "Error in thread" in line or "Assert on" in line or "Unrecognized" in line:
            reason = line.rsplit("] ", 1)[-1].strip() or reason
            break
    where = ""
    m = _WHERE.search(message)
    if m:
        offset = int(m["offset"])
        try:
            pairs = recfile.read_index(idx)
            number = next(i for i, (_, off) in enumerate(pairs) if off == offset)
            where = f"record {number} (key {pairs[number][0]}, byte {offset}) "
        except (OSError, ValueError, StopIteration):
            where = f"the record at byte {offset} "
    return (f"the {split} set {rec}: {where}cannot be decoded ({reason[:200]}); "
            f"`python tools/check_rec.py {rec} --decode` lists every such record; rebuild the set with "
            f"tools/prepare_dataset.py --verify, or write a copy without them with `python tools/check_rec.py {rec} "
            "--decode --write-good PREFIX`")


def fill_padding(batch) -> None:
    """Replace the ``pad`` trailing samples of a training batch by its real samples, cycled, and clear ``pad``
    (a batch that is all padding keeps its copies of the shard's last image)."""
    n = batch.data[0].shape[0]
    real = n - batch.pad
    if real > 0:
        keep = mx.nd.array(np.arange(n) % real, ctx=batch.data[0].context, dtype="int64")
        batch.data = [mx.nd.take(batch.data[0], keep)]
        batch.label = [mx.nd.take(batch.label[0], keep.as_in_context(batch.label[0].context))]
    batch.pad = 0


def get_rec_iter(cfg: DataConfig, contexts: Sequence, train: bool, rank: int = 0,
                 num_workers: int = 1) -> DaliIter:
    return DaliIter(cfg, contexts, train, rank, num_workers)
