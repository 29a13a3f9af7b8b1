"""What a data pipeline gives the training loop, shared by ``data.py`` (backend choice, ImageRecordIter, synthetic
data) and ``dali.py`` (DALI pipelines), which do not import each other's internals: the resolved data
configuration and the iterator base class.

Every backend gives an ``mx.io.DataIter`` whose ``next()`` returns a list of ``mx.io.DataBatch``, one per device
context: the pre-split form MXNet's ``Module.forward`` accepts (it is what DALI's MXNet plugin returns). Each batch's
``pad`` counts the trailing samples that are padding, so a validation pass sees every image exactly once.
``provide_data``/``provide_label`` describe the whole batch of this process (all its devices).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np

LABEL_NAME = "softmax_label"
# ImageNet statistics on the 0-255 scale: 255 * (0.485, 0.456, 0.406) and 255 * (0.229, 0.224, 0.225)
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class DataConfig:
    """The data flags of a run (field names are the flags' names) and what the caller adds (``batch_size`` per
    process, ``dtype`` of the batches, ``seed``, the ``dali`` config). ``data.resolve`` checks it and fills in the
    defaults that depend on the machine or on other fields (backend, index paths, validation resize)."""
    data_root: Path | None = None
    data_train: Path | None = None
    data_train_idx: Path | None = None
    data_val: Path | None = None
    data_val_idx: Path | None = None
    data_backend: str | None = None
    image_shape: tuple = (3, 224, 224)  # C, H, W
    input_layout: str = "NCHW"  # of the batches: NCHW or NHWC
    rgb_mean: tuple = RGB_MEAN
    rgb_std: tuple = RGB_STD
    num_classes: int = 1000
    num_examples: int | None = None
    num_val_examples: int | None = None
    data_val_resize: int | None = None
    data_mxnet_threads: int | None = None
    min_random_area: float = 0.05
    max_random_area: float = 1.0
    min_random_aspect_ratio: float = 3 / 4
    max_random_aspect_ratio: float = 4 / 3
    random_mirror: bool = True
    batch_size: int = 256  # per process (all its devices together)
    dtype: str = "float32"  # of the batches: float32 or float16
    seed: int | None = None
    dali: object = None  # dali.DaliConfig for the dali-* backends

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return (c, h, w) if self.input_layout == "NCHW" else (h, w, c)


def batch_descs(cfg: DataConfig, dtype: str | None = None) -> tuple[list, list]:
    """``(provide_data, provide_label)`` of the batches ``cfg`` describes: what a module binds to, known before any
    pipeline is built."""
    data = mx.io.DataDesc("data", (cfg.batch_size,) + cfg.sample_shape, np.dtype(dtype or cfg.dtype),
                          layout=cfg.input_layout)
    return [data], [mx.io.DataDesc(LABEL_NAME, (cfg.batch_size,), np.float32, layout="N")]


class DataIterBase(mx.io.DataIter):
    """Base of the toolkit's iterators: ``next()`` gives one ``DataBatch`` per device context.

    Subclasses set ``contexts``, ``batch_size`` (per process), ``provide_data``, ``provide_label`` and
    ``batches_per_epoch``, and implement ``next()`` and ``reset()``.
    """

    def _describe(self, cfg: DataConfig, contexts, dtype: str) -> None:
        self.contexts = list(contexts)
        self.batch_size = cfg.batch_size
        self.provide_data, self.provide_label = batch_descs(cfg, dtype)

    def __next__(self):
        return self.next()
