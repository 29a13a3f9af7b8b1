#!/usr/bin/env python3
"""CPU inference throughput and latency of the toolkit's scoring path against a hybridized Gluon ResNet-50 v1.5,
side by side in one run.

Candidates (each in its own process, OpenMP threads = the cores available, synthetic data, random weights,
ResNet-50 v1.5 at 224 px):

* ``runner --only-inference``: the toolkit's scoring path (symbolic Module, oneDNN subgraph fusion of conv +
  batchnorm + relu (+ add), MXNet's default on CPU), img/s and latencies from its report;
* the same with ``MXNET_SUBGRAPH_BACKEND=NONE``: the plain symbolic executor, no fusion;
* ``gluon v1.5``: ``tools/gluon_resnet.py`` hybridized with ``backend="MKLDNN"`` (static_alloc/static_shape), in
  the environment a Gluon user has (MXNet's defaults, OpenMP threads = the cores);
* the same Gluon net given the runner's allocator settings (``common.MALLOC_ENV``), to show what part of the
  difference they are.

Every candidate times each batch the same way (wall time with ``mx.nd.waitall()`` as the sync point, the first
iterations left out by ``fit.warmup_iters``). Each round runs every candidate once per batch size, in an order
rotated from round to round; medians over rounds are reported.

    python tools/bench_infer.py          # what `make bench-infer` runs (and `make bench`)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (MALLOC_ENV, Parser, add_rounds_arg, available_cores, cpu_bf16_flags, int_list,  # noqa: E402
                    rotated, run_child, run_tool, write_json)

PCTS = (50, 90, 99)


def gluon_worker(batch: int, size: int, iters: int, dtype: str) -> dict:
    from common import enable_amx

    enable_amx()  # the same oneDNN settings as the toolkit's processes
    import mxnet as mx

    from fit import warmup_iters
    from tools.gluon_resnet import ResNet50V15

    ctx = mx.cpu()
    if dtype == "bfloat16":
        from mxnet.contrib import amp

        amp.init(target_dtype="bfloat16")  # before the net is built: AMP wraps the operators it calls
    net = ResNet50V15()
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True, backend="MKLDNN")
    data = mx.nd.random.uniform(-1, 1, (batch, 3, size, size), ctx=ctx)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        net(data)
        mx.nd.waitall()
        times.append(time.perf_counter() - t0)
    kept = times[warmup_iters(iters):]
    return ips_and_latency(kept, batch)


def ips_and_latency(times, batch: int) -> dict:
    """img/s and latency (mean and percentiles, ms) of batches of ``batch`` images that took ``times`` seconds."""
    ms = np.array(times) * 1000
    out = {"img_per_s": batch * len(times) / sum(times), "latency_ms_avg": float(ms.mean())}
    out.update({f"latency_ms_p{p}": float(np.percentile(ms, p)) for p in PCTS})
    return out


def run_ours(batch: int, size: int, iters: int, tmp: Path, dtype: str, subgraph: bool) -> dict:
    report = tmp / f"ours-{time.monotonic_ns()}.json"
    cmd = [str(ROOT / "runner"), "-n", "1", "-b", str(batch), "-e", "1", "--data-backend", "synthetic",
           "--image-shape", f"3,{size},{size}", "--benchmark-iters", str(iters), "--only-inference", "--no-metrics",
           "--dtype", dtype, "--report", str(report)]
    env = dict(os.environ)
    env.pop("MXNET_SUBGRAPH_BACKEND", None)
    for k in MALLOC_ENV:  # the runner's own settings apply
        env.pop(k, None)
    if not subgraph:
        env["MXNET_SUBGRAPH_BACKEND"] = "NONE"
    run_child(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = json.loads(report.read_text())["metrics"]
    out = {"img_per_s": m["val.total_ips"][0], "latency_ms_avg": m["val.latency_ms_avg"][0]}
    out.update({f"latency_ms_p{p}": m[f"val.latency_ms_p{p}"][0] for p in PCTS})
    return out


def run_gluon(batch: int, size: int, iters: int, dtype: str, malloc: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(available_cores()))
    for k in MALLOC_ENV:
        env.pop(k, None)
    if malloc:
        env.update(MALLOC_ENV)
    out = run_child([sys.executable, __file__, "--gluon-worker", "-b", str(batch), "--image-size", str(size),
                    "-i", str(iters), "--dtype", dtype], check=True, cwd=ROOT, env=env, capture_output=True,
                    text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> Parser:
    p = Parser(prog="bench_infer.py", description="CPU inference img/s and latency: the toolkit against Gluon.")
    p.add_argument("-b", "--batch-sizes", type=int_list, default=[1, 32], help="batch sizes")
    p.add_argument("--image-size", type=int, default=224, help="input side, px")
    p.add_argument("-i", "--iters", type=int, default=20,
                   help="batches per measurement, at least 256 / batch size (warmup left out)")
    add_rounds_arg(p)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=bool(cpu_bf16_flags()),
                   help="also time bfloat16 scoring (default: when the CPU has AVX512_BF16 or AMX-BF16)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help=argparse.SUPPRESS)
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/infer.json"), help="JSON with raw numbers")
    p.add_argument("--gluon-worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.gluon_worker:
        print(json.dumps(gluon_worker(args.batch_sizes[0], args.image_size, args.iters, args.dtype)))
        return 0
    import mxnet as mx

    candidates = {
        "runner --only-inference (oneDNN subgraph)":
            lambda b, it, tmp: run_ours(b, args.image_size, it, tmp, "float32", subgraph=True),
        "runner, MXNET_SUBGRAPH_BACKEND=NONE":
            lambda b, it, tmp: run_ours(b, args.image_size, it, tmp, "float32", subgraph=False),
        "Gluon ResNet-50 v1.5, hybridized (MKLDNN backend)":
            lambda b, it, tmp: run_gluon(b, args.image_size, it, "float32"),
        "Gluon, the same with the runner's malloc settings":
            lambda b, it, tmp: run_gluon(b, args.image_size, it, "float32", malloc=True),
    }
    if args.bf16:
        candidates["runner --only-inference --dtype bfloat16"] = \
            lambda b, it, tmp: run_ours(b, args.image_size, it, tmp, "bfloat16", subgraph=True)
        candidates["Gluon ResNet-50 v1.5, AMP bfloat16 (MKLDNN backend)"] = \
            lambda b, it, tmp: run_gluon(b, args.image_size, it, "bfloat16")
    names = list(candidates)
    raw = {str(b): {n: [] for n in names} for b in args.batch_sizes}
    with tempfile.TemporaryDirectory(prefix="bench_infer.") as tmp:
        for r in range(args.rounds):
            for b in args.batch_sizes:
                for name in rotated(names, r):
                    raw[str(b)][name].append(candidates[name](b, max(args.iters, 256 // b), Path(tmp)))
    med = {b: {n: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for n, runs in by.items()}
           for b, by in raw.items()}
    env = {"cores": available_cores(), "omp_num_threads": available_cores(), "mxnet": mx.__version__,
           "image_size": args.image_size, "iters": args.iters, "repeats": args.rounds,
           "bf16_cpu_flags": cpu_bf16_flags()}
    write_json(args.output, {"env": env, "raw": raw, "median": med})
    print(f"ResNet-50 v1.5 inference, {args.image_size} px, synthetic data, {env['cores']} cores; "
          f"medians of {args.rounds} rounds of max({args.iters}, 256 / batch) batches")
    print()
    print("| batch | candidate | img/s | vs Gluon float32 | latency avg ms | p50 | p90 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for b, by in med.items():
        base = by[names[2]]["img_per_s"]
        for name, m in by.items():
            print(f"| {b} | {name} | {m['img_per_s']:.1f} | {m['img_per_s'] / base:.2f}x | "
                  f"{m['latency_ms_avg']:.1f} | " + " | ".join(f"{m[f'latency_ms_p{p}']:.1f}" for p in PCTS) + " |")
    if args.bf16:
        for b, by in med.items():
            r = by["runner --only-inference --dtype bfloat16"]["img_per_s"] / by[names[0]]["img_per_s"]
            print(f"bfloat16 / float32 scoring, batch {b}: {r:.2f}x")
    print(f"\nraw numbers: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "bench_infer.py"))
