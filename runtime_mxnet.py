"""The ``mxnet`` runtime of ``loadgen.py`` (``runtimes.py`` has the interface): the network of the flags
(``runtimes.inference_symbol``) with a checkpoint's weights, or random ones without ``--load-epoch`` (throughput
only), in a Module bound for inference (``fit.create_module``: the executor ``--only-inference`` scores with, MXNet's
default oneDNN subgraph fusion on CPU). The weights are checked as for scoring (``checkpoint.for_scoring``: the
manifest, the model it records; ``checkpoint.load_for_inference``: the shapes). ``--dtype int8`` runs an INT8
checkpoint (``tools/quantize.py``) in its own quantized graph (``checkpoint.int8_model``).

Batches: the module is bound at ``--max-batchsize`` and, when first needed, at every power of two below it, the
smaller ones sharing the largest one's parameters and memory. A batch of another size runs as the largest of these
sizes that fit what is left of it, one after the other (21 samples: 16, 4, 1), never padded with wasted work (the
tail of an Offline query would otherwise run up to a whole batch of zeros); ``warm_up`` binds and runs each size a
scenario uses before the test starts. MXNet's executors are used by one thread at a time (a lock); the predicted
class is numpy's argmax of the probabilities, as ``fit.Meter``'s top-1.
"""
from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np

from runtimes import FailHook, ModelSpec, inference_symbol

log = logging.getLogger(__name__)


def batch_sizes(max_batch: int) -> list[int]:
    """The sizes the mxnet runtime can bind: ``max_batch`` and every power of two below it."""
    return sorted({max_batch, *(1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch)})


class MXNetRuntime:
    """Modules bound for inference at ``max_batch`` and the ``batch_sizes`` below it, sharing its memory (each
    holds oneDNN-fused weights and an input array of its own, though: ``loadgen_plan.EXECUTOR_WEIGHTS``,
    ``MXNET_INPUTS``)."""

    def __init__(self, spec: ModelSpec, dcfg, max_batch: int):
        import mxnet as mx

        import checkpoint
        import fit
        import resnet

        self.name = "mxnet"
        self.mx, self.spec, self.dcfg = mx, spec, dcfg
        self.ctx = mx.gpu(0) if spec.device == "gpu" else mx.cpu()
        self.sizes = batch_sizes(max_batch)
        self.hook = FailHook()
        self._lock = threading.Lock()
        data_shape = self._shapes(max_batch)[0][0].shape
        arg = aux = None
        self.sym = inference_symbol(spec)
        if spec.model_prefix is not None and spec.load_epoch is not None:
            model = {"num_layers": spec.model.num_layers, "resnet_version": spec.model.resnet_version,
                     "num_classes": spec.num_classes, "image_channels": spec.image_shape[0], "dtype": spec.dtype}
            ckpt = checkpoint.for_scoring(spec.model_prefix, spec.load_epoch, model)
            if spec.dtype == "int8":  # the checkpoint's own quantized graph
                self.sym, arg, aux = checkpoint.int8_model(ckpt, data_shape)
            else:
                arg, aux = checkpoint.load_for_inference(ckpt, self.sym, data_shape)
        base = fit.create_module(self.sym, [self.ctx], self._shapes(max_batch), for_training=False)
        if arg is not None:
            base.init_params(None, arg_params=arg, aux_params=aux, allow_missing=False)
        else:
            log.warning("no --load-epoch: random weights (throughput only; the accuracy means nothing)")
            fit.init_random(base, self.sym, resnet.initializer())
        self.mods = {max_batch: base}

    def describe(self) -> dict:
        return {"context": str(self.ctx), "batch_sizes": self.sizes}

    def _shapes(self, n: int):
        from datatypes import batch_descs

        return batch_descs(dataclasses.replace(self.dcfg, batch_size=n), dtype="float32")

    def _module(self, size: int):
        mod = self.mods.get(size)
        if mod is None:
            mx, base = self.mx, self.mods[max(self.mods)]
            data, label = self._shapes(size)
            mod = mx.mod.Module(self.sym, context=[self.ctx], data_names=["data"], label_names=["softmax_label"])
            mod.bind(data_shapes=data, label_shapes=label, for_training=False, shared_module=base)
            self.mods[size] = mod
        return mod

    def warm_up(self, largest: int) -> None:
        """Bind and run every size a batch of at most ``largest`` samples uses (before LoadGen's clock)."""
        for size in self.sizes:
            self._run(np.zeros(self._shapes(size)[0][0].shape, np.float32), size)
            if size >= largest:
                break

    def _run(self, x: np.ndarray, size: int) -> np.ndarray:
        """The probabilities of ``x`` (``size`` samples): copied once, straight into the executor's bound input,
        and run (``Module.forward`` would copy it twice more: into a new NDArray, then into the bound one; at 224 px
        those copies cost 6% of an INT8 batch)."""
        executor = self._module(size)._exec_group.execs[0]  # MXNet 1.9.1's Module: one executor per context
        executor.arg_dict["data"][:] = x
        executor.forward(is_train=False)
        return executor.outputs[0].asnumpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n > self.sizes[-1]:
            raise ValueError(f"a batch of {n} samples is larger than --max-batchsize {self.sizes[-1]}")
        classes, start = [], 0
        with self._lock:
            self.hook.check()
            while start < n:  # the largest bound size that fits what is left: no padded (wasted) work
                size = max(s for s in self.sizes if s <= n - start)
                probs = self._run(x[start:start + size], size)
                classes.append(probs.argmax(axis=1))  # as fit.Meter's top-1: numpy's argmax of the probabilities
                start += size
        return np.concatenate(classes)


def load(spec: ModelSpec, dcfg, max_batch: int, threads: int) -> MXNetRuntime:
    """``runtimes.open_runtime``'s entry (one model, whatever ``threads``: its executors run one batch at a
    time)."""
    return MXNetRuntime(spec, dcfg, max_batch)
