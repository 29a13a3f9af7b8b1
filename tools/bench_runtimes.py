#!/usr/bin/env python3
"""Every inference runtime x precision this CPU runs, in one table: raw throughput, LoadGen Offline and SingleStream,
and top-1 against float32, measured side by side in one run.

    python tools/bench_runtimes.py          # what `make bench-infer` runs (after `make demo`: its checkpoint)

The model is one checkpoint (default: the demo's newest, ``runs/demo/model``), so every row runs the same weights:

* mxnet: the checkpoint (float32; bfloat16 where the CPU has AVX512_BF16 or AMX-BF16) and its INT8 checkpoint;
* onnxruntime: its ONNX export (``tools/export_onnx.py``) in float32, and its static QDQ INT8 form;
* openvino: the same ONNX export in float32 (and bfloat16 where the CPU has it), and NNCF's INT8 IR.

Each INT8 model is made by ``tools/quantize.py`` (``--calib-images`` training images), once at the checkpoint's own
size (``--acc-size``, the demo's 32 px: top-1) and once at ``--image-size`` (224 px: speed; the digits upscaled, so
its top-1 means little), with ``--accept-accuracy-loss``: the table reports each row's top-1 against float32's and
marks a row below MLPerf's 99% rather than leaving it out. Then, each measurement a process of its own, ``--rounds``
rounds with the rows in an order rotated from round to round (medians reported):

* **raw**: the runtime's own API on one batch of ``--batch-size`` random images at ``--image-size``, outside the
  toolkit, for ``--seconds`` after three batches of warm-up (all the batches over all their time): MXNet a
  ``Module`` forward (float32, bfloat16 and INT8 graphs as the toolkit binds them), onnxruntime
  ``InferenceSession.run``, OpenVINO its THROUGHPUT configuration (one stream per core, as many requests in flight,
  the batch split between them). For mxnet rows also ``./runner --only-inference`` (**scoring**: the toolkit's own
  scoring path on synthetic data);
* **Offline**: ``loadgen.py --scenario Offline`` samples/s (the demo's validation set at ``--image-size``, batch
  ``--batch-size``; OpenVINO with ``--threads`` = the cores, one stream each, half the batch each);
* **SingleStream**: ``loadgen.py --scenario SingleStream`` p90 latency (one thread, batch 1).

Once, at ``--acc-size``: ``loadgen.py --accuracy`` (Offline) top-1 of every row on the whole validation set, and the
scoring top-1 of float32 and INT8 as ``tools/quantize.py`` measured it on the same images (they must agree).

Prints a markdown table (docs/performance.md's) and the ratios the toolkit is held to; every number goes to ``-o``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (Parser, UsageError, add_rounds_arg, available_cores, cpu_bf16_flags, cpu_model,  # noqa: E402
                    path_arg, rotated, run_tool, write_json)
from tools.bench_loadgen import _run  # noqa: E402  (each step a child with its own environment; one line on failure)

SHAPE = "3,{0},{0}"
INT8_FLAGS = ("avx512_vnni", "amx_int8")


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def rows(bf16: bool) -> list[tuple[str, str]]:
    out = [("mxnet", "float32"), ("mxnet", "bfloat16"), ("mxnet", "int8"), ("onnxruntime", "float32"),
           ("onnxruntime", "int8"), ("openvino", "float32"), ("openvino", "bfloat16"), ("openvino", "int8")]
    return [r for r in out if bf16 or r[1] != "bfloat16"]


# --------------------------------------------------------------------------------------------------------------------
# The models


def make_models(args, work: Path, backends: set) -> dict:
    """Per size: the ONNX export and the INT8 model of each of ``backends`` with its manifest's top-1 scores."""
    prefix, epoch = args.model_prefix, args.load_epoch
    models = {}
    for size, speed_only in ((args.acc_size, False), (args.image_size, True)):
        if size in models:
            continue
        shape = SHAPE.format(size)
        base = work / f"m{size}"
        onnx = Path(f"{base}-{epoch:04d}.onnx")
        _run([sys.executable, ROOT / "tools" / "export_onnx.py", prefix, epoch, "--image-shape", shape,
              "--data-val", args.data_root / "val.rec", "-o", onnx], "export_onnx.py")
        common = ["--load-epoch", epoch, "--data-root", args.data_root, "--image-shape", shape, "--num-classes",
                  args.num_classes, "--calib-images", args.calib_images, "--accept-accuracy-loss"]
        if speed_only:
            common += ["--count", str(args.batch_size)]
        out = {"onnx": onnx, "mxnet_int8": Path(f"{base}-int8"), "scoring_top1": {},
               "onnxruntime_int8": Path(f"{base}-{epoch:04d}-int8.onnx"),
               "openvino_int8": Path(f"{base}-{epoch:04d}-int8.xml")}
        for backend in sorted(backends):
            source = [] if backend == "mxnet" else ["--model-file", onnx]
            _run([sys.executable, ROOT / "tools" / "quantize.py", "--backend", backend, "--model-prefix", prefix,
                  *source, "--output", out[f"{backend}_int8"], *common], f"quantize.py --backend {backend}")
        manifests = {"mxnet": Path(f"{out['mxnet_int8']}-{epoch:04d}.json"),
                     "onnxruntime": Path(f"{out['onnxruntime_int8']}.json"),
                     "openvino": Path(f"{out['openvino_int8']}.json")}
        for backend, path in manifests.items():
            if backend not in backends:
                continue
            acc = json.loads(path.read_text())["accuracy"]
            out["scoring_top1"][backend] = {"float32": acc["top1_float32"], "int8": acc["top1_int8"]}
        models[size] = out
        print(f"models at {size} px: the ONNX export, INT8 for {', '.join(sorted(backends))}", flush=True)
    return models


def model_flags(args, m: dict, backend: str, dtype: str) -> list:
    """loadgen.py's (and the raw worker's) flags for one row."""
    if backend == "mxnet":
        prefix = m["mxnet_int8"] if dtype == "int8" else args.model_prefix
        return ["--model-prefix", prefix, "--load-epoch", args.load_epoch]
    return ["--model-file", m[f"{backend}_int8"] if dtype == "int8" else m["onnx"]]


# --------------------------------------------------------------------------------------------------------------------
# Raw throughput: the runtimes' own APIs (a worker process each)


def raw_worker(argv) -> int:
    """``--raw BACKEND DTYPE SIZE BATCH SECONDS MODEL...``: print {"samples_per_s": ...} of the runtime's own API."""
    backend, dtype, size, batch, seconds, *model = argv
    size, batch, seconds = int(size), int(batch), float(seconds)
    cores = available_cores()
    os.environ["OMP_NUM_THREADS"] = str(cores)
    from common import enable_amx

    enable_amx()
    import numpy as np

    x = np.random.default_rng(0).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32)
    if backend == "mxnet":
        import mxnet as mx

        import checkpoint
        import fit
        import resnet

        prefix, epoch = Path(model[0]), int(model[1])
        ckpt = checkpoint.Checkpoint(prefix, epoch, False, {})
        if dtype == "int8":
            sym = checkpoint.int8_symbol(ckpt)
        else:
            sym = resnet.get_symbol(num_classes=int(model[2]), image_shape=(3, size, size), dtype=dtype,
                                    input_dtype="float32", bf16_weights=dtype == "bfloat16")
        arg, aux = checkpoint.load_for_inference(ckpt, sym, x.shape)
        mod = fit.create_module(sym, [mx.cpu()], ([("data", x.shape)], [("softmax_label", (batch,))]), False)
        mod.init_params(None, arg_params=arg, aux_params=aux)
        data = mx.io.DataBatch([mx.nd.array(x)], None)

        def step():
            mod.forward(data, is_train=False)
            mod.get_outputs()[0].wait_to_read()
    elif backend == "onnxruntime":
        from runtime_onnxruntime import session

        sess = session(Path(model[0]), cores)

        def step():
            sess.run(None, {"data": x})
    else:
        import openvino as ov

        from runtime_openvino import compile_model

        compiled = compile_model(Path(model[0]), cores, cores, dtype)
        nreq = max(1, min(cores, batch))
        queue = ov.AsyncInferQueue(compiled, nreq)
        parts = np.array_split(x, nreq)

        def step():
            for part in parts:
                queue.start_async({0: part})
            queue.wait_all()
    for _ in range(3):
        step()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    # all the batches over all their time (not the median batch): what LoadGen's Offline rate is compared with
    print(json.dumps({"samples_per_s": batch * len(times) / sum(times), "batches": len(times),
                      "median_batch_samples_per_s": batch / statistics.median(times)}))
    return 0


def raw(args, m: dict, backend: str, dtype: str) -> float:
    model = [str(v) for v in model_flags(args, m, backend, dtype)[1::2]]
    if backend == "mxnet":
        model = [str(model[0]), str(args.load_epoch), str(args.num_classes)]
    res = _run([sys.executable, __file__, "--raw", backend, dtype, args.image_size, args.batch_size, args.seconds,
                *model], f"raw {backend} {dtype}")
    return json.loads(res.stdout.strip().splitlines()[-1])["samples_per_s"]


def scoring(args, dtype: str, m: dict, work: Path) -> float:
    """``./runner --only-inference`` img/s on synthetic data (the toolkit's scoring path)."""
    report = work / f"score-{dtype}.json"
    prefix = m["mxnet_int8"] if dtype == "int8" else args.model_prefix
    iters = 8 if dtype == "float32" else 24  # float32 ~1 s a batch of 32 at 224 px on 2 cores; the others 3-10x less
    _run([sys.executable, ROOT / "runner", "-n", "1", "-b", args.batch_size, "--dtype", dtype, "--only-inference",
          "-e", "2", "--data-backend", "synthetic", "--image-shape", SHAPE.format(args.image_size),
          "--num-classes", args.num_classes, "--benchmark-iters", iters, "--model-prefix", prefix,
          "--load-epoch", args.load_epoch, "--report", report], f"runner --only-inference --dtype {dtype}")
    return json.loads(report.read_text())["metrics"]["val.total_ips"][-1]  # the second pass: the first warms up


def loadgen(args, m: dict, backend: str, dtype: str, size: int, out: Path, extra: list) -> dict:
    _run([sys.executable, ROOT / "loadgen.py", "--backend", backend, "--dtype", dtype,
          *model_flags(args, m, backend, dtype), "--data-root", args.data_root, "--image-shape", SHAPE.format(size),
          "--num-classes", args.num_classes, "--output", out, *extra], f"loadgen.py {backend} {dtype}")
    return json.loads((out / "summary.json").read_text())


def offline(args, m, backend, dtype, out: Path, qps: float) -> float:
    threads = available_cores() if backend == "openvino" else 1
    s = loadgen(args, m, backend, dtype, args.image_size, out,
                ["--scenario", "Offline", "--time", args.time, "--threads", threads,
                 "--max-batchsize", max(1, args.batch_size // threads), "--qps", f"{qps:.1f}"])
    return s["samples_per_second"]


def single_stream(args, m, backend, dtype, out: Path) -> float:
    s = loadgen(args, m, backend, dtype, args.image_size, out,
                ["--scenario", "SingleStream", "--time", args.time, "--max-batchsize", 1, "--count", 64])
    return s["latency_ns"]["p90"] / 1e6


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> Parser:
    p = Parser(prog="bench_runtimes.py", description="Every runtime x precision: raw, LoadGen Offline and "
                                                     "SingleStream, top-1 (one table).")
    p.add_argument("--model-prefix", type=path_arg, default=ROOT / "runs" / "demo" / "model",
                   help="the float32 checkpoint's prefix (default: the demo's)")
    p.add_argument("--load-epoch", type=int, default=None, help="its number (default: the newest complete one)")
    p.add_argument("--data-root", type=path_arg, default=ROOT / "data" / "demo",
                   help="train.rec (calibration) and val.rec (top-1; LoadGen's samples)")
    p.add_argument("--num-classes", type=int, default=10, help="the checkpoint's classes")
    p.add_argument("--acc-size", type=int, default=32, help="the side, px, the checkpoint was trained at (top-1)")
    p.add_argument("--image-size", type=int, default=224, help="the side, px, throughput and latency are measured at")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="raw and Offline batch")
    p.add_argument("--calib-images", type=int, default=256, help="tools/quantize.py's calibration images")
    p.add_argument("--seconds", type=float, default=5.0, help="each raw measurement's length")
    p.add_argument("--time", type=float, default=5.0, help="each LoadGen run's min_duration, seconds")
    p.add_argument("--rows", default=None, help="a comma list of BACKEND:DTYPE (default: every one this CPU runs)")
    add_rounds_arg(p)
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/runtimes.json"), help="JSON with the numbers")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--raw"]:
        return raw_worker(argv[1:])
    args = build_parser().parse_args(argv)
    import checkpoint

    for flag, v in (("--batch-size", args.batch_size), ("--rounds", args.rounds), ("--calib-images",
                                                                                   args.calib_images)):
        if v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    found = [c for c in checkpoint.listing(args.model_prefix) if not c.partial and checkpoint.problem(c) is None]
    if args.load_epoch is None:
        if not found:
            raise UsageError(f"--model-prefix {args.model_prefix}: no complete checkpoint (run `make demo` first, or "
                             "name another with --model-prefix and --load-epoch)")
        args.load_epoch = found[-1].epoch
    flags = cpu_flags()
    bf16 = bool(cpu_bf16_flags())
    table = rows(bf16)
    if args.rows:
        want = [tuple(r.split(":", 1)) for r in args.rows.split(",") if r]
        bad = [f"{b}:{d}" for b, d in want if (b, d) not in rows(True)]
        if bad:
            raise UsageError(f"--rows {args.rows}: {', '.join(bad)} is not a row (BACKEND:DTYPE, e.g. openvino:int8)")
        table = [r for r in want if r in table]
    result = {"cpu": cpu_model(), "cores": available_cores(), "bf16": bf16,
              "int8_isa": sorted(f for f in INT8_FLAGS if f in flags), "image_size": args.image_size,
              "acc_size": args.acc_size, "batch_size": args.batch_size, "rounds": args.rounds,
              "checkpoint": f"{args.model_prefix}-{args.load_epoch:04d}", "rows": {}}
    if not bf16:
        result["not_run"] = "bfloat16: this CPU has neither AVX512_BF16 nor AMX-BF16 (oneDNN would emulate it)"
    work = Path(args.output).parent / "runtimes"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = make_models(args, work, {b for b, _ in table})
    fast, acc = models[args.image_size], models[args.acc_size]
    numbers = {r: {"raw": [], "offline": [], "single_stream_p90_ms": [], "scoring": []} for r in table}
    for rnd in range(args.rounds):
        for backend, dtype in rotated(table, rnd):
            n = numbers[(backend, dtype)]
            n["raw"].append(raw(args, fast, backend, dtype))
            if backend == "mxnet":
                n["scoring"].append(scoring(args, dtype, fast, work))
            n["offline"].append(offline(args, fast, backend, dtype, work / f"{backend}-{dtype}-offline",
                                        n["raw"][-1]))  # LoadGen sizes Offline's one query by the expected rate
            n["single_stream_p90_ms"].append(single_stream(args, fast, backend, dtype,
                                                           work / f"{backend}-{dtype}-ss"))
            print(f"round {rnd + 1}: {backend} {dtype}: raw {n['raw'][-1]:.1f}, Offline {n['offline'][-1]:.1f} "
                  f"samples/s, SingleStream p90 {n['single_stream_p90_ms'][-1]:.2f} ms"
                  + (f", scoring {n['scoring'][-1]:.1f} img/s" if n["scoring"] else ""), flush=True)
    for backend, dtype in table:
        s = loadgen(args, acc, backend, dtype, args.acc_size, work / f"{backend}-{dtype}-acc",
                    ["--scenario", "Offline", "--accuracy"])
        n = numbers[(backend, dtype)]
        row = {k: v for k, v in n.items() if v}
        row.update({f"{k}_median": statistics.median(v) for k, v in n.items() if v})
        row["top1_loadgen"] = s["accuracy"]["top1"]
        scored = acc["scoring_top1"][backend]
        row["top1_scoring"] = scored.get(dtype)  # float32 and int8 as tools/quantize.py scored them
        row["top1_float32_scoring"] = scored["float32"]
        result["rows"][f"{backend}:{dtype}"] = row
    result["seconds"] = round(time.perf_counter() - t0)
    print_table(result)
    write_json(args.output, result)
    print(f"numbers: {args.output}")
    return 0


def print_table(result: dict) -> None:
    rows_ = result["rows"]
    base = rows_.get("mxnet:float32", {}).get("scoring_median")
    print(f"\n{result['cpu']}, {result['cores']} cores; ResNet-50 v1.5 ({result['checkpoint']}); throughput at "
          f"{result['image_size']} px, batch {result['batch_size']}, medians of {result['rounds']} rounds; top-1 on "
          f"the validation set at {result['acc_size']} px:\n")
    print("| runtime | precision | raw samples/s | toolkit scoring img/s | LoadGen Offline samples/s | Offline / raw "
          "| SingleStream p90 ms | top-1 LoadGen | top-1 scoring | vs float32 top-1 | vs toolkit float32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows_.items():
        backend, dtype = name.split(":")
        score = f"{r['scoring_median']:.1f}" if "scoring_median" in r else "-"
        ts = f"{r['top1_scoring']:.2f}%" if r.get("top1_scoring") is not None else "-"
        vs = r["top1_loadgen"] / r["top1_float32_scoring"] if r["top1_float32_scoring"] else float("nan")
        speed = f"{r['offline_median'] / base:.2f}x" if base else "-"
        print(f"| {backend} | {dtype} | {r['raw_median']:.1f} | {score} | {r['offline_median']:.1f} | "
              f"{r['offline_median'] / r['raw_median']:.3f} | {r['single_stream_p90_ms_median']:.2f} | "
              f"{r['top1_loadgen']:.2f}% | {ts} | {100 * vs:.2f}%{' (below 99%)' if vs < 0.99 else ''} | {speed} |")
    if result.get("not_run"):
        print(f"\nnot run: {result['not_run']}")
    best = max(rows_.items(), key=lambda kv: kv[1]["offline_median"])
    print(f"\nfastest: {best[0]} at {best[1]['offline_median']:.1f} samples/s through LoadGen Offline"
          + (f", {best[1]['offline_median'] / base:.2f}x the toolkit's float32 scoring" if base else ""))
    if base and "mxnet:int8" in rows_:
        print(f"MXNet INT8 scoring / float32 scoring: {rows_['mxnet:int8']['scoring_median'] / base:.2f}x "
              "(target: at least 3.5x)")
    if base and "onnxruntime:float32" in rows_:
        print(f"toolkit float32 scoring / onnxruntime float32 raw: "
              f"{base / rows_['onnxruntime:float32']['raw_median']:.2f} (target: at least 0.9)")
    print(f"LoadGen Offline / raw of the fastest: {best[1]['offline_median'] / best[1]['raw_median']:.3f} "
          "(target: at least 0.9)")


if __name__ == "__main__":
    sys.exit(run_tool(main, "bench_runtimes.py"))
