"""MLPerf Training mode (``--mlperf``): ResNet-50 v1.5 trained to a quality target, logged as MLPerf's rules ask.

The only module that imports ``mlperf_logging``. ``fit.py`` calls an ``MLPerfRun`` at the run's events (it knows
nothing of MLPerf's key names); this module owns:

* the flags (``add_mlperf_args``) and their frozen config (``MLPerfConfig``);
* the closed-division rules (``check_rules``): checked before any work, a usage error in the closed division and a
  warning in the open one, naming the value and the rule;
* the evaluation cadence: every ``--eval-period`` epochs at ``--eval-offset`` (0-based epoch ``e`` is evaluated when
  ``e % period == offset``; MLPerf numbers epochs from 1, so the log says ``epoch_num = e + 1``), always over the
  whole validation set;
* the target: the run stops at the first evaluation whose top-1 reaches ``--target-accuracy`` (``run_stop`` status
  ``success``); when the epochs run out first, ``run_stop`` says ``aborted`` and the process exits with
  ``EXIT_ABORTED`` (6);
* the MLPerf log (``:::MLLOG`` lines through ``mllog``) on stdout and in ``--mlperf-log FILE``, written under a
  temporary name and renamed when the run ends (a killed run leaves no half log under FILE): every key that ruleset
  4.0.0 requires of a ResNet run, the optimizer's keys, and the run's integer seed;
* the clock as the rules set it: ``init_start`` when the process starts; model build, bind, parameter
  initialization and a warm-up step before ``init_stop``/``run_start``; the data pipelines (and the check of every
  record index) after ``run_start``; evaluation time counted; ``run_stop`` as soon as the target is seen.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import EXIT_ABORTED, UsageError, finite_float, path_arg

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
CLOSED_TARGET = 0.759  # top-1 on the ImageNet validation set, MLPerf v0.6-v4.0
CLOSED_EVAL_PERIOD = 4
POLY_END_LR = 1e-4  # closed division: polynomial decay (power 2) to this learning rate
POLY_POWER = 2
LARS_ETA = 0.001  # NVIDIA's and the reference's trust coefficient
LARS_EPSILON = 0.0
BIG_BATCH = 32768  # below this global batch the closed division fixes momentum at 0.9
DIVISIONS = ("closed", "open")
STATUSES = ("onprem", "cloud", "research", "preview")


def add_mlperf_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("MLPerf", "time to a quality target with an MLPerf log (--mlperf)")
    g.add_argument("--mlperf", action="store_true",
                   help="MLPerf Training mode: evaluate every --eval-period epochs on the whole val set, stop at "
                        "--target-accuracy (exit 0) or when the epochs run out (exit 6), write the MLPerf log; "
                        "--optimizer defaults to lars and --lr-schedule to poly")
    g.add_argument("--target-accuracy", type=finite_float, default=None,
                   help=f"val top-1 (a fraction in (0, 1]) that ends the run (default in MLPerf mode: "
                        f"{CLOSED_TARGET}, the closed division's)")
    g.add_argument("--eval-period", type=int, default=CLOSED_EVAL_PERIOD, help="evaluate every N epochs")
    g.add_argument("--eval-offset", type=int, default=0,
                   help="0..period-1: 0-based epoch e is evaluated when e %% period == offset (NVIDIA: 2)")
    g.add_argument("--mlperf-log", type=path_arg, default=None,
                   help="write the :::MLLOG lines to this file as well as to stdout (MLPerf's result_N.txt)")
    g.add_argument("--submission-org", default="rn50-toolkit", help="submission_org of the log")
    g.add_argument("--submission-platform", default=None,
                   help="submission_platform of the log (default: <devices>x<device or CPU model>)")
    g.add_argument("--submission-division", choices=DIVISIONS, default="closed",
                   help="closed: the closed-division rules are errors; open: warnings")
    g.add_argument("--submission-status", choices=STATUSES, default="onprem", help="submission_status of the log")
    g.add_argument("--drop-caches", action="store_true",
                   help="drop the page cache before the run (needs root; the log's cache_clear says whether it "
                        "was dropped)")
    return g


@dataclass(frozen=True)
class MLPerfConfig:
    """The MLPerf flags (field names are the flags' names), checked when made."""
    mlperf: bool = False
    target_accuracy: float | None = None
    eval_period: int = CLOSED_EVAL_PERIOD
    eval_offset: int = 0
    mlperf_log: Path | None = None
    submission_org: str = "rn50-toolkit"
    submission_platform: str | None = None
    submission_division: str = "closed"
    submission_status: str = "onprem"
    drop_caches: bool = False

    def __post_init__(self):
        if not self.mlperf:
            given = [flag for flag, on in (("--target-accuracy", self.target_accuracy is not None),
                                           ("--mlperf-log", self.mlperf_log is not None),
                                           ("--drop-caches", self.drop_caches)) if on]
            if given:
                raise UsageError(f"{given[0]} is an MLPerf-mode flag: add --mlperf")
            return
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise UsageError(f"--target-accuracy {self.target_accuracy:g}: must be a fraction in (0, 1] (top-1 "
                             f"of 75.9% is {CLOSED_TARGET})")
        if self.eval_period < 1:
            raise UsageError(f"--eval-period {self.eval_period}: must be at least 1")
        if not 0 <= self.eval_offset < self.eval_period:
            raise UsageError(f"--eval-offset {self.eval_offset}: must be in [0, {self.eval_period}) for "
                             f"--eval-period {self.eval_period}")
        for flag, v in (("--submission-org", self.submission_org),
                        ("--submission-platform", self.submission_platform)):
            if v is not None and not v.strip():
                raise UsageError(f"{flag}: must not be empty")
        if self.submission_division not in DIVISIONS:
            raise UsageError(f"--submission-division {self.submission_division}: choose {' or '.join(DIVISIONS)}")
        if self.submission_status not in STATUSES:
            raise UsageError(f"--submission-status {self.submission_status}: choose one of {', '.join(STATUSES)}")

    @property
    def target(self) -> float:
        return CLOSED_TARGET if self.target_accuracy is None else self.target_accuracy

    def evaluates(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` ends with an evaluation."""
        return epoch % self.eval_period == self.eval_offset


@dataclass(frozen=True)
class Recipe:
    """What the closed-division rules constrain, as the run will use it."""
    optimizer: str
    lr: float  # for the global batch
    lr_schedule: str
    warmup_epochs: float
    decay_epochs: float
    wd: float
    mom: float
    label_smoothing: float
    global_batch: int
    num_classes: int
    num_epochs: int
    lars_eta: float = LARS_ETA
    all_training_data: bool = True  # no --num-examples cut


def _power_of_two_times(v: float, base: float = 1e-4) -> bool:
    if v <= 0:
        return False
    n = math.log2(v / base)
    return abs(n - round(n)) < 1e-5


def rule_violations(m: MLPerfConfig, r: Recipe) -> list[str]:
    """The closed-division rules ``r`` and ``m`` break, each as "the value: the rule"."""
    out = []
    if m.target < CLOSED_TARGET:
        out.append(f"--target-accuracy {m.target:g}: the closed division's target is {CLOSED_TARGET}")
    if m.eval_period != CLOSED_EVAL_PERIOD:
        out.append(f"--eval-period {m.eval_period}: the closed division evaluates every {CLOSED_EVAL_PERIOD} epochs "
                   f"(offset 0-{CLOSED_EVAL_PERIOD - 1})")
    if r.num_classes not in (1000, 1001):
        out.append(f"--num-classes {r.num_classes}: the closed division trains on ImageNet (1000 or 1001 classes)")
    if not r.all_training_data:
        out.append("--num-examples: every epoch must go over all the training data")
    if r.lr_schedule != "poly":
        out.append(f"--lr-schedule {r.lr_schedule}: the closed division decays polynomially (power {POLY_POWER}) to "
                   f"{POLY_END_LR:g} (--lr-schedule poly)")
    if r.label_smoothing not in (0.0, 0.1):
        out.append(f"--label-smoothing {r.label_smoothing:g}: must be 0 or 0.1")
    if not _power_of_two_times(r.wd):
        out.append(f"--wd {r.wd:g}: must be 1e-4 x 2^N for an integer N (e.g. 5e-05, 0.0001, 0.0002)")
    if r.optimizer == "lars":
        if r.global_batch < BIG_BATCH and r.mom != 0.9:
            out.append(f"--mom {r.mom:g}: LARS momentum must be 0.9 below a global batch of {BIG_BATCH}")
        if r.lars_eta != LARS_ETA:
            out.append(f"--lars-eta {r.lars_eta:g}: fixed at {LARS_ETA} by the reference")
    elif r.optimizer == "sgd":
        if r.mom != 0.9:
            out.append(f"--mom {r.mom:g}: SGD momentum must be 0.9")
        if abs(r.lr / 0.001 - round(r.lr / 0.001)) > 1e-6:
            out.append(f"learning rate {r.lr:g} for the global batch: SGD's base LR must be a multiple of 0.001 "
                       "(give it with the runner's --global-lr)")
        if r.warmup_epochs != int(r.warmup_epochs):
            out.append(f"--warmup-epochs {r.warmup_epochs:g}: SGD's warmup must be a whole number of epochs")
        if r.decay_epochs != int(r.decay_epochs):
            out.append(f"--lr-decay-epochs {r.decay_epochs:g}: SGD's decay must be a whole number of epochs")
    else:
        out.append(f"--optimizer {r.optimizer}: MLPerf's ResNet allows lars or sgd")
    return out


def check_rules(m: MLPerfConfig, r: Recipe) -> None:
    """Closed division: a ``UsageError`` listing every broken rule. Open: one warning per rule."""
    broken = rule_violations(m, r)
    if not broken:
        return
    if m.submission_division == "closed":
        raise UsageError("the closed division's rules are broken: " + "; ".join(broken) +
                         " (or use --submission-division open)")
    for b in broken:
        log.warning("open division: %s", b)


def drop_page_cache() -> tuple[bool, str]:
    """Flush and drop the page cache (as MLPerf's run scripts do with root). (dropped, why not)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True, ""
    except OSError as err:
        return False, f"{err.strerror or err} (needs root and a writable /proc/sys)"


class MLPerfRun:
    """The MLPerf log of one run and its events. ``fit.py`` calls the methods below; ``status``/``target_epoch``
    and ``times`` hold what the report records."""

    def __init__(self, cfg: MLPerfConfig, seed: int, platform: str):
        from mlperf_logging.mllog.mllog import MLLogger
        from mlperf_logging.mllog import constants

        self.cfg, self.seed, self.c = cfg, seed, constants
        self.logger = logging.getLogger("rn50.mllog")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
        self.logger.addHandler(logging.StreamHandler(sys.stdout))
        self._tmp = None
        if cfg.mlperf_log is not None:
            path = Path(cfg.mlperf_log)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = path.with_name(f".{path.name}.tmp")
            self._file = logging.FileHandler(self._tmp, mode="w")
            self.logger.addHandler(self._file)
        self.ml = MLLogger(logger=self.logger, root_dir=re.escape(str(ROOT)), default_stack_offset=1)
        self.status: str | None = None
        self.target_epoch: int | None = None
        self.best: float | None = None
        self.evals: list[tuple[int, float]] = []  # (MLPerf epoch number, top-1 fraction)
        self.times: dict[str, float] = {}
        self._block_first = None
        self.platform = cfg.submission_platform or platform

    # the log -----------------------------------------------------------------------------------------------------

    def _event(self, key, value=None, metadata=None):
        self.ml.event(key=key, value=value, metadata=metadata, stack_offset=2)

    def _start(self, key, value=None, metadata=None):
        self.ml.start(key=key, value=value, metadata=metadata, stack_offset=2)

    def _end(self, key, value=None, metadata=None):
        self.ml.end(key=key, value=value, metadata=metadata, stack_offset=2)

    def begin(self) -> None:
        """At process start (off the clock): the page cache, ``init_start``, the submission keys and the seed."""
        c, cfg = self.c, self.cfg
        dropped = False
        if cfg.drop_caches:
            dropped, why = drop_page_cache()
            if not dropped:
                log.warning("--drop-caches: the page cache could not be dropped: %s; cache_clear is logged as "
                            "false", why)
        else:
            log.info("MLPerf: the page cache is not dropped (--drop-caches does it, as root); cache_clear is "
                     "logged as false")
        self._event(c.CACHE_CLEAR, value=dropped)
        self._start(c.INIT_START)
        self.times["init_start"] = time.time()
        self._event(c.SUBMISSION_BENCHMARK, value=c.RESNET)
        self._event(c.SUBMISSION_ORG, value=cfg.submission_org)
        self._event(c.SUBMISSION_DIVISION, value=cfg.submission_division)
        self._event(c.SUBMISSION_STATUS, value=cfg.submission_status)
        self._event(c.SUBMISSION_PLATFORM, value=self.platform)
        self._event(c.SEED, value=int(self.seed))

    def hyperparameters(self, r: Recipe, decay_steps: int | None = None) -> None:
        """The global batch and the optimizer's keys (the ruleset's names for ``r.optimizer``)."""
        c = self.c
        self._event(c.GLOBAL_BATCH_SIZE, value=r.global_batch)
        self._event(c.GRADIENT_ACCUMULATION_STEPS, value=1)
        self._event(c.OPT_NAME, value=r.optimizer)
        if r.optimizer == "lars":
            self._event(c.LARS_EPSILON, value=LARS_EPSILON)
            self._event(c.LARS_OPT_WEIGHT_DECAY, value=r.wd)
            self._event(c.LARS_OPT_MOMENTUM, value=r.mom)
            self._event(c.LARS_OPT_BASE_LEARNING_RATE, value=r.lr)
            self._event(c.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, value=r.warmup_epochs)
            self._event(c.LARS_OPT_END_LR, value=POLY_END_LR)
            self._event(c.LARS_OPT_LR_DECAY_POLY_POWER, value=POLY_POWER)
            self._event(c.LARS_OPT_LR_DECAY_STEPS, value=r.decay_epochs)
        else:
            self._event("sgd_opt_base_learning_rate", value=r.lr)
            self._event("sgd_opt_end_learning_rate", value=POLY_END_LR)
            self._event("sgd_opt_learning_rate_decay_poly_power", value=POLY_POWER)
            self._event("sgd_opt_learning_rate_decay_steps", value=decay_steps if decay_steps is not None
                        else r.decay_epochs)
            self._event("sgd_opt_weight_decay", value=r.wd)
            self._event("sgd_opt_momentum", value=r.mom)
            self._event(c.MODEL_BN_SPAN, value=r.global_batch)
            self._event(c.OPT_LR_WARMUP_EPOCHS, value=r.warmup_epochs)
        self._event("label_smoothing", value=r.label_smoothing)

    # events called by fit.py ------------------------------------------------------------------------------------

    def init_done(self) -> None:
        """The model is built, bound, initialized and warmed up: ``init_stop``, then the clock starts."""
        self._end(self.c.INIT_STOP)
        self._start(self.c.RUN_START)
        self.times["run_start"] = time.time()

    def data_ready(self, train_samples: int, eval_samples: int) -> None:
        self._event(self.c.TRAIN_SAMPLES, value=int(train_samples))
        self._event(self.c.EVAL_SAMPLES, value=int(eval_samples))

    def evaluates(self, epoch: int) -> bool:
        return self.cfg.evaluates(epoch)

    def epoch_start(self, epoch: int) -> None:
        c = self.c
        if self._block_first is None:
            self._block_first = epoch + 1
            count = (self.cfg.eval_offset - epoch) % self.cfg.eval_period + 1  # up to the next evaluated epoch
            self._start(c.BLOCK_START, metadata={c.FIRST_EPOCH_NUM: epoch + 1, c.EPOCH_COUNT: count})
        self._start(c.EPOCH_START, metadata={c.EPOCH_NUM: epoch + 1})

    def epoch_stop(self, epoch: int) -> None:
        self._end(self.c.EPOCH_STOP, metadata={self.c.EPOCH_NUM: epoch + 1})

    def eval_start(self, epoch: int) -> None:
        self._start(self.c.EVAL_START, metadata={self.c.EPOCH_NUM: epoch + 1})

    def eval_stop(self, epoch: int, top1: float) -> bool:
        """Log the evaluation's top-1 (a fraction); whether it reached the target."""
        c = self.c
        self._end(c.EVAL_STOP, metadata={c.EPOCH_NUM: epoch + 1})
        self._event(c.EVAL_ACCURACY, value=float(top1), metadata={c.EPOCH_NUM: epoch + 1})
        self._end(c.BLOCK_STOP, metadata={c.FIRST_EPOCH_NUM: self._block_first})
        self._block_first = None
        self.evals.append((epoch + 1, float(top1)))
        self.best = max(self.best or 0.0, float(top1))
        reached = top1 >= self.cfg.target
        if reached:
            self.target_epoch = epoch + 1
            log.info("MLPerf: top-1 %.4f at epoch %d reached the target %g", top1, epoch + 1, self.cfg.target)
        return reached

    def run_stop(self, status: str) -> None:
        """``run_stop`` with ``status`` ("success" or "aborted"), once; then the log file is complete."""
        if self.status is not None:
            return
        if self._block_first is not None:
            self._end(self.c.BLOCK_STOP, metadata={self.c.FIRST_EPOCH_NUM: self._block_first})
            self._block_first = None
        self.status = status
        self._end(self.c.RUN_STOP, metadata={self.c.STATUS: status})
        self.times["run_stop"] = time.time()
        self.close()

    def close(self) -> None:
        """Rename the log onto ``--mlperf-log`` (after ``run_stop``; a run that never started its clock leaves
        no log there)."""
        if self._tmp is None:
            return
        self._file.close()
        self.logger.removeHandler(self._file)
        tmp, self._tmp = self._tmp, None
        if self.status is not None:
            os.replace(tmp, self.cfg.mlperf_log)
            log.info("MLPerf log: %s", self.cfg.mlperf_log)
        else:
            tmp.unlink(missing_ok=True)

    # what the loop asks of MLPerf mode ------------------------------------------------------------------------

    on = True  # the clock starts after a warm-up, and the data pipelines are built on it

    def record(self, report) -> None:
        report.set_mlperf(self.summary())

    def abort(self, report) -> None:
        """The run ends before the target (a signal, a fault, the loss diverged): ``run_stop`` aborted, once."""
        self.run_stop("aborted")
        self.record(report)

    def finished(self, report, num_epochs: int) -> int | None:
        """The epochs ran out before an evaluation reached the target: ``run_stop`` aborted, the report, one line;
        the exit status (6)."""
        self.abort(report)
        report.save("aborted")
        best = "no evaluation" if self.best is None else f"best top-1 {self.best:.4f}"
        log.error("MLPerf: the %d epochs ran out before an evaluation reached the target %g (%s); run_stop status "
                  "aborted", num_epochs, self.cfg.target, best)
        return EXIT_ABORTED

    def summary(self) -> dict:
        """For the report: the clock, the time to target, the epoch that reached it, the status."""
        out = {"status": self.status, "target_accuracy": self.cfg.target, "target_epoch": self.target_epoch,
               "eval_period": self.cfg.eval_period, "eval_offset": self.cfg.eval_offset,
               "division": self.cfg.submission_division, "seed": self.seed,
               "evals": [{"epoch": e, "top1": a} for e, a in self.evals], "best_accuracy": self.best}
        for k in ("init_start", "run_start", "run_stop"):
            if k in self.times:
                out[k] = self.times[k]
        if "run_start" in self.times and "run_stop" in self.times:
            out["run_minutes"] = (self.times["run_stop"] - self.times["run_start"]) / 60
            if self.status == "success":
                out["time_to_target_s"] = self.times["run_stop"] - self.times["run_start"]
        return out


class Off:
    """MLPerf mode off, with the interface of ``MLPerfRun``: no log, no clock, every epoch may be evaluated, no
    target; the loop calls it as it calls an MLPerf run."""

    on = False
    status = "off"

    def init_done(self) -> None:
        pass

    def data_ready(self, train_samples: int, eval_samples: int) -> None:
        pass

    def evaluates(self, epoch: int) -> bool:
        return True

    def epoch_start(self, epoch: int) -> None:
        pass

    def epoch_stop(self, epoch: int) -> None:
        pass

    def eval_start(self, epoch: int) -> None:
        pass

    def eval_stop(self, epoch: int, top1: float) -> bool:
        return False

    def run_stop(self, status: str) -> None:
        pass

    def record(self, report) -> None:
        pass

    def abort(self, report) -> None:
        pass

    def finished(self, report, num_epochs: int) -> int | None:
        """The epochs ran out: the run is complete (None: the loop goes on to finish it)."""
        return None

    def close(self) -> None:
        pass
