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
  batch to fill: nothing is ever held back, so ``flush_queries`` has nothing to flush), run the model, and complete
  each sample with ``QuerySamplesComplete`` from the worker thread (LoadGen releases the GIL there).
* Runtimes (``--backend``): ``mxnet``, the checkpoint in a Module bound for inference as ``--only-inference``
  scores it; ``onnxruntime``, an ``InferenceSession`` on ``--model-file``; ``openvino``, OpenVINO's CPU plugin on the
  same file (or its INT8 IR); each in the precisions ``--dtype`` names (float32, bfloat16, int8: ``runtimes.py``).
  One module each (``runtime_<name>.py``), opened by name through ``runtimes.open_runtime``.

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

A debug hook for testing that path: ``RN50_LOADGEN_FAIL_AFTER=K`` makes the runtime raise after K batches of the test
(the warm-up before the test is not counted): a real failure in the worker thread, handled as any other.

An ``audit.config`` in the working directory is reported before the run (one warning line): LoadGen applies it
(MLPerf's compliance tests TEST01/TEST04 use it), which changes the run silently otherwise.

Before any work, the test is planned (``loadgen_plan.py``): ``TestSettings`` from the flags, then ``--user-conf``
(LoadGen's ``mlperf.conf`` and the file over them, the settings of an official run); what LoadGen will generate;
its host memory against what the machine has (more is one line and exit 2, naming the flag to lower and the value
that fits); after the warm-up, a batch timed and the test's duration expected from it (one warning line when that
is far beyond ``--time``). The summary's ``plan`` holds the numbers.

Outputs in ``--output`` (a comma list: one folder per scenario below it): LoadGen's ``mlperf_log_summary.txt``,
``mlperf_log_detail.txt``, ``mlperf_log_accuracy.json``, ``mlperf_log_trace.json`` (earlier ones of these names are
replaced), and ``summary.json`` (written to a temporary file and renamed), parsed from the summary
(``loadgen_logs.py``):

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
                      the test's duration expected from them (``expected_s``); see ``loadgen_plan.py``
    ``model``, ``qsl``, ``cmd``   what ran: backend, dtype, device, checkpoint or model file, batch sizes, threads
                      (onnxruntime: its providers; openvino: streams, precision hint); the QSL's size and
                      performance sample count; the command line
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
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Sequence  # noqa: E402

import numpy as np  # noqa: E402

from common import (Children, DataError, Parser, StopFlag, Stopped, ToolkitError, UsageError,  # noqa: E402
                    available_cores, check_image_shape, enable_amx, check_writable, finite_float, float_list,
                    int_list, path_arg, run_main, setup_logging, write_json)
from loadgen_logs import LOADGEN_LOGS, RESPONSE_DTYPE, accuracy, detail_messages, parse_summary  # noqa: E402
from loadgen_plan import (PERFORMANCE_SAMPLES, SCENARIOS, LoadGenConfig, TestPlan, check_fits,  # noqa: E402
                          duration_text, duration_warning, expected_seconds, far_beyond, make_settings, memory_need,
                          plan_test, plan_text, scenario_batch, settings_line, time_batch)
import calibration  # noqa: E402
from runtimes import FILE_RUNTIMES, RUNTIMES, ModelSpec, Runtime, open_runtime  # noqa: E402

log = logging.getLogger("loadgen")

PROG = "loadgen.py"
SCHEMA = "rn50-loadgen/1"
EMPTY_ANSWER = -1.0  # the answer of a sample that could not be scored: never a label
GRACE_S = 10.0  # after a failure or a signal: how long LoadGen gets to end its test before the process exits anyway
EXIT_FAILED = 1  # the model path failed
SUMMARY = "summary.json"


# --------------------------------------------------------------------------------------------------------------------
# Flags and the run's configuration


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="MLPerf Inference LoadGen over the toolkit's scoring path: QSL over val.rec, "
                                      "a batching SUT (mxnet, onnxruntime or openvino), the four scenarios, a JSON "
                                      "summary.")
    _add_loadgen_args(p)
    _add_model_args(p)
    _add_data_args(p)
    return p


def _add_loadgen_args(p: Parser) -> None:
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
                   help="SUT worker threads (onnxruntime and openvino run their batches at once: memory x "
                        "--threads; openvino one stream each)")
    g.add_argument("--user-conf", type=path_arg, default=None,
                   help="LoadGen user.conf: LoadGen's mlperf.conf and then this file override the flags "
                        "(settings.FromConfig(path, 'resnet50', scenario))")
    g.add_argument("--output", type=path_arg, default=Path("runs/loadgen"),
                   help="folder of LoadGen's logs and summary.json")
    g.add_argument("--dry-run", action="store_true",
                   help="check the flags (not the files), print each scenario's settings and command, run nothing")
    g.add_argument("--assume-gpus", type=int, default=None,
                   help="with --dry-run: plan as on a machine with this many GPUs")


def _add_model_args(p: Parser) -> None:
    import resnet  # MXNet loads here, after main has begun to handle signals

    m = p.add_argument_group("Model", "the network and its weights")
    m.add_argument("--backend", choices=tuple(RUNTIMES), default="mxnet", help="inference runtime")
    m.add_argument("--model-file", "--onnx", dest="model_file", type=path_arg, default=None,
                   help="onnxruntime, openvino: the model file (default: <model-prefix>-<epoch:04d>.onnx as "
                        "tools/export_onnx.py writes it; --dtype int8: the -int8.onnx or -int8.xml that "
                        "tools/quantize.py writes)")
    m.add_argument("--model-prefix", type=path_arg, default=None, help="checkpoint prefix")
    m.add_argument("--load-epoch", type=int, default=None,
                   help="checkpoint NNNN of --model-prefix (mxnet without it: random weights, throughput only)")
    m.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "int8"), default="float32",
                   help="precision: float16 (mxnet on GPUs), bfloat16 (mxnet, openvino; CPUs with AVX512_BF16 or "
                        "AMX), int8 (the models tools/quantize.py writes)")
    m.add_argument("--num-classes", type=int, default=1000, help="number of classes")
    m.add_argument("--image-shape", type=int_list, default=(3, 224, 224),
                   help="C,H,W of the network input (C=4: NVIDIA's zero 4th channel of the FP16 recipe)")
    m.add_argument("--input-layout", choices=("NCHW", "NHWC"), default="NCHW", help="layout of the input (mxnet)")
    resnet.add_model_args(p)


def _add_data_args(p: Parser) -> None:
    from datatypes import RGB_MEAN, RGB_STD

    d = p.add_argument_group("Data", "the validation set, preprocessed as the validation pass does it")
    d.add_argument("--data-root", type=path_arg, default=None, help="folder with val.rec and val.idx")
    d.add_argument("--data-val", type=path_arg, default=None,
                   help="validation .rec (default: <data-root>/val.rec; its .idx beside it)")
    d.add_argument("--data-val-resize", type=int, default=None,
                   help="resize the shorter side to this before the center crop (default: 256/224 of the crop)")
    d.add_argument("--rgb-mean", type=float_list, default=RGB_MEAN, help="per-channel mean (0-255 scale)")
    d.add_argument("--rgb-std", type=float_list, default=RGB_STD, help="per-channel std (0-255 scale)")


def model_spec(args, gpus: int) -> ModelSpec:
    """The model flags checked against each other and the machine (no file is read)."""
    import resnet
    from common import config_from

    shape = check_image_shape(args.image_shape)
    if args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes}: must be at least 1")
    if args.load_epoch is not None and args.model_prefix is None:
        raise UsageError("--load-epoch needs --model-prefix (the checkpoints' prefix)")
    if args.load_epoch is not None and args.load_epoch < 0:
        raise UsageError(f"--load-epoch {args.load_epoch}: must be at least 0")
    device = "gpu" if gpus else "cpu"
    model_file = None
    if args.backend in FILE_RUNTIMES:
        model_file = _model_file(args)
        device = "cpu"  # the runtime picks its devices; the QSL's tensors are on the host either way
    elif args.model_file is not None:
        raise UsageError(f"--model-file is for --backend {' or '.join(FILE_RUNTIMES)}; --backend mxnet runs "
                         "--model-prefix and --load-epoch")
    calibration.check_dtype(args.backend, args.dtype, device)
    if args.dtype == "int8" and args.backend == "mxnet" and args.load_epoch is None:
        raise UsageError("--dtype int8 needs the INT8 checkpoint: --model-prefix and --load-epoch (tools/quantize.py "
                         "writes it)")
    return ModelSpec(args.backend, args.dtype, device, args.model_prefix, args.load_epoch, model_file,
                     args.num_classes, shape, args.input_layout, config_from(resnet.ModelConfig, args))


def _model_file(args) -> Path:
    """The model file of onnxruntime or openvino: ``--model-file``, else the name ``tools/export_onnx.py`` (float32)
    or ``tools/quantize.py`` (int8) gives it."""
    if args.input_layout != "NCHW":
        raise UsageError("--input-layout NHWC: the ONNX model's input is N,C,H,W; leave --input-layout out")
    if args.model_file is not None:
        return args.model_file
    if args.model_prefix is None or args.load_epoch is None:
        raise UsageError(f"--backend {args.backend} needs --model-file PATH (or --model-prefix and --load-epoch: the "
                         "file tools/export_onnx.py, or for --dtype int8 tools/quantize.py, writes)")
    return calibration.default_model_file(args.model_prefix, args.load_epoch, args.backend, args.dtype)


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
    if spec.model_file is not None:
        calibration.check_model_file(spec.model_file, spec.backend, spec.dtype)


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

    def batch(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The samples ``indices`` stacked, into ``out`` (of that many samples) when given."""
        return np.stack([self.samples[i] for i in indices], out=out)


# --------------------------------------------------------------------------------------------------------------------
# SUT: a queue, worker threads that batch, and completion of every sample whatever happens


class SystemUnderTest:
    """``issue_queries`` enqueues; ``threads`` workers batch, predict and complete. After ``fail`` (a failure, a
    signal) every queued and every later sample is completed at once with ``EMPTY_ANSWER``."""

    def __init__(self, lg, runtime: Runtime, qsl: SampleLibrary, max_batch: int, threads: int):
        self.lg, self.runtime, self.qsl, self.max_batch = lg, runtime, qsl, max_batch
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.failure: tuple[str, int] | None = None  # (one-line message, exit status); the first one wins
        self.issued = self.answered = self.empty = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self.sample_shape = tuple(qsl.cfg.sample_shape)
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
            known = isinstance(err, ToolkitError)  # a record that does not decode: DataError, exit 4
            self.fail(str(err) if known else f"loading samples: {describe(err)}",
                      err.exit_status if known else EXIT_FAILED)

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
                    indices = [index for _, index in batch]
                    classes = self.runtime.predict(self.qsl.batch(indices, self._buffer(len(indices))))
            except BaseException as err:  # noqa: BLE001 - nothing may reach LoadGen
                self.fail(f"the model path ({self.runtime.name} backend) failed: {describe(err)}", EXIT_FAILED)
            finally:
                self._complete(batch, classes)

    def _buffer(self, n: int) -> np.ndarray:
        """This worker thread's batch of ``n`` samples, made once and reused (a new 19 MB array per batch of 32 at
        224 px cost 4% of an INT8 batch in page faults; the runtimes are done with a batch when ``predict``
        returns)."""
        buffers = self._local.__dict__.setdefault("buffers", {})
        if n not in buffers:
            buffers[n] = np.empty((n, *self.sample_shape), np.float32)
        return buffers[n]

    def _complete(self, batch, classes) -> None:
        """Answer every sample of ``batch``: its class as float32, or ``EMPTY_ANSWER`` without ``classes``."""
        try:
            values = None if classes is None else np.asarray(classes).astype(RESPONSE_DTYPE).reshape(-1)
            if values is not None and len(values) != len(batch):
                self.fail(f"the {self.runtime.name} backend answered {len(values)} of {len(batch)} samples",
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
    runtime = open_runtime(spec.backend, spec, dcfg, cfg.max_batchsize, cfg.threads)
    largest = scenario_batch(scenario, cfg.max_batchsize, settings.multi_stream_samples_per_query)
    runtime.warm_up(largest)
    batch_s = time_batch(runtime, sample_shape(dcfg), largest)
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
    sut = SystemUnderTest(lg, runtime, qsl, cfg.max_batchsize, cfg.threads)
    runtime.hook.armed = True
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
    summary["model"] = {**spec.describe(), **sut.runtime.describe(), "max_batchsize": cfg.max_batchsize,
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


def gpu_count(assume: int | None) -> int:
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
    weights = model.get("model_file") or model.get("checkpoint") or "random weights"
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
    enable_amx()  # before MXNet or OpenVINO run anything: oneDNN's AMX kernels, as the toolkit's scoring has them
    with Children(PROG) as stop:  # from the first moment: a signal during set-up ends the run cleanly too
        try:
            return _main(argv, stop)
        except Stopped:
            log.error("%s: stopped before the test started; nothing was run", stop.name)
            return 128 + stop.signum


def _main(argv: list[str], stop: Children) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from common import config_from

    cfg = config_from(LoadGenConfig, args)
    scenarios = cfg.scenarios
    if args.assume_gpus is not None and (not args.dry_run or args.assume_gpus < 0):
        raise UsageError(f"--assume-gpus {args.assume_gpus}: only with --dry-run, and at least 0")
    gpus = gpu_count(args.assume_gpus)
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
