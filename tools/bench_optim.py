#!/usr/bin/env python3
"""Cost of the optimizer update for ResNet-50 v1.5 on CPU: SGD as ``fit.py`` creates it against MLPerf's LARS
(``optim.py``) along each path it can take, alone and within a full training step.

One process, one bound Module (batch 32 at 224 px, float32, one CPU device (``--devices 2``: two, with kvstore
``device`` as ``fit.py``), OpenMP threads = the cores available, synthetic data); the candidates take turns on it
(``init_optimizer(force_init=True)``: fresh momentum, the same weights and gradients):

* ``sgd``: ``"sgd"`` with momentum 0.9, wd 1e-4, ``multi_precision`` under ``MXNET_OPTIMIZER_AGGREGATION_SIZE=1``,
  as the runner sets it on CPU (one ``sgd_mom_update`` per tensor);
* ``lars host``: ``optim.MLPerfLARS`` on its CPU path: all the tensors in one call, one wait for the norms, one
  ``sgd_mom_update`` per tensor;
* ``lars host, per tensor``: the same called once per tensor (what a kvstore that updates the weights does): one wait
  per tensor;
* ``lars multi``: its GPU path (NVIDIA's): ``multi_sum_sq`` + ``multi_lars`` + ``preloaded_multi_sgd_mom_update``
  in calls of 60 tensors, no wait;
* ``lars multi, per tensor``: the same kernels called for one tensor at a time.

``update``: ``Module.update()`` alone, gradients left from one forward/backward pass, with ``mx.nd.waitall()`` after
each, the first left out (the optimizer creates its state then). ``step``: forward/backward + update +
``mx.nd.waitall()``, as ``fit.run_epoch``, right after the updates (nothing left to warm up; one ResNet-50 step takes
about 4 s on 2 cores). Each round runs every candidate once, in an order rotated from round to
round; medians over rounds of the per-round medians are reported.

    python tools/bench_optim.py          # what `make bench-optim` runs (about 2.5 minutes on 2 cores)
"""
from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (Parser, UsageError, add_rounds_arg, available_cores, cpu_model, rotated, run_main,  # noqa: E402
                    write_json)

CANDIDATES = ("sgd", "lars host", "lars host, per tensor", "lars multi", "lars multi, per tensor")


def build_parser() -> Parser:
    p = Parser(prog="bench_optim.py", description="ResNet-50 optimizer update on CPU: SGD against MLPerf LARS.")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="batch")
    p.add_argument("--devices", type=int, choices=(1, 2), default=1,
                   help="CPU devices (contexts) the global batch is split over; 2: kvstore device, which updates "
                        "the weights itself, one tensor per optimizer call (fit.py's setting)")
    p.add_argument("--image-size", type=int, default=224, help="input side, px")
    p.add_argument("--update-iters", type=int, default=8, help="timed updates per candidate and round (+1 left out)")
    p.add_argument("--step-iters", type=int, default=2,
                   help="timed full steps per candidate and round, after its updates (0: updates only)")
    add_rounds_arg(p)
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/optim.json"), help="JSON with raw numbers")
    return p


def make_optimizer(mod, name: str, kvstore: str | None) -> None:
    """(Re)create the candidate's optimizer on ``mod``, with fit.py's hyperparameters."""
    import optim

    params = {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4, "multi_precision": True}
    if name == "sgd":
        os.environ["MXNET_OPTIMIZER_AGGREGATION_SIZE"] = "1"  # read by SGD when it is created: the runner's CPU value
        mod.init_optimizer(kvstore=kvstore, optimizer="sgd", optimizer_params=params, force_init=True)
        return
    params.update(eta=0.001, eps=0.0, path="multi" if name.startswith("lars multi") else "host")
    mod.init_optimizer(kvstore=kvstore, optimizer=optim.LARS_NAME, optimizer_params=params, force_init=True)
    if name.endswith("per tensor"):
        mod._optimizer.aggregate_num = 1  # the Updater reads it at every call


def time_calls(fn, n: int, drop: int) -> list[float]:
    """Seconds per call of ``fn`` (each followed by ``mx.nd.waitall()``), the first ``drop`` of n + drop left out."""
    import mxnet as mx

    out = []
    for _ in range(n + drop):
        t0 = time.perf_counter()
        fn()
        mx.nd.waitall()
        out.append(time.perf_counter() - t0)
    return out[drop:]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, v in (("--batch-size", args.batch_size), ("--image-size", args.image_size),
                    ("--update-iters", args.update_iters), ("--rounds", args.rounds)):
        if v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    if args.batch_size % args.devices:
        raise UsageError(f"--batch-size {args.batch_size}: must split evenly over --devices {args.devices}")
    if args.step_iters < 0:
        raise UsageError(f"--step-iters {args.step_iters}: must be at least 0")
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))  # as the runner: before MXNet starts
    import mxnet as mx

    import resnet

    shape = (args.batch_size, 3, args.image_size, args.image_size)
    sym = resnet.build(resnet.ModelConfig(), num_classes=1000, image_shape=shape[1:], dtype="float32",
                       input_dtype="float32", input_layout="NCHW", device_type="cpu")
    contexts = [mx.cpu(i) for i in range(args.devices)]
    kvstore = "device" if args.devices > 1 else None  # as fit.init_optimizer
    mod = mx.mod.Module(sym, context=contexts, data_names=["data"], label_names=["softmax_label"])
    mod.bind(data_shapes=[("data", shape)], label_shapes=[("softmax_label", (args.batch_size,))])
    mx.random.seed(0)
    mod.init_params(resnet.initializer())
    batch = mx.io.DataBatch([mx.nd.random.uniform(-1, 1, shape)],
                            [mx.nd.array([i % 1000 for i in range(args.batch_size)])])

    def step():
        mod.forward_backward(batch)
        mod.update()

    upd = {c: [] for c in CANDIDATES}
    full = {c: [] for c in CANDIDATES}
    mod.forward_backward(batch)  # gradients for the first updates; later ones use those of the last step
    for r in range(args.rounds):
        for name in rotated(CANDIDATES, r):
            make_optimizer(mod, name, kvstore)
            upd[name].append(statistics.median(time_calls(mod.update, args.update_iters, 1)) * 1e3)
            if args.step_iters:
                full[name].append(statistics.median(time_calls(step, args.step_iters, 0)) * 1e3)
    med_u = {c: statistics.median(v) for c, v in upd.items()}
    med_s = {c: statistics.median(v) for c, v in full.items() if v}
    cmd = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    env = {"cpu": cpu_model(), "cores": available_cores(), "omp_num_threads": os.environ["OMP_NUM_THREADS"],
           "mxnet": mx.__version__, "batch_size": args.batch_size, "image_size": args.image_size,
           "dtype": "float32", "devices": args.devices, "update_iters": args.update_iters,
           "step_iters": args.step_iters, "rounds": args.rounds, "command": cmd}
    write_json(args.output, {"env": env, "update_ms": upd, "step_ms": full, "median_update_ms": med_u,
                             "median_step_ms": med_s})
    print(f"ResNet-50 v1.5 optimizer update, batch {args.batch_size}, {args.image_size} px, float32, "
          f"{args.devices} CPU device(s){', kvstore device' if kvstore else ''}; "
          f"{env['cpu']}, {env['cores']} cores, MXNet {mx.__version__}")
    print(f"command: {cmd}; medians of {args.rounds} rounds ({args.update_iters} updates, {args.step_iters} full "
          "steps each)")
    print()
    print("| optimizer, path | update ms | vs sgd | full step ms | vs sgd |")
    print("|---|---|---|---|---|")
    for c in CANDIDATES:
        s = (f"{med_s[c]:.0f} | {med_s[c] / med_s['sgd']:.3f}x" if c in med_s else "- | -")
        print(f"| {c} | {med_u[c]:.1f} | {med_u[c] / med_u['sgd']:.2f}x | {s} |")
    print(f"\nraw numbers: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
