#!/usr/bin/env python3
"""MLPerf Inference LoadGen over the toolkit's scoring path: ResNet-50 v1.5 (or another depth) from a checkpoint, the
validation set of ``--data-root`` as LoadGen's sample library, the four scenarios, LoadGen's logs and a JSON summary.

    python loadgen.py --scenario Offline --model-prefix runs/demo/model --load-epoch 30 --data-root data/demo \\
        --image-shape 3,32,32 --num-classes 10 --time 5 --output runs/loadgen
    python loadgen.py --scenario SingleStream,Offline --accuracy ...     # each scenario in its own process

The pieces, as MLPerf's reference harness (``vision/classification_and_detection/python/main.py``) has them:

* QSL (query sample library): sample ``i`` is the i-th record of ``val.rec`` (the order of its ``.idx`` and of
  ``val.lst``); ``--count`` takes the first N. ``load_samples`` decodes and preprocesses the records LoadGen asks for
  exactly as the validation pass does (the ``dali-cpu`` pipeline's operators, fed the records' bytes: decode, resize
  the shorter side to ``--data-val-resize``, center crop, normalize; bit-identical tensors) and keeps them in
  memory; ``unload_samples`` frees them. The labels for accuracy come from the same records.
* SUT (system under test): ``issue_queries`` only puts the samples on a queue and returns (it never computes, never
  raises). ``--threads`` worker threads take what is queued, up to ``--max-batchsize`` at a time (no waiting for a
  batch to fill: nothing is ever held back, so ``flush_queries`` has nothing to flush), run the backend, and complete
  each sample with ``QuerySamplesComplete`` from the worker thread (LoadGen releases the GIL there).
* Backends (``--backend``): ``mxnet``, a Module bound for inference (``fit.create_module``, the executor
  ``--only-inference`` scores with, MXNet's default oneDNN subgraph fusion on CPU) at ``--max-batchsize`` and at
  every power of two below it sharing its memory; a batch of another size runs as the largest of these sizes that
  fit, one after the other (21 samples: 16, 4, 1), never padded with wasted work; each size is run once before the
  test starts. ``onnxruntime``, an ``InferenceSession`` on ``--onnx`` (default
  ``<model-prefix>-<epoch:04d>.onnx``, as ``tools/export_onnx.py`` writes it): input ``data`` (N, C, H, W) float32,
  first output the class probabilities.

The answer to each sample (what ``mlperf_log_accuracy.json`` holds, hex-encoded) is the predicted class as one
**float32** value (4 bytes), what the reference ``main.py`` writes and what MLPerf's ``tools/accuracy-imagenet.py``
reads with its default ``--dtype float32``. Class numbers are those of the checkpoint (0-based, 1000 classes for
ImageNet: ``--imagenet-val-file`` must use the same numbering, i.e. the label of each record). A sample that could not
be scored answers -1.0, which never matches a label.

Failures: no exception ever reaches LoadGen (one in a callback kills the process with SIGSEGV, and a sample never
completed makes ``StartTest`` wait forever). When the model path fails (or a record does not decode, or SIGINT/SIGTERM
arrives) every sample queued and every sample issued later is completed at once with the -1.0 answer, so LoadGen's
test runs out; the run then exits with one line naming the failure: 1 for a failure of the backend, 4 for a record
that does not decode, 130/143 for SIGINT/SIGTERM (a second signal ends the process at once). LoadGen ends a test only
when its duration and query count are reached; if it has not ended ``GRACE_S`` seconds after the failure or signal,
the process exits all the same, its LoadGen logs incomplete. ``StartTest`` runs in a thread of its own: Python runs
signal handlers in the main thread only, and a main thread waiting inside ``StartTest`` (Offline waits there for the
whole query) would see a Ctrl-C only when the test is over. Bad input is one line and exit 2 before any work.

A debug hook for testing that path: ``RN50_LOADGEN_FAIL_AFTER=K`` makes the backend raise after K batches of the test
(the warm-up before the test is not counted): a real failure in the worker thread, handled as any other.

An ``audit.config`` in the working directory is reported before the run (one warning line): LoadGen applies it
(MLPerf's compliance tests TEST01/TEST04 use it), which changes the run silently otherwise.

Settings: the flags set LoadGen's ``TestSettings`` (LoadGen's own defaults otherwise: 10 s, 100 queries, not
MLPerf's official 600 s): ``--time`` min_duration, ``--count`` min_query_count (when given), ``--qps`` Server's target
and Offline's expected QPS, ``--max-latency`` Server's target latency, ``--expected-latency`` the SingleStream and
MultiStream latency LoadGen plans its queries with, ``--samples-per-query`` MultiStream's 8. ``--user-conf`` then
overrides them: ``settings.FromConfig(path, "resnet50", scenario)`` loads LoadGen's built-in ``mlperf.conf`` (600 s,
ResNet-50's 1024 performance samples, Server's 15 ms, ...) and the file over it: the settings of an official run.
LoadGen applies its ``mlperf.conf`` only in the first ``FromConfig`` of a process, which is one reason each scenario
of a comma list runs in a process of its own.

Fitting the machine, before any work: the settings above decide what LoadGen generates before its test starts (all
of it, up front: ``GenerateQueries``). Offline: one query of max(min_query_count, 1.1 x --time x --qps) samples, all
issued at once; Server: max(min_query_count, --time x --qps) queries of one sample; SingleStream and MultiStream:
max(min_query_count, 2 x --time / --expected-latency) queries of 1 or --samples-per-query samples; accuracy mode:
every QSL sample once. Its host memory is estimated with the model ``train.py`` refuses batches with
(``memory.estimate``'s scoring figures: weights, runtime, activations per image) and this process's own parts:

    mxnet        fixed + (per image + 5.5 x input) x --max-batchsize + 1.5 x fp32 weights x (batch sizes bound)
                 + input x --max-batchsize x (--threads - 1)     (the model runs one batch at a time; each bound
                 size holds oneDNN-fused weights of its own; each waiting worker holds its batch)
    onnxruntime  fixed + 100 MiB + 1.6 x per image x --max-batchsize x --threads     (the threads' batches run at once)
    both         + 110 MiB (DALI's decoder, LoadGen) + C x H x W x 4 bytes per loaded sample
                 + LoadGen's queries: 320 bytes a query, 48 a further sample of it, 272 a sample issued while the
                 SUT is busy (Offline's whole query; Server's arrivals when the SUT falls behind)

(LoadGen's part measured with a SUT that answers at once, 0.2 to 2.2 million samples: Offline 316 bytes a sample,
SingleStream 305 and Server 346 a query, MultiStream 632 a query of 8. The rest as the peak resident set of this
process on a 2-core Intel Xeon (family 6, model 167), oneDNN, ResNet-18 and -50 at 32 and 224 px, batches 1 to
4096, 1 to 3 threads: 0.77 to 0.98 of the estimate over 20 runs.) On a GPU the model's batch is checked against the
GPU's free memory (``memory.check_batch``) and the host holds the rest. More than the machine has available, less
``memory.MARGIN``, reckoned as for ``train.py`` (MemAvailable or the cgroup's limit), is one line and exit 2: it names
the flag of the largest part that can shrink (``--max-batchsize`` with ``--threads``, ``--performance-sample-count``,
``--qps``, ``--expected-latency`` or ``--count``) and the largest (or smallest) value of it that fits beside the
rest. Offline's query is generated and issued whole: a ``--qps`` far beyond the machine needs the memory of all its
samples before the first one is scored.

The duration: after the warm-up, the fastest of two batches of the scenario's size (SingleStream 1, MultiStream a
query's samples up to --max-batchsize, else --max-batchsize) is timed. A performance test takes at least: Offline its
samples at that rate; Server max(the schedule's --time, its samples at that rate); SingleStream and MultiStream
max(--time, min_query_count queries one after the other). When that is more than both 2 x and 30 s beyond the
minimum duration, one warning line gives it and the flag to lower (Offline and Server: --qps to about the rate
timed; SingleStream --count; MultiStream --samples-per-query or --count). The summary's ``plan`` holds the numbers.

Outputs in ``--output`` (a comma list: one folder per scenario below it): LoadGen's ``mlperf_log_summary.txt``,
``mlperf_log_detail.txt``, ``mlperf_log_accuracy.json``, ``mlperf_log_trace.json`` (earlier ones of these names are
replaced), and ``summary.json`` (written to a temporary file and renamed), parsed from the summary:

    ``schema``        ``"rn50-loadgen/1"``
    ``scenario``, ``mode``   SingleStream|MultiStream|Server|Offline, PerformanceOnly|AccuracyOnly
    ``status``        ``completed``, ``failed`` (``error`` says why) or ``interrupted`` (a signal)
    ``result``        ``VALID``/``INVALID`` (LoadGen's "Result is" line; null in accuracy mode, which has none);
                      ``constraints`` each "... satisfied" line as true/false, ``invalid_reasons`` the unsatisfied
                      ones, ``recommendations`` and ``early_stopping`` LoadGen's bullet points, ``early_stopping_ns``
                      the early-stopping latency estimates among them (e.g. ``{"90.0th": 2057962}``, what a submission
                      reports for SingleStream and MultiStream)
    ``metric``        the scenario's metric: ``{name, value, unit}``: SingleStream the p90 and MultiStream the p99
                      latency in ns, Server completed samples per second, Offline samples per second
    ``samples_per_second``, ``queries_per_second``   (MultiStream: derived, samples per query / mean query latency;
                      Offline's single query has no queries per second: null); Server adds
                      ``scheduled_samples_per_second``
    ``latency_ns``    min, max, mean, p50, p90, p95, p97, p99, p99.9 in **nanoseconds** (MultiStream: per query)
    ``settings``      LoadGen's "Test Parameters Used"; ``loadgen``: its warning and error counts and the error and
                      warning messages of its detail log
    ``accuracy``      accuracy mode: ``top1`` (percent), ``good``, ``total`` (distinct samples answered), ``missing``
                      (QSL samples without an answer), ``dtype`` (``float32``), computed from
                      ``mlperf_log_accuracy.json`` against the records' labels as ``accuracy-imagenet.py`` does
    ``samples``       ``issued``, ``answered`` (with a prediction) and ``empty`` (-1.0) by the SUT
    ``plan``          what LoadGen generates (``queries``, ``samples_per_query``, ``samples``), the host memory
                      estimated (``memory_bytes``), the batch timed (``batch``, ``batch_s``, ``samples_per_second``) and
                      the test's duration expected from them (``expected_s``); see "Fitting the machine"
    ``model``, ``qsl``, ``cmd``   what ran: backend, dtype, device, checkpoint or ONNX file, batch sizes, threads
                      (onnxruntime: its providers); the QSL's size and performance sample count; the command line
    ``files``, ``wall_s``   LoadGen's files in the folder; the test's wall time, seconds
A comma list's ``--output/summary.json`` holds ``schema``, ``status`` and ``scenarios`` (each scenario's summary with
its ``exit_status``); the list stops at the first scenario that fails, and a signal is passed on to the running one.
Exit status 0 whenever the tests ran: an INVALID result is a result (short runs usually are).

``--dry-run`` checks the flags (not the files) and prints each scenario's LoadGen settings and command, running
nothing; ``--assume-gpus N`` makes it plan as on a machine with N GPUs. The process sets what the runner sets for
scoring before MXNet loads: OpenMP threads = the cores available and, with a CPU build of MXNet,
``common.MALLOC_ENV`` (the latter by restarting itself once with them, as glibc reads them only at start-up).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))


def _reexec_if_needed() -> None:
    """Run in the project's environment with the runner's scoring environment (before anything is imported that
    reads it): the venv's Python as benchmark.py does, OpenMP threads, and on a CPU build ``common.MALLOC_ENV``."""
    from common import MALLOC_ENV, available_cores

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(available_cores()))
    env.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # binding would log the oneDNN fusion once per executor
    try:
        import gpu

        cpu_build = not gpu.read_build().cuda
    except Exception:  # no MXNet at all: the error comes later, as one line
        cpu_build = True
    if cpu_build:
        for k, v in MALLOC_ENV.items():
            env.setdefault(k, v)
    other_python = VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and \
        "RUNNER_NO_VENV" not in os.environ
    if other_python or any(os.environ.get(k) != v for k, v in env.items()):
        exe = str(VENV_PY) if other_python else sys.executable
        sys.stdout.flush()
        os.execve(exe, [exe, __file__, *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_if_needed()

import collections  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Sequence  # noqa: E402

import numpy as np  # noqa: E402

from common import (BF16_NEEDS_CPU, FP16_NEEDS_GPU, Children, DataError, Parser, StopFlag, Stopped,  # noqa: E402
                    UsageError, available_cores, check_bf16_cpu, check_writable, finite_float, float_list, int_list,
                    path_arg, run_main, write_json)

log = logging.getLogger("loadgen")

PROG = "loadgen.py"
SCHEMA = "rn50-loadgen/1"
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MLPERF_MODEL = "resnet50"  # the model name of LoadGen's mlperf.conf and of user.conf keys
RESPONSE_DTYPE = np.float32  # what accuracy-imagenet.py reads by default (--dtype float32), as the reference writes
EMPTY_ANSWER = -1.0  # the answer of a sample that could not be scored: never a label
PERFORMANCE_SAMPLES = 1024  # ResNet-50's performance_sample_count in MLPerf's mlperf.conf
GRACE_S = 10.0  # after a failure or a signal: how long LoadGen gets to end its test before the process exits anyway
FAIL_ENV = "RN50_LOADGEN_FAIL_AFTER"
EXIT_FAILED = 1  # the model path failed
LOADGEN_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                "mlperf_log_trace.json")
SUMMARY = "summary.json"


# --------------------------------------------------------------------------------------------------------------------
# Flags and the run's configuration


def build_parser() -> Parser:
    import resnet  # MXNet loads here, after main has begun to handle signals
    from datatypes import RGB_MEAN, RGB_STD

    p = Parser(prog=PROG, description="MLPerf Inference LoadGen over the toolkit's scoring path: QSL over val.rec, "
                                      "a batching SUT (mxnet or onnxruntime), the four scenarios, a JSON summary.")
    g = p.add_argument_group("LoadGen", "scenario, mode and test settings (names as MLPerf's reference harness)")
    g.add_argument("--scenario", default="SingleStream",
                   help=f"one of {', '.join(SCENARIOS)}, or a comma list (each in its own process, one after the "
                        "other, one combined summary)")
    g.add_argument("--accuracy", action="store_true",
                   help="AccuracyOnly mode: every QSL sample once, top-1 in the summary (default: PerformanceOnly)")
    g.add_argument("--count", type=int, default=None,
                   help="samples in the QSL: the first N records of val.rec (default: all); when given also "
                        "LoadGen's min_query_count")
    g.add_argument("--performance-sample-count", type=int, default=None,
                   help=f"samples LoadGen keeps loaded in performance mode (default: min(--count, "
                        f"{PERFORMANCE_SAMPLES}), ResNet-50's value)")
    g.add_argument("--time", type=finite_float, default=None,
                   help="min_duration, seconds (LoadGen's default: 10); a test expected to take far longer is "
                        "warned of before it starts")
    g.add_argument("--qps", type=finite_float, default=None,
                   help="Server: target QPS; Offline: expected QPS (its one query: 1.1 x --time x --qps samples, "
                        "held in memory at once; refused when they cannot fit); also the rate of Server's accuracy "
                        "run")
    g.add_argument("--max-latency", type=finite_float, default=None,
                   help="Server: target latency at the 99th percentile, seconds (MLPerf's ResNet-50: 0.015)")
    g.add_argument("--expected-latency", type=finite_float, default=None,
                   help="SingleStream/MultiStream: the latency, seconds, LoadGen plans its queries with (too high "
                        "and it runs out of queries before --time)")
    g.add_argument("--samples-per-query", type=int, default=8, help="MultiStream samples per query")
    g.add_argument("--max-batchsize", type=int, default=32,
                   help="largest batch the SUT runs (refused, with the largest that fits, when it cannot fit in "
                        "memory)")
    g.add_argument("--threads", type=int, default=1,
                   help="SUT worker threads (onnxruntime runs their batches at once: memory x --threads)")
    g.add_argument("--user-conf", type=path_arg, default=None,
                   help="LoadGen user.conf: LoadGen's mlperf.conf and then this file override the flags "
                        "(settings.FromConfig(path, 'resnet50', scenario))")
    g.add_argument("--output", type=path_arg, default=Path("runs/loadgen"),
                   help="folder of LoadGen's logs and summary.json")
    g.add_argument("--dry-run", action="store_true",
                   help="check the flags (not the files), print each scenario's settings and command, run nothing")
    g.add_argument("--assume-gpus", type=int, default=None,
                   help="with --dry-run: plan as on a machine with this many GPUs")
    m = p.add_argument_group("Model", "the network and its weights")
    m.add_argument("--backend", choices=("mxnet", "onnxruntime"), default="mxnet", help="inference runtime")
    m.add_argument("--onnx", type=path_arg, default=None,
                   help="onnxruntime: the ONNX model (default: <model-prefix>-<epoch:04d>.onnx, as "
                        "tools/export_onnx.py writes it)")
    m.add_argument("--model-prefix", type=path_arg, default=None, help="checkpoint prefix")
    m.add_argument("--load-epoch", type=int, default=None,
                   help="checkpoint NNNN of --model-prefix (mxnet without it: random weights, throughput only)")
    m.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="compute dtype (mxnet): float16 on GPUs, bfloat16 on CPUs with AVX512_BF16 or AMX")
    m.add_argument("--num-classes", type=int, default=1000, help="number of classes")
    m.add_argument("--image-shape", type=int_list, default=(3, 224, 224),
                   help="C,H,W of the network input (C=4: NVIDIA's zero 4th channel of the FP16 recipe)")
    m.add_argument("--input-layout", choices=("NCHW", "NHWC"), default="NCHW", help="layout of the input (mxnet)")
    resnet.add_model_args(p)
    d = p.add_argument_group("Data", "the validation set, preprocessed as the validation pass does it")
    d.add_argument("--data-root", type=path_arg, default=None, help="folder with val.rec and val.idx")
    d.add_argument("--data-val", type=path_arg, default=None,
                   help="validation .rec (default: <data-root>/val.rec; its .idx beside it)")
    d.add_argument("--data-val-resize", type=int, default=None,
                   help="resize the shorter side to this before the center crop (default: 256/224 of the crop)")
    d.add_argument("--rgb-mean", type=float_list, default=RGB_MEAN, help="per-channel mean (0-255 scale)")
    d.add_argument("--rgb-std", type=float_list, default=RGB_STD, help="per-channel std (0-255 scale)")
    return p


@dataclass(frozen=True)
class LoadGenConfig:
    """The LoadGen flags of one run (field names are the flags' names)."""
    scenario: str = "SingleStream"
    accuracy: bool = False
    count: int | None = None
    performance_sample_count: int | None = None
    time: float | None = None
    qps: float | None = None
    max_latency: float | None = None
    expected_latency: float | None = None
    samples_per_query: int = 8
    max_batchsize: int = 32
    threads: int = 1
    user_conf: Path | None = None
    output: Path = Path("runs/loadgen")

    def __post_init__(self):
        for flag, v, low in (("--count", self.count, 1), ("--performance-sample-count",
                                                          self.performance_sample_count, 1),
                             ("--samples-per-query", self.samples_per_query, 1),
                             ("--max-batchsize", self.max_batchsize, 1), ("--threads", self.threads, 1)):
            if v is not None and v < low:
                raise UsageError(f"{flag} {v}: must be at least {low}")
        for flag, v in (("--time", self.time), ("--qps", self.qps), ("--max-latency", self.max_latency),
                        ("--expected-latency", self.expected_latency)):
            if v is not None and not v > 0:
                raise UsageError(f"{flag} {v:g}: must be positive")
        if self.count is not None and self.performance_sample_count is not None and \
                self.performance_sample_count > self.count:
            raise UsageError(f"--performance-sample-count {self.performance_sample_count}: at most --count "
                             f"{self.count} (the samples of the QSL)")

    @property
    def scenarios(self) -> list[str]:
        return parse_scenarios(self.scenario)

    @property
    def mode(self) -> str:
        return "AccuracyOnly" if self.accuracy else "PerformanceOnly"


def parse_scenarios(text: str) -> list[str]:
    """``--scenario``'s comma list, checked (names as LoadGen spells them; case is forgiven)."""
    by_lower = {s.lower(): s for s in SCENARIOS}
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n.lower() not in by_lower]
    if bad or not names:
        raise UsageError(f"--scenario {text}: {'unknown scenario ' + bad[0] if bad else 'empty'}; choose from "
                         f"{', '.join(SCENARIOS)} (or a comma list of them)")
    out = [by_lower[n.lower()] for n in names]
    if len(set(out)) != len(out):
        raise UsageError(f"--scenario {text}: a scenario is named twice")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """What the SUT runs: backend, weights, dtype, device, and the model flags it is built from."""
    backend: str
    dtype: str
    device: str  # "cpu" or "gpu"
    model_prefix: Path | None
    load_epoch: int | None
    onnx: Path | None
    num_classes: int
    image_shape: tuple
    input_layout: str
    model: object  # resnet.ModelConfig

    def describe(self) -> dict:
        out = {"backend": self.backend, "dtype": self.dtype, "device": self.device,
               "num_layers": self.model.num_layers, "num_classes": self.num_classes,
               "image_shape": list(self.image_shape)}
        if self.backend == "onnxruntime":
            out["onnx"] = str(self.onnx)
        elif self.model_prefix is not None:
            out["checkpoint"] = f"{self.model_prefix}-{self.load_epoch:04d}"
        else:
            out["checkpoint"] = None  # random weights
        return out


def model_spec(args, gpus: int) -> ModelSpec:
    """The model flags checked against each other and the machine (no file is read)."""
    import resnet
    from common import config_from

    shape = tuple(args.image_shape)
    if len(shape) != 3 or shape[0] not in (3, 4) or min(shape[1:]) < 1:
        raise UsageError(f"--image-shape {','.join(map(str, shape))}: expected C,H,W with C 3 or 4")
    if args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes}: must be at least 1")
    if args.load_epoch is not None and args.model_prefix is None:
        raise UsageError("--load-epoch needs --model-prefix (the checkpoints' prefix)")
    if args.load_epoch is not None and args.load_epoch < 0:
        raise UsageError(f"--load-epoch {args.load_epoch}: must be at least 0")
    device = "gpu" if gpus else "cpu"
    onnx = None
    if args.backend == "onnxruntime":
        if args.dtype != "float32":
            raise UsageError(f"--dtype {args.dtype}: --backend onnxruntime runs the exported float32 model; use "
                             "--dtype float32 (or --backend mxnet)")
        if args.input_layout != "NCHW":
            raise UsageError("--input-layout NHWC: the ONNX model's input is N,C,H,W; leave --input-layout out")
        onnx = args.onnx
        if onnx is None:
            if args.model_prefix is None or args.load_epoch is None:
                raise UsageError("--backend onnxruntime needs --onnx PATH (or --model-prefix and --load-epoch: "
                                 "<prefix>-<epoch:04d>.onnx, as tools/export_onnx.py writes it)")
            onnx = Path(f"{args.model_prefix}-{args.load_epoch:04d}.onnx")
        device = "cpu"  # the session picks its providers; the QSL's tensors are on the host either way
    else:
        if args.onnx is not None:
            raise UsageError("--onnx is for --backend onnxruntime")
        if args.dtype == "float16" and not gpus:
            raise UsageError(FP16_NEEDS_GPU)
        if args.dtype == "bfloat16":
            if gpus:
                raise UsageError(BF16_NEEDS_CPU)
            check_bf16_cpu()
    return ModelSpec(args.backend, args.dtype, device, args.model_prefix, args.load_epoch, onnx, args.num_classes,
                     shape, args.input_layout, config_from(resnet.ModelConfig, args))


def data_config(args, batch: int):
    """The validation set's ``datatypes.DataConfig`` (the ``dali-cpu`` validation pipeline's settings), checked by
    ``data.resolve``; the files are not looked at here."""
    import dali
    import data
    from datatypes import DataConfig

    val = args.data_val or (args.data_root / "val.rec" if args.data_root else None)
    if val is None:
        raise UsageError("give --data-root (a folder with val.rec and val.idx, made by tools/prepare_dataset.py or "
                         "`make demo-data`) or --data-val")
    cfg = DataConfig(data_val=val, data_val_idx=val.with_suffix(".idx"), data_backend="dali-cpu",
                     image_shape=tuple(args.image_shape), input_layout=args.input_layout,
                     rgb_mean=tuple(args.rgb_mean), rgb_std=tuple(args.rgb_std), num_classes=args.num_classes,
                     data_val_resize=args.data_val_resize, batch_size=batch, dtype="float32",
                     dali=dali.DaliConfig())
    # data.resolve checks the values and fills in the resize; its file checks are check_files' (a dry run reads no
    # file), so it resolves the config as for synthetic data, and the paths and the DALI settings are put back
    resolved = data.resolve(dataclasses.replace(cfg, data_val=None, data_val_idx=None, data_backend="synthetic"))
    return dataclasses.replace(resolved, data_backend="dali-cpu", data_val=cfg.data_val, data_val_idx=cfg.data_val_idx,
                               dali=dali.resolve(cfg.dali, "dali-cpu"))


def check_files(args, spec: ModelSpec, dcfg) -> None:
    """The inputs exist: val.rec and its index, the user.conf, the ONNX model (a checkpoint is checked when read)."""
    root, rec, idx = args.data_root, dcfg.data_val, dcfg.data_val_idx
    if args.data_val is None and root is not None and not root.is_dir():
        raise UsageError(f"--data-root {root}: no such directory (make one with tools/prepare_dataset.py, or "
                         "`make demo-data` for the digits)")
    if not rec.is_file():
        how = f"--data-root {root} has no val.rec" if args.data_val is None else f"--data-val {rec}: file not found"
        raise UsageError(f"{how} (make it with tools/prepare_dataset.py)")
    if not idx.is_file():
        raise UsageError(f"{idx}: the index of {rec.name} is missing (tools/prepare_dataset.py writes it beside the "
                         ".rec); LoadGen's samples are found through it")
    if args.count is not None:
        import recfile

        try:
            records = len(recfile.read_index(idx))
        except (OSError, ValueError) as err:
            raise UsageError(f"{idx}: not a readable index ({err}); rebuild it with tools/prepare_dataset.py") \
                from None
        if args.count > records:
            raise UsageError(f"--count {args.count}: {rec} has only {records} records")
    if args.user_conf is not None and not args.user_conf.is_file():
        raise UsageError(f"--user-conf {args.user_conf}: file not found")
    if spec.backend == "onnxruntime" and not spec.onnx.is_file():
        raise UsageError(f"--onnx {spec.onnx}: file not found (export the checkpoint with tools/export_onnx.py "
                         "PREFIX EPOCH)")


def warn_audit_config() -> None:
    audit = Path.cwd() / "audit.config"
    if audit.exists():
        log.warning("%s exists: LoadGen applies it to this run (it is how MLPerf's compliance tests change a run); "
                    "remove it unless a compliance test asked for it", audit)


# --------------------------------------------------------------------------------------------------------------------
# QSL: the validation records, preprocessed as the validation pass does it


def read_val_index(dcfg) -> list:
    """The (key, offset) pairs of ``dcfg.data_val_idx``; a one-line ``UsageError`` when it cannot be read."""
    import recfile

    try:
        return recfile.read_index(dcfg.data_val_idx)
    except (OSError, ValueError) as err:
        raise UsageError(f"{dcfg.data_val_idx}: not a readable index ({err}); rebuild it with "
                         "tools/prepare_dataset.py") from None


class SampleLibrary:
    """LoadGen's query sample library over the first ``count`` records of ``dcfg.data_val``."""

    CHUNK = 64  # images per run of the preprocessing pipeline

    def __init__(self, dcfg, count: int | None):
        self.cfg = dcfg
        pairs = read_val_index(dcfg)
        self.pairs = pairs[:count] if count is not None else pairs  # check_files has checked --count
        self.labels = self._read_labels()
        self.samples: dict[int, np.ndarray] = {}
        self._pipe = None

    def __len__(self) -> int:
        return len(self.pairs)

    def _read_labels(self) -> np.ndarray:
        """Each record's label, without reading the images (``data.check_record_files`` has checked them)."""
        import recfile

        with open(self.cfg.data_val, "rb") as f:
            return np.array([int(recfile.read_label_at(f, off)) for _, off in self.pairs], np.int64)

    def _pipeline(self):
        import dali

        if self._pipe is None:
            self._pipe = dali.fed_val_pipeline(self.cfg, batch_size=self.CHUNK, num_threads=available_cores(),
                                               device_id=None, exec_async=False, exec_pipelined=False,
                                               prefetch_queue_depth=1)
            self._pipe.build()
        return self._pipe

    def _images(self, indices: Sequence[int]) -> list[np.ndarray]:
        import recfile

        out = []
        with open(self.cfg.data_val, "rb") as f:
            for i in indices:
                out.append(np.frombuffer(recfile.unpack_image_record(
                    recfile.read_record_at(f, self.pairs[i][1])[0])[2], np.uint8))
        return out

    def _decode(self, jpegs: list[np.ndarray]) -> list[np.ndarray]:
        pipe = self._pipeline()
        pipe.feed_input("jpegs", jpegs)
        (out,) = pipe.run()
        return [np.array(a) for a in out.as_array()]

    def load(self, indices: Sequence[int]) -> None:
        """Preprocess the samples ``indices`` into memory (LoadGen's ``load_samples``)."""
        todo = [i for i in indices if i not in self.samples]
        for start in range(0, len(todo), self.CHUNK):
            chunk = todo[start:start + self.CHUNK]
            jpegs = self._images(chunk)
            try:
                tensors = self._decode(jpegs)
            except RuntimeError:
                self._pipe = None  # a failed DALI pipeline is not used again
                raise DataError(self._undecodable(chunk, jpegs)) from None
            self.samples.update(zip(chunk, tensors))

    def _undecodable(self, chunk, jpegs) -> str:
        """The one line for a chunk that did not decode, naming the first record of it that fails alone: the line
        the validation pass gives for it (``dali.describe_failure``, told the record's byte offset as DALI's reader
        would tell it)."""
        import dali

        rec, idx = self.cfg.data_val, self.cfg.data_val_idx
        for i, jpeg in zip(chunk, jpegs):
            try:
                self._decode([jpeg])
            except RuntimeError as err:
                self._pipe = None
                return dali.describe_failure(f"{err}\nFile: {rec} at index {self.pairs[i][1]}", "validation", rec,
                                             idx)
        return f"the validation set {rec}: records {chunk[0]}-{chunk[-1]} could not be decoded together"

    def unload(self, indices: Sequence[int]) -> None:
        for i in indices:
            self.samples.pop(i, None)

    def batch(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.samples[i] for i in indices])


# --------------------------------------------------------------------------------------------------------------------
# Backends: a batch of preprocessed samples in, the predicted classes out


class _FailHook:
    """``RN50_LOADGEN_FAIL_AFTER=K``: raise in the backend after K batches of the test (armed when it starts)."""

    def __init__(self):
        text = os.environ.get(FAIL_ENV)
        try:
            self.after = None if text in (None, "") else int(text)
        except ValueError:
            raise UsageError(f"{FAIL_ENV}={text}: expected a number of batches") from None
        self.armed = False
        self.batches = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.after is None or not self.armed:
            return
        with self._lock:
            self.batches += 1
            if self.batches > self.after:
                raise RuntimeError(f"injected failure ({FAIL_ENV}={self.after}: after {self.after} batches)")


class MXNetBackend:
    """Modules bound for inference (``fit.create_module``) at ``max_batch`` and every power of two below it, the
    smaller ones sharing the largest one's parameters and memory (each holds oneDNN-fused weights and an input array
    of its own, though: ``EXECUTOR_WEIGHTS``, ``MXNET_INPUTS``); a batch runs as the largest of these that fit what
    is left of it, in turn (no padding: the tail of an Offline query would otherwise run up to a whole batch of
    zeros). MXNet's executors are used by one thread at a time (a lock)."""

    def __init__(self, spec: ModelSpec, dcfg, max_batch: int):
        import mxnet as mx

        import checkpoint
        import fit
        import resnet

        self.name = "mxnet"
        self.mx, self.spec, self.dcfg = mx, spec, dcfg
        self.ctx = mx.gpu(0) if spec.device == "gpu" else mx.cpu()
        self.sym = inference_symbol(spec)
        self.sizes = batch_sizes(max_batch)
        self.hook = _FailHook()
        self._lock = threading.Lock()
        base = fit.create_module(self.sym, [self.ctx], self._shapes(max_batch), for_training=False)
        if spec.model_prefix is not None:
            model = {"num_layers": spec.model.num_layers, "resnet_version": spec.model.resnet_version,
                     "num_classes": spec.num_classes, "image_channels": spec.image_shape[0], "dtype": spec.dtype}
            ckpt = checkpoint.for_scoring(spec.model_prefix, spec.load_epoch, model)
            fit.load_weights(base, self.sym, ckpt, self._shapes(max_batch)[0][0].shape)
        else:
            log.warning("no --load-epoch: random weights (throughput only; the accuracy means nothing)")
            base.init_params(resnet.initializer())
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
        mod = self._module(size)
        mod.forward(self.mx.io.DataBatch([self.mx.nd.array(x, ctx=self.ctx)], None), is_train=False)
        return mod.get_outputs()[0].asnumpy()

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


class OnnxBackend:
    """An onnxruntime session (``ort_session``): input ``data`` N,C,H,W float32, first output the
    class probabilities. Sessions run concurrently from several threads."""

    def __init__(self, spec: ModelSpec, threads: int):
        self.name = "onnxruntime"
        self.hook = _FailHook()
        per_thread = max(1, available_cores() // threads)
        try:
            self.session = ort_session(spec.onnx, per_thread)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... for a file it cannot load
            reason = [ln for ln in str(err).splitlines() if ln.strip()]
            raise UsageError(f"--onnx {spec.onnx}: onnxruntime cannot load it ({(reason or ['?'])[-1][:200]})") \
                from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        want = [spec.image_shape[0], spec.image_shape[1], spec.image_shape[2]]
        if inp.name != "data" or list(inp.shape[1:]) != want:
            raise UsageError(f"--onnx {spec.onnx}: its input is {inp.name} {inp.shape}, this run feeds data "
                             f"[N, {', '.join(map(str, want))}]; check --image-shape (or export the model with "
                             "tools/export_onnx.py)")
        if len(out.shape) == 2 and isinstance(out.shape[1], int) and out.shape[1] != spec.num_classes:
            raise UsageError(f"--onnx {spec.onnx}: it has {out.shape[1]} classes, --num-classes is "
                             f"{spec.num_classes}")
        self.input = inp.name

    def describe(self) -> dict:
        return {"providers": self.session.get_providers()}

    def warm_up(self, largest: int) -> None:
        shape = self.session.get_inputs()[0].shape[1:]
        for n in sorted({1, largest}):
            self.session.run(None, {self.input: np.zeros((n, *shape), np.float32)})

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.hook.check()
        probs = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0]
        return probs.argmax(axis=1)


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime ``InferenceSession`` on ``path`` (the toolkit's one way to open its ONNX models, used by
    ``tools/export_onnx.py`` too): CUDA first where this onnxruntime has it, then the CPU; ``threads`` intra-op
    threads (default: the cores available)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cores()
    opts.log_severity_level = 3  # mx2onnx's models would warn once per initializer
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


# --------------------------------------------------------------------------------------------------------------------
# SUT: a queue, worker threads that batch, and completion of every sample whatever happens


class SystemUnderTest:
    """``issue_queries`` enqueues; ``threads`` workers batch, predict and complete. After ``fail`` (a failure, a
    signal) every queued and every later sample is completed at once with ``EMPTY_ANSWER``."""

    def __init__(self, lg, backend, qsl: SampleLibrary, max_batch: int, threads: int):
        self.lg, self.backend, self.qsl, self.max_batch = lg, backend, qsl, max_batch
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.failure: tuple[str, int] | None = None  # (one-line message, exit status); the first one wins
        self.issued = self.answered = self.empty = 0
        self._count_lock = threading.Lock()
        self._workers = [threading.Thread(target=self._work, name=f"sut-worker-{i}", daemon=True)
                         for i in range(threads)]
        for w in self._workers:
            w.start()

    # LoadGen's callbacks: never raise, never block on the model
    def issue_queries(self, samples) -> None:
        items, queued = [], False
        try:
            items = [(s.id, s.index) for s in samples]
            with self._cv:
                self.issued += len(items)
                if self.failure is None:
                    self._queue.extend(items)
                    queued = True
                    self._cv.notify_all()
            if not queued:
                self._complete(items, None)
        except BaseException as err:  # noqa: BLE001 - nothing may reach LoadGen
            self.fail(f"issue_queries: {describe(err)}", EXIT_FAILED)
            if not queued:
                self._complete(items or [(s.id, s.index) for s in samples], None)

    def flush_queries(self) -> None:
        with self._cv:  # nothing is held back for batching: wake the workers in case they sleep
            self._cv.notify_all()

    def load_samples(self, indices) -> None:
        try:
            self.qsl.load(list(indices))
        except BaseException as err:  # noqa: BLE001 - nothing may reach LoadGen
            status = err.exit_status if isinstance(err, UsageError) else EXIT_FAILED
            self.fail(str(err) if isinstance(err, UsageError) else f"loading samples: {describe(err)}", status)

    def unload_samples(self, indices) -> None:
        try:
            self.qsl.unload(list(indices))
        except BaseException as err:  # noqa: BLE001 - nothing may reach LoadGen
            self.fail(f"unloading samples: {describe(err)}", EXIT_FAILED)

    # the rest
    def fail(self, message: str, status: int) -> None:
        """Record the first failure and drain: the workers complete what is queued without predicting."""
        with self._cv:
            if self.failure is None:
                self.failure = (message, status)
            self._cv.notify_all()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                take = len(self._queue) if self.failure is not None else min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
                draining = self.failure is not None
            classes = None
            try:
                if not draining:
                    classes = self.backend.predict(self.qsl.batch([index for _, index in batch]))
            except BaseException as err:  # noqa: BLE001 - nothing may reach LoadGen
                self.fail(f"the model path ({self.backend.name} backend) failed: {describe(err)}", EXIT_FAILED)
            finally:
                self._complete(batch, classes)

    def _complete(self, batch, classes) -> None:
        """Answer every sample of ``batch``: its class as float32, or ``EMPTY_ANSWER`` without ``classes``."""
        try:
            values = None if classes is None else np.asarray(classes).astype(RESPONSE_DTYPE).reshape(-1)
            if values is not None and len(values) != len(batch):
                self.fail(f"the {self.backend.name} backend answered {len(values)} of {len(batch)} samples",
                          EXIT_FAILED)
                values, classes = None, None
            if values is None:
                values = np.full(len(batch), EMPTY_ANSWER, RESPONSE_DTYPE)
            size = values.itemsize
            base = values.ctypes.data  # ``values`` stays referenced until QuerySamplesComplete has returned
            responses = [self.lg.QuerySampleResponse(qid, base + k * size, size) for k, (qid, _) in enumerate(batch)]
            self.lg.QuerySamplesComplete(responses)
            with self._count_lock:
                if classes is None:
                    self.empty += len(batch)
                else:
                    self.answered += len(batch)
        except BaseException as err:  # noqa: BLE001 - nothing may reach LoadGen
            self.fail(f"completing samples: {describe(err)}", EXIT_FAILED)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for w in self._workers:
            w.join(timeout=GRACE_S)


def describe(err: BaseException) -> str:
    """``Type: the last line of the message`` (MXNet's errors carry a stack trace in theirs)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1][:300]}" if lines else type(err).__name__


# --------------------------------------------------------------------------------------------------------------------
# LoadGen settings, its summary, accuracy


def make_settings(lg, cfg: LoadGenConfig, scenario: str):
    """``TestSettings`` from the flags, then (``--user-conf``) LoadGen's mlperf.conf and the file over them."""
    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, scenario)
    s.mode = lg.TestMode.AccuracyOnly if cfg.accuracy else lg.TestMode.PerformanceOnly
    if cfg.time is not None:
        s.min_duration_ms = max(1, round(cfg.time * 1000))
    if cfg.count is not None:
        s.min_query_count = cfg.count
    if cfg.qps is not None:
        s.server_target_qps = cfg.qps
        s.offline_expected_qps = cfg.qps
    if cfg.max_latency is not None:
        s.server_target_latency_ns = round(cfg.max_latency * 1e9)
    if cfg.expected_latency is not None:
        s.single_stream_expected_latency_ns = round(cfg.expected_latency * 1e9)
        s.multi_stream_expected_latency_ns = round(cfg.expected_latency * 1e9)
    s.multi_stream_samples_per_query = cfg.samples_per_query
    if cfg.user_conf is not None:
        if s.FromConfig(str(cfg.user_conf), MLPERF_MODEL, scenario) != 0:
            raise UsageError(f"--user-conf {cfg.user_conf}: LoadGen could not read it (lines are "
                             f"{MLPERF_MODEL}.{scenario}.key = value, or *.{scenario}.key = value)")
    return s


SETTING_KEYS = ("scenario", "mode", "min_duration_ms", "max_duration_ms", "min_query_count", "max_query_count",
                "server_target_qps", "server_target_latency_ns", "offline_expected_qps",
                "single_stream_expected_latency_ns", "multi_stream_expected_latency_ns",
                "multi_stream_samples_per_query", "performance_sample_count_override")


def settings_line(s) -> str:
    parts = []
    for k in SETTING_KEYS:
        v = getattr(s, k)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        parts.append(f"{k}={v.name if hasattr(v, 'name') else (f'{v:g}' if isinstance(v, float) else v)}")
    return " ".join(parts)


_NUM = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def _number(text: str):
    if not _NUM.match(text):
        return text
    return int(text) if re.match(r"^-?\d+$", text) else float(text)


_LATENCY = re.compile(r"^(Min|Max|Mean|(\d+\.\d+) percentile) latency \(ns\)$")
_COUNTS = re.compile(r"^(No|\d+) (warnings?|ERRORS?) encountered", re.I)


def parse_summary(text: str) -> dict:
    """LoadGen's ``mlperf_log_summary.txt`` as a dict: scenario, mode, result and why, metric, rates, latencies
    (ns), the test parameters used, the warning and error counts."""
    out = {"scenario": None, "mode": None, "result": None, "constraints": {}, "invalid_reasons": [],
           "recommendations": [], "early_stopping": [], "latency_ns": {}, "settings": {},
           "loadgen": {"warnings": 0, "errors": 0}}
    values, section, bullets = {}, "", None
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("====="):  # a section's title stands between two such rules
            bullets = None
            if i + 2 < len(lines) and lines[i + 2].startswith("====="):
                section = lines[i + 1].strip()
            continue
        m = _COUNTS.match(line)
        if m:
            out["loadgen"]["errors" if m[2].lower().startswith("error") else "warnings"] = \
                0 if m[1] == "No" else int(m[1])
            continue
        if line in ("Recommendations:", "Early Stopping Result:"):
            bullets = out["recommendations" if line.startswith("Rec") else "early_stopping"]
            continue
        if bullets is not None:
            if line.startswith("* "):
                bullets.append(line[2:])
                continue
            if line and raw.startswith(" ") and bullets:
                bullets[-1] += " " + line
                continue
            bullets = None
        if ":" not in line:
            continue
        key, value = (t.strip() for t in line.split(":", 1))
        if section == "Test Parameters Used":
            out["settings"][key.replace(" (ns)", "_ns").replace(" (ms)", "_ms").replace(" ", "_")] = _number(value)
        elif key.endswith("satisfied"):
            out["constraints"][key] = value.lower() == "yes"
        else:
            values.setdefault(key, value)
    out["scenario"], out["mode"], out["result"] = values.get("Scenario"), values.get("Mode"), values.get("Result is")
    out["invalid_reasons"] = [f"{k}: NO" for k, ok in out["constraints"].items() if not ok]
    for key, value in values.items():
        m = _LATENCY.match(key)
        if m:
            name = m[1].lower() if m[2] is None else "p" + f"{float(m[2]):g}"
            out["latency_ns"][name] = _number(value)
    out["early_stopping_ns"] = {m[1]: int(m[2]) for m in (re.search(r"Early stopping (\S+) percentile estimate: (\d+)",
                                                                   b) for b in out["early_stopping"]) if m}
    _metrics(out, values)
    return out


def _metrics(out: dict, values: dict) -> None:
    scenario = out["scenario"]
    num = {k: _number(v) for k, v in values.items()}
    target = next((k for k in num if re.match(r"^\d+(\.\d+)?th percentile latency \(ns\)$", k)), None)
    sps = qps = None
    metric = None
    if scenario == "SingleStream":
        qps = sps = num.get("QPS w/ loadgen overhead")
        if target:
            metric = {"name": target.replace(" (ns)", ""), "value": num[target], "unit": "ns"}
    elif scenario == "MultiStream":
        mean = out["latency_ns"].get("mean")
        per_query = out["settings"].get("samples_per_query")
        if isinstance(mean, (int, float)) and mean > 0:
            qps = 1e9 / mean
            sps = qps * per_query if isinstance(per_query, int) else None
        if target:
            metric = {"name": target.replace(" (ns)", ""), "value": num[target], "unit": "ns"}
    elif scenario == "Server":
        sps = qps = num.get("Completed samples per second")
        out["scheduled_samples_per_second"] = num.get("Scheduled samples per second")
        if sps is not None:
            metric = {"name": "Completed samples per second", "value": sps, "unit": "samples/s"}
    elif scenario == "Offline":
        sps = num.get("Samples per second")
        if sps is not None:
            metric = {"name": "Samples per second", "value": sps, "unit": "samples/s"}
    out["metric"], out["samples_per_second"], out["queries_per_second"] = metric, sps, qps


def detail_messages(path: Path) -> dict:
    """The error and warning messages of LoadGen's detail log (``is_error``/``is_warning`` lines)."""
    errors, warnings = [], []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error_messages": [], "warning_messages": []}
    for line in lines:
        if not line.startswith(":::MLLOG"):
            continue
        try:
            rec = json.loads(line[len(":::MLLOG"):])
        except ValueError:
            continue
        meta = rec.get("metadata", {})
        text = f"{rec.get('key')}: {rec.get('value')}"
        if meta.get("is_error"):
            errors.append(text)
        elif meta.get("is_warning"):
            warnings.append(text)
    return {"error_messages": errors, "warning_messages": warnings}


def accuracy(path: Path, labels: np.ndarray) -> dict:
    """Top-1 from ``mlperf_log_accuracy.json`` as MLPerf's ``accuracy-imagenet.py`` computes it (first answer of
    each qsl_idx, decoded with ``RESPONSE_DTYPE``), against the records' labels."""
    entries = json.loads(path.read_text())
    seen, good = set(), 0
    for e in entries:
        idx = e["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        data = np.frombuffer(bytes.fromhex(e["data"]), RESPONSE_DTYPE)
        if len(data) and int(data[0]) == labels[idx]:
            good += 1
    total = len(seen)
    return {"top1": 100.0 * good / total if total else None, "good": good, "total": total,
            "missing": len(labels) - total, "dtype": np.dtype(RESPONSE_DTYPE).name}


# --------------------------------------------------------------------------------------------------------------------
# Before the test: what LoadGen will generate, the memory of it all, how long it will take (module docstring:
# "Fitting the machine")

OFFLINE_SLACK = 1.1  # LoadGen's Offline query: max(min_query_count, 1.1 x min duration x expected QPS) samples
GENERATE_FACTOR = 2  # SingleStream and MultiStream queries are generated for twice the min duration (Server: once)
QUERY_BYTES = 320  # LoadGen, per generated query with its first sample (measured 305 SingleStream, 346 Server)
SAMPLE_BYTES = 48  # LoadGen, per further sample of a query (MultiStream: 632 measured for a query of 8)
QUEUED_BYTES = 272  # this harness, per sample issued and waiting for the SUT (Offline: 316 measured with LoadGen's)
HARNESS_BYTES = 110 << 20  # loadgen.py beside the model: DALI's decoder, LoadGen, onnxruntime's libraries
EXECUTOR_WEIGHTS = 1.5  # mxnet: each batch size bound holds oneDNN-fused weights of its own, x the fp32 weights
MXNET_INPUTS = 5.5  # mxnet: inputs held per image of --max-batchsize beyond memory.estimate's per-image figure
ORT_ACTIVATIONS = 1.6  # onnxruntime's memory per image in flight, x memory.estimate's (MXNet's) scoring figure
ORT_SESSION_BYTES = 100 << 20  # onnxruntime's session beside memory.estimate's fixed part
FAR_FACTOR, FAR_S = 2.0, 30.0  # a test far beyond its min duration: longer than FAR_FACTOR x it and it + FAR_S


def inference_symbol(spec: ModelSpec):
    """The network the mxnet backend binds (float32 NCHW for onnxruntime: what tools/export_onnx.py exports)."""
    import resnet

    return resnet.build(spec.model, num_classes=spec.num_classes, image_shape=spec.image_shape, dtype=spec.dtype,
                        input_dtype="float32", input_layout=spec.input_layout, device_type=spec.device,
                        for_training=False)


def batch_sizes(max_batch: int) -> list[int]:
    """The sizes the mxnet backend can bind: ``max_batch`` and every power of two below it."""
    return sorted({max_batch, *(1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch)})


def bound_sizes(max_batch: int, largest: int) -> list[int]:
    """The sizes bound when no batch has more than ``largest`` samples: ``max_batch`` (bound first), those up to
    the first one not below ``largest`` (what the warm-up runs) and none above (never used)."""
    sizes = batch_sizes(max_batch)
    first = next(s for s in sizes if s >= largest)
    return sorted({max_batch, *(s for s in sizes if s <= first)})


def scenario_batch(scenario: str, max_batch: int, samples_per_query: int) -> int:
    """The largest batch a scenario runs: SingleStream 1, MultiStream a query's samples (at most ``max_batch``),
    Server and Offline ``max_batch``."""
    return {"SingleStream": 1, "MultiStream": min(max_batch, samples_per_query)}.get(scenario, max_batch)


@dataclass(frozen=True)
class TestPlan:
    """What LoadGen generates before the test starts (its ``GenerateQueries``, from the effective settings):
    ``queries`` queries of ``per_query`` samples, ``queued`` samples of which may wait in the SUT's queue at once
    (Offline: its one query; Server: every arrival, when the SUT falls behind). A performance test ends once
    ``min_queries`` queries are done and ``min_duration_s`` has passed, or at ``max_duration_s`` (0: none)."""
    scenario: str
    accuracy: bool
    queries: int
    per_query: int
    queued: int
    min_queries: int
    min_duration_s: float
    max_duration_s: float = 0.0
    qps: float = 0.0  # Server's target, Offline's expected (0 for the others)
    latency_s: float = 0.0  # SingleStream's and MultiStream's expected latency (0 for the others)

    @property
    def samples(self) -> int:
        return self.queries * self.per_query

    @property
    def loadgen_bytes(self) -> int:
        """LoadGen's generated queries and this harness's queue, bytes."""
        return self.queries * QUERY_BYTES + (self.samples - self.queries) * SAMPLE_BYTES + self.queued * QUEUED_BYTES


def plan_test(settings, scenario: str, accuracy: bool, total: int, loaded: int) -> TestPlan:
    """The ``TestPlan`` of ``settings`` (LoadGen's ``TestSettings``, after ``--user-conf``) over a QSL of ``total``
    samples, ``loaded`` of which are loaded at a time."""
    dur = settings.min_duration_ms / 1000
    mqc = settings.min_query_count
    spq = settings.multi_stream_samples_per_query if scenario == "MultiStream" else 1
    qps = {"Server": settings.server_target_qps, "Offline": settings.offline_expected_qps}.get(scenario, 0.0)
    common = {"scenario": scenario, "accuracy": accuracy, "min_queries": mqc, "min_duration_s": dur,
              "max_duration_s": settings.max_duration_ms / 1000, "qps": qps}
    if accuracy:  # every sample once, a loaded set after the other (Offline: one query a set)
        if scenario == "Offline":
            return TestPlan(queries=-(-total // loaded), per_query=loaded, queued=loaded, **common)
        return TestPlan(queries=-(-total // spq), per_query=spq, queued=total if scenario == "Server" else 0,
                        **common)
    if scenario == "Offline":
        n = max(mqc, int(OFFLINE_SLACK * dur * qps))
        return TestPlan(queries=1, per_query=n, queued=n, **common)
    if scenario == "Server":
        n = max(mqc, math.ceil(dur * qps) + 1)
        return TestPlan(queries=n, per_query=1, queued=n, **common)
    latency_ns = settings.single_stream_expected_latency_ns if scenario == "SingleStream" else \
        settings.multi_stream_expected_latency_ns
    n = max(mqc, math.ceil(GENERATE_FACTOR * settings.min_duration_ms * 1e6 / latency_ns) + 1)
    return TestPlan(queries=n, per_query=spq, queued=0, latency_s=latency_ns / 1e9, **common)


def expected_seconds(plan: TestPlan, batch: int, batch_s: float) -> float:
    """How long the test takes at the least when a batch of ``batch`` samples takes ``batch_s`` seconds: the queries
    of SingleStream and MultiStream one after the other, each as batches of at most ``batch``; Server's arrivals at
    ``plan.qps`` and its samples, like Offline's, at ``batch / batch_s`` a second."""
    rate = batch / batch_s
    if plan.scenario in ("SingleStream", "MultiStream"):
        work = (plan.queries if plan.accuracy else plan.min_queries) * math.ceil(plan.per_query / batch) * batch_s
        seconds = work if plan.accuracy else max(plan.min_duration_s, work)
    elif plan.scenario == "Server":
        seconds = max(plan.queries / max(plan.qps, 1e-9), plan.samples / rate)
    else:
        seconds = plan.samples / rate
    if not plan.accuracy and plan.max_duration_s > 0:
        seconds = min(seconds, plan.max_duration_s)
    return seconds


def far_beyond(plan: TestPlan, seconds: float) -> bool:
    """A performance test of ``seconds`` far outlasts its minimum duration (accuracy runs take what they take)."""
    dur = plan.min_duration_s
    return not plan.accuracy and seconds > max(FAR_FACTOR * dur, dur + FAR_S)


def plan_text(plan: TestPlan) -> str:
    """``"2001 queries of 1 sample"``."""
    return f"{plan.queries} quer{'y' if plan.queries == 1 else 'ies'} of {plan.per_query} " \
        f"sample{'' if plan.per_query == 1 else 's'}"


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def duration_warning(plan: TestPlan, seconds: float, batch: int, batch_s: float) -> str:
    """The one warning line of a test that far outlasts ``--time``: what LoadGen plans, how long it takes, the flag
    to lower and to about what."""
    rate, dur = batch / batch_s, plan.min_duration_s
    if plan.scenario == "Offline":
        what = f"one query of {plan.per_query} samples"
        fix = f"--count (min_query_count {plan.min_queries})" if plan.per_query == plan.min_queries else \
            f"--qps {plan.qps:g} to about {rate:.3g} (Offline's expected QPS: what the SUT does)"
    elif plan.scenario == "Server":
        what = f"{plan.queries} queries at {plan.qps:g} a second"
        fix = f"--qps {plan.qps:g} to about {rate:.3g} or less (a rate the SUT keeps up with)"
    elif plan.scenario == "SingleStream":
        what = f"{plan.min_queries} queries (min_query_count) one after the other"
        fix = f"--count to about {max(1, int(dur / batch_s))}"
    else:
        what = f"{plan.min_queries} queries (min_query_count) of {plan.per_query} samples one after the other"
        fix = f"--samples-per-query {plan.per_query} to about {max(1, int(dur * rate / plan.min_queries))} (or --count)"
    return (f"{plan.scenario}: LoadGen plans {what}; at {rate:.3g} samples/s (a batch of {batch} timed here) the test "
            f"takes about {duration_text(seconds)}, far beyond its minimum duration of {dur:g} s (--time); lower {fix}")


@dataclass(frozen=True)
class MemoryNeed:
    """The host memory of a test but LoadGen's part, bytes: ``fixed`` (weights, runtimes, the harness), ``per_image``
    for each image of a batch in flight, ``per_size`` for each batch size bound (mxnet), ``input_image`` for each
    image of a batch waiting for the model (mxnet: the workers but one), ``sample`` for each loaded QSL sample."""
    backend: str
    scenario: str
    samples_per_query: int
    fixed: int
    per_image: float
    per_size: float
    input_image: int
    sample: int
    model: str = "the model"

    def batches(self, max_batch: int, threads: int) -> int:
        """The part that depends on ``--max-batchsize`` and ``--threads``."""
        if self.backend == "onnxruntime":  # the threads run their batches at once, each with its own activations
            return math.ceil(threads * max_batch * self.per_image)
        largest = scenario_batch(self.scenario, max_batch, self.samples_per_query)
        return math.ceil(max_batch * self.per_image + len(bound_sizes(max_batch, largest)) * self.per_size
                         + (threads - 1) * max_batch * self.input_image)


def memory_need(spec: ModelSpec, cfg: LoadGenConfig, scenario: str, samples_per_query: int) -> MemoryNeed:
    """``memory.estimate``'s scoring figures for the network (the planner binds it at two small batches; nothing is
    computed), with this harness's parts. On a GPU the model's batch is checked against the GPU's free memory here
    (``memory.check_batch``, naming ``--max-batchsize``); the host then holds the runtime and its batches' input."""
    import memory

    sym = inference_symbol(spec)
    image = int(np.prod(spec.image_shape)) * 4  # float32, as the QSL holds it and the SUT feeds it
    common = {"backend": spec.backend, "scenario": scenario, "samples_per_query": samples_per_query,
              "input_image": image, "sample": image, "model": memory.model_name(sym)}
    if spec.device == "gpu":
        memory.check_batch(sym, spec.image_shape, cfg.max_batchsize, dtype=spec.dtype, training=False,
                           device_type="gpu", input_layout=spec.input_layout, flag="--max-batchsize")
        return MemoryNeed(fixed=memory.RUNTIME_BYTES + HARNESS_BYTES, per_image=2 * image, per_size=0, **common)
    counts = memory.graph_counts(sym, spec.image_shape, dtype=spec.dtype, training=False,
                                 input_layout=spec.input_layout)
    est = memory.combine(counts, training=False)
    if spec.backend == "onnxruntime":
        return MemoryNeed(fixed=est.fixed_bytes + HARNESS_BYTES + ORT_SESSION_BYTES,
                          per_image=ORT_ACTIVATIONS * est.per_image_bytes, per_size=0, **common)
    return MemoryNeed(fixed=est.fixed_bytes + HARNESS_BYTES, per_image=est.per_image_bytes + MXNET_INPUTS * image,
                      per_size=EXECUTOR_WEIGHTS * 4 * counts.param_count, **common)


def check_fits(need: MemoryNeed, plan: TestPlan, cfg: LoadGenConfig, loaded: int, budget: int, avail: int,
               source: str) -> int:
    """The test's host memory, bytes, when it fits in ``budget``; else a one-line ``UsageError`` naming the flag of
    the largest part that can shrink (the batches, the loaded samples, LoadGen's queries) and the largest value of
    it that fits beside the others (``avail`` and ``source``: what the budget was reckoned from)."""
    import memory

    fmt = memory.format_bytes
    b, th = cfg.max_batchsize, cfg.threads
    batches, qsl, lg = need.batches(b, th), loaded * need.sample, plan.loadgen_bytes
    total = need.fixed + batches + qsl + lg
    if total <= budget:
        return total
    threads = f", {th} threads" if th > 1 else ""
    parts = (f"{fmt(need.fixed)} for {need.model}'s weights, the runtimes and this harness, {fmt(batches)} for "
             f"batches of {b} ({need.backend}{threads}), {fmt(qsl)} for {loaded} loaded samples, {fmt(lg)} for "
             f"LoadGen's {plan_text(plan)}")
    shrink = {"batch": batches - need.batches(1, 1), "qsl": qsl, "loadgen": lg}
    culprit = max(shrink, key=shrink.get)
    room = budget - total + (batches if culprit == "batch" else qsl if culprit == "qsl" else lg)
    if culprit == "batch":
        flag = f"--max-batchsize {b}" + (f" with --threads {th}" if th > 1 else "")
        if need.batches(1, th) <= room:
            low, high = 1, b  # fits at low, not at high
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if need.batches(mid, th) <= room else (low, mid)
            fits = f"the largest --max-batchsize that fits{f' with --threads {th}' if th > 1 else ''} is about {low}"
        elif th > 1 and need.batches(1, 1) <= room:
            fits = "not even --max-batchsize 1 fits with so many threads; lower --threads"
        else:
            fits = "not even --max-batchsize 1 fits"
    elif culprit == "qsl":
        flag = f"--performance-sample-count {loaded}"
        n = room // max(need.sample, 1)
        fits = f"the largest --performance-sample-count that fits is about {n}" if n else "not even one sample fits"
    else:
        flag, fits = _loadgen_fit(plan, room)
    raise UsageError(f"{flag}: the {plan.scenario} test needs about {fmt(total)} ({parts}); {fmt(avail)} are "
                     f"available ({source}), {memory.MARGIN:.0%} of which is kept free; {fits}")


def _loadgen_fit(plan: TestPlan, room: int) -> tuple[str, str]:
    """(the flag and value that make LoadGen's part ``plan.loadgen_bytes``, what fits in ``room`` bytes)."""
    dur = plan.min_duration_s
    if plan.scenario == "Offline":
        per_query = SAMPLE_BYTES + QUEUED_BYTES  # a sample, in effect: the query is one
    elif plan.scenario == "Server":
        per_query = QUERY_BYTES + QUEUED_BYTES
    else:
        per_query = QUERY_BYTES + (plan.per_query - 1) * SAMPLE_BYTES
    n = max(int((room - QUERY_BYTES) // per_query) + 1, 0)  # queries (Offline: samples) that fit
    have = plan.per_query if plan.scenario == "Offline" else plan.queries
    if plan.accuracy or have <= plan.min_queries:  # min_query_count sets it
        return f"--count {plan.min_queries}", f"the largest min_query_count (--count) that fits is about {n}"
    if plan.scenario == "Offline":
        qps = n / (OFFLINE_SLACK * dur)
        return f"--qps {plan.qps:g}", (f"the largest --qps that fits is about {qps:.3g} (Offline's expected QPS: "
                                       "what the SUT does)")
    if plan.scenario == "Server":
        return f"--qps {plan.qps:g}", f"the largest --qps that fits is about {max(n - 1, 0) / dur:.3g}"
    return f"--expected-latency {plan.latency_s:g}", \
        f"the smallest --expected-latency that fits is about {GENERATE_FACTOR * dur / max(n - 1, 1):.3g} s"


def time_batch(backend, sample_shape: tuple, n: int, repeat: int = 2) -> float:
    """Seconds a batch of ``n`` samples takes through ``backend.predict`` after its warm-up: the fastest of
    ``repeat`` batches of zeros (what slows one down, other processes on the cores, does not speed the test up)."""
    x = np.zeros((n, *sample_shape), np.float32)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        backend.predict(x)
        best = min(best, time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------------------------------------------------
# One scenario in this process


def run_scenario(cfg: LoadGenConfig, spec: ModelSpec, dcfg, scenario: str, out: Path, stop: StopFlag) -> int:
    """Run one LoadGen test; write ``out/summary.json``; the exit status. A test that cannot fit in memory is refused
    before anything is written or loaded; one that would far outlast ``--time`` is warned of before it starts."""
    import mlperf_loadgen as lg

    settings = make_settings(lg, cfg, scenario)
    perf_count, plan, need_bytes = plan_within_memory(cfg, spec, dcfg, scenario, settings)
    check_writable(out / SUMMARY, "--output")
    warn_audit_config()
    import data

    data.check_record_files(dcfg, want_train=False, progress=stop.check)  # every index entry and label
    qsl = SampleLibrary(dcfg, cfg.count)
    backend = MXNetBackend(spec, dcfg, cfg.max_batchsize) if spec.backend == "mxnet" else \
        OnnxBackend(spec, cfg.threads)
    largest = scenario_batch(scenario, cfg.max_batchsize, settings.multi_stream_samples_per_query)
    backend.warm_up(largest)
    batch_s = time_batch(backend, sample_shape(dcfg), largest)
    seconds = expected_seconds(plan, largest, batch_s)
    stop.check()
    for name in (*LOADGEN_LOGS, SUMMARY):
        (out / name).unlink(missing_ok=True)  # LoadGen replaces its logs; no stale file may pass for this run's
    log.info("%s %s: %d samples in the QSL (%d performance), %s %s on %s, batch <= %d, %d thread(s); %s",
             scenario, cfg.mode, len(qsl), perf_count, spec.backend, spec.dtype, spec.device, cfg.max_batchsize,
             cfg.threads, settings_line(settings))
    log.info("LoadGen plans %s; about %.0f MiB of memory; at %.3g samples/s (a batch of %d timed here) the test "
             "takes about %s", plan_text(plan), need_bytes / (1 << 20), largest / batch_s, largest,
             duration_text(seconds))
    if far_beyond(plan, seconds):
        log.warning(duration_warning(plan, seconds, largest, batch_s))
    sut = SystemUnderTest(lg, backend, qsl, cfg.max_batchsize, cfg.threads)
    backend.hook.armed = True
    finished, elapsed = _start_test(lg, sut, qsl, settings, out, len(qsl), perf_count, stop)
    summary = summarize(out, scenario, cfg, spec, qsl, perf_count, sut, stop, finished)
    summary["plan"] = {"queries": plan.queries, "samples_per_query": plan.per_query, "samples": plan.samples,
                       "memory_bytes": need_bytes, "batch": largest, "batch_s": batch_s,
                       "samples_per_second": largest / batch_s, "expected_s": seconds}
    summary["wall_s"] = elapsed
    write_json(out / SUMMARY, summary)
    return _report(summary, sut, stop, out, finished)


def plan_within_memory(cfg: LoadGenConfig, spec: ModelSpec, dcfg, scenario: str,
                       settings) -> tuple[int, TestPlan, int]:
    """Before any work: the QSL's size and performance sample count (``settings``' override, from ``--user-conf``,
    is capped at the QSL's size), the test's plan, and its memory checked against the machine (``check_fits``:
    one-line ``UsageError``). Returns (performance sample count, plan, bytes needed)."""
    import memory

    records = len(read_val_index(dcfg))
    total = min(cfg.count or records, records)  # the QSL's samples
    perf_count = cfg.performance_sample_count or min(total, PERFORMANCE_SAMPLES)
    if perf_count > total:
        raise UsageError(f"--performance-sample-count {perf_count}: at most the QSL's {total} samples")
    if settings.performance_sample_count_override > total:
        log.info("performance_sample_count %d (--user-conf) is more than the QSL's %d samples: using %d",
                 settings.performance_sample_count_override, total, total)
        settings.performance_sample_count_override = total
    loaded = settings.performance_sample_count_override or perf_count
    plan = plan_test(settings, scenario, cfg.accuracy, total, loaded)
    need = memory_need(spec, cfg, scenario, settings.multi_stream_samples_per_query)
    budget, avail, source = memory.cpu_budget()
    return perf_count, plan, check_fits(need, plan, cfg, loaded, budget, avail, source)


def sample_shape(dcfg) -> tuple:
    """The shape of one QSL sample: the network's input in its layout, batch dimension left out."""
    from datatypes import batch_descs

    return tuple(batch_descs(dataclasses.replace(dcfg, batch_size=1), dtype="float32")[0][0].shape[1:])


def _start_test(lg, sut: SystemUnderTest, qsl: SampleLibrary, settings, out: Path, total: int, perf_count: int,
                stop: StopFlag) -> tuple[bool, float]:
    """LoadGen's ``StartTestWithLogSettings`` in a thread of its own, so that this (main) thread stays in Python and
    sees signals; returns (whether LoadGen finished, seconds)."""
    sut_h = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    qsl_h = lg.ConstructQSL(total, perf_count, sut.load_samples, sut.unload_samples)
    log_out = lg.LogOutputSettings()
    log_out.outdir = str(out)
    log_out.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = log_out
    log_settings.enable_trace = False
    done = threading.Event()

    def target():
        try:
            lg.StartTestWithLogSettings(sut_h, qsl_h, settings, log_settings, "audit.config")
        except BaseException as err:  # noqa: BLE001 - the binding's own errors (arguments): one line, not a trace
            sut.fail(f"LoadGen's StartTest failed: {describe(err)}", EXIT_FAILED)
        finally:
            done.set()

    t0 = time.perf_counter()
    threading.Thread(target=target, name="loadgen", daemon=True).start()
    deadline = None
    while not done.wait(0.1):
        if deadline is None and (stop.signum is not None or sut.failure is not None):
            if sut.failure is None:
                sut.fail(f"{stop.name}: the test was stopped", 128 + stop.signum)
            log.warning("%s: completing every outstanding and later sample with an empty answer; LoadGen gets "
                        "%g s to end its test", sut.failure[0], GRACE_S)
            deadline = time.monotonic() + GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            return False, time.perf_counter() - t0  # LoadGen still runs its clock: the caller exits the process
    elapsed = time.perf_counter() - t0
    sut.close()
    lg.DestroyQSL(qsl_h)
    lg.DestroySUT(sut_h)
    return True, elapsed


def summarize(out: Path, scenario: str, cfg: LoadGenConfig, spec: ModelSpec, qsl: SampleLibrary, perf_count: int,
              sut: SystemUnderTest, stop: StopFlag, finished: bool) -> dict:
    summary = {"schema": SCHEMA, "scenario": scenario, "mode": cfg.mode}
    text_path = out / LOADGEN_LOGS[0]
    text = text_path.read_text(errors="replace") if finished and text_path.is_file() else ""
    parsed = parse_summary(text)
    parsed.pop("scenario", None)
    parsed.pop("mode", None)
    summary.update(parsed)
    summary["loadgen"] = {**summary.get("loadgen", {}), **detail_messages(out / LOADGEN_LOGS[1]),
                          "finished": finished}
    if stop.signum is not None:
        summary["status"], summary["error"] = "interrupted", f"{stop.name}: the test was stopped"
    elif sut.failure is not None:
        summary["status"], summary["error"] = "failed", sut.failure[0]
    else:
        summary["status"], summary["error"] = "completed", None
    summary["accuracy"] = None
    if cfg.accuracy and finished and (out / LOADGEN_LOGS[2]).is_file():
        summary["accuracy"] = accuracy(out / LOADGEN_LOGS[2], qsl.labels)
    summary["samples"] = {"issued": sut.issued, "answered": sut.answered, "empty": sut.empty}
    summary["model"] = {**spec.describe(), **sut.backend.describe(), "max_batchsize": cfg.max_batchsize,
                        "threads": cfg.threads}
    summary["qsl"] = {"total": len(qsl), "performance": perf_count, "data_val": str(qsl.cfg.data_val),
                      "data_val_resize": qsl.cfg.data_val_resize}
    summary["files"] = {name: name for name in LOADGEN_LOGS if (out / name).is_file()}
    summary["cmd"] = [sys.executable, *sys.argv]
    return summary


def _report(summary: dict, sut: SystemUnderTest, stop: StopFlag, out: Path, finished: bool) -> int:
    """Log the result; print the one line of a failure; the exit status (the process ends here if LoadGen did not
    finish)."""
    where = f"{out / SUMMARY}" + ("" if finished else "; LoadGen's logs there are incomplete")
    status = None
    if stop.signum is not None:
        status = 128 + stop.signum
        log.error("%s: stopped the %s test; %d samples answered, %d completed with an empty answer (summary: %s)",
                  stop.name, summary["scenario"], sut.answered, sut.empty, where)
    elif sut.failure is not None:
        message, status = sut.failure
        ended = "ended" if finished else f"was cut short after {GRACE_S:g} s"
        print(f"{PROG}: error: {message}; every sample was completed ({sut.empty} with an empty answer) and the "
              f"test {ended} (summary: {where})", file=sys.stderr)
    if status is not None:
        if not finished:  # LoadGen's thread is still inside StartTest: end the process without waiting for it
            sys.stderr.flush()
            logging.shutdown()
            os._exit(status)
        return status
    line = f"{summary['scenario']} {summary['mode']}: "
    if summary["accuracy"] is not None:
        a = summary["accuracy"]
        line += f"top-1 {a['top1']:.2f}% ({a['good']}/{a['total']})"
    else:
        metric = summary.get("metric") or {}
        line += f"{summary.get('result')}"
        if summary.get("invalid_reasons"):
            line += f" ({'; '.join(summary['invalid_reasons'])})"
        if metric:
            value = f"{metric['value'] / 1e6:.3f} ms" if metric["unit"] == "ns" else \
                f"{metric['value']:.1f} {metric['unit']}"
            line += f", {metric['name']} {value}"
    log.info("%s; summary: %s", line, where)
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Several scenarios: one child process each


def run_children(argv: Sequence[str], cfg: LoadGenConfig, stop: Children) -> int:
    """Each scenario of the comma list in a process of its own (``--output/<scenario>``), one after the other; the
    combined ``--output/summary.json``. A signal is passed on to the running child and ends the list."""
    cfg.output.mkdir(parents=True, exist_ok=True)
    check_writable(cfg.output / SUMMARY, "--output")
    combined = {"schema": SCHEMA, "status": "completed", "scenarios": {}, "cmd": [sys.executable, *sys.argv]}
    status = 0
    for scenario in cfg.scenarios:
        if stop.signum is not None:  # between two scenarios
            status, combined["status"] = 128 + stop.signum, "interrupted"
            break
        out = cfg.output / scenario
        cmd = child_command(argv, scenario, out)
        log.info("%s: %s", scenario, " ".join(cmd))
        (out / SUMMARY).unlink(missing_ok=True)
        code = stop.popen(cmd).wait()  # a session of its own: a signal reaches it once, through here
        try:
            result = json.loads((out / SUMMARY).read_text())
        except (OSError, ValueError):
            result = {"status": "failed", "error": f"exit status {code}, no summary written"}
        result["exit_status"] = code
        combined["scenarios"][scenario] = result
        if code != 0:
            status = code
            combined["status"] = "interrupted" if stop.signum is not None else "failed"
            break
    write_json(cfg.output / SUMMARY, combined)
    log.info("summary of %d scenario(s): %s", len(combined["scenarios"]), cfg.output / SUMMARY)
    return status


def child_command(argv: Sequence[str], scenario: str, out: Path) -> list[str]:
    """This command for one scenario: later flags win, so ``--scenario`` and ``--output`` are appended."""
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--scenario", scenario, "--output", str(out)]


# --------------------------------------------------------------------------------------------------------------------
# Command line


def visible_gpus(assume: int | None) -> int:
    """GPUs MXNet can use here (a CPU build: 0, without loading MXNet), or ``--assume-gpus``."""
    if assume is not None:
        return assume
    import gpu

    if not gpu.read_build().cuda:
        return 0
    problem = gpu.check()
    if problem:
        raise UsageError(problem)
    from common import num_gpus

    return num_gpus()


def dry_run(argv: Sequence[str], args, cfg: LoadGenConfig, spec: ModelSpec) -> int:
    """Print what each scenario would run: its settings and its command. A comma list asks each scenario's own
    command (with ``--dry-run``), since LoadGen applies its mlperf.conf in the first ``FromConfig`` of a process
    only."""
    import mlperf_loadgen as lg

    data_config(args, cfg.max_batchsize)
    if len(cfg.scenarios) > 1:
        for scenario in cfg.scenarios:
            res = subprocess.run(child_command(argv, scenario, cfg.output / scenario), capture_output=True, text=True)
            sys.stdout.write(res.stdout)
            if res.returncode:
                sys.stderr.write(res.stderr)
                return res.returncode
        return 0
    scenario = cfg.scenarios[0]
    settings = make_settings(lg, cfg, scenario)
    model = spec.describe()
    weights = model.get("onnx") or model.get("checkpoint") or "random weights"
    print(f"{scenario} {cfg.mode}: {spec.backend} {spec.dtype} on {spec.device}, ResNet-{spec.model.num_layers} "
          f"{weights}, batch <= {cfg.max_batchsize}, {cfg.threads} thread(s), QSL {cfg.count or 'all of val.rec'}, "
          f"output {cfg.output}; {settings_line(settings)}")
    print(" ".join([sys.executable, str(Path(__file__).resolve()), *_without_dry_run(argv)]))
    return 0


def _without_dry_run(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--dry-run`` and ``--assume-gpus N``: the command that runs for real."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--assume-gpus":
            skip = True
        elif a != "--dry-run" and not a.startswith("--assume-gpus="):
            out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with Children(PROG) as stop:  # from the first moment: a signal during set-up ends the run cleanly too
        try:
            return _main(argv, stop)
        except Stopped:
            log.error("%s: stopped before the test started; nothing was run", stop.name)
            return 128 + stop.signum


def _main(argv: list[str], stop: Children) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from common import config_from

    cfg = config_from(LoadGenConfig, args)
    scenarios = cfg.scenarios
    if args.assume_gpus is not None and (not args.dry_run or args.assume_gpus < 0):
        raise UsageError(f"--assume-gpus {args.assume_gpus}: only with --dry-run, and at least 0")
    gpus = visible_gpus(args.assume_gpus)
    spec = model_spec(args, gpus)
    if args.dry_run:
        warn_audit_config()
        return dry_run(argv, args, cfg, spec)
    dcfg = data_config(args, cfg.max_batchsize)
    check_files(args, spec, dcfg)
    if len(scenarios) > 1:
        return run_children(argv, cfg, stop)
    return run_scenario(cfg, spec, dcfg, scenarios[0], cfg.output, stop)


if __name__ == "__main__":
    sys.exit(run_main(main))
