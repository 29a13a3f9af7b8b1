#!/usr/bin/env python3
"""Train (or score) a symbolic ResNet with MXNet: composes the flag groups of every module, turns the parsed flags
into each module's frozen config, checks everything that can be checked before work starts, and runs the pieces in
order.

    python train.py --data-root data/demo --image-shape 3,32,32 --num-classes 10 --batch-size 64 --num-epochs 2

Usually started through ``./runner``, which turns devices and a per-device batch into these flags. ``python train.py
-h`` lists every flag with its default. Bad input is one line and exit status 2, before any heavy work: flags,
devices, input files (every ``.idx`` entry and label), output paths, the checkpoint to resume from, and whether the
batch fits in memory. Importing this module does nothing but define it; a process set-up (threads, AMX, GPU check,
signal handling from the first moment) happens only when it runs as a script.
"""
from __future__ import annotations

import os
import sys


def prepare_process():
    """Before MXNet is imported: OpenMP threads (MXNet would use half the cores, and reads this on import), AMX for
    bfloat16, the GPU check (the GPU build fails to load without its CUDA libraries), and SIGINT/SIGTERM caught from
    here on. Returns the entered ``common.StopFlag``."""
    from common import StopFlag, available_cores, enable_amx

    stop = StopFlag("train.py").__enter__()
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))
    enable_amx()
    import gpu

    problem = gpu.check()
    if problem:
        print(f"train.py: error: {problem}", file=sys.stderr)
        sys.exit(2)
    return stop


_STOP = prepare_process() if __name__ == "__main__" else None

import contextlib  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import checkpoint  # noqa: E402
import dali  # noqa: E402
import data  # noqa: E402
import dist  # noqa: E402
import fit  # noqa: E402
import memory  # noqa: E402
import mlperf  # noqa: E402
import resnet  # noqa: E402
from common import (BF16_NEEDS_CPU, FP16_NEEDS_GPU, DataError, OutputError, Parser, StopFlag,  # noqa: E402
                    Stopped, UsageError, available_cores, check_bf16_cpu, check_writable, config_from, cpu_model,
                    enable_amx, num_gpus, run_main)
from datatypes import batch_descs  # noqa: E402
from report import Report  # noqa: E402

log = logging.getLogger("train")


def build_parser() -> Parser:
    p = Parser(prog="train.py", description="Train or score a symbolic ResNet (v1.5 by default) with MXNet.")
    fit.add_fit_args(p)
    resnet.add_model_args(p)
    data.add_data_args(p)
    dali.add_dali_args(p)
    mlperf.add_mlperf_args(p)
    return p


def resolve_contexts(gpus_flag: str | None, cpu_devices: int | None) -> list:
    """The devices of this process: --gpus ids, or --cpu-devices CPU contexts (default: GPU 0, else one CPU)."""
    gpus = num_gpus()
    if gpus_flag:
        try:
            ids = [int(x) for x in gpus_flag.split(",")]
        except ValueError:
            raise UsageError(f"--gpus {gpus_flag}: expected comma-separated GPU ids, e.g. 0,1") from None
        if not gpus:
            raise UsageError(f"--gpus {gpus_flag}: MXNet sees no GPU here (CPU build or no driver); on a CPU "
                             "machine use --cpu-devices N (the runner's -n does this)")
        if max(ids) >= gpus or min(ids) < 0 or len(set(ids)) != len(ids):
            raise UsageError(f"--gpus {gpus_flag}: only GPUs 0-{gpus - 1} are visible, each usable once")
        return [mx.gpu(i) for i in ids]
    n = 1 if cpu_devices is None else cpu_devices
    cores = available_cores()
    if not 1 <= n <= cores:
        raise UsageError(f"--cpu-devices {n}: this machine has {cores} cores available; use 1 to {cores} "
                         "CPU devices")
    return [mx.cpu(i) for i in range(n)]


def check_precision(dtype: str, batch_size: int, contexts) -> None:
    kind = contexts[0].device_type
    if dtype == "float16" and kind == "cpu":
        raise UsageError(FP16_NEEDS_GPU)
    if dtype == "bfloat16":
        if kind != "cpu":
            raise UsageError(BF16_NEEDS_CPU)
        check_bf16_cpu()
    if batch_size < len(contexts) or batch_size % len(contexts):
        raise UsageError(f"--batch-size {batch_size}: the global batch must be a multiple of the "
                         f"{len(contexts)} devices (at least one image per device)")


def check_outputs(cfg: fit.FitConfig, report_path: Path | None) -> None:
    """Every output path can be written, before any work (not after the first epoch)."""
    if report_path is not None:
        check_writable(report_path, "--report")
    if cfg.model_prefix is not None and not cfg.only_inference:
        check_writable(checkpoint.paths(cfg.model_prefix, 0)["symbol"], "--model-prefix")


def seed_everything(seed) -> None:
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def jsonable(args) -> dict:
    """The resolved flags as JSON-friendly values (for the report)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        out[k] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    enable_amx()  # no-op unless bfloat16 on an AMX CPU; for in-process callers that skipped prepare_process
    with contextlib.ExitStack() as stack:
        stop = _STOP or stack.enter_context(StopFlag("train.py"))
        return run(args, stop)


def run(args, stop: StopFlag) -> int:
    mlcfg = config_from(mlperf.MLPerfConfig, args)
    kv, rank, num_workers = None, 0, 1
    if args.kv_store.startswith("dist") or args.kv_store == "horovod":
        if not dist.in_worker():
            raise UsageError(f"--kv-store {args.kv_store}: a distributed job is started by the runner: "
                             "./runner --workers W ...")
        if mlcfg.mlperf:
            raise UsageError("--mlperf runs in one process; it does not take --workers yet")
        if args.kv_store == "horovod" and (args.data_backend or "dali").startswith("dali"):
            dali.preload()  # before Horovod's libraries, or DALI's first pipeline aborts the process
        kv = dist.create_kvstore(args.kv_store)  # waits for the whole job; the rank comes from the scheduler
        rank, num_workers = kv.rank, kv.num_workers
        dist.label_logs(rank)
        if kv.type == "horovod":  # one device per process: this host's local_rank-th GPU
            if args.gpus:
                gpus = [g for g in args.gpus.split(",") if g.strip()]
                if kv.local_rank >= len(gpus):
                    raise UsageError(f"--gpus {args.gpus}: no GPU for local rank {kv.local_rank}")
                args.gpus = gpus[kv.local_rank]
            elif (args.cpu_devices or 1) != 1:
                raise UsageError("--kv-store horovod: one device per process (the runner starts one process per "
                                 "device)")
        if rank != 0:  # rank 0 writes the checkpoints and the report
            args.report = None
    contexts = resolve_contexts(args.gpus, args.cpu_devices)
    device_type = contexts[0].device_type
    check_precision(args.dtype, args.batch_size, contexts)
    if mlcfg.mlperf and args.seed is None:  # MLPerf logs one seed per run, a different one in every run
        args.seed = int.from_bytes(os.urandom(4), "little") % (2 ** 31 - 1) + 1
    mcfg = config_from(resnet.ModelConfig, args)
    model = {"num_layers": mcfg.num_layers, "resnet_version": mcfg.resnet_version, "num_classes": args.num_classes,
             "image_channels": args.image_shape[0] if args.image_shape else None, "dtype": args.dtype}
    fcfg = config_from(fit.FitConfig, args, model=model,
                       optimizer=args.optimizer or ("lars" if mlcfg.mlperf else "sgd"),
                       lr_schedule=args.lr_schedule or ("poly" if mlcfg.mlperf else "multistep"))
    dcfg = data.resolve(config_from(data.DataConfig, args, batch_size=args.batch_size, dtype=args.dtype,
                                    seed=args.seed, dali=config_from(dali.DaliConfig, args)),
                        have_gpu=device_type == "gpu")
    recipe = check_mlperf(mlcfg, fcfg, dcfg, args) if mlcfg.mlperf else None
    if args.data_train and dcfg.data_val is None and not (fcfg.no_val or fcfg.only_inference):
        log.warning("--data-train without --data-val (or --data-root with val.rec): this run validates nothing; give "
                    "--data-val, or --no-val to say so")
    check_outputs(fcfg, args.report)
    if mlcfg.mlperf_log is not None:
        check_writable(mlcfg.mlperf_log, "--mlperf-log")
    resume = None
    if fcfg.only_inference and fcfg.load_epoch is not None:
        resume = checkpoint.for_scoring(fcfg.model_prefix, fcfg.load_epoch, model)
    elif fcfg.load_epoch is not None or fcfg.resume:
        resume = checkpoint.for_resume(fcfg.model_prefix, fcfg.load_epoch, model)
        if resume is None:
            log.info("--resume: no checkpoint under %s yet; starting afresh", fcfg.model_prefix)
    report = Report(args.report, num_layers=mcfg.num_layers, device_type=device_type,
                    device_names=[str(c) for c in contexts], dtype=args.dtype, global_batch_size=args.batch_size,
                    config=jsonable(args))
    ml = None
    if recipe is not None:  # the clock's init_start: from here on every exit writes run_stop or no log at all
        ml = mlperf.MLPerfRun(mlcfg, args.seed, f"{len(contexts)}x{device_label(device_type)}")
        ml.begin()
        ml.hyperparameters(recipe)
    if kv is not None:
        report.set_dist(num_workers, int(os.environ.get("DMLC_NUM_SERVER", "0")), args.kv_store)
    try:
        return _train(fcfg, mcfg, dcfg, contexts, report, stop, resume, args, ml, kv)
    except (DataError, OutputError) as err:
        try:
            report.save("failed", str(err))
        except OutputError:
            log.warning("the report could not be updated either (%s)", args.report)
        raise
    finally:
        if ml is not None:
            ml.close()


def device_label(device_type: str) -> str:
    """What the MLPerf log's submission_platform names: the GPU (nvidia-smi) or the CPU model."""
    if device_type == "gpu":
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
            return out.splitlines()[0].strip() if out else "GPU"
        except (OSError, subprocess.TimeoutExpired):
            return "GPU"
    return cpu_model()


def check_mlperf(mlcfg, fcfg, dcfg, args) -> "mlperf.Recipe":
    """What MLPerf mode cannot run with (whatever the division), then the closed division's rules."""
    if dcfg.data_backend == "synthetic" or dcfg.data_val is None:
        raise UsageError("--mlperf needs the validation set (a run ends when an evaluation reaches the target): "
                         "give --data-root with val.rec, or --data-val, and a RecordIO --data-backend")
    for flag, on in (("--no-val", fcfg.no_val), ("--benchmark-iters", fcfg.benchmark_iters is not None),
                     ("--num-val-examples", dcfg.num_val_examples is not None), ("--no-metrics", fcfg.no_metrics),
                     ("--only-inference", fcfg.only_inference)):
        if on:
            raise UsageError(f"{flag} cannot be used with --mlperf: every evaluation scores the whole val set")
    for flag, on in (("--resume", fcfg.resume), ("--load-epoch", fcfg.load_epoch is not None)):
        if on:
            raise UsageError(f"{flag} cannot be used with --mlperf: MLPerf's clock may not be paused, so a run "
                             "starts from initialized weights")
    recipe = mlperf.Recipe(optimizer=fcfg.optimizer, lr=fcfg.lr, lr_schedule=fcfg.lr_schedule,
                           warmup_epochs=fcfg.warmup_epochs, decay_epochs=fcfg.decay_epochs, wd=fcfg.wd,
                           mom=fcfg.mom, label_smoothing=fcfg.label_smoothing, global_batch=fcfg.batch_size,
                           num_classes=dcfg.num_classes, num_epochs=fcfg.num_epochs, lars_eta=fcfg.lars_eta,
                           all_training_data=dcfg.num_examples is None)
    mlperf.check_rules(mlcfg, recipe)
    if not any(mlcfg.evaluates(e) for e in range(fcfg.num_epochs)):
        raise UsageError(f"--num-epochs {fcfg.num_epochs}: no epoch is evaluated with --eval-period "
                         f"{mlcfg.eval_period} --eval-offset {mlcfg.eval_offset}; the run could never reach its "
                         "target")
    return recipe


def _train(fcfg, mcfg, dcfg, contexts, report, stop, resume, args, ml=None, kv=None) -> int:
    seed_everything(fcfg.seed)
    device_type = contexts[0].device_type
    want_train = not fcfg.only_inference
    sym = resnet.build(mcfg, num_classes=dcfg.num_classes, image_shape=dcfg.image_shape, dtype=args.dtype,
                       input_dtype=dcfg.dtype, input_layout=dcfg.input_layout, label_smoothing=fcfg.label_smoothing,
                       device_type=device_type, for_training=want_train, loss_scale=fcfg.static_loss_scale)
    check_memory(sym, dcfg, fcfg, args.dtype, contexts)

    def open_data():
        train_it, val_it = data.get_iters(dcfg, contexts, rank=kv.rank if kv else 0,
                                          num_workers=kv.num_workers if kv else 1, want_train=want_train,
                                          want_val=fcfg.only_inference or not fcfg.no_val,
                                          max_batches=fcfg.benchmark_iters, progress=stop.check)
        stop.check()  # a signal while the inputs were checked and the pipelines built
        if kv is not None and train_it is not None:  # dist_sync: every worker runs as many batches per epoch
            counts = dist.allreduce_sum(kv, "batches", [train_it.batches_per_epoch if r == kv.rank else 0
                                                        for r in range(kv.num_workers)])
            if min(counts) < train_it.batches_per_epoch:
                samples = train_it.num_samples
                train_it = data.limit_batches(train_it, round(min(counts)))
                train_it.num_samples = samples
            log.info("each of the %d workers trains %d batches per epoch", kv.num_workers, round(min(counts)))
        if want_train and train_it is None:
            raise UsageError("training needs a training set: --data-root with train.rec, or --data-train")
        return train_it, val_it

    for note in resnet.fusion_notes(mcfg, device_type):
        log.warning(note)
    log.info("%s ResNet-%d v%s on %s, global batch %s, %s, backend %s%s", "scoring" if fcfg.only_inference else
             "training", mcfg.num_layers, mcfg.resnet_version, ",".join(map(str, contexts)),
             f"{fcfg.batch_size * kv.num_workers} ({kv.num_workers} workers x {fcfg.batch_size})" if kv else
             fcfg.batch_size, args.dtype, dcfg.data_backend, f", {fcfg.optimizer}, {fcfg.lr_schedule} schedule" if want_train else "")
    try:
        return fit.fit(fcfg, sym, contexts, open_data, batch_descs(dcfg), report, resnet.initializer(), stop,
                       resume, mlperf=ml, kv=kv)
    except Stopped:
        if ml is not None:
            report.set_mlperf(ml.summary())
        report.save("interrupted")
        log.error("%s: stopped before the first iteration; nothing was trained or written", stop.name)
        return 128 + stop.signum


def check_memory(sym, dcfg, fcfg, dtype: str, contexts) -> None:
    """Refuse a batch that does not fit in memory before anything is allocated (``memory.check_batch``): on CPU the
    process batch against the machine's memory, on GPUs each device's share against its free memory; the message
    names the batch per device too (the runner's -b)."""
    n = len(contexts)
    if contexts[0].device_type == "gpu":
        memory.check_batch(sym, dcfg.image_shape, fcfg.batch_size // n, dtype=dtype, training=not fcfg.only_inference,
                           device_type="gpu", device_id=contexts[0].device_id, input_layout=dcfg.input_layout,
                           flag=f"--batch-size {fcfg.batch_size} over {n} GPU(s): the runner's -b, per GPU,")
    else:  # the runner's -b is the batch per device; train.py's --batch-size the process's (n devices x -b)
        memory.check_batch(sym, dcfg.image_shape, fcfg.batch_size, dtype=dtype, training=not fcfg.only_inference,
                           num_devices=n, input_layout=dcfg.input_layout,
                           flag="--batch-size {batch} (the runner's -b {per_device} per device" +
                                (f" x {n} devices)" if n > 1 else ")"))


if __name__ == "__main__":
    if not dist.in_worker():
        sys.exit(run_main(main))
    try:  # a worker of a distributed job that fails leaves at once, not through the kvstore's exit barrier (the
        code = run_main(main)  # other workers would never come to it)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    if code:
        dist.hard_exit(code)
    dist.release()
    sys.exit(code)
