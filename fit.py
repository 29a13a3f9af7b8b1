"""Training and scoring with MXNet's symbolic Module API: the loop, the LR schedule, timing, checkpoints, signals.

The recipe is NVIDIA's first version (itself the ResNet v1.5 recipe): SGD with momentum 0.9 and weight decay 1e-4,
fp32 master weights (``multi_precision``), LR = ``--lr`` (given for the global batch; the runner scales 0.1 per 256
images) with a linear warmup over ``--warmup-epochs`` and x``--lr-factor`` at each of ``--lr-step-epochs``; NVIDIA's
later version's cosine schedule and label smoothing are options. The loop is written out (not ``Module.fit``) so
that it can:

* time every iteration honestly: wall time from asking for the batch to the end of the update, with
  ``mx.nd.waitall()`` as the synchronization point, the first iterations of each epoch left out (``warmup_iters``;
  their number is reported), timers started afresh every epoch;
* stop cleanly on SIGINT/SIGTERM at the next iteration boundary, write a checkpoint of the partial epoch and the
  report, and exit 128+signal saying how to resume; ``--load-epoch`` resumes it at the same iteration with the same
  optimizer state and LR step, so the weights equal those of an uninterrupted run (given the same data order);
* stop on a NaN or infinite loss without writing a checkpoint, so the last good one stays;
* write every file atomically (temporary name, then rename);
* scale the loss dynamically (``--amp``): MXNet's AMP loss scaler works with Gluon's ``Trainer`` only, so the
  Module path has its own with the same policy (``DynamicLossScaler``).

Checkpoints are MXNet's own format, ``<prefix>-symbol.json`` and ``<prefix>-NNNN.params`` (``mx.model.
load_checkpoint`` reads them; NNNN = epochs done), plus ``<prefix>-NNNN.states`` (optimizer state) and
``<prefix>-NNNN.json`` (where the run was: epoch, iteration, LR step; ``partial`` for an interrupted epoch).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np

from common import UsageError, atomic_path, float_list, write_json

log = logging.getLogger(__name__)

EXIT_DIVERGED = 3
LOSS_EPS = 1e-12  # as MXNet's CrossEntropy metric (NVIDIA's train.loss)


def add_fit_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("Training", "optimizer, schedule, checkpoints, measurement")
    g.add_argument("--gpus", default=None, help="GPU ids, e.g. 0,1,2,3 (the runner sets this from -n)")
    g.add_argument("--cpu-devices", type=int, default=None,
                   help="number of CPU devices (contexts) when there is no GPU (the runner sets this from -n)")
    g.add_argument("--kv-store", choices=("device", "local"), default="device", help="gradient aggregation")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="compute dtype: float16 on GPUs; bfloat16 on CPUs with AVX512_BF16/AMX (fp32 master weights, "
                        "batchnorm statistics and loss)")
    g.add_argument("--batch-size", type=int, default=256, help="global batch (all devices; the runner sets it)")
    g.add_argument("--num-epochs", type=int, default=90, help="epochs to train")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate for the global batch")
    g.add_argument("--lr-schedule", choices=("multistep", "cosine"), default="multistep",
                   help="multistep: x --lr-factor at each of --lr-step-epochs; cosine: from the end of warmup to 0")
    g.add_argument("--lr-factor", type=float, default=0.1, help="multistep decay factor")
    g.add_argument("--lr-step-epochs", type=float_list, default=(30.0, 60.0, 80.0), help="multistep epochs")
    g.add_argument("--warmup-epochs", type=float, default=5, help="linear LR warmup, epochs")
    g.add_argument("--mom", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon (0: off)")
    g.add_argument("--loss-scale", type=float, default=None,
                   help="static loss scaling: the loss gradient is multiplied by this and the update divides it "
                        "out (keeps small fp16 gradients from underflowing; a power of two, e.g. 128; default 1); "
                        "with --amp, the initial dynamic scale")
    g.add_argument("--amp", action="store_true",
                   help="dynamic loss scaling, MXNet AMP's policy: start at --loss-scale (65536 if not given), halve "
                        "it and skip the update when a gradient is inf/NaN, double it after --amp-scale-window "
                        "clean iterations (at most 2^24); meant for --dtype float16")
    g.add_argument("--amp-scale-window", type=int, default=2000,
                   help="with --amp: clean iterations before the loss scale is doubled")
    g.add_argument("--model-prefix", type=Path, default=None,
                   help="checkpoint prefix: <prefix>-symbol.json, <prefix>-NNNN.params (none written if unset)")
    g.add_argument("--save-period", type=int, default=1, help="checkpoint every N epochs (and at the last one)")
    g.add_argument("--load-epoch", type=int, default=None,
                   help="resume from (or, with --only-inference, score) <prefix>-NNNN.params")
    g.add_argument("--benchmark-iters", type=int, default=None,
                   help="cut every training epoch (or --only-inference pass) to this many iterations; the "
                        "validation after each epoch still covers the whole val set")
    g.add_argument("--no-metrics", action="store_true", help="skip top-1/top-5 (timing and the loss remain)")
    g.add_argument("--no-val", action="store_true", help="skip the validation pass after each epoch")
    g.add_argument("--only-inference", action="store_true",
                   help="score the model on the val set --num-epochs times (a checkpoint with --load-epoch, else "
                        "random weights): top-1/top-5, img/s, per-batch latency percentiles")
    g.add_argument("--disp-batches", type=int, default=20, help="log a progress line every N iterations")
    g.add_argument("--seed", type=int, default=None, help="seed of MXNet, numpy, Python and the data pipelines")
    g.add_argument("--report", type=Path, default=None, help="JSON report (see report.py)")
    return g


@dataclass(frozen=True)
class FitConfig:
    num_epochs: int
    lr: float
    lr_schedule: str
    lr_factor: float
    lr_step_epochs: tuple
    warmup_epochs: float
    mom: float
    wd: float
    batch_size: int
    kv_store: str
    model_prefix: Path | None
    save_period: int
    load_epoch: int | None
    no_metrics: bool
    no_val: bool
    only_inference: bool
    disp_batches: int
    loss_scale: float = 1.0
    amp: bool = False
    amp_scale_window: int = 2000


AMP_INIT_SCALE = 2.0 ** 16  # MXNet AMP's LossScaler: initial scale, its ceiling, doubling period
AMP_MAX_SCALE = 2.0 ** 24


def initial_loss_scale(args) -> float:
    """The static scale, or with --amp the first dynamic one."""
    if args.loss_scale is not None:
        return args.loss_scale
    return AMP_INIT_SCALE if args.amp else 1.0


def config_from_args(args) -> FitConfig:
    for flag, v, low in (("--num-epochs", args.num_epochs, 1), ("--save-period", args.save_period, 1),
                         ("--disp-batches", args.disp_batches, 1)):
        if v < low:
            raise UsageError(f"{flag} {v}: must be at least {low}")
    if args.lr <= 0:
        raise UsageError(f"--lr {args.lr}: must be positive")
    if args.benchmark_iters is not None and args.benchmark_iters < 1:
        raise UsageError(f"--benchmark-iters {args.benchmark_iters}: must be at least 1")
    if not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label-smoothing {args.label_smoothing}: must be in [0, 1)")
    if args.loss_scale is not None and not args.loss_scale > 0:
        raise UsageError(f"--loss-scale {args.loss_scale}: must be positive")
    if args.amp and args.loss_scale is not None and args.loss_scale > AMP_MAX_SCALE:
        raise UsageError(f"--loss-scale {args.loss_scale:g}: with --amp at most 2^24 (16777216), MXNet AMP's ceiling")
    if args.amp_scale_window < 1:
        raise UsageError(f"--amp-scale-window {args.amp_scale_window}: must be at least 1")
    if args.load_epoch is not None and args.model_prefix is None:
        raise UsageError("--load-epoch needs --model-prefix (the checkpoint's prefix)")
    return FitConfig(num_epochs=args.num_epochs, lr=args.lr, lr_schedule=args.lr_schedule, lr_factor=args.lr_factor,
                     lr_step_epochs=tuple(args.lr_step_epochs), warmup_epochs=args.warmup_epochs, mom=args.mom,
                     wd=args.wd, batch_size=args.batch_size, kv_store=args.kv_store, model_prefix=args.model_prefix,
                     save_period=args.save_period, load_epoch=args.load_epoch, no_metrics=args.no_metrics,
                     no_val=args.no_val, only_inference=args.only_inference, disp_batches=args.disp_batches,
                     loss_scale=initial_loss_scale(args), amp=args.amp, amp_scale_window=args.amp_scale_window)


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
        if c.warmup_epochs > 0 and e < c.warmup_epochs:
            return c.lr * (step + 1) / (c.warmup_epochs * self.iters_per_epoch)
        if c.lr_schedule == "cosine":
            span = max(1e-12, c.num_epochs - c.warmup_epochs)
            return 0.5 * c.lr * (1 + math.cos(math.pi * min(1.0, (e - c.warmup_epochs) / span)))
        return c.lr * c.lr_factor ** sum(1 for s in c.lr_step_epochs if e >= s)

    def __call__(self, num_update):
        return self.lr_at(self.step)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_paths(prefix: Path, epoch: int) -> dict:
    return {"symbol": Path(f"{prefix}-symbol.json"), "params": Path(f"{prefix}-{epoch:04d}.params"),
            "states": Path(f"{prefix}-{epoch:04d}.states"), "meta": Path(f"{prefix}-{epoch:04d}.json")}


def save_checkpoint(mod: mx.mod.Module, sym: mx.sym.Symbol, prefix: Path, epoch: int, meta: dict) -> None:
    """Write symbol, params, optimizer states, then the meta file (the last one marks the checkpoint complete).
    ``sym`` is the model's symbol, without the ``--amp`` loss scaler of the training graph (nor its argument)."""
    paths = checkpoint_paths(prefix, epoch)
    with atomic_path(paths["symbol"]) as tmp:
        sym.save(str(tmp))
    arg, aux = mod.get_params()
    blob = {f"arg:{k}": v for k, v in arg.items() if k != AMP_SCALE}
    blob.update({f"aux:{k}": v for k, v in aux.items()})
    with atomic_path(paths["params"]) as tmp:
        mx.nd.save(str(tmp), blob)
    if mod.optimizer_initialized:
        with atomic_path(paths["states"]) as tmp:
            mod.save_optimizer_states(str(tmp))
    write_json(paths["meta"], meta)


def find_checkpoint(prefix: Path, epoch: int) -> dict:
    """Params (and meta, states if present) of ``<prefix>-NNNN``; a UsageError naming what exists otherwise."""
    paths = checkpoint_paths(prefix, epoch)
    if not paths["params"].is_file():
        have = sorted(p.name for p in Path(prefix).parent.glob(f"{Path(prefix).name}-[0-9][0-9][0-9][0-9].params"))
        hint = f"checkpoints there: {', '.join(have)}" if have else "no checkpoints with that prefix"
        raise UsageError(f"--load-epoch {epoch}: {paths['params']} not found ({hint})")
    meta = json.loads(paths["meta"].read_text()) if paths["meta"].is_file() else \
        {"epoch": epoch, "batch": 0, "partial": False}
    return {"paths": paths, "meta": meta}


def load_params(path: Path):
    saved = mx.nd.load(str(path))
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    return arg, aux


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
# Signals


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads at iteration boundaries; a second signal acts as usual."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        for s, h in self._old.items():
            signal.signal(s, h)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------------------------------
# Dynamic loss scaling (--amp)

AMP_SCALE = "amp_loss_scale"  # the runtime scale, a fixed (never updated, never saved) argument of the training graph


def add_loss_scaler(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """``sym`` (a ``SoftmaxOutput``) with the loss gradient multiplied by the value of the argument ``AMP_SCALE``.

    ``SoftmaxOutput`` ignores head gradients and fixes its ``grad_scale`` when the graph is bound, so the scale
    enters the graph just below it, on the fp32 logits ``x``: ``BlockGrad(x) + (x*s - BlockGrad(x*s))`` is ``x``
    exactly in the forward pass (the two products are one node, so their difference is 0) and has gradient ``s``
    with respect to ``x`` in the backward pass. Changing the scale is then a write into a bound array."""
    logits, label = sym.get_children()[0], sym.get_children()[1]
    scale = mx.sym.Variable(AMP_SCALE, shape=(1,), dtype="float32", init=mx.init.One())
    z = mx.sym.broadcast_mul(logits, scale, name="amp_scaled_logits")
    y = mx.sym.elemwise_add(mx.sym.BlockGrad(logits, name="amp_logits"),
                            mx.sym.elemwise_sub(z, mx.sym.BlockGrad(z, name="amp_scaled_const"), name="amp_zero"),
                            name="amp_logits_scaled_grad")
    return mx.sym.SoftmaxOutput(y, label, name=sym.name, **sym.list_attr())


class DynamicLossScaler:
    """MXNet AMP's loss-scaling policy (``mxnet.contrib.amp.LossScaler``) for a Module: after every backward pass
    all gradients on all devices are checked (``multi_all_finite``); on inf/NaN the update is skipped and the scale
    halved (not below 1), otherwise after ``window`` clean iterations in a row it is doubled (at most 2^24). The
    optimizer's ``rescale_grad`` divides the scale out again."""

    def __init__(self, mod: mx.mod.Module, scale: float, window: int, batch: int):
        self.mod, self.window, self.batch = mod, window, batch
        self.clean = 0
        self.skipped = 0
        self._flags = {}
        self.scale = None
        self.set(scale)

    def set(self, scale: float) -> None:
        self.scale = float(scale)
        for ex in self.mod._exec_group.execs:
            ex.arg_dict[AMP_SCALE][:] = self.scale
        if self.mod.optimizer_initialized:
            self.mod._optimizer.rescale_grad = 1.0 / (self.batch * self.scale)

    def grads_finite(self) -> bool:
        by_ctx = {}
        for per_device in self.mod._exec_group.grad_arrays:
            for g in per_device:
                if g is not None:
                    by_ctx.setdefault(g.context, []).append(g)
        flags = []
        for ctx, grads in by_ctx.items():
            flag = self._flags.setdefault(ctx, mx.nd.ones((1,), ctx=ctx))
            flag[:] = 1
            for i in range(0, len(grads), 200):  # multi_all_finite takes at most a few hundred arrays
                chunk = grads[i:i + 200]
                mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
            flags.append(flag)
        return all(f.asscalar() == 1 for f in flags)

    def step(self, update) -> bool:
        """After the backward pass: call ``update`` unless a gradient is inf/NaN, then adjust the scale for the
        next iteration (after the update, which divides out the scale these gradients were made with). Returns
        whether the update was applied."""
        if not self.grads_finite():
            self.skipped += 1
            self.clean = 0
            new = max(1.0, self.scale / 2)
            log.info("AMP: inf/NaN gradients, update skipped; loss scale %g -> %g", self.scale, new)
            self.set(new)
            return False
        update()
        self.clean += 1
        if self.clean == self.window:
            self.clean = 0
            new = min(AMP_MAX_SCALE, self.scale * 2)
            if new != self.scale:
                log.info("AMP: %d clean iterations; loss scale %g -> %g", self.window, self.scale, new)
                self.set(new)
        return True


# --------------------------------------------------------------------------------------------------------------------
# The loops


def _next(it):
    try:
        return it.next()
    except StopIteration:
        return None


def run_epoch(mod, it, meter: Meter, train: bool, stop: StopFlag | None = None, schedule: Schedule | None = None,
              on_iter=None, skip: int = 0, scaler: DynamicLossScaler | None = None) -> str:
    """One pass over ``it`` (training when ``train``). Returns "done", "stopped" (signal) or "diverged"."""
    for _ in range(skip):  # a resumed partial epoch: pass over the batches it had already trained on
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
                mod.update()
            else:
                scaler.step(mod.update)
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


def init_optimizer(mod: mx.mod.Module, cfg: FitConfig, schedule: Schedule, num_devices: int) -> None:
    """SGD with momentum, weight decay and fp32 master weights. Created by name, as NVIDIA's fit.py does, so that
    MXNet knows the parameter names and, as its Optimizer does then, applies no weight decay to biases and batchnorm
    betas (gradients are rescaled by 1/global batch by Module)."""
    kv = mx.kvstore.create(cfg.kv_store) if num_devices > 1 else None
    params = {"learning_rate": cfg.lr, "momentum": cfg.mom, "wd": cfg.wd, "multi_precision": True,
              "lr_scheduler": schedule}
    if cfg.loss_scale != 1.0:  # the symbol's loss gradient is scaled by loss_scale: divide it out with the batch
        params["rescale_grad"] = 1.0 / (mod.data_shapes[0].shape[0] * cfg.loss_scale)
    mod.init_optimizer(kvstore=kv, optimizer="sgd", optimizer_params=params)


def create_module(sym, contexts, train_it, for_training: bool) -> mx.mod.Module:
    fixed = [AMP_SCALE] if AMP_SCALE in sym.list_arguments() else None
    mod = mx.mod.Module(sym, context=list(contexts), data_names=["data"], label_names=["softmax_label"],
                        fixed_param_names=fixed)
    mod.bind(data_shapes=train_it.provide_data, label_shapes=train_it.provide_label, for_training=for_training)
    return mod


def fit(cfg: FitConfig, sym: mx.sym.Symbol, contexts: Sequence, train_it, val_it, report, initializer,
        num_workers: int = 1) -> int:
    """Train (or score, with ``only_inference``). Returns the process exit status."""
    global_batch = cfg.batch_size * num_workers
    if cfg.only_inference:
        return score(cfg, sym, contexts, val_it, report, initializer, global_batch)
    ckpt = find_checkpoint(cfg.model_prefix, cfg.load_epoch) if cfg.load_epoch is not None else None
    iters_per_epoch = train_it.batches_per_epoch
    mod = create_module(add_loss_scaler(sym) if cfg.amp else sym, contexts, train_it, for_training=True)
    arg = aux = None
    if ckpt:
        arg, aux = load_params(ckpt["paths"]["params"])
    if cfg.amp:  # the scale's value is set below; every other parameter comes from the checkpoint if there is one
        arg = {**(arg or {}), AMP_SCALE: mx.nd.ones((1,))}
    mod.init_params(initializer, arg_params=arg, aux_params=aux, allow_missing=cfg.amp and ckpt is None)
    schedule = Schedule(cfg, iters_per_epoch)
    init_optimizer(mod, cfg, schedule, len(contexts))
    scaler = None
    if cfg.amp:
        start = cfg.loss_scale
        if ckpt and "loss_scale" in ckpt["meta"]:
            start = ckpt["meta"]["loss_scale"]
        scaler = DynamicLossScaler(mod, start, cfg.amp_scale_window, mod.data_shapes[0].shape[0])
    begin_epoch, skip = 0, 0
    if ckpt:
        meta = ckpt["meta"]
        if ckpt["paths"]["states"].is_file():
            mod.load_optimizer_states(str(ckpt["paths"]["states"]))
        else:
            log.warning("%s not found: momentum starts from zero", ckpt["paths"]["states"])
        if meta.get("partial"):
            begin_epoch, skip = meta["epoch"] - 1, meta["batch"]
        else:
            begin_epoch = meta["epoch"]
        schedule.step = meta.get("step", begin_epoch * iters_per_epoch + skip)
        log.info("resuming from %s: epoch %d, iteration %d", ckpt["paths"]["params"], begin_epoch, skip)
    last_good = cfg.load_epoch
    with StopFlag() as stop:
        for epoch in range(begin_epoch, cfg.num_epochs):
            meter = Meter(not cfg.no_metrics)
            on_iter = _progress(epoch, iters_per_epoch, global_batch, cfg, schedule, meter)
            skipped_before = scaler.skipped if scaler else 0
            state = run_epoch(mod, train_it, meter, True, stop, schedule, on_iter, skip, scaler)
            if state == "done":
                train_it.reset()  # iterators are reset after a finished epoch (DALI refuses a reset mid-epoch)
            batches_done = skip + len(meter.times)
            skip = 0
            train_stats = meter.summary(global_batch)
            train_stats["lr"] = schedule.lr_at(max(schedule.step - 1, 0))
            if scaler:
                train_stats["loss_scale"] = scaler.scale
                train_stats["amp_skipped"] = scaler.skipped - skipped_before
            if state == "diverged":
                report.add_epoch(epoch, train=train_stats)
                report.save("diverged")
                kept = f"{cfg.model_prefix}-{last_good:04d}" if last_good is not None and cfg.model_prefix else "none"
                log.error("the loss became NaN or infinite in epoch %d at iteration %d; stopped without saving "
                          "(last good checkpoint: %s). Lower --lr or check the data.", epoch, batches_done, kept)
                return EXIT_DIVERGED
            if state == "stopped":
                report.add_epoch(epoch, train=train_stats)
                return _interrupted(mod, sym, cfg, report, epoch, batches_done, schedule, stop.signum,
                                    scaler=scaler)
            val_stats = None
            if val_it is not None and not cfg.no_val:
                vmeter = Meter(not cfg.no_metrics)
                run_epoch(mod, val_it, vmeter, False)
                val_it.reset()
                val_stats = vmeter.summary(global_batch, latencies=True)
            report.add_epoch(epoch, train=train_stats, val=val_stats)
            _log_epoch(epoch, train_stats, val_stats)
            done = epoch + 1
            if cfg.model_prefix is not None and (done % cfg.save_period == 0 or done == cfg.num_epochs):
                save_checkpoint(mod, sym, cfg.model_prefix, done,
                                {"epoch": done, "batch": 0, "partial": False, "step": schedule.step,
                                 **({"loss_scale": scaler.scale} if scaler else {})})
                report.add_checkpoint(str(cfg.model_prefix), done, False)
                last_good = done
            report.save()
            if stop.signum is not None:  # the signal came during validation or saving
                return _interrupted(mod, sym, cfg, report, done, 0, schedule, stop.signum, epoch_complete=True,
                                    scaler=scaler)
    report.save("completed")
    return 0


def _interrupted(mod, sym, cfg, report, epoch, batches_done, schedule, signum, epoch_complete=False,
                 scaler: DynamicLossScaler | None = None) -> int:
    name = signal.Signals(signum).name
    if cfg.model_prefix is None:
        report.save("interrupted")
        log.error("%s: stopped in epoch %d after %d iterations; no --model-prefix, so no checkpoint to resume "
                  "from", name, epoch, batches_done)
        return 128 + signum
    number = epoch if epoch_complete else epoch + 1
    partial = not epoch_complete
    save_checkpoint(mod, sym, cfg.model_prefix, number,
                    {"epoch": number, "batch": batches_done, "partial": partial, "step": schedule.step,
                     **({"loss_scale": scaler.scale} if scaler else {})})
    report.add_checkpoint(str(cfg.model_prefix), number, partial)
    report.save("interrupted")
    where = f"in epoch {epoch} after {batches_done} iterations" if partial else f"after epoch {number - 1}"
    log.error("%s: stopped %s; checkpoint %s-%04d written. Resume: run the same command with --load-epoch %d",
              name, where, cfg.model_prefix, number, number)
    return 128 + signum


def _log_epoch(epoch, train, val):
    parts = [f"Epoch[{epoch}] train: {train.get('total_ips', float('nan')):.1f} img/s"]
    if "loss" in train:
        parts.append(f"loss {train['loss']:.4f}")
    if "top1" in train:
        parts.append(f"top-1 {train['top1']:.2f}%")
    if val:
        parts.append(f"| val: top-1 {val.get('top1', float('nan')):.2f}% top-5 {val.get('top5', float('nan')):.2f}% "
                     f"loss {val.get('loss', float('nan')):.4f} {val.get('total_ips', float('nan')):.1f} img/s")
    log.info(" ".join(parts))


def score(cfg: FitConfig, sym, contexts, val_it, report, initializer, global_batch: int) -> int:
    """``--only-inference``: --num-epochs passes over the val set with a checkpoint's (or random) weights."""
    if val_it is None:
        raise UsageError("--only-inference needs validation data: --data-val or --data-root with val.rec")
    mod = create_module(sym, contexts, val_it, for_training=False)
    if cfg.load_epoch is not None:
        arg, aux = load_params(find_checkpoint(cfg.model_prefix, cfg.load_epoch)["paths"]["params"])
        mod.init_params(initializer, arg_params=arg, aux_params=aux, allow_missing=False)
    else:
        log.warning("no --load-epoch: scoring random weights (throughput only)")
        mod.init_params(initializer)
    with StopFlag() as stop:
        for rep in range(cfg.num_epochs):
            meter = Meter(not cfg.no_metrics)
            state = run_epoch(mod, val_it, meter, False, stop)
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
                return 128 + stop.signum
    report.save("completed")
    return 0


def config_dict(args) -> dict:
    """The resolved flags as JSON-friendly values (for the report)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        out[k] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out

