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
from dataclasses import dataclass  # noqa: E402
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
from common import (INT8_SCORES_ONLY, DataError, OutputError, Parser, StopFlag, Stopped, UsageError,  # noqa: E402
                    available_cores, check_dtype, check_writable, config_from, cpu_model, enable_amx, num_gpus,
                    run_main, setup_logging)
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
    check_dtype(dtype, contexts[0].device_type)
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
    setup_logging()
    enable_amx()  # no-op unless bfloat16 on an AMX CPU; for in-process callers that skipped prepare_process
    with contextlib.ExitStack() as stack:
        stop = _STOP or stack.enter_context(StopFlag("train.py"))
        return run(args, stop)


@dataclass(frozen=True)
class RunConfig:
    """The run-level flags, train.py's own: precision, this process's devices, the report, how the job's
    gradients travel, the seed (drawn in MLPerf mode)."""
    dtype: str = "float32"
    gpus: str | None = None
    cpu_devices: int | None = None
    report: Path | None = None
    kv_store: str = "device"
    seed: int | None = None


def run(args, stop: StopFlag) -> int:
    mlcfg = config_from(mlperf.MLPerfConfig, args)
    job = join_job(args, mlcfg.mlperf)
    seed = args.seed
    if mlcfg.mlperf and seed is None:  # MLPerf logs one seed per run, a different one in every run
        seed = args.seed = int.from_bytes(os.urandom(4), "little") % (2 ** 31 - 1) + 1
    rcfg = config_from(RunConfig, args, report=args.report if job.rank == 0 else None, gpus=job_gpus(args, job),
                       seed=seed)
    contexts = resolve_contexts(rcfg.gpus, rcfg.cpu_devices)
    check_precision(rcfg.dtype, args.batch_size, contexts)
    mcfg, fcfg, dcfg = build_configs(args, rcfg, mlcfg.mlperf, contexts[0].device_type)
    if rcfg.dtype == "int8" and not (fcfg.only_inference and fcfg.load_epoch is not None):
        raise UsageError(INT8_SCORES_ONLY)
    recipe = check_mlperf(mlcfg, fcfg, dcfg, args) if mlcfg.mlperf else None
    check_inputs_and_outputs(args, rcfg, mlcfg, fcfg, dcfg)
    resume = find_checkpoint(fcfg)
    report = Report(rcfg.report, num_layers=mcfg.num_layers, device_type=contexts[0].device_type,
                    device_names=[str(c) for c in contexts], dtype=rcfg.dtype, global_batch_size=args.batch_size,
                    config=jsonable(args))
    ml = mlperf.Off()
    if recipe is not None:  # the clock's init_start: from here on every exit writes run_stop or no log at all
        ml = mlperf.MLPerfRun(mlcfg, rcfg.seed, f"{len(contexts)}x{device_label(contexts[0].device_type)}")
        ml.begin()
        ml.hyperparameters(recipe)
    if job.num_workers > 1:
        report.set_dist(job.num_workers, int(os.environ.get("DMLC_NUM_SERVER", "0")), rcfg.kv_store)
    try:
        return _train(fcfg, mcfg, dcfg, rcfg, contexts, report, stop, resume, ml, job)
    except (DataError, OutputError) as err:
        try:
            report.save("failed", str(err))
        except OutputError:
            log.warning("the report could not be updated either (%s)", rcfg.report)
        raise
    finally:
        ml.close()


def join_job(args, mlperf_mode: bool):
    """This process's job: ``dist.Solo``, or, with a distributed ``--kv-store`` inside a job the runner started,
    ``dist.Workers`` once the whole job has registered (the rank comes from the scheduler)."""
    if not (args.kv_store.startswith("dist") or args.kv_store == "horovod"):
        return dist.Solo()
    if not dist.in_worker():
        raise UsageError(f"--kv-store {args.kv_store}: a distributed job is started by the runner: "
                         "./runner --workers W ...")
    if mlperf_mode:
        raise UsageError("--mlperf runs in one process; it does not take --workers yet")
    if args.kv_store == "horovod" and (args.data_backend or "dali").startswith("dali"):
        dali.preload()  # before Horovod's libraries, or DALI's first pipeline aborts the process
    kv = dist.create_kvstore(args.kv_store)  # waits for the whole job
    dist.label_logs(kv.rank)
    return dist.Workers(kv)


def job_gpus(args, job) -> str | None:
    """``--gpus`` for this process: a Horovod process takes the GPU of its local rank (one device per process)."""
    if job.type != "horovod":
        return args.gpus
    if args.gpus:
        gpus = [g for g in args.gpus.split(",") if g.strip()]
        if job.kv.local_rank >= len(gpus):
            raise UsageError(f"--gpus {args.gpus}: no GPU for local rank {job.kv.local_rank}")
        return gpus[job.kv.local_rank]
    if (args.cpu_devices or 1) != 1:
        raise UsageError("--kv-store horovod: one device per process (the runner starts one process per device)")
    return None


def build_configs(args, rcfg: RunConfig, mlperf_mode: bool, device_type: str):
    """(model, fit, data) configs from the flags (MLPerf mode's optimizer and schedule by default)."""
    mcfg = config_from(resnet.ModelConfig, args)
    model = resnet.identity(mcfg, args.num_classes, args.image_shape, rcfg.dtype)
    fcfg = config_from(fit.FitConfig, args, model=model, seed=rcfg.seed,
                       optimizer=args.optimizer or ("lars" if mlperf_mode else "sgd"),
                       lr_schedule=args.lr_schedule or ("poly" if mlperf_mode else "multistep"))
    dcfg = data.resolve(config_from(data.DataConfig, args, batch_size=args.batch_size, dtype=rcfg.dtype,
                                    seed=rcfg.seed, dali=config_from(dali.DaliConfig, args)),
                        have_gpu=device_type == "gpu")
    return mcfg, fcfg, dcfg


def check_inputs_and_outputs(args, rcfg: RunConfig, mlcfg, fcfg, dcfg) -> None:
    """What can be checked of the data set and the outputs before any work (the start-up check of every record
    comes with the pipelines)."""
    if args.data_train and dcfg.data_val is None and not (fcfg.no_val or fcfg.only_inference):
        log.warning("--data-train without --data-val (or --data-root with val.rec): this run validates nothing; give "
                    "--data-val, or --no-val to say so")
    check_outputs(fcfg, rcfg.report)
    if mlcfg.mlperf_log is not None:
        check_writable(mlcfg.mlperf_log, "--mlperf-log")


def find_checkpoint(fcfg):
    """The checkpoint to score (``--only-inference --load-epoch``) or to resume from, or None."""
    if fcfg.only_inference and fcfg.load_epoch is not None:
        return checkpoint.for_scoring(fcfg.model_prefix, fcfg.load_epoch, fcfg.model)
    if fcfg.load_epoch is not None or fcfg.resume:
        resume = checkpoint.for_resume(fcfg.model_prefix, fcfg.load_epoch, fcfg.model)
        if resume is None:
            log.info("--resume: no checkpoint under %s yet; starting afresh", fcfg.model_prefix)
        return resume
    return None


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


def _train(fcfg, mcfg, dcfg, rcfg: RunConfig, contexts, report, stop, resume, ml, job) -> int:
    seed_everything(fcfg.seed)
    device_type = contexts[0].device_type
    want_train = not fcfg.only_inference
    built = "float32" if rcfg.dtype == "int8" else rcfg.dtype  # int8: the float32 graph bounds the memory
    sym = resnet.build(mcfg, num_classes=dcfg.num_classes, image_shape=dcfg.image_shape, dtype=built,
                       input_dtype=dcfg.dtype, input_layout=dcfg.input_layout, label_smoothing=fcfg.label_smoothing,
                       device_type=device_type, for_training=want_train, loss_scale=fcfg.static_loss_scale)
    check_memory(sym, dcfg, fcfg, built, contexts)
    if rcfg.dtype == "int8":  # the INT8 checkpoint's own quantized graph
        sym = checkpoint.int8_symbol(resume)
    for note in resnet.fusion_notes(mcfg, device_type):
        log.warning(note)
    batch = f"{fcfg.batch_size * job.num_workers} ({job.num_workers} workers x {fcfg.batch_size})" \
        if job.num_workers > 1 else fcfg.batch_size
    log.info("%s ResNet-%d v%s on %s, global batch %s, %s, backend %s%s", "scoring" if fcfg.only_inference else
             "training", mcfg.num_layers, mcfg.resnet_version, ",".join(map(str, contexts)), batch, rcfg.dtype,
             dcfg.data_backend, f", {fcfg.optimizer}, {fcfg.lr_schedule} schedule" if want_train else "")
    try:
        return fit.fit(fcfg, sym, contexts, lambda: open_data(dcfg, fcfg, contexts, job, stop),
                       batch_descs(dcfg), report, resnet.initializer(), stop, resume, ml, job)
    except Stopped:
        ml.record(report)
        report.save("interrupted")
        log.error("%s: stopped before the first iteration; nothing was trained or written", stop.name)
        return 128 + stop.signum


def open_data(dcfg, fcfg, contexts, job, stop: StopFlag):
    """The (train, val) iterators of this worker's shard; in a job, every worker runs as many batches per epoch
    (``dist_sync`` would wait forever on a worker with fewer)."""
    want_train = not fcfg.only_inference
    train_it, val_it = data.get_iters(dcfg, contexts, rank=job.rank, num_workers=job.num_workers,
                                      want_train=want_train, want_val=fcfg.only_inference or not fcfg.no_val,
                                      max_batches=fcfg.benchmark_iters, progress=stop.check)
    stop.check()  # a signal while the inputs were checked and the pipelines built
    if job.num_workers > 1 and train_it is not None:
        counts = job.sum("batches", [train_it.batches_per_epoch if r == job.rank else 0
                                     for r in range(job.num_workers)])
        if min(counts) < train_it.batches_per_epoch:
            samples = train_it.num_samples
            train_it = data.limit_batches(train_it, round(min(counts)))
            train_it.num_samples = samples
        log.info("each of the %d workers trains %d batches per epoch", job.num_workers, round(min(counts)))
    if want_train and train_it is None:
        raise UsageError("training needs a training set: --data-root with train.rec, or --data-train")
    return train_it, val_it


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
