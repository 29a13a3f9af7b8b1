#!/usr/bin/env python3
"""The gradient exchange of a ResNet-50 v1.5 training step on MXNet's parameter server, alone: what each step of a
``./runner --workers W`` job adds to the compute.

It starts a job as the runner does (``launcher.launch``: W workers, W servers and a scheduler on 127.0.0.1) whose
workers do nothing but what ``Module.update`` does to the kvstore in a step: one ``pushpull`` of every parameter's
gradient (ResNet-50 v1.5's 161 tensors at their shapes, float32, 1000 classes), then ``mx.nd.waitall()``. Each
worker times ``--steps`` such exchanges after ``--warmup`` ones; rank 0 writes the median and the bytes it sent and
received per step (the gradients pushed and the sums pulled).

    python tools/bench_dist.py --workers 2 -o bench-out/dist.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import Parser, UsageError, available_cores, run_main, setup_logging, write_json  # noqa: E402


def gradient_shapes(num_classes: int = 1000) -> dict:
    """The trainable parameters of the toolkit's ResNet-50 v1.5 and their shapes (224 px, batch 1)."""
    import resnet

    sym = resnet.get_symbol(num_classes=num_classes, num_layers=50, image_shape=(3, 224, 224))
    shapes, _, _ = sym.infer_shape(data=(1, 3, 224, 224), softmax_label=(1,))
    return {n: s for n, s in zip(sym.list_arguments(), shapes) if n not in ("data", "softmax_label")}


def worker(steps: int, warmup: int, out: Path | None) -> int:
    import mxnet as mx

    import dist

    kv = dist.create_kvstore("dist_sync")
    shapes = gradient_shapes()
    names = sorted(shapes)
    grads = {n: mx.nd.ones(shapes[n]) for n in names}
    for n in names:
        kv.init(n, mx.nd.zeros(shapes[n]))
    times = []
    for i in range(warmup + steps):
        mx.nd.waitall()
        t0 = time.perf_counter()
        for n in names:
            kv.pushpull(n, grads[n], out=grads[n])
        mx.nd.waitall()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    values = sum(int(mx.nd.ones(shapes[n]).size) for n in names)
    result = {"rank": kv.rank, "workers": kv.num_workers, "tensors": len(names), "values": values,
              "bytes_pushed_per_step": 4 * values, "bytes_pulled_per_step": 4 * values,
              "exchange_ms_median": 1000 * statistics.median(times), "exchange_ms": [1000 * t for t in times]}
    if kv.rank == 0 and out is not None:
        write_json(out, result)
    return 0


def build_parser() -> Parser:
    p = Parser(prog="bench_dist.py", description="Time one step's gradient exchange of ResNet-50 on MXNet's "
                                                 "parameter server (a job on 127.0.0.1, as ./runner --workers).")
    p.add_argument("--workers", type=int, default=2, help="workers (and servers)")
    p.add_argument("--steps", type=int, default=10, help="timed exchanges")
    p.add_argument("--warmup", type=int, default=2, help="exchanges before timing")
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/dist.json"), help="JSON of rank 0's numbers")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a job's worker (set by the tool)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args.steps, args.warmup, args.output)
    if args.workers < 2 or args.steps < 1 or args.warmup < 0:
        raise UsageError("--workers at least 2, --steps at least 1, --warmup at least 0")
    import launcher

    threads = max(1, available_cores() // args.workers)
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps), "--warmup",
            str(args.warmup), "-o", str(args.output)]
    setup_logging()
    rc = launcher.launch(argv, dict(os.environ, OMP_NUM_THREADS=str(threads)), args.workers, args.workers,
                         launcher.Supervision(), threads)
    if rc != 0:
        return rc
    r = json.loads(args.output.read_text())
    print(f"{r['workers']} workers on 127.0.0.1: {r['tensors']} gradients, {r['values']:,} values; per step and worker "
          f"{r['bytes_pushed_per_step'] / 1e6:.1f} MB pushed and {r['bytes_pulled_per_step'] / 1e6:.1f} MB pulled; "
          f"exchange {r['exchange_ms_median']:.1f} ms (median of {len(r['exchange_ms'])})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
