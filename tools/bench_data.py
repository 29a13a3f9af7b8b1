#!/usr/bin/env python3
"""Benchmark of the data path on ImageNet-sized JPEGs made from the real photographs in scikit-learn's wheel.

1. Stage-1 preparation wall time: ``tools/prepare_dataset.py`` against MXNet's bundled ``im2rec.py``
   (``--list --recursive``, then ``--pass-through``), same images, same thread count.
2. Training- and validation-pipeline throughput (img/s, decode + augmentation + normalize, batch ``-b``, 224 px) of
   every backend this machine can run, through the toolkit's own iterators (``data.get_iters``).

Each measurement is repeated ``--rounds`` times, the candidates alternating within a round, and the median is
reported. Prints a Markdown table and writes the raw numbers as JSON.

    python tools/bench_data.py               # what `make bench-data` runs
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
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (Parser, add_rounds_arg, available_cores, float_list, num_gpus, run_child, run_tool,  # noqa: E402
                    write_json)


def make_photo_tree(root: Path, n: int, seed: int = 0) -> int:
    """``n`` JPEGs of ImageNet's typical size (shorter side 333-500 px, q90) cut from sklearn's two photographs,
    two classes (one per photograph). Returns the total number of bytes written."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    total = 0
    for i in range(n):
        c = i % 2
        img = photos[c]
        h = int(rng.integers(300, img.shape[0] + 1))
        w = int(rng.integers(min(h, 400), img.shape[1] + 1))
        y, x = int(rng.integers(0, img.shape[0] - h + 1)), int(rng.integers(0, img.shape[1] - w + 1))
        crop = img[y:y + h, x:x + w]
        short = int(rng.integers(333, 501))
        scale = short / min(h, w)
        crop = cv2.resize(crop, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(crop[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        path = root / f"class{c}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.tobytes())
        total += len(buf)
    return total


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def time_cmd(args: Sequence) -> float:
    t0 = time.perf_counter()
    run_child([str(a) for a in args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_prepare(tree: Path, work: Path, threads: int, rounds: int) -> dict:
    import mxnet as mx

    im2rec = Path(mx.__file__).parent / "tools" / "im2rec.py"
    py = sys.executable
    times = {"prepare_dataset.py": [], "im2rec.py": []}
    for r in range(rounds):
        out = work / f"ours{r}"
        times["prepare_dataset.py"].append(time_cmd(
            [py, ROOT / "tools" / "prepare_dataset.py", "--train-dir", tree, "--data-root", out,
             "--num-thread", threads, "--quiet"]))
        theirs = work / f"theirs{r}"
        theirs.mkdir()
        times["im2rec.py"].append(
            time_cmd([py, im2rec, "--list", "--recursive", theirs / "train", tree])
            + time_cmd([py, im2rec, "--pass-through", "--num-thread", threads, theirs / "train", tree]))
    return times


def bench_pipelines(data_root: Path, backends: Sequence[str], batch: int, threads: int, iters: int,
                    rounds: int) -> dict:
    """img/s of each backend's train and val iterators. Each measurement builds its iterators afresh and frees
    them afterwards, so no other pipeline's background prefetching competes for the cores while it is timed."""
    import gc

    import mxnet as mx

    import dali
    import data

    gpus = num_gpus()
    results = {b: {"train": [], "val": []} for b in backends}
    for _ in range(rounds):
        for backend in backends:
            cfg = data.resolve(data.DataConfig(data_root=data_root, data_backend=backend, batch_size=batch, seed=1,
                                               data_mxnet_threads=threads, dali=dali.DaliConfig(dali_threads=threads)),
                               have_gpu=bool(gpus))
            ctx = [mx.gpu(0)] if backend == "dali-gpu" else [mx.cpu(0)]
            for split in ("train", "val"):
                train, val = data.get_iters(cfg, ctx, want_val=split == "val")
                it = train if split == "train" else val
                del train, val
                results[backend][split].append(data.time_iterator(it, iters, warmup=5))
                del it
                gc.collect()
    return results


def time_one_pipeline(data_root: Path, backend: str, load: float | None, split: str, batch: int, threads: int,
                      iters: int) -> float:
    import dali
    import data

    d = dali.DaliConfig(dali_threads=threads, **({} if load is None else {"dali_hw_decoder_load": load}))
    cfg = data.resolve(data.DataConfig(data_root=data_root, data_backend=backend, batch_size=batch, seed=1, dali=d),
                       have_gpu=backend == "dali-gpu")
    return dali.time_pipeline(cfg, split == "train", iters, device_id=0)


def bench_pipelines_direct(data_root: Path, backends: Sequence[str], batch: int, threads: int, iters: int,
                           rounds: int, hw_loads: Sequence[float]) -> dict:
    """img/s of the DALI pipelines themselves (no MXNet iterator), ``dali-gpu`` once per hardware-decoder load.
    Each measurement runs in its own process, which leaves without tearing its pipeline down (DALI 1.35 can abort
    when a pipeline with batches still in flight is destroyed)."""
    cands = [(b, None) for b in backends if b != "dali-gpu"]
    if "dali-gpu" in backends:
        cands = [("dali-gpu", load) for load in hw_loads] + cands
    results = {}
    for _ in range(rounds):
        for backend, load in cands:
            name = backend if load is None else f"{backend} (hw decoder load {load:g})"
            r = results.setdefault(name, {"train": [], "val": []})
            for split in ("train", "val"):
                out = run_child([sys.executable, __file__, "--time-one", json.dumps(
                    [str(data_root), backend, load, split, batch, threads, iters])], capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{name} {split}: {out.stderr.strip().splitlines()[-1:]}")
                r[split].append(float(out.stdout.split()[-1]))
    return results


def build_parser() -> Parser:
    p = Parser(prog="bench_data.py", description="Benchmark Stage-1 preparation and the data pipelines.")
    p.add_argument("--images", type=int, default=2048, help="ImageNet-sized JPEGs to make")
    p.add_argument("--threads", type=int, default=available_cores(), help="threads for every tool and pipeline")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="pipeline batch size")
    p.add_argument("-i", "--iters", type=int, default=40, help="timed batches per pipeline measurement")
    add_rounds_arg(p)
    p.add_argument("--backends", default=None,
                   help="comma-separated backends to time (default: dali-cpu,mxnet, plus dali-gpu with a GPU)")
    p.add_argument("--pipelines-only", action="store_true",
                   help="time the DALI pipelines themselves, without the MXNet iterator, and skip the Stage-1 "
                        "timing: for a GPU the installed MXNet cannot use (e.g. Hopper with the PyPI wheels)")
    p.add_argument("--hw-decoder-loads", type=float_list, default=[0.0, 0.65],
                   help="with --pipelines-only: the --dali-hw-decoder-load values to time dali-gpu with")
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/data.json"), help="JSON with raw numbers")
    p.add_argument("--time-one", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    import mxnet as mx
    import nvidia.dali

    args = build_parser().parse_args(argv)
    if args.time_one:
        root, backend, load, split, batch, threads, iters = json.loads(args.time_one)
        print(time_one_pipeline(Path(root), backend, load, split, batch, threads, iters), flush=True)
        os._exit(0)  # no pipeline teardown (see bench_pipelines_direct)
    backends = args.backends.split(",") if args.backends else \
        (["dali-gpu"] if num_gpus() else []) + ["dali-cpu", "mxnet"]
    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp:
        tmp = Path(tmp)
        nbytes = make_photo_tree(tmp / "raw" / "train", args.images)
        make_photo_tree(tmp / "raw" / "val", max(args.batch_size, args.images // 4), seed=1)
        prep = {} if args.pipelines_only else bench_prepare(tmp / "raw" / "train", tmp, args.threads, args.rounds)
        run_child([sys.executable, ROOT / "tools" / "prepare_dataset.py", "--train-dir", tmp / "raw" / "train",
                  "--val-dir", tmp / "raw" / "val", "--data-root", tmp / "rec", "--quiet"], check=True,
                  stdout=subprocess.DEVNULL)
        if args.pipelines_only:
            pipes = bench_pipelines_direct(tmp / "rec", [b for b in backends if b.startswith("dali")],
                                           args.batch_size, args.threads, args.iters, args.rounds,
                                           args.hw_decoder_loads)
        else:
            pipes = bench_pipelines(tmp / "rec", backends, args.batch_size, args.threads, args.iters,
                                    args.rounds)
    med = statistics.median
    env = {"cores": available_cores(), "threads": args.threads, "mxnet": mx.__version__,
           "dali": nvidia.dali.__version__, "images": args.images, "mean_jpeg_kb": round(nbytes / args.images / 1024),
           "batch_size": args.batch_size, "image_shape": [3, 224, 224], "repeats": args.rounds,
           "gpu": gpu_name(), "through": "DALI pipeline" if args.pipelines_only else "toolkit iterator"}
    write_json(args.output, {"env": env, "prepare_s": prep, "pipelines_img_per_s": pipes})
    print(f"Data path, {args.images} JPEGs (mean {env['mean_jpeg_kb']} KB) from sklearn's photographs, "
          f"{args.threads} threads, {env['cores']} cores; medians of {args.rounds} rounds")
    if env["gpu"]:
        print(f"GPU: {env['gpu']}")
    if prep:
        print()
        print("| Stage-1 preparation | wall time (s) | img/s |")
        print("|---|---|---|")
        for name, ts in prep.items():
            print(f"| {name} | {med(ts):.2f} | {args.images / med(ts):.0f} |")
    print(f"\nbatch {args.batch_size}, timed through the {env['through']}\n")
    print("| backend | train img/s (decode + RRC 224 + flip + normalize) | val img/s (decode + resize 256 + "
          "center crop + normalize) |")
    print("|---|---|---|")
    for backend, r in pipes.items():
        print(f"| {backend} | {med(r['train']):.0f} | {med(r['val']):.0f} |")
    print(f"\nraw numbers: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "bench_data.py"))
