"""What a worker of a job of several processes does: MXNet's parameter server (ps-lite, kvstore ``dist_sync``) or
Horovod. The job is started and supervised by ``launcher.py``.

* ``MXNET_UPDATE_ON_KVSTORE=0``: the servers only sum the gradients; every worker runs the optimizer itself on the
  summed gradients, so every worker holds the optimizer state (momentum) and rank 0 can checkpoint it, which MXNet
  refuses when the servers hold it (``save_optimizer_states``: "Cannot save states for distributed training").
  Module then does not pull the initial weights, so ``broadcast_params`` gives every worker rank 0's.
* Ranks come from the scheduler (sorted by address, not launch order); each worker writes its rank to the job
  folder (``RN50_DIST_DIR``) or, over ssh, says it in one line, so that the launcher can name it.
* Every step exchanges the gradients first and queues the optimizer only once the exchange is complete
  (``StepTimer``), so a worker's weights and optimizer state are always those after a whole step, even while it
  waits forever on a worker that died. ``LostGuard`` lets rank 0 save them then, when the launcher says so.
* A worker that fails exits at once (``hard_exit``) instead of waiting in the kvstore's exit barrier; a worker that
  succeeds leaves normally, which is what stops the servers and the scheduler.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

# the launcher's word to rank 0 that another process of the job died: SIGUSR1 on one host, SIGQUIT over ssh (Ctrl-\
# typed into rank 0's terminal)
LOST_SIGNALS = (signal.SIGUSR1, signal.SIGQUIT)


# --- worker side ---------------------------------------------------------------------------------------------------

def in_worker() -> bool:
    """Whether this process is a worker of a distributed job (the launcher set ``DMLC_ROLE``, or Horovod's launcher
    ``HOROVOD_RANK``)."""
    return os.environ.get("DMLC_ROLE") == "worker" or "HOROVOD_RANK" in os.environ


class HorovodComm:
    """A Horovod job's worker, in the kvstore's terms the rest of the toolkit uses (``rank``, ``num_workers``,
    ``type``): gradients are averaged by allreduce inside the optimizer (``hvd.DistributedOptimizer``), so Module
    gets no kvstore at all."""

    type = "horovod"

    def __init__(self):
        import horovod.mxnet as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.num_workers, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def optimizer(self, opt):
        """``opt`` wrapped so that its updates average the gradients over the workers first."""
        return _distributed_optimizer(self.hvd)(opt)

    def allreduce(self, arr, name: str):
        return self.hvd.allreduce(arr, average=False, name=name)


def _distributed_optimizer(hvd):
    class Distributed(hvd.DistributedOptimizer):
        """Horovod's optimizer, with the allreduce skipped on a step whose gradients ``exchange`` already averaged
        (the step's exchange is then timed alone)."""

        exchanged = False

        def _do_allreduce(self, index, grad):
            if not self.exchanged:
                super()._do_allreduce(index, grad)

    return Distributed


def create_kvstore(kind: str = "dist_sync"):
    """The job's kvstore (blocks until every process of the job has registered with the scheduler), or a Horovod
    job's ``HorovodComm``; the worker's rank is written where the launcher looks for it."""
    import mxnet as mx

    kv = HorovodComm() if kind == "horovod" else mx.kv.create(kind)
    _KEEP.append(kv)  # see release()
    folder, index = os.environ.get("RN50_DIST_DIR"), os.environ.get("RN50_DIST_INDEX")
    if folder and index is not None:
        path = Path(folder) / f"rank-{index}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(kv.rank))
        os.replace(tmp, path)
    else:  # over ssh: the launcher reads the rank from this line
        print(f"[rank {kv.rank}] registered with the job ({kv.num_workers} workers)", file=sys.stderr, flush=True)
    return kv


_KEEP: list = []


def release() -> None:
    """Free the kvstore, after a run that succeeded: its destructor waits in the exit barrier for every worker, and
    rank 0's then stops the servers and the scheduler. Until then the kvstore is kept here, so that a run that fails
    never frees it on the way out (it would wait there forever) and ``hard_exit`` leaves without it."""
    import gc

    _KEEP.clear()
    gc.collect()


def label_logs(rank: int) -> None:
    """Every log line of a worker says its rank; ranks other than 0 log warnings and errors only (rank 0 speaks for
    the job: the workers train in lockstep)."""
    root = logging.getLogger()
    for h in root.handlers:
        fmt = h.formatter._fmt if h.formatter is not None else "%(message)s"
        h.setFormatter(logging.Formatter(fmt.replace("%(levelname)s", f"[rank {rank}] %(levelname)s", 1)))
    if rank != 0:
        root.setLevel(logging.WARNING)


def broadcast_params(kv, mod) -> None:
    """Every worker takes rank 0's parameters and batchnorm statistics (``MXNET_UPDATE_ON_KVSTORE=0``: Module
    initializes the kvstore without pulling them back; Horovod has no kvstore)."""
    args, auxs = mod.get_params()
    for prefix, params in (("bcast_arg_", args), ("bcast_aux_", auxs)):
        for name in sorted(params):
            if isinstance(kv, HorovodComm):
                kv.hvd.broadcast_(params[name], root_rank=0, name=prefix + name)
            else:
                kv.broadcast(prefix + name, params[name], out=params[name])
    mod.set_params(args, auxs, allow_missing=False, force_init=True)


_SUM_KEYS: set[str] = set()


def allreduce_sum(kv, key: str, values: list[float]) -> list[float]:
    """The sum over all workers of ``values`` (float64 on the way: counts of up to 2^53 stay exact)."""
    import mxnet as mx

    arr = mx.nd.array(values, dtype="float64")
    name = "sum_" + key
    with GUARD.waiting():
        if isinstance(kv, HorovodComm):
            return [float(v) for v in kv.allreduce(arr, name).asnumpy()]
        if name not in _SUM_KEYS:
            kv.init(name, mx.nd.zeros(arr.shape, dtype="float64"))
            _SUM_KEYS.add(name)
        out = mx.nd.zeros(arr.shape, dtype="float64")
        kv.push(name, arr)
        kv.pull(name, out=out)
        return [float(v) for v in out.asnumpy()]


def average_aux(kv, mod) -> dict:
    """The batchnorm statistics averaged over the workers (every worker calls it). Each worker keeps its own, as
    each device of one process does; a checkpoint holds their average, as ``Module.get_params`` averages the
    devices'."""
    import mxnet as mx

    _, auxs = mod.get_params()
    out = {}
    with GUARD.waiting():
        for name in sorted(auxs):
            key = "avg_aux_" + name
            if isinstance(kv, HorovodComm):
                out[name] = kv.allreduce(auxs[name], key) / kv.num_workers
                continue
            if key not in _SUM_KEYS:
                kv.init(key, mx.nd.zeros(auxs[name].shape, dtype=auxs[name].dtype))
                _SUM_KEYS.add(key)
            total = mx.nd.zeros(auxs[name].shape, dtype=auxs[name].dtype)
            kv.push(key, auxs[name])
            kv.pull(key, out=total)
            out[name] = total / kv.num_workers
        mx.nd.waitall()
    return out


def weight_checksums(kv, mod) -> list[float]:
    """Each worker's checksum of its parameters, in rank order: equal when the workers hold the same weights (a
    float64 sum over every value, weighted by its position, and of the squares). Batchnorm statistics are left out:
    each worker's are its own, as each device's are in one process."""
    import numpy as np

    args, _ = mod.get_params()
    total = 0.0
    for name in sorted(args):
        w = args[name].asnumpy().astype(np.float64).ravel()
        total += float(w @ (1.0 + (np.arange(w.size) % 7) / 7.0) + w @ w)
    return allreduce_sum(kv, "checksums", [total if r == kv.rank else 0.0 for r in range(kv.num_workers)])


EXCHANGE_EVERY = 20  # one step in this many times its gradient exchange alone (synchronized: no overlap)


class StepTimer:
    """``Module.update`` for a distributed job, in two phases: the gradient exchange (push + pull of every gradient,
    or Horovod's allreduce) is queued and waited for, and only then the optimizer. The exchange still overlaps the
    backward pass (MXNet's engine pushes each gradient as soon as it is computed); only the optimizer no longer
    overlaps the last pulls. In exchange a worker's weights and optimizer state are always those after a whole
    step, also while it waits forever on a worker that died (``LostGuard`` saves them then).

    One step in ``EXCHANGE_EVERY``, from an epoch's third on, also times the exchange alone: it waits for the
    backward pass first. ``bytes`` is what one step pushes (and pulls back) per worker: one copy of every
    gradient."""

    def __init__(self, kv, mod):
        import numpy as np

        self.kv, self.mod = kv, mod
        self.calls, self.times = 0, []
        group = mod._exec_group
        self.bytes = sum(g[0].size * np.dtype(g[0].dtype).itemsize for g in group.grad_arrays if g[0] is not None)

    def update(self) -> None:
        import mxnet as mx

        self.calls += 1
        timed = self.calls >= 3 and (self.calls - 3) % EXCHANGE_EVERY == 0
        if timed:
            mx.nd.waitall()
        t0 = time.perf_counter()
        self._exchange()
        with GUARD.waiting():
            for grads in self.mod._exec_group.grad_arrays:
                if grads[0] is not None:
                    grads[0].wait_to_read()
        if timed:
            self.times.append(time.perf_counter() - t0)
        self._optimize()

    def _exchange(self) -> None:
        group = self.mod._exec_group
        for i, (name, grads) in enumerate(zip(group.param_names, group.grad_arrays)):
            if grads[0] is None:
                continue
            if isinstance(self.kv, HorovodComm):
                self.mod._optimizer._do_allreduce(i, grads[0])  # one device per process
            else:  # what Module.update does with the kvstore (mxnet.model._update_params)
                self.kv.pushpull(name, grads, priority=-i)

    def _optimize(self) -> None:
        from mxnet.model import _update_params

        mod = self.mod
        horovod = isinstance(self.kv, HorovodComm)
        if horovod:
            mod._optimizer.exchanged = True  # the gradients are averaged already
        try:
            _update_params(mod._exec_group.param_arrays, mod._exec_group.grad_arrays, updater=mod._updater,
                           num_device=len(mod._context), kvstore=None)
        finally:
            if horovod:
                mod._optimizer.exchanged = False
        mod._params_dirty = True


class LostGuard:
    """Rank 0's answer when another process of its job dies (the launcher's ``LOST_SIGNALS``).

    The main thread holds ``busy`` while it works and lets go of it only while it waits on the other workers
    (``waiting``: a gradient exchange, a sum over the workers), where its weights and optimizer state are those of
    a whole step and a dead worker leaves it waiting forever. A thread of its own sees the signal at once (through
    ``signal.set_wakeup_fd``, while the main thread is blocked inside MXNet), takes ``busy``, so it runs only at
    such a point, calls ``on_lost`` (a checkpoint and the report) and ends the process with its exit status. A
    Horovod job's allreduce fails instead of waiting: ``waiting`` then calls ``on_lost`` in the main thread. Off
    (the default, and in one process) it does nothing."""

    def __init__(self):
        self.busy = threading.Lock()
        self.on_lost: Callable[[], int] | None = None

    def start(self, on_lost: Callable[[], int]) -> None:
        """Arm the guard (rank 0, main thread): ``on_lost()`` returns the exit status."""
        self.on_lost = on_lost
        self.busy.acquire()
        r, w = os.pipe()
        os.set_blocking(w, False)
        for sig in LOST_SIGNALS:
            signal.signal(sig, lambda signum, frame: None)  # Python's handler only queues; the thread acts
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wake = w
        threading.Thread(target=self._watch, args=(r,), name="lost-worker-guard", daemon=True).start()

    def stop(self) -> None:
        """Disarm the guard (the run is over: nothing more to save); its thread ends."""
        if self.on_lost is None:
            return
        self.on_lost = None
        signal.set_wakeup_fd(-1)
        for sig in LOST_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.write(self._wake, b"\0")
        self.busy.release()

    def _watch(self, fd: int) -> None:
        lost = {int(s) for s in LOST_SIGNALS}
        while True:
            select.select([fd], [], [])
            got = set(os.read(fd, 64))
            if 0 in got:
                os.close(fd)
                return
            if lost & got:
                break
        log.warning("another process of the job died (the launcher says); saving what can be resumed")
        with self.busy:  # the main thread waits on the dead worker (or will, within a step)
            hard_exit(self._call())

    def _call(self) -> int:
        try:
            return self.on_lost()
        except Exception as err:  # an OutputError (a full disk), or anything else: the exit status says failed
            from common import last_line

            log.error("saving after the lost worker failed: %s", last_line(err))
            return getattr(err, "exit_status", 1)

    @contextlib.contextmanager
    def waiting(self):
        """Around a wait on the other workers: the guard may act while the main thread is in it."""
        if self.on_lost is None:
            yield
            return
        self.busy.release()
        try:
            yield
        except Exception as err:
            if not _lost_peer(err):
                self.busy.acquire()
                raise
            log.warning("the job lost a process: %s", str(err).strip().splitlines()[0])
            self.busy.acquire()
            hard_exit(self._call())
        self.busy.acquire()


def _lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a Horovod collective that failed because a peer is gone."""
    text = str(err)
    return type(err).__name__ in ("MXNetError", "HorovodInternalError") and (
        "Horovod" in text or "Gloo" in text or "Connection reset" in text or "Connection closed" in text)


GUARD = LostGuard()


def per_worker(kv, values: list[float]) -> list[list[float]]:
    """Every worker's ``values`` (the same count on each), in rank order; every worker calls it."""
    n = len(values)
    slots = [0.0] * (n * kv.num_workers)
    slots[kv.rank * n:(kv.rank + 1) * n] = values
    flat = allreduce_sum(kv, f"per_worker_{n}", slots)
    return [flat[r * n:(r + 1) * n] for r in range(kv.num_workers)]


class Solo:
    """The job of a run in one process, with the interface of ``Workers``: one worker, rank 0, nothing to exchange,
    nothing to guard; the loop calls it as it calls a job of several processes."""

    rank, num_workers, type = 0, 1, "local"
    summed = 1  # workers whose gradients are summed (the optimizer divides by them)

    def module_kvstore(self, kind: str, num_devices: int):
        """What Module gets as its kvstore: the devices' reduction (``--kv-store``) with several devices."""
        import mxnet as mx

        return mx.kvstore.create(kind) if num_devices > 1 else None

    def broadcast(self, mod) -> None:
        pass

    def updater(self, mod, report):
        return mod.update

    def sum(self, key: str, values: list[float]) -> list[float]:
        return list(values)

    def checkpoint_aux(self, mod):
        """The batchnorm statistics a checkpoint holds: None, the module's own."""
        return None

    def epoch_times(self, meter, warm: int) -> list[dict] | None:
        return None

    def guard(self, on_lost) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def finish(self, mod, report) -> None:
        pass


class Workers(Solo):
    """A job of several processes, as the training loop sees it: ``kv`` is the kvstore (``dist_sync``) or a
    ``HorovodComm``; every worker starts from rank 0's weights, the gradients are summed over the workers (averaged
    by Horovod), each validation pass is summed over them, rank 0 alone writes, and a lost worker is answered
    (``LostGuard``)."""

    def __init__(self, kv):
        self.kv, self.rank, self.num_workers, self.type = kv, kv.rank, kv.num_workers, kv.type
        self.summed = 1 if kv.type == "horovod" else kv.num_workers
        self.timer: StepTimer | None = None

    def module_kvstore(self, kind: str, num_devices: int):
        return None if self.type == "horovod" else self.kv

    def broadcast(self, mod) -> None:
        broadcast_params(self.kv, mod)

    def updater(self, mod, report):
        self.timer = StepTimer(self.kv, mod)
        report.set_dist_exchange(self.timer.bytes, EXCHANGE_EVERY)
        return self.timer.update

    def sum(self, key: str, values: list[float]) -> list[float]:
        return allreduce_sum(self.kv, key, values)

    def checkpoint_aux(self, mod):
        return average_aux(self.kv, mod)

    def epoch_times(self, meter, warm: int) -> list[dict] | None:
        """Each worker's median step, data wait and gradient exchange of the epoch, its first ``warm`` iterations
        left out (every worker calls it)."""
        return worker_times(self.kv, meter, self.timer, warm)

    @contextlib.contextmanager
    def guard(self, on_lost):
        """Rank 0 answers a lost worker with ``on_lost`` while the block runs (``LostGuard``)."""
        if self.rank == 0:
            GUARD.start(on_lost)
        try:
            yield
        finally:
            GUARD.stop()

    def finish(self, mod, report) -> None:
        """Data parallelism's promise, checked: every worker ends with the same weights."""
        sums = weight_checksums(self.kv, mod)
        report.set_dist_checksums(sums)
        if len(set(sums)) == 1:
            log.info("the %d workers hold the same weights (checksum %.17g)", len(sums), sums[0])
        else:
            log.warning("the workers' weights differ: checksums %s", ", ".join(f"{c:.17g}" for c in sums))


def worker_times(kv, meter, timer: StepTimer, warm: int) -> list[dict]:
    """Each worker's median step, data wait and gradient exchange times of the epoch, in milliseconds and rank
    order (the first ``warm`` iterations left out, as from img/s); the exchange's share of the step. Resets the
    timer for the next epoch (whose third step is timed first)."""
    import numpy as np

    kept = meter.times[warm:] or meter.times
    mine = [float(np.median(kept)) if kept else float("nan"),
            float(np.median(meter.data_times[warm:] or meter.data_times)) if kept else float("nan"),
            float(np.median(timer.times)) if timer.times else float("nan"), float(len(timer.times))]
    timer.times, timer.calls = [], 0
    out = []
    for rank, (step, data_wait, exchange, samples) in enumerate(per_worker(kv, mine)):
        entry = {"rank": rank, "step_ms": step * 1e3, "data_ms": data_wait * 1e3}
        if samples:
            entry.update(exchange_ms=exchange * 1e3, exchange_share=exchange / step if step > 0 else None,
                         exchange_samples=int(samples))
        out.append(entry)
    log.info("workers' median step: %s", "; ".join(
        f"rank {w['rank']} {w['step_ms']:.1f} ms" + (f" (gradient exchange {w['exchange_ms']:.1f} ms, "
                                                     f"{100 * w['exchange_share']:.1f}%)"
                                                     if "exchange_ms" in w and w["exchange_share"] else "")
        for w in out))
    return out


def hard_exit(code: int) -> None:
    """Leave now with ``code``: a failing worker would otherwise block in the kvstore's exit barrier, waiting for
    workers that wait for it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
