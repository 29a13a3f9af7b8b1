#!/usr/bin/env python3
"""Peak resident memory of real ResNet training steps and scoring passes on CPU, against ``memory.estimate``.

Every configuration runs in a fresh child process (``--child``), set up as the toolkit's runner sets up a CPU run:
``OMP_NUM_THREADS`` = the cores available, ``MXNET_OPTIMIZER_AGGREGATION_SIZE=1``, and for scoring also
``common.MALLOC_ENV``. The child builds ``resnet.get_symbol`` (training: with the fused batchnorm+relu the toolkit
uses on CPU; scoring: unfused, so that oneDNN folds batchnorm into the convolutions), binds an ``mx.mod.Module``
on ``mx.cpu()`` (or ``mx.cpu(0..n-1)`` with a ``device`` kvstore), initializes the weights as the toolkit does,
and runs 3 iterations of ``forward_backward`` + ``update`` (SGD, momentum, weight decay, fp32 master weights) or of
``forward(is_train=False)`` on random data, with ``mx.nd.waitall()`` after each. It reports its peak resident set
(``VmHWM`` of /proc/self/status) and its resident set right after ``import mxnet`` (the runtime's share).

    python tools/bench_memory.py                     # the calibration grid: a Markdown table on stdout
    python tools/bench_memory.py --quick -o m.json   # three small configurations, JSON written to m.json
    python tools/bench_memory.py --configs train:50:224:32,score:18:128:16:10   # mode:depth:px:batch[:classes[:n]]
    python tools/bench_memory.py --load m.json --fit # refit memory.FACTORS to earlier measurements

The table gives measured and estimated MiB and their ratio. ``--fit`` prints the factors a fit of the measurements
gives (``fit_factors``) and compares with those instead of the shipped ones; memory.py's docstring has the table that
set the shipped ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (MALLOC_ENV, Parser, UsageError, available_cores, cpu_model, run_child, run_tool,  # noqa: E402
                    write_json)

MiB = 1 << 20


@dataclass(frozen=True)
class Config:
    """One measurement: ``mode`` "train" or "score", ResNet depth, square image size in px, per-process batch,
    classes, CPU devices (the batch is split over them)."""
    mode: str
    num_layers: int
    size: int
    batch: int
    num_classes: int = 1000
    num_devices: int = 1
    dtype: str = "float32"
    iters: int = 3

    @property
    def training(self) -> bool:
        return self.mode == "train"

    @property
    def label(self) -> str:
        dev = f" x{self.num_devices} dev" if self.num_devices > 1 else ""
        return (f"{self.mode} RN{self.num_layers} {self.size}px b{self.batch} {self.num_classes}cl "
                f"{self.dtype}{dev}")


def parse_config(text: str) -> Config:
    parts = text.split(":")
    if len(parts) < 4 or parts[0] not in ("train", "score"):
        raise UsageError(f"--configs {text!r}: expected mode:depth:px:batch[:classes[:devices]], mode train or score")
    try:
        nums = [int(p) for p in parts[1:]]
    except ValueError:
        raise UsageError(f"--configs {text!r}: depth, px, batch, classes and devices are integers") from None
    return Config(parts[0], *nums)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(cfg: Config) -> dict:
    """Run ``cfg`` in this process; return the peak and runtime resident sizes in bytes (call in a fresh process:
    the peak is the process's own high-water mark)."""
    from common import enable_amx

    enable_amx()  # as the toolkit's processes do (only matters for bfloat16 on AMX CPUs)
    import mxnet as mx

    runtime = _status_kib("VmRSS") * 1024
    sym = symbol_for(cfg)
    ctxs = [mx.cpu(i) for i in range(cfg.num_devices)]
    mod = mx.mod.Module(sym, context=ctxs, data_names=["data"], label_names=["softmax_label"])
    mod.bind(data_shapes=[("data", (cfg.batch, 3, cfg.size, cfg.size))],
             label_shapes=[("softmax_label", (cfg.batch,))], for_training=cfg.training)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    if cfg.training:
        kv = mx.kvstore.create("device") if cfg.num_devices > 1 else None
        mod.init_optimizer(kvstore=kv, optimizer="sgd", optimizer_params={
            "learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4, "multi_precision": True})
    data = mx.nd.random.uniform(-1, 1, (cfg.batch, 3, cfg.size, cfg.size))
    label = mx.nd.random.randint(0, cfg.num_classes, (cfg.batch,)).astype("float32")
    batch = mx.io.DataBatch(data=[data], label=[label])
    mx.nd.waitall()
    setup = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    for _ in range(cfg.iters):
        if cfg.training:
            mod.forward_backward(batch)
            mod.update()
        else:
            mod.forward(batch, is_train=False)
        mx.nd.waitall()
    return {"peak_bytes": _status_kib("VmHWM") * 1024, "runtime_bytes": runtime, "setup_bytes": setup,
            "seconds": time.perf_counter() - t0}


def child_env(cfg: Config) -> dict:
    """The environment the toolkit's runner gives a CPU run of this kind."""
    env = dict(os.environ, OMP_NUM_THREADS=str(available_cores()), MXNET_OPTIMIZER_AGGREGATION_SIZE="1")
    if not cfg.training:
        env.update(MALLOC_ENV)
    return env


def measure(cfg: Config, timeout: float = 900) -> dict:
    """Run ``cfg`` in a fresh child process; return its ``child`` result."""
    res = run_child([sys.executable, __file__, "--child", json.dumps(asdict(cfg))], env=child_env(cfg),
                    capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{cfg.label}: child exited {res.returncode}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def symbol_for(cfg: Config):
    """The symbol the child runs for ``cfg``."""
    import resnet

    fuse = resnet.bn_relu_fusion(True, "cpu") if cfg.training else None
    return resnet.get_symbol(num_classes=cfg.num_classes, num_layers=cfg.num_layers,
                             image_shape=(3, cfg.size, cfg.size), dtype=cfg.dtype, fuse_bn_relu=fuse,
                             input_dtype="float32" if cfg.dtype == "bfloat16" else None)


def counts_for(cfg: Config):
    import memory

    return memory.graph_counts(symbol_for(cfg), (3, cfg.size, cfg.size), dtype=cfg.dtype, training=cfg.training)


def estimate_for(cfg: Config, factors: dict | None = None, runtime_bytes: int | None = None):
    """``memory.estimate`` for ``cfg`` (with other factors or runtime size, to try a fit)."""
    import memory

    return memory.combine(counts_for(cfg), training=cfg.training, num_devices=cfg.num_devices, factors=factors,
                          runtime_bytes=memory.RUNTIME_BYTES if runtime_bytes is None else runtime_bytes)


def fit_factors(rows: list[dict]) -> tuple[dict, int]:
    """Factors for ``memory.FACTORS`` and a runtime size for ``memory.RUNTIME_BYTES`` from measured rows.

    Per mode, over the single-device rows, relative least squares of

        peak - runtime = C + K_STATE * state + K_ACT * (planned_fixed + batch * planned_per_image) + 2 * batch * input

    then K_DEV, the mean over the multi-device rows of what each device after the first adds as a fraction of
    K_STATE * state; then C, K_STATE and K_ACT are scaled up until no row measures above its estimate."""
    import numpy as np

    runtime = int(np.median([r["runtime_bytes"] for r in rows]))
    factors = {}
    for mode in ("train", "score"):
        mine = [r for r in rows if r["config"]["mode"] == mode]
        single = [r for r in mine if r["config"]["num_devices"] == 1]
        if len(single) < 3:
            raise UsageError(f"fit: {len(single)} single-device {mode} measurements; at least 3 are needed")
        a, y = [], []
        for r in single:
            c, b = r["counts"], r["config"]["batch"]
            a.append([1.0, c["state_bytes"], c["planned_fixed"] + b * c["planned_per_image"]])
            y.append(r["peak_bytes"] - runtime - 2 * b * c["input_per_image"])
        a, y = np.array(a), np.array(y, dtype=float)
        w = 1.0 / (y + runtime)
        const, k_state, k_act = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)[0]
        k_dev = []
        for r in mine:
            n = r["config"]["num_devices"]
            if n > 1:
                c, b = r["counts"], r["config"]["batch"]
                rest = (r["peak_bytes"] - runtime - const - k_state * c["state_bytes"]
                        - k_act * (c["planned_fixed"] + b * c["planned_per_image"]) - 2 * b * c["input_per_image"])
                k_dev.append(rest / (k_state * c["state_bytes"] * (n - 1)))
        k_dev = float(np.mean(k_dev)) if k_dev else 1.0

        def variable(r):
            c, b, n = r["counts"], r["config"]["batch"], r["config"]["num_devices"]
            return (const + k_state * c["state_bytes"] * (1 + k_dev * (n - 1))
                    + k_act * (c["planned_fixed"] + b * c["planned_per_image"]))

        scale = max(1.0, *((r["peak_bytes"] - runtime - 2 * r["config"]["batch"] * r["counts"]["input_per_image"])
                           / variable(r) for r in mine))
        factors[mode] = (int(round(const * scale)), round(float(k_state * scale), 3), round(k_dev, 3),
                         round(float(k_act * scale), 3))
    return factors, runtime


# The calibration set of memory.py (its docstring has the table): depths 18-152, 32-224 px, batch 8-256, 10 to
# 10,000 classes, one and two devices. About 12 minutes on 2 cores; the largest peaks at 7 GiB.
DEFAULT_GRID = (
    "train:18:64:8", "train:18:64:32", "train:18:128:16", "train:18:224:16", "train:18:224:32", "train:50:32:32",
    "train:50:64:8", "train:50:64:32", "train:50:128:16", "train:50:224:8", "train:50:224:16", "train:50:224:32",
    "train:18:64:32:10", "train:50:64:8:10000", "train:50:128:16:1000:2", "score:18:64:32", "score:18:224:32",
    "score:50:64:8", "score:50:64:32", "score:50:128:32", "score:50:224:8", "score:50:224:32", "score:50:224:64",
    "score:50:64:8:10000", "score:50:128:32:1000:2", "train:18:224:32:1000:2", "train:50:64:32:1000:2",
    "score:50:224:32:1000:2", "train:50:96:16", "train:18:160:16", "score:18:160:64", "train:34:128:16",
    "train:101:64:16", "score:101:128:16", "train:152:64:8", "train:50:224:64", "score:50:224:128",
    "train:18:32:128", "score:18:32:256")
QUICK_GRID = ("train:18:64:8", "train:50:64:32", "score:50:64:32")


def table(rows: list[dict], factors: dict | None = None, runtime: int | None = None) -> str:
    """Markdown: configuration, measured and estimated MiB, their ratio; then the worst and lowest ratio."""
    lines = ["| configuration | measured MiB | estimated MiB | measured/estimated |", "|---|---:|---:|---:|"]
    for r in rows:
        cfg = Config(**r["config"])
        est = estimate_for(cfg, factors, runtime).total(cfg.batch)
        r["estimated_bytes"], r["ratio"] = est, r["peak_bytes"] / est
        lines.append(f"| {cfg.label} | {r['peak_bytes'] / MiB:.0f} | {est / MiB:.0f} | {r['ratio']:.2f} |")
    worst = max(rows, key=lambda r: r["ratio"])
    lines.append(f"\nworst measured/estimated {worst['ratio']:.2f} ({worst['label']}), lowest "
                 f"{min(r['ratio'] for r in rows):.2f}")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(prog="bench_memory.py", description="Peak memory of training and scoring against memory.estimate.")
    p.add_argument("--configs", default=None, help="comma-separated mode:depth:px:batch[:classes[:devices]]")
    p.add_argument("--quick", action="store_true", help="three small configurations")
    p.add_argument("--load", default=None, help="take the measurements from this JSON (an earlier -o) instead")
    p.add_argument("--fit", action="store_true",
                   help="fit memory.FACTORS and RUNTIME_BYTES to the measurements and compare with those")
    p.add_argument("-o", "--output", default=None, help="write the results as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(Config(**json.loads(args.child)))))
        return 0
    if args.load:
        try:
            rows = json.loads(Path(args.load).read_text())["rows"]
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f"--load {args.load}: not a bench_memory.py -o file ({err})") from None
    else:
        texts = args.configs.split(",") if args.configs else (QUICK_GRID if args.quick else DEFAULT_GRID)
        cfgs = [parse_config(t) for t in texts]
        print(f"CPU: {cpu_model()}, {available_cores()} cores; measuring {len(cfgs)} configurations",
              file=sys.stderr)
        rows = []
        for cfg in cfgs:
            m = measure(cfg)
            rows.append({"config": asdict(cfg), "label": cfg.label, **m})
            print(f"  {cfg.label}: {m['peak_bytes'] / MiB:.0f} MiB peak", file=sys.stderr, flush=True)
    for r in rows:
        r["counts"] = asdict(counts_for(Config(**r["config"])))
    factors = runtime = None
    if args.fit:
        factors, runtime = fit_factors(rows)
        print(f"fitted: RUNTIME_BYTES = {runtime / MiB:.0f} * MiB; FACTORS = "
              + ", ".join(f"{k}: (C {v[0] / MiB:.0f} MiB, K_STATE {v[1]}, K_DEV {v[2]}, K_ACT {v[3]})"
                          for k, v in factors.items()) + "\n")
    print(table(rows, factors, runtime))
    if args.output:
        write_json(args.output, {"cpu": cpu_model(), "cores": available_cores(), "fitted": factors,
                                 "fitted_runtime_bytes": runtime, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "bench_memory.py"))
