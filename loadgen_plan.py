"""A LoadGen test before it runs: its settings from the flags, what LoadGen will generate for it, and whether that
fits the machine, in memory and in time. Nothing here runs LoadGen: with what this module reckons, ``loadgen.py``
refuses a test that cannot fit before any work, and warns of one that would far outlast ``--time`` before it starts.

Settings: the flags set LoadGen's ``TestSettings`` (LoadGen's own defaults otherwise: 10 s, 100 queries, not
MLPerf's official 600 s): ``--time`` min_duration, ``--count`` min_query_count (when given), ``--qps`` Server's target
and Offline's expected QPS, ``--max-latency`` Server's target latency, ``--expected-latency`` the SingleStream and
MultiStream latency LoadGen plans its queries with, ``--samples-per-query`` MultiStream's 8. ``--user-conf`` then
overrides them: ``settings.FromConfig(path, "resnet50", scenario)`` loads LoadGen's built-in ``mlperf.conf`` (600 s,
ResNet-50's 1024 performance samples, Server's 15 ms, ...) and the file over it: the settings of an official run.
LoadGen applies its ``mlperf.conf`` only in the first ``FromConfig`` of a process, which is one reason each scenario
of a comma list runs in a process of its own.

Fitting the machine: the settings decide what LoadGen generates before its test starts (all of it, up front:
``GenerateQueries``). Offline: one query of max(min_query_count, 1.1 x --time x --qps) samples, all issued at once;
Server: max(min_query_count, --time x --qps) queries of one sample; SingleStream and MultiStream:
max(min_query_count, 2 x --time / --expected-latency) queries of 1 or --samples-per-query samples; accuracy mode:
every QSL sample once. Its host memory is estimated with the model ``train.py`` refuses batches with
(``memory.estimate``'s scoring figures: weights, runtime, activations per image) and the harness's own parts:

    mxnet        fixed + (per image + 5.5 x input) x --max-batchsize + 1.5 x fp32 weights x (batch sizes bound)
                 + input x --max-batchsize x (--threads - 1)     (the model runs one batch at a time; each bound
                 size holds oneDNN-fused weights of its own; each waiting worker holds its batch)
    onnxruntime  fixed + 100 MiB + 1.6 x per image x --max-batchsize x --threads     (the threads' batches run at once)
    openvino     as onnxruntime (one stream per thread; measured below it)
    all          + 110 MiB (DALI's decoder, LoadGen) + C x H x W x 4 bytes per loaded sample
                 + LoadGen's queries: 320 bytes a query, 48 a further sample of it, 272 a sample issued while the
                 SUT is busy (Offline's whole query; Server's arrivals when the SUT falls behind)

On a GPU the model's batch is checked against the GPU's free memory (``memory.check_batch``) and the host holds the
rest. More than the machine has available, less ``memory.MARGIN``, reckoned as for ``train.py`` (MemAvailable or
the cgroup's limit), is one line and exit 2 (``check_fits``): it names the flag of the largest part that can shrink
(``--max-batchsize`` with ``--threads``, ``--performance-sample-count``, ``--qps``, ``--expected-latency`` or
``--count``) and the largest (or smallest) value of it that fits beside the rest. Offline's query is generated and
issued whole: a ``--qps`` far beyond the machine needs the memory of all its samples before the first one is scored.

The duration: after the warm-up, the fastest of two batches of the scenario's size (SingleStream 1, MultiStream a
query's samples up to --max-batchsize, else --max-batchsize) is timed. A performance test takes at least: Offline its
samples at that rate; Server max(the schedule's --time, its samples at that rate); SingleStream and MultiStream
max(--time, min_query_count queries one after the other). When that is more than both 2 x and 30 s beyond the
minimum duration, one warning line gives it and the flag to lower (Offline and Server: --qps to about the rate
timed; SingleStream --count; MultiStream --samples-per-query or --count).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import UsageError
from runtime_mxnet import batch_sizes
from runtimes import FILE_RUNTIMES, ModelSpec, inference_symbol

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MLPERF_MODEL = "resnet50"  # the model name of LoadGen's mlperf.conf and of user.conf keys
PERFORMANCE_SAMPLES = 1024  # ResNet-50's performance_sample_count in MLPerf's mlperf.conf

# LoadGen's part measured with a SUT that answers at once, 0.2 to 2.2 million samples; the rest as the peak resident
# set of loadgen.py on a 2-core Intel Xeon (family 6, model 167), oneDNN, ResNet-18 and -50 at 32 and 224 px,
# batches 1 to 4096, 1 to 3 threads: 0.77 to 0.98 of the estimate over 20 runs
OFFLINE_SLACK = 1.1  # LoadGen's Offline query: max(min_query_count, 1.1 x min duration x expected QPS) samples
GENERATE_FACTOR = 2  # SingleStream and MultiStream queries are generated for twice the min duration (Server: once)
QUERY_BYTES = 320  # LoadGen, per generated query with its first sample (measured 305 SingleStream, 346 Server)
SAMPLE_BYTES = 48  # LoadGen, per further sample of a query (MultiStream: 632 measured for a query of 8)
QUEUED_BYTES = 272  # the harness, per sample issued and waiting for the SUT (Offline: 316 measured with LoadGen's)
HARNESS_BYTES = 110 << 20  # loadgen.py beside the model: DALI's decoder, LoadGen, onnxruntime's libraries
EXECUTOR_WEIGHTS = 1.5  # mxnet: each batch size bound holds oneDNN-fused weights of its own, x the fp32 weights
MXNET_INPUTS = 5.5  # mxnet: inputs held per image of --max-batchsize beyond memory.estimate's per-image figure
ORT_ACTIVATIONS = 1.6  # onnxruntime's memory per image in flight, x memory.estimate's (MXNet's) scoring figure
ORT_SESSION_BYTES = 100 << 20  # onnxruntime's session beside memory.estimate's fixed part
FAR_FACTOR, FAR_S = 2.0, 30.0  # a test far beyond its min duration: longer than FAR_FACTOR x it and it + FAR_S


# --------------------------------------------------------------------------------------------------------------------
# The flags and LoadGen's settings


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


# --------------------------------------------------------------------------------------------------------------------
# What LoadGen generates, the memory of it all, how long it takes


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
        if self.backend in FILE_RUNTIMES:  # the threads run their batches at once, each with its own activations
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
    counts = memory.graph_counts(sym, spec.image_shape, dtype="float32" if spec.dtype == "int8" else spec.dtype,
                                 training=False, input_layout=spec.input_layout)
    est = memory.combine(counts, training=False)
    if spec.backend in FILE_RUNTIMES:  # OpenVINO measured alike (its plugin beside the weights, streams at once)
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


def time_batch(runtime, sample_shape: tuple, n: int, repeat: int = 2) -> float:
    """Seconds a batch of ``n`` samples takes through ``runtime.predict`` after its warm-up: the fastest of
    ``repeat`` batches of zeros (what slows one down, other processes on the cores, does not speed the test up)."""
    x = np.zeros((n, *sample_shape), np.float32)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        runtime.predict(x)
        best = min(best, time.perf_counter() - t0)
    return best

