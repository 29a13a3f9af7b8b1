"""How much memory a batch needs, how much there is, and a one-line refusal when it does not fit.

A batch that does not fit used to end in a numpy MemoryError traceback or an OOM kill halfway through a run.
``check_batch`` refuses it up front instead, in one line, with what the batch needs, what is available and the
largest batch that fits.

The estimate
------------
``estimate`` derives the need from the graph itself, then scales it by factors fitted to measurements:

* activations, per image: what MXNet's own memory planner (the ``MXPlanMemory`` pass, run by binding the symbol on
  the CPU at two small batches; nothing is computed and the buffers are never touched) reserves for the forward
  pass, and when training the backward pass, divided by the batch difference. The planner counts every element as
  4 bytes; the executor allocates by dtype, so the figure is scaled by the bytes per element of the graph's
  batch-dependent outputs (shape and type inference over ``sym.get_internals()``): 2-byte where the graph computes
  in float16 or bfloat16. Plus the input batch twice (the iterator's array and the executor's copy).
* fixed: the parameters, counted from the graph's arguments by dtype: for training the executor's weights and
  gradients, the SGD momentum (fp32), an fp32 master copy of weights narrower than fp32 (``multi_precision``) and
  Module's host copy of the parameters; for scoring the weights and the host copy. Batch-independent graph outputs
  (the bfloat16 casts of the weights) are added like activations. Then the MXNet runtime: the resident size of a
  process that has imported MXNet (measured: 212 MiB) and a per-mode constant.

    per_image = K_ACT * planned_bytes_per_image + 2 * input_bytes_per_image
    fixed     = RUNTIME + C + K_STATE * state_bytes * (1 + K_DEV * (num_devices - 1)) + K_ACT * planned_fixed_bytes

Every CPU device holds its share of the activations (the planner's figure per image does not change with the split)
and its own weights and gradients; ``K_DEV`` is what each device after the first adds, as a fraction of the
single-device state, measured with the ``device`` kvstore the toolkit uses.

Calibration (CPU)
-----------------
``tools/bench_memory.py`` measures the peak resident set of a fresh process per configuration and ``--fit`` solves
for the factors, then scales C, K_STATE and K_ACT up until no measurement exceeds its estimate (the estimate is at
least every measured peak). The 39 measurements, the CPU they were made on and what the factors say are in
``docs/performance.md`` ("Memory").

bfloat16 cannot run on that CPU (no AVX512_BF16 or AMX-BF16): its estimate is the same formula over the bfloat16
graph (2-byte activations where the graph computes in bfloat16, fp32 weights and optimizer state, the 2-byte weight
casts as a fixed part), not a measurement. float16 runs on GPUs only; on a GPU (``device_type="gpu"``) the estimate
counts the graph's activations and parameters at face value (factors 1, no host copy or runtime, plus the largest
cuDNN workspace the convolutions allow), and is not measured here either.

Safety margin: ``check_batch`` keeps ``MARGIN`` (10%) of the available memory free. The estimate itself already
errs on the safe side (it is at least every measured peak), so the margin is for what it leaves out: the input
pipeline's own buffers (DALI's or the decoder's prefetched batches, about 0.6 MiB per float32 image at 224 px and
batch in the queue: 250 MiB for three batches of 140), memory other processes take while the run starts, and
MemAvailable being itself an estimate of what the kernel can reclaim. On this 24 GiB machine 10% is 2.4 GiB.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import UsageError

MiB = 1 << 20
GiB = 1 << 30

# Factors fitted by `python tools/bench_memory.py --fit` (see the module docstring for the measurements).
RUNTIME_BYTES = 212 * MiB  # resident size of a Python process right after `import mxnet` (measured, 212 +- 1 MiB)
FACTORS = {
    # mode: (C: constant bytes, K_STATE, K_DEV, K_ACT)
    "train": (50 * MiB, 1.110, 1.296, 0.958),
    "score": (24 * MiB, 1.699, 0.506, 1.008),
}
MARGIN = 0.10  # of the available memory, kept free by check_batch
PLAN_TARGET = 64 * MiB  # batch difference of the two planning binds: enough for the planner's whole-MiB rounding
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class Estimate:
    """Memory a run needs: ``fixed_bytes`` whatever the batch, plus ``per_image_bytes`` for each image of the
    per-process batch. ``runtime_bytes`` is the part of ``fixed_bytes`` that a process which has imported MXNet
    already holds."""
    fixed_bytes: int
    per_image_bytes: int
    runtime_bytes: int = 0

    def total(self, batch: int) -> int:
        return self.fixed_bytes + batch * self.per_image_bytes

    def largest_batch(self, budget_bytes: int) -> int:
        """The largest batch whose total fits in ``budget_bytes`` (0 if not even the fixed part fits)."""
        if budget_bytes < self.fixed_bytes + self.per_image_bytes:
            return 0
        return int((budget_bytes - self.fixed_bytes) // max(self.per_image_bytes, 1))


@dataclass(frozen=True)
class GraphCounts:
    """What ``estimate`` reads off a symbol, in bytes (``planned_*`` already at the graph's dtypes)."""
    param_count: int
    state_bytes: int  # parameters and optimizer state, as held for this mode (see the module docstring)
    planned_per_image: int
    planned_fixed: int
    input_per_image: int
    workspace_bytes: int  # the largest cuDNN workspace a convolution allows (GPU only)


def _itemsize(t) -> int:
    return np.dtype(t).itemsize


def _data_dtype(sym, dtype: str):
    """The dtype of the ``data`` input: the variable's own (``Variable(dtype=...)``), else what ``dtype`` implies."""
    if "__dtype__" in sym.attr_dict().get("data", {}):
        arg_types, _, _ = sym.infer_type_partial()
        found = dict(zip(sym.list_arguments(), arg_types)).get("data")
        if found is not None:
            return np.dtype(found)
    return np.dtype(np.float16 if dtype == "float16" else np.float32)


def _plan_mib(sym, shapes: dict, type_dict: dict, grad_req: dict) -> int:
    """MiB MXNet's memory planner reserves for the graph's internal outputs (4 bytes per element, whole MiB)."""
    import mxnet as mx

    old = os.environ.get("MXNET_SUBGRAPH_VERBOSE")
    os.environ["MXNET_SUBGRAPH_VERBOSE"] = "0"  # binding a scoring graph would log the oneDNN fusion each time
    try:
        ex = sym.simple_bind(mx.cpu(), grad_req=grad_req, type_dict=type_dict, **shapes)
        text = ex.debug_str()
        del ex
    finally:
        if old is None:
            os.environ.pop("MXNET_SUBGRAPH_VERBOSE", None)
        else:
            os.environ["MXNET_SUBGRAPH_VERBOSE"] = old
    found = re.findall(r"Total (\d+) MB allocated", text)
    if not found:
        raise RuntimeError("MXNet's executor did not report its planned memory (debug_str has no 'Total ... MB "
                           "allocated')")
    return int(found[-1])


def graph_counts(sym, image_shape, *, dtype: str, training: bool, device_type: str = "cpu",
                 input_layout: str = "NCHW") -> GraphCounts:
    """Parameters, optimizer state and planned activations of ``sym`` (inputs ``data`` and ``*_label``)."""
    c, h, w = image_shape
    data_dtype = _data_dtype(sym, dtype)

    def shapes(batch):
        data = (batch, c, h, w) if input_layout == "NCHW" else (batch, h, w, c)
        return {"data": data, **{n: (batch,) for n in labels}}

    args = sym.list_arguments()
    labels = [n for n in args if n.endswith("_label")]
    inputs = {"data", *labels}
    arg_shapes, _, aux_shapes = sym.infer_shape(**shapes(1))
    arg_types, _, aux_types = sym.infer_type(data=data_dtype)
    state = 0
    count = 0
    for name, shape, t in zip(args, arg_shapes, arg_types):
        if name in inputs:
            continue
        n, item = int(np.prod(shape)), _itemsize(t)
        count += n
        master = 4 if item < 4 else 0  # multi_precision keeps an fp32 copy of narrower weights
        if device_type == "cpu":  # Module keeps a host copy of every parameter besides the executor's
            state += n * (3 * item + 4 + master) if training else n * 2 * item
        else:
            state += n * (2 * item + 4 + master) if training else n * item
    aux_copies = 2 if device_type == "cpu" else 1
    state += sum(int(np.prod(s)) * _itemsize(t) * aux_copies for s, t in zip(aux_shapes, aux_types))

    # bytes per element of the graph's own outputs, batch-dependent and not
    internals = sym.get_internals()
    names = internals.list_outputs()
    variables = set(internals.list_arguments()) | set(internals.list_auxiliary_states())
    _, out1, _ = internals.infer_shape(**shapes(1))
    _, out2, _ = internals.infer_shape(**shapes(2))
    _, out_types, _ = internals.infer_type(data=data_dtype)
    per = {"bytes": 0, "elems": 0}
    fix = {"bytes": 0, "elems": 0}
    for name, s1, s2, t in zip(names, out1, out2, out_types):
        if name in variables:
            continue
        n1, n2 = int(np.prod(s1)), int(np.prod(s2))
        part, n = (per, n2 - n1) if n2 != n1 else (fix, n1)
        part["bytes"] += n * _itemsize(t)
        part["elems"] += n

    # the planner, at batch 1 and at a batch that makes its whole-MiB rounding small
    type_dict = {n: t for n, t in zip(args, arg_types)}
    grad_req = {n: ("write" if training and n not in inputs else "null") for n in args}
    plan1 = _plan_mib(sym, shapes(1), type_dict, grad_req)
    step = min(64, max(8, math.ceil(PLAN_TARGET / MiB / max(plan1, 1))))
    plan2 = _plan_mib(sym, shapes(1 + step), type_dict, grad_req)
    per_image4 = (plan2 - plan1) * MiB / step
    fixed4 = max(plan1 * MiB - per_image4, 0.0)
    ratio_img = per["bytes"] / (4 * per["elems"]) if per["elems"] else 1.0
    ratio_fix = fix["bytes"] / (4 * fix["elems"]) if fix["elems"] else 1.0

    workspace = 0
    if device_type == "gpu":
        for node in json.loads(sym.tojson())["nodes"]:
            if node["op"] == "Convolution":
                workspace = max(workspace, int(node.get("attrs", {}).get("workspace", 1024)) * MiB)
    return GraphCounts(param_count=count, state_bytes=state, planned_per_image=int(per_image4 * ratio_img),
                       planned_fixed=int(fixed4 * ratio_fix),
                       input_per_image=c * h * w * _itemsize(data_dtype), workspace_bytes=workspace)


def combine(counts: GraphCounts, *, training: bool, num_devices: int = 1, device_type: str = "cpu",
            factors: dict | None = None, runtime_bytes: int = RUNTIME_BYTES) -> Estimate:
    """The estimate from ``graph_counts`` and the calibrated factors (``factors`` overrides ``FACTORS``)."""
    if device_type == "gpu":  # not calibrated: the graph's own numbers
        c, k_state, k_dev, k_act = 0, 1.0, 1.0, 1.0
        runtime_bytes = 0
    else:
        c, k_state, k_dev, k_act = (factors or FACTORS)["train" if training else "score"]
    fixed = (runtime_bytes + c + k_state * counts.state_bytes * (1 + k_dev * (num_devices - 1))
             + k_act * counts.planned_fixed + counts.workspace_bytes * num_devices)
    per_image = k_act * counts.planned_per_image + 2 * counts.input_per_image
    return Estimate(int(math.ceil(fixed)), int(math.ceil(per_image)), runtime_bytes)


def estimate(sym, image_shape, *, dtype: str, training: bool, num_devices: int = 1, input_layout: str = "NCHW",
             device_type: str = "cpu") -> Estimate:
    """Memory to train (forward, backward, SGD with momentum and fp32 master weights) or score (forward only)
    ``sym`` on ``image_shape`` (C, H, W) images, for a per-process batch split over ``num_devices`` devices."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype {dtype!r}: one of float32, float16, bfloat16")
    if num_devices < 1:
        raise ValueError(f"num_devices {num_devices}: at least 1")
    counts = graph_counts(sym, image_shape, dtype=dtype, training=training, device_type=device_type,
                          input_layout=input_layout)
    return combine(counts, training=training, num_devices=num_devices, device_type=device_type)


# ---------------------------------------------------------------------------------------------------- available


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < NO_LIMIT else None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
    except (OSError, ValueError):
        pass
    return 0


def cgroup_headroom(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) \
        -> tuple[int, str] | None:
    """(limit minus usage, source) for the tightest memory limit on this process's cgroup and its parents, or None
    when no limit is set. Usage leaves out ``inactive_file`` (page cache the kernel drops before it OOM-kills a
    cgroup). cgroup v2 (``memory.max``/``memory.current``) or v1 (``memory.limit_in_bytes``/``usage_in_bytes``),
    at the path /proc/self/cgroup names under ``root`` or, inside a container that mounts its own cgroup at the
    root, at ``root`` itself."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    v2_path = v1_path = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    layouts = [(root, v2_path, "memory.max", "memory.current", "inactive_file", "cgroup v2"),
               (root / "unified", v2_path, "memory.max", "memory.current", "inactive_file", "cgroup v2"),
               (root / "memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file",
                "cgroup v1")]
    best = None
    for base, rel, limit_name, usage_name, inactive_key, kind in layouts:
        if rel is None or not base.is_dir():
            continue
        dirs = []
        d = base / rel.lstrip("/")
        while True:  # the cgroup and its parents up to the mount point
            dirs.append(d)
            if d == base or base not in d.parents:
                break
            d = d.parent
        if base not in dirs:
            dirs.append(base)
        for d in dirs:
            limit = _read_int(d / limit_name)
            usage = _read_int(d / usage_name)
            if limit is None or usage is None:
                continue
            usage -= min(_stat_value(d / "memory.stat", inactive_key), usage)
            room = max(limit - usage, 0)
            if best is None or room < best[0]:
                best = (room, f"{kind} {limit_name} {_fmt(limit)} minus {_fmt(usage)} in use")
    return best


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes(device_type: str = "cpu", device_id: int = 0) -> tuple[int, str]:
    """(bytes this process can still use, where the number came from). CPU: /proc/meminfo MemAvailable, or the
    cgroup's limit minus its usage when that is smaller; GPU: the free memory ``mx.context.gpu_memory_info``
    reports for ``gpu(device_id)``."""
    if device_type == "gpu":
        import mxnet as mx

        free, _total = mx.context.gpu_memory_info(device_id)
        return int(free), f"free on gpu({device_id})"
    avail = _meminfo("MemAvailable")
    source = "MemAvailable"
    if avail is None:
        avail, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages"
    cg = cgroup_headroom()
    if cg is not None and cg[0] < avail:
        return cg
    return int(avail), source


def _resident_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# ---------------------------------------------------------------------------------------------------- the check


def _fmt(n: float) -> str:
    """Bytes as GiB from 1 GiB up, else MiB, with three significant digits (at most one decimal from 10 up)."""
    unit, div = ("GiB", GiB) if n >= GiB else ("MiB", MiB)
    v = n / div
    text = f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


def model_name(sym) -> str:
    """"ResNet-<depth>" for a symbol built by resnet.get_symbol (weight layers: convolutions outside the shortcuts,
    plus the classifier), else "the model"."""
    try:
        nodes = json.loads(sym.tojson())["nodes"]
    except Exception:
        return "the model"
    names = [n["name"] for n in nodes]
    if not any(name.startswith("stage1_unit1") for name in names):
        return "the model"
    depth = sum(1 for n in nodes if n["op"] == "Convolution" and not n["name"].endswith("_sc")) + \
        sum(1 for n in nodes if n["op"] == "FullyConnected")
    return f"ResNet-{depth}"


def refusal(est: Estimate, batch: int, avail: int, source: str, budget: int, *, model: str, what: str,
            image_shape, dtype: str, num_devices: int = 1, device_type: str = "cpu",
            flag: str = "--batch-size") -> str:
    """The one line ``check_batch`` raises: what ``batch`` needs, what is available, the largest batch that fits
    in ``budget`` (a multiple of ``num_devices``). ``flag`` names the batch as the user gave it: ``{flag} {batch}``
    unless it holds ``{batch}`` (and ``{per_device}``) itself."""
    largest = est.largest_batch(budget)
    largest -= largest % num_devices
    if largest:
        fits = f"the largest batch that fits is about {largest}" + (
            f" ({largest // num_devices} per device)" if num_devices > 1 else "")
    elif est.fixed_bytes > budget:
        fits = "not even the fixed part fits"
    else:
        fits = "not even one image per device fits"
    where = f" on {num_devices} {device_type.upper()} devices" if num_devices > 1 else ""
    shape = "x".join(str(d) for d in image_shape)
    fixed = ("weights, gradients, optimizer state" if what == "training" else "weights") + \
        (" and the MXNet runtime" if device_type == "cpu" else "")
    kept = f", {MARGIN:.0%} of which is kept free" if MARGIN else ""
    subject = flag.format(batch=batch, per_device=batch // num_devices) if "{batch}" in flag else f"{flag} {batch}"
    return (f"{subject}: {model} {what}{where} at {shape} {dtype} needs about {_fmt(est.total(batch))} "
            f"(about {_fmt(est.per_image_bytes)} per image + {_fmt(est.fixed_bytes)} for {fixed}); "
            f"{_fmt(avail)} are available ({source}){kept}; {fits}")


def check_batch(sym, image_shape, batch: int, *, dtype: str, training: bool, num_devices: int = 1,
                device_type: str = "cpu", flag: str = "--batch-size", device_id: int = 0,
                input_layout: str = "NCHW") -> Estimate:
    """Raise ``UsageError`` (one line) when a per-process ``batch`` needs more than is available less ``MARGIN``;
    return the estimate when it fits. On CPU, the share of the estimate this process already holds (the MXNet
    runtime) counts as available."""
    est = estimate(sym, image_shape, dtype=dtype, training=training, num_devices=num_devices,
                   input_layout=input_layout, device_type=device_type)
    budget, avail, source = _budget(device_type, device_id, est.runtime_bytes)
    if est.total(batch) <= budget:
        return est
    raise UsageError(refusal(est, batch, avail, source, budget, model=model_name(sym),
                             what="training" if training else "scoring", image_shape=image_shape, dtype=dtype,
                             num_devices=num_devices, device_type=device_type, flag=flag))


def cpu_budget(runtime_bytes: int = RUNTIME_BYTES) -> tuple[int, int, str]:
    """(bytes a CPU run may use, bytes available, where that number came from), reckoned as ``check_batch`` reckons
    a CPU batch: what is available plus the part of ``runtime_bytes`` this process already holds, less ``MARGIN``.
    For callers that add needs of their own to an ``Estimate`` (loadgen.py: its sample library and LoadGen's
    queries)."""
    return _budget("cpu", 0, runtime_bytes)


def _budget(device_type: str, device_id: int, runtime_bytes: int) -> tuple[int, int, str]:
    """(bytes a run may use, bytes available, where that number came from): what is available, plus on CPU the part
    of ``runtime_bytes`` this process already holds, less ``MARGIN``."""
    avail, source = available_bytes(device_type, device_id)
    held = min(_resident_bytes(), runtime_bytes) if device_type == "cpu" else 0
    return int((avail + held) * (1 - MARGIN)), avail, source


def format_bytes(n: float) -> str:
    """``n`` bytes as the refusals write them (``"3.9 GiB"``, ``"512 MiB"``)."""
    return _fmt(n)
