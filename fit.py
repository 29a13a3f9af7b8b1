"""Training and scoring with MXNet's symbolic Module API: the loop, the LR schedule, timing, checkpoints, signals.

The recipe is NVIDIA's first version (itself the ResNet v1.5 recipe): SGD with momentum 0.9 and weight decay 1e-4,
fp32 master weights (``multi_precision``), LR = ``--lr`` (given for the global batch; the runner scales 0.1 per 256
images) with a linear warmup over ``--warmup-epochs`` and x``--lr-factor`` at each of ``--lr-step-epochs``; NVIDIA's
later version's cosine schedule and label smoothing are options. The loop is written out (not ``Module.fit``) so
that it can:

* time every iteration honestly: wall time from asking for the batch to the end of the update, with
  ``mx.nd.waitall()`` as the synchronization point, the first iterations of each epoch left out (``warmup_iters``;
  their number is reported), timers started afresh every epoch;
* stop cleanly on SIGINT/SIGTERM within one batch wherever the signal lands (training, validation, scoring, saving):
  a signal in a training epoch writes a partial checkpoint at the iteration it reached, one in validation or saving
  a complete checkpoint of the epoch just trained; then the report, and exit 128+signal saying how to resume.
  ``--load-epoch``/``--resume`` continue at the same iteration with the same optimizer state and LR step, so the
  weights equal those of an uninterrupted run (given the same data order);
* stop on a NaN or infinite loss without writing a checkpoint, so the last good one stays;
* stop on a record that cannot be decoded (``common.DataError``) or an output that cannot be written
  (``common.OutputError``) with a checkpoint where one can be written, the report's status ``failed`` and its
  reason, and one line;
* scale the loss dynamically (``--amp``, ``amp.py``).

Checkpoints and their manifest: ``checkpoint.py``.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np

import checkpoint
import optim
from amp import AMP_INIT_SCALE, AMP_MAX_SCALE, AMP_SCALE, DynamicLossScaler, add_loss_scaler
from common import (EXIT_DIVERGED, DataError, StopFlag, UsageError, finite_float, float_list,
                    path_arg, prefix_arg)

log = logging.getLogger(__name__)

LOSS_EPS = 1e-12  # as MXNet's CrossEntropy metric (NVIDIA's train.loss)
POLY_END_LR = 1e-4  # the poly schedule: MLPerf's closed-division end learning rate and power
POLY_POWER = 2


def add_fit_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("Training", "optimizer, schedule, checkpoints, measurement")
    g.add_argument("--gpus", default=None, help="GPU ids, e.g. 0,1,2,3 (the runner sets this from -n)")
    g.add_argument("--cpu-devices", type=int, default=None,
                   help="number of CPU devices (contexts) when there is no GPU (the runner sets this from -n)")
    g.add_argument("--kv-store", choices=("device", "local", "dist_sync", "dist_device_sync", "horovod"),
                   default="device", help="gradient aggregation (dist_*: set by ./runner --workers, one job of "
                                          "several processes; horovod: by ./runner --kv-store horovod)")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "int8"), default="float32",
                   help="compute dtype: float16 on GPUs; bfloat16 on CPUs with AVX512_BF16/AMX (fp32 master weights, "
                        "batchnorm statistics and loss); int8: --only-inference of an INT8 checkpoint "
                        "(tools/quantize.py)")
    g.add_argument("--batch-size", type=int, default=256, help="global batch (all devices; the runner sets it)")
    g.add_argument("--num-epochs", type=int, default=90, help="epochs to train")
    g.add_argument("--lr", type=finite_float, default=0.1, help="learning rate for the global batch")
    g.add_argument("--optimizer", choices=("sgd", "lars"), default=None,
                   help="sgd: SGD with momentum; lars: SGD with momentum and a per-layer trust ratio (MLPerf's "
                        "closed-division LARS, optim.py) (default: lars with --mlperf, sgd without)")
    g.add_argument("--lars-eta", type=finite_float, default=0.001, help="LARS trust coefficient")
    g.add_argument("--lr-schedule", choices=("multistep", "cosine", "poly"), default=None,
                   help="multistep: x --lr-factor at each of --lr-step-epochs; cosine: from the end of warmup to 0; "
                        "poly: (1 - t)^2 from the end of warmup to 1e-4 at --lr-decay-epochs, MLPerf's "
                        "(default: poly with --mlperf, multistep without)")
    g.add_argument("--lr-decay-epochs", type=finite_float, default=None,
                   help="poly: the epoch at which the decay reaches 1e-4 (default: --num-epochs)")
    g.add_argument("--lr-factor", type=finite_float, default=0.1, help="multistep decay factor")
    g.add_argument("--lr-step-epochs", type=float_list, default=(30.0, 60.0, 80.0),
                   help="multistep epochs, in increasing order")
    g.add_argument("--warmup-epochs", type=finite_float, default=5, help="linear LR warmup, epochs")
    g.add_argument("--mom", type=finite_float, default=0.9, help="SGD momentum")
    g.add_argument("--wd", type=finite_float, default=1e-4, help="weight decay")
    g.add_argument("--label-smoothing", type=finite_float, default=0.0, help="label smoothing epsilon (0: off)")
    g.add_argument("--loss-scale", type=finite_float, default=None,
                   help="static loss scaling: the loss gradient is multiplied by this and the update divides it "
                        "out (keeps small fp16 gradients from underflowing; a power of two, e.g. 128; default 1); "
                        "with --amp, the initial dynamic scale")
    g.add_argument("--amp", action="store_true",
                   help="dynamic loss scaling, MXNet AMP's policy: start at --loss-scale (65536 if not given), halve "
                        "it and skip the update when a gradient is inf/NaN, double it after --amp-scale-window "
                        "clean iterations (at most 2^24); meant for --dtype float16")
    g.add_argument("--amp-scale-window", type=int, default=2000,
                   help="with --amp: clean iterations before the loss scale is doubled")
    g.add_argument("--model-prefix", type=prefix_arg, default=None,
                   help="checkpoint prefix: <prefix>-symbol.json, <prefix>-NNNN.params/.states/.json (none written "
                        "if unset)")
    g.add_argument("--save-period", type=int, default=1, help="checkpoint every N epochs (and at the last one)")
    g.add_argument("--save-keep", type=int, default=None,
                   help="keep only the K newest epoch checkpoints, deleting older ones once a newer one is complete "
                        "(default: keep all)")
    g.add_argument("--load-epoch", type=int, default=None,
                   help="resume from (or, with --only-inference, score) checkpoint NNNN of --model-prefix (the "
                        "partial one of that number if a signal stopped epoch NNNN)")
    g.add_argument("--resume", action="store_true",
                   help="resume from the newest complete checkpoint of --model-prefix (partial ones included), or "
                        "start afresh if there is none: the same command line restarts a run wherever it stopped")
    g.add_argument("--benchmark-iters", type=int, default=None,
                   help="cut every training epoch, validation pass and --only-inference pass to this many "
                        "iterations (NVIDIA's benchmark mode)")
    g.add_argument("--no-metrics", action="store_true", help="skip top-1/top-5 (timing and the loss remain)")
    g.add_argument("--no-val", action="store_true", help="skip the validation pass after each epoch")
    g.add_argument("--only-inference", action="store_true",
                   help="score the model on the val set --num-epochs times (a checkpoint with --load-epoch, else "
                        "random weights): top-1/top-5, img/s, per-batch latency percentiles")
    g.add_argument("--disp-batches", type=int, default=20, help="log a progress line every N iterations")
    g.add_argument("--seed", type=int, default=None, help="seed of MXNet, numpy, Python and the data pipelines")
    g.add_argument("--report", type=path_arg, default=None, help="JSON report (see report.py)")
    return g


@dataclass(frozen=True)
class FitConfig:
    """The training flags (field names are the flags' names), checked when made."""
    num_epochs: int = 90
    lr: float = 0.1
    lr_schedule: str = "multistep"
    lr_factor: float = 0.1
    lr_step_epochs: tuple = (30.0, 60.0, 80.0)
    warmup_epochs: float = 5
    optimizer: str = "sgd"
    lars_eta: float = 0.001
    lr_decay_epochs: float | None = None
    mom: float = 0.9
    wd: float = 1e-4
    label_smoothing: float = 0.0
    batch_size: int = 256
    kv_store: str = "device"
    model_prefix: Path | None = None
    save_period: int = 1
    save_keep: int | None = None
    load_epoch: int | None = None
    resume: bool = False
    benchmark_iters: int | None = None
    no_metrics: bool = False
    no_val: bool = False
    only_inference: bool = False
    disp_batches: int = 20
    loss_scale: float | None = None
    amp: bool = False
    amp_scale_window: int = 2000
    seed: int | None = None
    model: dict = field(default_factory=dict, compare=False)  # the model's identity, recorded in checkpoints

    def __post_init__(self):
        for flag, v, low in (("--num-epochs", self.num_epochs, 1), ("--save-period", self.save_period, 1),
                             ("--disp-batches", self.disp_batches, 1), ("--batch-size", self.batch_size, 1),
                             ("--amp-scale-window", self.amp_scale_window, 1), ("--save-keep", self.save_keep, 1),
                             ("--benchmark-iters", self.benchmark_iters, 1), ("--load-epoch", self.load_epoch, 0),
                             ("--seed", self.seed, 0)):
            if v is not None and v < low:
                raise UsageError(f"{flag} {v}: must be at least {low}")
        if self.seed is not None and self.seed >= 2 ** 31:
            raise UsageError(f"--seed {self.seed}: must be below 2^31")
        if not self.lr > 0:
            raise UsageError(f"--lr {self.lr:g}: must be positive")
        if not self.lars_eta > 0:
            raise UsageError(f"--lars-eta {self.lars_eta:g}: must be positive")
        if self.lr_decay_epochs is not None and not self.warmup_epochs < self.lr_decay_epochs:
            raise UsageError(f"--lr-decay-epochs {self.lr_decay_epochs:g}: must be greater than --warmup-epochs "
                             f"{self.warmup_epochs:g}")
        if self.warmup_epochs < 0:
            raise UsageError(f"--warmup-epochs {self.warmup_epochs:g}: must be at least 0")
        if not 0 < self.lr_factor <= 1:
            raise UsageError(f"--lr-factor {self.lr_factor:g}: must be in (0, 1]")
        steps = tuple(self.lr_step_epochs)
        if any(not math.isfinite(e) or e < 0 for e in steps) or list(steps) != sorted(set(steps)):
            raise UsageError(f"--lr-step-epochs {','.join(f'{e:g}' for e in steps)}: must be increasing epochs "
                             "(e.g. 30,60,80)")
        if not 0 <= self.mom < 1:
            raise UsageError(f"--mom {self.mom:g}: must be in [0, 1)")
        if self.wd < 0:
            raise UsageError(f"--wd {self.wd:g}: must be at least 0")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing {self.label_smoothing:g}: must be in [0, 1)")
        if self.loss_scale is not None and not self.loss_scale > 0:
            raise UsageError(f"--loss-scale {self.loss_scale:g}: must be positive")
        if self.amp and self.loss_scale is not None and self.loss_scale > AMP_MAX_SCALE:
            raise UsageError(f"--loss-scale {self.loss_scale:g}: with --amp at most 2^24 (16777216), MXNet AMP's "
                             "ceiling")
        for flag, on in (("--load-epoch", self.load_epoch is not None), ("--resume", self.resume),
                         ("--save-keep", self.save_keep is not None)):
            if on and self.model_prefix is None:
                raise UsageError(f"{flag} needs --model-prefix (the checkpoints' prefix)")
        if self.resume and self.load_epoch is not None:
            raise UsageError("--resume and --load-epoch: give one (--resume takes the newest checkpoint)")
        if self.resume and self.only_inference:
            raise UsageError("--resume is for training; score a checkpoint with --load-epoch N")

    @property
    def decay_epochs(self) -> float:
        """``poly``: the epoch at which the learning rate has decayed to its end value."""
        return self.num_epochs if self.lr_decay_epochs is None else self.lr_decay_epochs

    @property
    def static_loss_scale(self) -> float:
        """The loss gradient's fixed factor in the symbol (``--amp`` scales it at run time instead)."""
        return 1.0 if self.amp or self.loss_scale is None else self.loss_scale

    @property
    def initial_loss_scale(self) -> float:
        """The static scale, or with ``--amp`` the first dynamic one."""
        if self.loss_scale is not None:
            return self.loss_scale
        return AMP_INIT_SCALE if self.amp else 1.0


# --------------------------------------------------------------------------------------------------------------------
# Learning rate


class Schedule(mx.lr_scheduler.LRScheduler):
    """LR as a function of the training step the loop sets (``step``), so a resumed run continues exactly."""

    def __init__(self, cfg: FitConfig, iters_per_epoch: int):
        super().__init__(base_lr=cfg.lr)
        self.cfg, self.iters_per_epoch, self.step = cfg, iters_per_epoch, 0

    def lr_at(self, step: int) -> float:
        c = self.cfg
        e = step / self.iters_per_epoch
        if c.lr_schedule == "poly":
            return optim.poly_lr(step, c.lr, round(c.warmup_epochs * self.iters_per_epoch),
                                 round(c.decay_epochs * self.iters_per_epoch), POLY_END_LR, POLY_POWER)
        if c.warmup_epochs > 0 and e < c.warmup_epochs:
            return c.lr * (step + 1) / (c.warmup_epochs * self.iters_per_epoch)
        if c.lr_schedule == "cosine":
            span = max(1e-12, c.num_epochs - c.warmup_epochs)
            return 0.5 * c.lr * (1 + math.cos(math.pi * min(1.0, (e - c.warmup_epochs) / span)))
        return c.lr * c.lr_factor ** sum(1 for s in c.lr_step_epochs if e >= s)

    def __call__(self, num_update):
        return self.lr_at(self.step)


# --------------------------------------------------------------------------------------------------------------------
# Measurement


def warmup_iters(n: int) -> int:
    """Iterations left out of the timing: NVIDIA's min(n // 10, 100), but at least the first one (graph and
    oneDNN/cuDNN set-up) whenever there are two or more."""
    return min(max(1, n // 10), 100) if n > 1 else 0


class Meter:
    """Per-epoch accumulator of loss/top-1/top-5 over real (non-padding) samples and of iteration times."""

    def __init__(self, metrics: bool):
        self.metrics = metrics
        self.n = self.loss_sum = self.top1 = self.top5 = 0
        self.times: list[float] = []
        self.data_times: list[float] = []
        self.real: list[int] = []

    def update(self, outputs, batches) -> float:
        """Add one iteration's outputs (softmax probabilities per device); return its mean loss."""
        loss_sum, n = 0.0, 0
        for out, b in zip(outputs, batches):
            real = out.shape[0] - (b.pad or 0)
            if real <= 0:
                continue
            # one host copy per device, then numpy: a handful of small engine ops per batch would cost more (about
            # 2 ms per batch on 2 cores, 7% of a batch-1 inference step)
            p = out.asnumpy()[:real].astype(np.float32, copy=False)
            y = b.label[0].asnumpy()[:real].astype(np.int64)
            # NaN/inf logits make every probability NaN, so the loss shows them
            loss_sum += float(-np.log(p[np.arange(real), y] + LOSS_EPS).sum())
            if not np.isfinite(loss_sum):
                return float("nan")
            n += real
            if self.metrics:
                top = np.argpartition(-p, min(5, p.shape[1]) - 1, axis=1)[:, :5]
                self.top1 += int((p.argmax(axis=1) == y).sum())
                self.top5 += int((top == y[:, None]).any(axis=1).sum())
        self.n += n
        self.loss_sum += loss_sum
        return loss_sum / max(n, 1)

    def add_time(self, total: float, data: float, real: int) -> None:
        self.times.append(total)
        self.data_times.append(data)
        self.real.append(real)

    def summary(self, global_batch: int, latencies: bool = False) -> dict:
        warm = warmup_iters(len(self.times))
        kept, kept_data, kept_real = self.times[warm:], self.data_times[warm:], self.real[warm:]
        out = {"iters": len(self.times), "warmup_iters": warm}
        if kept:
            out["time"] = float(np.mean(kept))
            out["data_time"] = float(np.mean(kept_data))
            out["total_ips"] = float(sum(kept_real) / sum(kept)) if latencies else global_batch / out["time"]
        if latencies and kept:
            ms = np.array(kept) * 1000
            out["latency_ms_avg"] = float(ms.mean())
            for q in (50, 90, 95, 99, 100):
                out[f"latency_ms_p{q}"] = float(np.percentile(ms, q))
        if self.n:
            out["loss"] = self.loss_sum / self.n
            if self.metrics:
                out["top1"] = 100.0 * self.top1 / self.n
                out["top5"] = 100.0 * self.top5 / self.n
        return out


# --------------------------------------------------------------------------------------------------------------------
# The loops


def _next(it):
    try:
        return it.next()
    except StopIteration:
        return None


def run_epoch(mod, it, meter: Meter, train: bool, stop: StopFlag | None = None, schedule: Schedule | None = None,
              on_iter=None, skip: int = 0, scaler: DynamicLossScaler | None = None, update=None) -> str:
    """One pass over ``it`` (training when ``train``). Returns "done", "stopped" (a signal, seen after the batch in
    flight) or "diverged". A record that cannot be decoded raises the iterator's ``DataError``. ``update``: what
    applies the gradients (default ``mod.update``; a distributed job's ``dist.StepTimer.update``)."""
    update = update or mod.update
    for _ in range(skip):  # a resumed partial epoch: pass over the batches it had already trained on
        if stop is not None and stop.signum is not None:
            return "stopped"
        if _next(it) is None:
            break
    i = skip
    while True:
        t0 = time.perf_counter()
        batches = _next(it)
        if batches is None:
            return "done"
        t_data = time.perf_counter() - t0
        # one device: hand Module the batch itself (its list-of-batches path measured 1-2% slower on CPU)
        feed = batches[0] if len(batches) == 1 else batches
        if train:
            mod.forward_backward(feed)
            if scaler is None:
                update()
            else:
                scaler.step(update)
            schedule.step += 1
        else:
            mod.forward(feed, is_train=False)
        outputs = mod.get_outputs(merge_multi_context=False)[0]
        mx.nd.waitall()
        loss = meter.update(outputs, batches)
        real = sum(b.data[0].shape[0] - (b.pad or 0) for b in batches)
        meter.add_time(time.perf_counter() - t0, t_data, real)
        i += 1
        if not np.isfinite(loss):
            return "diverged"
        if on_iter is not None:
            on_iter(i, loss)
        if stop is not None and stop.signum is not None:
            return "stopped"


def _progress(epoch: int, total: int | None, global_batch: int, cfg: FitConfig, schedule: Schedule, meter: Meter):
    def on_iter(i, loss):
        if i % cfg.disp_batches and i != total:
            return
        recent = meter.times[-cfg.disp_batches:]
        ips = global_batch * len(recent) / max(sum(recent), 1e-9)
        log.info("Epoch[%d] Batch[%d/%s] %.1f img/s loss %.4f lr %.5g", epoch, i, total or "?", ips, loss,
                 schedule.lr_at(schedule.step))
    return on_iter


def init_optimizer(mod: mx.mod.Module, cfg: FitConfig, schedule: Schedule, num_devices: int, job) -> None:
    """SGD with momentum, weight decay and fp32 master weights, or LARS (``optim.py``) on top of it. Created by
    name, as NVIDIA's fit.py does, so that MXNet knows the parameter names and, as its Optimizer does then, applies
    no weight decay to biases and batchnorm betas (LARS: nor to batchnorm gammas). Gradients are rescaled by
    1/global batch by Module. ``job``: ``dist.Solo`` or ``dist.Workers`` (its kvstore, or Horovod's optimizer)."""
    params = {"learning_rate": cfg.lr, "momentum": cfg.mom, "wd": cfg.wd, "multi_precision": True,
              "lr_scheduler": schedule}
    name = "sgd"
    if cfg.optimizer == "lars":
        name = optim.LARS_NAME
        params.update(eta=cfg.lars_eta, eps=0.0)
    if cfg.static_loss_scale != 1.0:  # the symbol's loss gradient is scaled: divide it out with the batch
        params["rescale_grad"] = 1.0 / (mod.data_shapes[0].shape[0] * job.summed * cfg.static_loss_scale)
    if job.type == "horovod":  # no kvstore: the optimizer allreduces; created as Module would create it by name
        names = mod._exec_group.param_names
        params.setdefault("rescale_grad", 1.0 / mod.data_shapes[0].shape[0])
        opt = mx.optimizer.create(name, sym=mod.symbol, param_idx2name={
            i * num_devices + k: n for i, n in enumerate(names) for k in range(num_devices)}, **params)
        with warnings.catch_warnings():  # Module's note that rescale_grad is not 1/batch: Horovod's averaging
            warnings.simplefilter("ignore")
            mod.init_optimizer(kvstore=None, optimizer=job.kv.optimizer(opt))
        return
    mod.init_optimizer(kvstore=job.module_kvstore(cfg.kv_store, num_devices), optimizer=name,
                       optimizer_params=params)


def create_module(sym, contexts, shapes, for_training: bool) -> mx.mod.Module:
    """A module bound to ``shapes``: ``(provide_data, provide_label)``."""
    fixed = [AMP_SCALE] if AMP_SCALE in sym.list_arguments() else None
    mod = mx.mod.Module(sym, context=list(contexts), data_names=["data"], label_names=["softmax_label"],
                        fixed_param_names=fixed)
    mod.bind(data_shapes=shapes[0], label_shapes=shapes[1], for_training=for_training)
    return mod


def init_random(mod: mx.mod.Module, sym, initializer) -> None:
    """Random weights (throughput only) for a module bound for inference, each in the dtype its graph declares
    (``checkpoint.to_declared_dtypes``: MXNet's initializers fill float32 arrays only)."""
    arg_shapes, _, aux_shapes = sym.infer_shape(data=mod.data_shapes[0].shape)
    arg = {n: mx.nd.zeros(s) for n, s in zip(sym.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    aux = {n: mx.nd.zeros(s) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    attrs = sym.attr_dict()
    for name, array in {**arg, **aux}.items():
        initializer(mx.init.InitDesc(name, attrs.get(name)), array)  # as Module.init_params: the graph's init attrs
    mod.init_params(None, arg_params=checkpoint.to_declared_dtypes(sym, arg), aux_params=aux, allow_missing=False)


def load_weights(mod: mx.mod.Module, sym: mx.sym.Symbol, ckpt: checkpoint.Checkpoint, data_shape,
                 extra_args: dict | None = None) -> None:
    """Set ``mod``'s parameters from ``ckpt``, after checking they fit the model (a ``UsageError`` naming the flag
    otherwise)."""
    arg, aux = checkpoint.load_for_inference(ckpt, sym, data_shape)
    mod.init_params(None, arg_params={**arg, **(extra_args or {})}, aux_params=aux, allow_missing=False)


class Trainer:
    """One training run's state between epochs: the module, the schedule, the loss scaler, the report, and the
    checkpoints it writes (``save``) and where it stops (``interrupted``)."""

    def __init__(self, cfg: FitConfig, sym, mod, schedule: Schedule, scaler, report, global_batch: int,
                 writer: bool = True):
        self.cfg, self.sym, self.mod, self.schedule, self.scaler = cfg, sym, mod, schedule, scaler
        self.report, self.global_batch = report, global_batch
        self.writer = writer  # writes the checkpoints (in a distributed job, rank 0 only)
        self.last_good: str | None = None  # the newest complete checkpoint of this run
        self.update = mod.update  # applies a step's gradients (a job of several processes: exchanges them first)
        self.epoch: int | None = None  # the epoch in progress, and whether its training part is done
        self.trained = False

    def save(self, number: int, batch: int, partial: bool, aux: dict | None = None) -> None:
        """Checkpoint ``number`` (epochs done, or for a partial one the epoch it stopped in, after ``batch``
        iterations); with ``--save-keep``, older complete ones are removed once this one is complete."""
        cfg = self.cfg
        if cfg.model_prefix is None or not self.writer:
            return
        log.info("writing checkpoint %s", checkpoint.name(cfg.model_prefix, number, partial))
        arg, own_aux = self.mod.get_params()
        aux = own_aux if aux is None else aux  # a distributed job's: averaged over the workers
        blob = {f"arg:{k}": v for k, v in arg.items() if k != AMP_SCALE}
        blob.update({f"aux:{k}": v for k, v in aux.items()})
        meta = {"batch": batch, "step": self.schedule.step}
        if self.scaler:
            meta["loss_scale"] = self.scaler.scale
        ckpt = checkpoint.save(cfg.model_prefix, number, partial, symbol=self.sym, params=blob,
                               write_states=self.mod.save_optimizer_states if self.mod.optimizer_initialized
                               else None, meta=meta, model=cfg.model)
        self.report.add_checkpoint(str(cfg.model_prefix), number, partial)
        if not partial:
            self.last_good = ckpt.name
            removed = checkpoint.prune(cfg.model_prefix, ckpt, cfg.save_keep)
            if removed:
                log.info("removed older checkpoints: %s", ", ".join(Path(r).name for r in removed))

    def check_space(self, epoch: int) -> None:
        """Room for the checkpoint of ``epoch`` where it will be written, before the epoch is trained (so before
        the run, too): an ``OutputError`` (exit status 5) now, not after the epoch's work."""
        if self.cfg.model_prefix is None or not self.writer:
            return
        group = self.mod._exec_group
        arrays = {f"arg:{n}": a[0] for n, a in zip(group.param_names, group.param_arrays)}
        arrays.update({f"aux:{n}": a[0] for n, a in zip(group.aux_names, group.aux_arrays)})
        checkpoint.check_space(self.cfg.model_prefix, epoch + 1, arrays, f"before epoch {epoch} is trained")

    def lost(self) -> int:
        """Another process of the job died and this one (rank 0) waits on it forever (``dist.LostGuard``): its
        weights and optimizer state are those after a whole step, so they are saved (a partial checkpoint, or the
        epoch's complete one when its training was done), the report says ``failed``; the exit status."""
        cfg, report = self.cfg, self.report
        why = "another process of the job died"
        if self.epoch is None or cfg.model_prefix is None:
            report.save("failed", why + ("; no checkpoint to save yet" if self.epoch is None else
                                         "; no --model-prefix, so no checkpoint"))
            return 1
        number = self.epoch + 1
        batch = 0 if self.trained else self.schedule.step - self.epoch * self.schedule.iters_per_epoch
        partial = not self.trained
        name = checkpoint.name(cfg.model_prefix, number, partial)
        if name != self.last_good:
            self.save(number, batch, partial)
        where = f"after epoch {self.epoch}" if self.trained else f"in epoch {self.epoch} after {batch} iterations"
        report.save("failed", f"{why}; rank 0 saved {name} ({where})")
        log.warning("%s: rank 0 stopped %s and saved %s; the launcher names the process and the command that "
                    "resumes", why, where, name)
        return 1

    def train_stats(self, meter: Meter, skipped_before: int) -> dict:
        stats = meter.summary(self.global_batch)
        stats["lr"] = self.schedule.lr_at(max(self.schedule.step - 1, 0))
        if self.scaler:
            stats["loss_scale"] = self.scaler.scale
            stats["amp_skipped"] = self.scaler.skipped - skipped_before
        return stats

    def interrupted(self, stop: StopFlag, epoch: int, batches_done: int, epoch_complete: bool) -> int:
        """Checkpoint where the signal stopped the run, write the report, say how to resume; the exit status."""
        cfg = self.cfg
        where = f"after epoch {epoch}" if epoch_complete else f"in epoch {epoch} after {batches_done} iterations"
        if not self.writer:
            log.error("%s: stopped %s", stop.name, where)
            return 128 + stop.signum
        if cfg.model_prefix is None:
            self.report.save("interrupted")
            log.error("%s: stopped %s; no --model-prefix, so no checkpoint to resume from", stop.name, where)
            return 128 + stop.signum
        number = epoch + 1
        name = checkpoint.name(cfg.model_prefix, number, partial=not epoch_complete)
        if name != self.last_good:  # not already written at the end of the epoch
            self.save(number, 0 if epoch_complete else batches_done, partial=not epoch_complete)
        self.report.save("interrupted")
        log.error("%s: stopped %s; checkpoint %s written. Resume: run the same command with --resume (or "
                  "--load-epoch %d)", stop.name, where, name, number)
        return 128 + stop.signum


def warm_up(mod: mx.mod.Module) -> None:
    """One training forward/backward and one scoring forward on zeros, before the clock starts (MLPerf mode):
    operator set-up and memory allocation leave the timed run. The parameters and batchnorm statistics are put
    back afterwards, so the run starts from the initialized weights."""
    aux = [[a.copy() for a in per_param] for per_param in mod._exec_group.aux_arrays]
    data = [mx.nd.zeros(d.shape, dtype=d.dtype) for d in mod.data_shapes]
    label = [mx.nd.zeros(d.shape, dtype=d.dtype) for d in mod.label_shapes]
    batch = mx.io.DataBatch(data, label)
    mod.forward_backward(batch)  # no update: the weights stay; only the batchnorm statistics move
    mx.nd.waitall()  # (MXNet 1.9.1's oneDNN path fails on a scoring pass queued right behind a training one)
    mod.forward(batch, is_train=False)
    for saved, live in zip(aux, mod._exec_group.aux_arrays):
        for a, b in zip(saved, live):
            a.copyto(b)
    mx.nd.waitall()


def fit(cfg: FitConfig, sym: mx.sym.Symbol, contexts: Sequence, open_data, shapes, report, initializer,
        stop: StopFlag, resume: checkpoint.Checkpoint | None, ml, job) -> int:
    """Train (or score, with ``only_inference``). ``open_data()`` builds the (train, val) iterators, whose batches
    ``shapes`` (``(provide_data, provide_label)``) describes. Returns the process exit status; a ``DataError`` or
    ``OutputError`` propagates after the checkpoint that could be written.

    ``ml`` (``mlperf.MLPerfRun``, or ``mlperf.Off``) is told the run's events: in MLPerf mode the module is bound,
    initialized and warmed up before its clock starts (``init_done``), the data pipelines are built after; it
    decides which epochs are evaluated and whether an evaluation reached the target, which ends the run.

    ``job`` (``dist.Workers``, or ``dist.Solo`` in one process): every worker starts from rank 0's weights, the
    gradients are summed over the workers, each validation pass is summed over them, and rank 0 alone writes
    checkpoints."""
    global_batch = cfg.batch_size * job.num_workers
    if cfg.only_inference:
        return score(cfg, sym, contexts, open_data()[1], report, initializer, global_batch, stop, resume)
    train_it = val_it = None
    if not ml.on:  # the inputs are checked before the model is built
        train_it, val_it = open_data()
        shapes = (train_it.provide_data, train_it.provide_label)
    iters = train_it.batches_per_epoch if train_it is not None else 1
    run = _build(cfg, sym, contexts, shapes, report, initializer, resume, job, global_batch, iters)
    if ml.on:
        train_it, val_it = _start_clock(run, ml, open_data)
    begin_epoch, skip = _resume(run, resume) if resume is not None else (0, 0)
    try:
        with job.guard(run.lost):
            return _loop(run, train_it, val_it, stop, begin_epoch, skip, ml, job)
    finally:
        if ml.status is None:  # a signal, a bad record, an unwritable output
            ml.abort(report)
            report.save()


def _build(cfg: FitConfig, sym, contexts, shapes, report, initializer, resume, job, global_batch: int,
           iters_per_epoch: int) -> Trainer:
    """The bound module with its first weights (initialized, or the checkpoint's), the job's weights (rank 0's),
    the schedule, the optimizer, the loss scaler and the job's update: the run before its first epoch."""
    mod = create_module(add_loss_scaler(sym) if cfg.amp else sym, contexts, shapes, for_training=True)
    amp_arg = {AMP_SCALE: mx.nd.ones((1,))} if cfg.amp else {}  # its value is set by the scaler below
    if resume is not None:
        load_weights(mod, sym, resume, shapes[0][0].shape, amp_arg)
    else:
        mod.init_params(initializer, arg_params=amp_arg or None, allow_missing=cfg.amp)
    job.broadcast(mod)
    schedule = Schedule(cfg, iters_per_epoch)
    init_optimizer(mod, cfg, schedule, len(contexts), job)
    scaler = None
    if cfg.amp:
        start = resume.meta.get("loss_scale", cfg.initial_loss_scale) if resume else cfg.initial_loss_scale
        scaler = DynamicLossScaler(mod, start, cfg.amp_scale_window, mod.data_shapes[0].shape[0])
    run = Trainer(cfg, sym, mod, schedule, scaler, report, global_batch, writer=job.rank == 0)
    run.update = job.updater(mod, report)
    if cfg.model_prefix is not None:
        stale = checkpoint.remove_stale_temporaries(cfg.model_prefix)
        if stale:
            log.warning("removed %d temporary file(s) of an interrupted save: %s", len(stale), ", ".join(stale))
    return run


def _start_clock(run: Trainer, ml, open_data):
    """MLPerf mode: warm up off the clock, start it, then build the data pipelines on it; (train, val)."""
    warm_up(run.mod)
    ml.init_done()  # the clock starts: everything from here touches the data
    try:
        train_it, val_it = open_data()
    except BaseException:
        ml.run_stop("aborted")
        raise
    run.schedule.iters_per_epoch = train_it.batches_per_epoch
    ml.data_ready(train_it.num_samples, val_it.num_samples)
    return train_it, val_it


def _resume(run: Trainer, resume: checkpoint.Checkpoint) -> tuple[int, int]:
    """The optimizer state, LR step and report history of the checkpoint; (epoch, iteration) to go on from."""
    if "states" in resume.meta.get("files", {}):
        checkpoint.states_loader(resume.files["states"])(run.mod)
    else:
        log.warning("%s has no optimizer state: momentum starts from zero", resume.name)
    begin_epoch, skip = (resume.epoch - 1, resume.meta.get("batch", 0)) if resume.partial else (resume.epoch, 0)
    run.schedule.step = resume.meta.get("step", begin_epoch * run.schedule.iters_per_epoch + skip)
    run.last_good = None if resume.partial else resume.name
    run.report.keep_history(begin_epoch, resume.name)
    log.info("resuming from %s: epoch %d, iteration %d", resume.name, begin_epoch, skip)
    return begin_epoch, skip


def _loop(run: Trainer, train_it, val_it, stop: StopFlag, begin_epoch: int, skip: int, ml, job) -> int:
    """The epochs of ``fit``, each in its phases: train, validate, save; then finish."""
    cfg, report = run.cfg, run.report
    for epoch in range(begin_epoch, cfg.num_epochs):
        status, train_stats, batches_done = _train_epoch(run, train_it, stop, epoch, skip, ml, job)
        skip = 0
        if status is not None:
            return status
        val_stats, val_state, reached = _validate(run, val_it, stop, epoch, ml, job, train_stats)
        report.add_epoch(epoch, train=train_stats, val=val_stats)
        _log_epoch(epoch, train_stats, val_stats)
        if val_state == "stopped":  # the epoch is trained: its checkpoint is a complete one
            return run.interrupted(stop, epoch, batches_done, epoch_complete=True)
        if reached:
            ml.run_stop("success")  # the clock stops before the checkpoint is written
            ml.record(report)
            run.save(epoch + 1, 0, partial=False)
            report.save("completed")
            return 0
        _save_epoch(run, epoch, ml, job)
        if stop.signum is not None:  # the signal came while saving (or validation was off)
            return run.interrupted(stop, epoch, batches_done, epoch_complete=True)
    status = ml.finished(report, cfg.num_epochs)
    if status is not None:
        return status
    job.finish(run.mod, report)
    report.save("completed")
    return 0


def _train_epoch(run: Trainer, train_it, stop: StopFlag, epoch: int, skip: int, ml, job):
    """The training phase of ``epoch`` (from iteration ``skip`` of a resumed one): (an exit status where the run
    ends here, else None; the epoch's train numbers; the iterations done)."""
    cfg, report, schedule, scaler = run.cfg, run.report, run.schedule, run.scaler
    run.check_space(epoch)
    run.epoch, run.trained = epoch, False
    meter = Meter(not cfg.no_metrics)
    skipped_before = scaler.skipped if scaler else 0
    ml.epoch_start(epoch)
    progress = _progress(epoch, schedule.iters_per_epoch, run.global_batch, cfg, schedule, meter)
    try:
        state = run_epoch(run.mod, train_it, meter, True, stop, schedule, progress, skip, scaler, run.update)
    except DataError:
        report.add_epoch(epoch, train=run.train_stats(meter, skipped_before))
        run.save(epoch + 1, skip + len(meter.times), partial=True)
        raise
    batches_done = skip + len(meter.times)
    train_stats = run.train_stats(meter, skipped_before)
    if state == "done":
        run.trained = True
        train_it.reset()  # iterators are reset after a finished epoch (DALI refuses a reset mid-epoch)
        times = job.epoch_times(meter, warmup_iters(len(meter.times)))  # every worker ends its epoch here
        if times is not None:
            train_stats["workers"] = times
    if state == "diverged":
        report.add_epoch(epoch, train=train_stats)
        ml.abort(report)
        report.save("diverged")
        log.error("the loss became NaN or infinite in epoch %d at iteration %d; stopped without saving "
                  "(last good checkpoint: %s). Lower --lr or check the data.", epoch, batches_done,
                  run.last_good or "none")
        return EXIT_DIVERGED, train_stats, batches_done
    if state == "stopped":
        report.add_epoch(epoch, train=train_stats)
        return run.interrupted(stop, epoch, batches_done, epoch_complete=False), train_stats, batches_done
    ml.epoch_stop(epoch)
    return None, train_stats, batches_done


def _validate(run: Trainer, val_it, stop: StopFlag, epoch: int, ml, job, train_stats: dict):
    """The validation phase of ``epoch`` (when there is one): (its numbers or None, "done" or "stopped", whether it
    reached MLPerf's target)."""
    cfg = run.cfg
    if val_it is None or cfg.no_val or not ml.evaluates(epoch):
        return None, "done", False
    log.info("Epoch[%d] validation: %d batches", epoch, val_it.batches_per_epoch)
    vmeter = Meter(not cfg.no_metrics)
    ml.eval_start(epoch)
    try:
        state = run_epoch(run.mod, val_it, vmeter, False, stop)
    except DataError:
        run.report.add_epoch(epoch, train=train_stats)
        run.save(epoch + 1, 0, partial=False)
        raise
    if state != "done":
        return None, state, False
    val_it.reset()
    # each worker scored its part of the val set: the whole set's numbers
    n, vmeter.loss_sum, top1, top5 = job.sum("val", [vmeter.n, vmeter.loss_sum, vmeter.top1, vmeter.top5])
    vmeter.n, vmeter.top1, vmeter.top5 = round(n), round(top1), round(top5)
    reached = ml.eval_stop(epoch, vmeter.top1 / max(vmeter.n, 1))
    return vmeter.summary(run.global_batch, latencies=True), state, reached


def _save_epoch(run: Trainer, epoch: int, ml, job) -> None:
    """The checkpoint of a trained epoch (every --save-period and the last; every worker takes part in the
    batchnorm average, rank 0 writes) and the report."""
    cfg, done = run.cfg, epoch + 1
    if done % cfg.save_period == 0 or done == cfg.num_epochs:
        aux = job.checkpoint_aux(run.mod) if cfg.model_prefix is not None else None
        run.save(done, 0, partial=False, aux=aux)
    ml.record(run.report)
    run.report.save()


def _log_epoch(epoch, train, val):
    parts = [f"Epoch[{epoch}] train: {train.get('total_ips', float('nan')):.1f} img/s"]
    if "loss" in train:
        parts.append(f"loss {train['loss']:.4f}")
    if "top1" in train:
        parts.append(f"top-1 {train['top1']:.2f}%")
    if val:
        top = f"top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}% " if "top1" in val else ""
        parts.append(f"| val: {top}loss {val.get('loss', float('nan')):.4f} {val.get('total_ips', float('nan')):.1f} "
                     "img/s")
    log.info(" ".join(parts))


def score(cfg: FitConfig, sym, contexts, val_it, report, initializer, global_batch: int, stop: StopFlag,
          ckpt: checkpoint.Checkpoint | None = None) -> int:
    """``--only-inference``: --num-epochs passes over the val set with a checkpoint's (or random) weights."""
    if val_it is None:
        raise UsageError("--only-inference needs validation data: --data-val or --data-root with val.rec")
    mod = create_module(sym, contexts, (val_it.provide_data, val_it.provide_label), for_training=False)
    if ckpt is not None:
        load_weights(mod, sym, ckpt, val_it.provide_data[0].shape)
    else:
        log.warning("no --load-epoch: scoring random weights (throughput only)")
        init_random(mod, sym, initializer)
    for rep in range(cfg.num_epochs):
        meter = Meter(not cfg.no_metrics)
        state = run_epoch(mod, val_it, meter, False, stop)
        if state == "done":
            val_it.reset()
        stats = meter.summary(global_batch, latencies=True)
        report.add_epoch(rep, val=stats)
        report.save()
        log.info("Score[%d]: top-1 %.2f%% top-5 %.2f%% loss %.4f, %.1f img/s, latency avg %.2f ms "
                 "p99 %.2f ms", rep, stats.get("top1", float("nan")), stats.get("top5", float("nan")),
                 stats.get("loss", float("nan")), stats.get("total_ips", float("nan")),
                 stats.get("latency_ms_avg", float("nan")), stats.get("latency_ms_p99", float("nan")))
        if state == "stopped":
            report.save("interrupted")
            log.error("%s: scoring stopped in pass %d after %d batches", stop.name, rep, len(meter.times))
            return 128 + stop.signum
    report.save("completed")
    return 0
