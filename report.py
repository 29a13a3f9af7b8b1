"""The per-run JSON report (``--report``), written atomically after every epoch and at the end of the run.

It keeps the keys of NVIDIA's first ``report.py`` so that a tool written for NVIDIA's file reads ours, and adds what
that one lacked under new keys. Every field:

Top level
    ``model``           str    ``"resnet<depth>"`` (NVIDIA's key); ``"resnet50"`` by default
    ``ngpus``           int    number of devices of the run (NVIDIA's key; CPU devices count on a machine without GPU)
    ``total_duration``  float  seconds from the start of training (or scoring) to the last write
    ``cmd``             list   the command line (``sys.argv``)
    ``metrics``         dict   per-epoch lists, one entry per epoch (or per scoring pass with ``--only-inference``)
    ``schema``          str    ``"rn50-report/1"``: the version of this layout
    ``status``          str    ``running`` | ``completed`` (MLPerf mode: the target was reached) | ``interrupted``
                               (SIGINT/SIGTERM) | ``diverged`` (NaN/inf) | ``failed`` (a record that does not decode,
                               an output that cannot be written) | ``aborted`` (MLPerf mode: the epochs ran out first)
    ``error``           str    with ``failed``: the one-line reason the run printed
    ``device``          dict   ``{"type": "cpu"|"gpu", "count": n, "names": [...]}``
    ``dtype``           str    compute dtype: ``float32`` | ``float16`` | ``bfloat16``
    ``global_batch_size`` int  images per iteration over all devices and workers
    ``config``          dict   the resolved flags of the run
    ``versions``        dict   python, mxnet and (when used) DALI versions
    ``epochs``          list   the epoch number (0-based) of each entry of the per-epoch lists
    ``checkpoints``     list   checkpoint prefixes and epochs written, ``{"prefix", "epoch", "partial"}``
    ``resumed``         list   a resumed run: each resume, ``{"checkpoint", "epoch"}``; the per-epoch lists and
                               checkpoints before that epoch are the earlier run's (from the report it left)
    ``mlperf``          dict   MLPerf mode only: ``status`` (run_stop's: ``success`` | ``aborted``),
                               ``target_accuracy``, ``target_epoch`` (MLPerf's epoch number, from 1, of the
                               evaluation that reached it), ``time_to_target_s`` (run_start to run_stop, seconds,
                               on success), ``run_minutes``, ``init_start``/``run_start``/``run_stop`` (Unix
                               seconds), ``evals`` (``[{"epoch", "top1"}]``, top-1 as a fraction), ``best_accuracy``,
                               ``eval_period``, ``eval_offset``, ``division``, ``seed``
    ``dist``            dict   a job of several processes only: ``workers``, ``servers`` (0 for Horovod),
                               ``kv_store``, ``bytes_pushed_per_step`` / ``bytes_pulled_per_step`` (per worker: one
                               copy of every gradient each way), ``exchange_timed_every`` (one step in this many
                               times the gradient exchange alone), ``weight_checksums`` (per worker, rank order, at
                               the end), ``weights_identical``; when a process died, ``failure``:
                               ``{"process", "last_complete_checkpoint", "resume_from", "resume"}`` (the process and
                               its cause, the checkpoint ``--resume`` takes and the command), written by the runner

Metrics (lists; the first five keys of each split are NVIDIA's)
    ``train.top1``, ``train.top5``  percent, over the whole epoch (absent with ``--no-metrics``)
    ``train.loss``                  mean cross-entropy over the epoch (absent with ``--no-metrics``)
    ``train.time``                  seconds per iteration, data and compute, warmup iterations left out
    ``train.total_ips``             images per second over all devices and workers: global batch / ``train.time``
    ``train.data_time``             seconds per iteration spent waiting for the data iterator (same iterations)
    ``train.iters``                 iterations run in the epoch
    ``train.warmup_iters``          first iterations of the epoch left out of the timing: min(iters // 10, 100),
                                    at least 1 when there are 2 or more (fit.warmup_iters)
    ``train.lr``                    learning rate of the last iteration of the epoch
    ``train.loss_scale``            with ``--amp``: the dynamic loss scale at the end of the epoch
    ``train.amp_skipped``           with ``--amp``: updates skipped in the epoch (inf/NaN gradients)
    ``train.workers``               a job of several processes: per worker, in rank order, ``{"rank", "step_ms",
                                    "data_ms", "exchange_ms", "exchange_share", "exchange_samples"}``: the median
                                    step and data wait of the epoch (warmup left out), the median time of the
                                    gradient exchange alone (push + pull, or allreduce) over the steps that timed it,
                                    and its share of the step (the exchange keys are absent when no step timed it)
    ``val.top1``, ``val.top5``, ``val.loss``, ``val.time``, ``val.total_ips``, ``val.data_time``, ``val.iters``,
    ``val.warmup_iters``            the same for the validation pass (``val.total_ips`` counts real images only,
                                    not the padding of the last batch)
    ``val.latency_ms_avg``, ``val.latency_ms_p50``, ``_p90``, ``_p95``, ``_p99``, ``_p100``
                                    per-batch wall time of the validation pass (data + compute), milliseconds,
                                    warmup iterations left out
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Sequence

from common import write_json

SCHEMA = "rn50-report/1"
TRAIN_KEYS = ("top1", "top5", "loss", "time", "total_ips", "data_time", "iters", "warmup_iters", "lr", "loss_scale",
              "amp_skipped", "workers")
VAL_KEYS = ("top1", "top5", "loss", "time", "total_ips", "data_time", "iters", "warmup_iters", "latency_ms_avg",
            "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "latency_ms_p100")
STATUSES = ("running", "completed", "interrupted", "diverged", "failed", "aborted")


class Report:
    """Collects the run's numbers and writes them to ``path`` (atomically) whenever ``save`` is called."""

    def __init__(self, path: Path | None, *, num_layers: int, device_type: str, device_names: Sequence[str],
                 dtype: str, global_batch_size: int, config: dict, cmd: Sequence[str] | None = None):
        self.path = Path(path) if path else None
        self._t0 = time.perf_counter()
        versions = {"python": platform.python_version()}
        for mod in ("mxnet", "nvidia.dali"):
            if mod in sys.modules:
                versions[mod.split(".")[-1]] = getattr(sys.modules[mod], "__version__", "?")
        self.data = {
            "model": f"resnet{num_layers}", "ngpus": len(device_names), "total_duration": 0.0,
            "cmd": list(cmd if cmd is not None else sys.argv), "metrics": {},
            "schema": SCHEMA, "status": "running",
            "device": {"type": device_type, "count": len(device_names), "names": list(device_names)},
            "dtype": dtype, "global_batch_size": global_batch_size, "config": config, "versions": versions,
            "epochs": [], "checkpoints": [],
        }

    def add_epoch(self, epoch: int, train: dict | None = None, val: dict | None = None) -> None:
        """Append one epoch's train and/or val numbers (keys as in ``TRAIN_KEYS`` / ``VAL_KEYS``)."""
        self.data["epochs"].append(epoch)
        for split, values, keys in (("train", train, TRAIN_KEYS), ("val", val, VAL_KEYS)):
            for key, value in (values or {}).items():
                if key not in keys:
                    raise KeyError(f"{split}.{key} is not a report field")
                self.data["metrics"].setdefault(f"{split}.{key}", []).append(value)

    def keep_history(self, before_epoch: int, checkpoint_name: str) -> None:
        """A resumed run: the per-epoch lists and checkpoints of the epochs before ``before_epoch`` are taken from
        the report already at ``path`` (the run that wrote the checkpoint resumed from), and ``resumed`` records
        the checkpoint. A missing or unreadable report, or one of another layout, is left as it was."""
        import json

        resumed = {"checkpoint": checkpoint_name, "epoch": before_epoch}
        self.data.setdefault("resumed", []).append(resumed)
        if self.path is None or not self.path.is_file():
            return
        try:
            old = json.loads(self.path.read_text())
            epochs = [e for e in old["epochs"] if e < before_epoch]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if old.get("schema") != SCHEMA or epochs != old["epochs"][:len(epochs)]:
            return
        keep = len(epochs)
        self.data["epochs"] = epochs
        # train.* has an entry per epoch; val.* may lack the last kept epoch's (a signal during its validation)
        self.data["metrics"] = {k: v[:keep] for k, v in old.get("metrics", {}).items() if v[:keep]}
        self.data["checkpoints"] = [c for c in old.get("checkpoints", []) if c.get("epoch", 0) <= before_epoch]
        self.data["resumed"] = old.get("resumed", []) + [resumed]

    def add_checkpoint(self, prefix: str, epoch: int, partial: bool) -> None:
        self.data["checkpoints"].append({"prefix": prefix, "epoch": epoch, "partial": partial})

    def set_dist(self, workers: int, servers: int, kv_store: str) -> None:
        """A distributed job (``./runner --workers``): its processes; ``global_batch_size`` and the img/s are of all
        the workers, ``device`` is one worker's."""
        self.data["dist"] = {"workers": workers, "servers": servers, "kv_store": kv_store}
        self.data["global_batch_size"] = self.data["global_batch_size"] * workers

    def set_dist_exchange(self, bytes_per_step: int, every: int) -> None:
        """What one step exchanges per worker (pushed, and pulled back, or allreduced), and how often the exchange
        is timed alone (each epoch's ``train.workers`` hold the times)."""
        self.data["dist"]["bytes_pushed_per_step"] = self.data["dist"]["bytes_pulled_per_step"] = bytes_per_step
        self.data["dist"]["exchange_timed_every"] = every

    def set_dist_checksums(self, checksums: list[float]) -> None:
        """Each worker's checksum of its weights at the end (rank order), and whether they are all equal."""
        self.data["dist"]["weight_checksums"] = checksums
        self.data["dist"]["weights_identical"] = len(set(checksums)) == 1

    def set_mlperf(self, summary: dict) -> None:
        """MLPerf mode: the run's clock, target and status (``mlperf.MLPerfRun.summary``)."""
        self.data["mlperf"] = summary

    def save(self, status: str | None = None, error: str | None = None) -> None:
        """Write the report (atomically); a full disk raises ``common.OutputError``."""
        if status is not None:
            assert status in STATUSES, status
            self.data["status"] = status
        if error is not None:
            self.data["error"] = error
        self.data["total_duration"] = round(time.perf_counter() - self._t0, 3)
        if self.path is not None:
            write_json(self.path, self.data, "writing the report")
