#!/usr/bin/env python3
"""CPU training throughput of the toolkit against a hybridized Gluon ResNet-50 v1.5 loop, side by side in one run.

Candidates (each in its own process, OpenMP threads = the cores available, synthetic data, float32, SGD with
momentum, batch 32 at 224 px by default):

* ``runner -n 1``: the toolkit (symbolic Module) through ``./runner --data-backend synthetic``, img/s from its report;
* ``runner -n 2``: the same global batch over 2 CPU devices;
* ``gluon v1.5``: ``tools/gluon_resnet.py`` (same architecture, 25,557,032 parameters), hybridized with
  static_alloc/static_shape, ``autograd`` + ``gluon.Trainer``;
* ``gluon zoo resnet50_v1`` (reference line only: stride on the 1x1, fewer FLOPs than v1.5).

Every candidate times iterations the same way: wall time per iteration with ``mx.nd.waitall()`` as the sync point,
the first ones left out by the toolkit's rule (``fit.warmup_iters``). Each round runs every candidate once, in an
order rotated from round to round so that none always runs first or last; medians over rounds are reported.

    python tools/bench_train.py          # what `make bench` runs
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (Parser, add_rounds_arg, available_cores, cpu_bf16_flags, rotated, run_child,  # noqa: E402
                    run_tool, write_json)


def gluon_worker(kind: str, batch: int, size: int, iters: int) -> dict:
    """Train ``kind`` ("v1.5", "zoo-v1", or "v1.5-bf16": under MXNet's AMP with bfloat16) for ``iters`` iterations
    on one synthetic batch; return img/s."""
    from common import enable_amx

    enable_amx()  # the same oneDNN settings as the toolkit's processes
    import mxnet as mx
    from mxnet import autograd, gluon

    from tools.gluon_resnet import ResNet50V15

    ctx = mx.cpu()
    if kind == "v1.5-bf16":
        from mxnet.contrib import amp

        amp.init(target_dtype="bfloat16")  # before the net is built: AMP wraps the operators it calls
    net = ResNet50V15() if kind.startswith("v1.5") else gluon.model_zoo.vision.resnet50_v1()
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1 * batch / 256, "momentum": 0.9,
                                                          "wd": 1e-4, "multi_precision": True})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = mx.nd.random.uniform(-1, 1, (batch, 3, size, size), ctx=ctx)
    label = mx.nd.array([i % 1000 for i in range(batch)], ctx=ctx)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(batch)
        mx.nd.waitall()
        times.append(time.perf_counter() - t0)
    from fit import warmup_iters

    kept = times[warmup_iters(iters):]
    params = sum(p.data().size for p in net.collect_params().values() if p.grad_req != "null")
    return {"img_per_s": batch * len(kept) / sum(kept), "params": params}


def run_ours(n: int, batch: int, size: int, iters: int, tmp: Path, dtype: str = "float32") -> dict:
    report = tmp / f"ours-{n}-{time.monotonic_ns()}.json"
    cmd = [str(ROOT / "runner"), "-n", str(n), "-b", str(batch // n), "-e", "1", "--data-backend", "synthetic",
           "--image-shape", f"3,{size},{size}", "--benchmark-iters", str(iters), "--no-val", "--no-metrics",
           "--dtype", dtype, "--report", str(report)]
    run_child(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.loads(report.read_text())
    return {"img_per_s": r["metrics"]["train.total_ips"][0]}


def run_gluon(kind: str, batch: int, size: int, iters: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(available_cores()))
    out = run_child([sys.executable, __file__, "--gluon-worker", kind, "-b", str(batch), "--image-size",
                    str(size), "-i", str(iters)], check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> Parser:
    p = Parser(prog="bench_train.py", description="CPU training img/s: the toolkit against a Gluon v1.5 loop.")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--image-size", type=int, default=224, help="input side, px")
    p.add_argument("-i", "--iters", type=int, default=12,
                   help="iterations per measurement (the first max(1, iters // 10) left out)")
    add_rounds_arg(p)
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/train.json"), help="JSON with raw numbers")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=bool(cpu_bf16_flags()),
                   help="also time bfloat16 training (default: when the CPU has AVX512_BF16 or AMX-BF16)")
    p.add_argument("--gluon-worker", choices=("v1.5", "zoo-v1", "v1.5-bf16"), default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.gluon_worker:
        print(json.dumps(gluon_worker(args.gluon_worker, args.batch_size, args.image_size, args.iters)))
        return 0
    import mxnet as mx

    candidates = {
        "runner -n 1 (symbolic Module)": lambda tmp: run_ours(1, args.batch_size, args.image_size, args.iters, tmp),
        "runner -n 2 (2 CPU devices)": lambda tmp: run_ours(2, args.batch_size, args.image_size, args.iters, tmp),
        "Gluon ResNet-50 v1.5, hybridized": lambda tmp: run_gluon("v1.5", args.batch_size, args.image_size,
                                                                   args.iters),
        "Gluon model zoo resnet50_v1 (reference: v1)": lambda tmp: run_gluon("zoo-v1", args.batch_size,
                                                                              args.image_size, args.iters),
    }
    if args.bf16:
        candidates["runner -n 1 --dtype bfloat16"] = lambda tmp: run_ours(1, args.batch_size, args.image_size,
                                                                          args.iters, tmp, "bfloat16")
        candidates["Gluon ResNet-50 v1.5 under AMP bfloat16"] = lambda tmp: run_gluon(
            "v1.5-bf16", args.batch_size, args.image_size, args.iters)
    results = {name: [] for name in candidates}
    params = {}
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        names = list(candidates)
        for r in range(args.rounds):
            for name in rotated(names, r):
                res = candidates[name](Path(tmp))
                results[name].append(res["img_per_s"])
                if "params" in res:
                    params[name] = res["params"]
    med = {name: statistics.median(v) for name, v in results.items()}
    base = med["Gluon ResNet-50 v1.5, hybridized"]
    env = {"cores": available_cores(), "omp_num_threads": available_cores(), "mxnet": mx.__version__,
           "batch_size": args.batch_size, "image_size": args.image_size, "iters": args.iters,
           "repeats": args.rounds, "dtype": "float32", "bf16_cpu_flags": cpu_bf16_flags()}
    write_json(args.output, {"env": env, "img_per_s": results, "median": med, "gluon_params": params})
    print(f"ResNet-50 training, batch {args.batch_size}, {args.image_size} px, synthetic data, "
          f"{env['cores']} cores; medians of {args.rounds} rounds of {args.iters} iterations")
    print()
    print("| candidate | img/s (median) | runs | vs Gluon v1.5 |")
    print("|---|---|---|---|")
    for name, v in results.items():
        print(f"| {name} | {med[name]:.2f} | {', '.join(f'{x:.2f}' for x in v)} | {med[name] / base:.2f}x |")
    if args.bf16:
        ratio = med["runner -n 1 --dtype bfloat16"] / med["runner -n 1 (symbolic Module)"]
        print(f"\nbfloat16 / float32, runner -n 1: {ratio:.2f}x (same run)")
    print(f"\nraw numbers: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "bench_train.py"))
