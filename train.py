#!/usr/bin/env python3
"""Train (or score) a symbolic ResNet with MXNet: composes the flag groups of every module and runs them in order.

    python train.py --data-root data/demo --image-shape 3,32,32 --num-classes 10 --batch-size 64 --num-epochs 2

Usually started through ``./runner``, which turns devices and a per-device batch into these flags. ``python train.py
-h`` lists every flag with its default. Usage errors are one line and exit status 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BF16_NEEDS_CPU, FP16_NEEDS_GPU, Parser, UsageError, available_cores, check_bf16_cpu,  # noqa: E402
                    enable_amx, num_gpus, run_main)

# MXNet sizes its OpenMP pool to half the cores unless told otherwise, and reads this when it is imported.
os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))
enable_amx()  # bfloat16 on AMX CPUs: before MXNet's oneDNN reads its ISA setting

if __name__ == "__main__":  # before importing MXNet, whose GPU build fails to load without its CUDA libraries
    import gpu

    _problem = gpu.check()
    if _problem:
        print(f"train.py: error: {_problem}", file=sys.stderr)
        sys.exit(2)

import logging  # noqa: E402
import random  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import dali  # noqa: E402
import data  # noqa: E402
import fit  # noqa: E402
import resnet  # noqa: E402
from report import Report  # noqa: E402

log = logging.getLogger("train")


def build_parser() -> Parser:
    p = Parser(prog="train.py", description="Train or score a symbolic ResNet (v1.5 by default) with MXNet.")
    fit.add_fit_args(p)
    resnet.add_model_args(p)
    data.add_data_args(p)
    dali.add_dali_args(p)
    return p


def resolve_contexts(args) -> list:
    """The devices of this process: --gpus ids, or --cpu-devices CPU contexts (default: GPU 0, else one CPU)."""
    gpus = num_gpus()
    if args.gpus:
        try:
            ids = [int(x) for x in args.gpus.split(",")]
        except ValueError:
            raise UsageError(f"--gpus {args.gpus}: expected comma-separated GPU ids, e.g. 0,1") from None
        if not gpus:
            raise UsageError(f"--gpus {args.gpus}: MXNet sees no GPU here (CPU build or no driver); on a CPU "
                             "machine use --cpu-devices N (the runner's -n does this)")
        if max(ids) >= gpus or min(ids) < 0 or len(set(ids)) != len(ids):
            raise UsageError(f"--gpus {args.gpus}: only GPUs 0-{gpus - 1} are visible, each usable once")
        return [mx.gpu(i) for i in ids]
    n = args.cpu_devices or 1
    cores = available_cores()
    if not 1 <= n <= cores:
        raise UsageError(f"--cpu-devices {n}: this machine has {cores} cores available; use 1 to {cores} "
                         "CPU devices")
    return [mx.cpu(i) for i in range(n)]


def check_args(args, contexts) -> None:
    kind = contexts[0].device_type
    if args.dtype == "float16" and kind == "cpu":
        raise UsageError(FP16_NEEDS_GPU)
    if args.dtype == "bfloat16":
        if kind != "cpu":
            raise UsageError(BF16_NEEDS_CPU)
        check_bf16_cpu()
    if args.batch_size < len(contexts) or args.batch_size % len(contexts):
        raise UsageError(f"--batch-size {args.batch_size}: the global batch must be a multiple of the "
                         f"{len(contexts)} devices (at least one image per device)")
    if args.load_epoch is not None:
        fit.find_checkpoint(args.model_prefix, args.load_epoch)


def seed_everything(seed) -> None:
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    contexts = resolve_contexts(args)
    check_args(args, contexts)
    fcfg = fit.config_from_args(args)
    dcfg = data.config_from_args(args, args.batch_size, args.dtype, have_gpu=contexts[0].device_type == "gpu",
                                 seed=args.seed)
    seed_everything(args.seed)
    train_it, val_it = data.get_iters(dcfg, contexts, want_train=not args.only_inference,
                                      want_val=args.only_inference or not args.no_val)
    if args.benchmark_iters is not None:  # cuts training epochs and scoring passes; validation stays whole
        if args.only_inference:
            val_it = data.limit_batches(val_it, args.benchmark_iters) if val_it is not None else None
        else:
            train_it = data.limit_batches(train_it, args.benchmark_iters)
    for note in resnet.fusion_notes(args, contexts[0].device_type):
        log.warning(note)
    sym = resnet.symbol_from_args(args, args.num_classes, dcfg.image_shape, args.dtype, dcfg.dtype,
                                  dcfg.layout, args.label_smoothing, contexts[0].device_type,
                                  for_training=not args.only_inference)
    report = Report(args.report, num_layers=args.num_layers, device_type=contexts[0].device_type,
                    device_names=[str(c) for c in contexts], dtype=args.dtype, global_batch_size=args.batch_size,
                    config=fit.config_dict(args))
    log.info("%s ResNet-%d v%s on %s, global batch %d, %s, backend %s", "scoring" if args.only_inference else
             "training", args.num_layers, args.resnet_version, ",".join(map(str, contexts)), args.batch_size,
             args.dtype, dcfg.backend)
    return fit.fit(fcfg, sym, contexts, train_it, val_it, report, resnet.initializer())


if __name__ == "__main__":
    sys.exit(run_main(main))
