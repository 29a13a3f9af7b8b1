#!/usr/bin/env python3
"""MLPerf Inference LoadGen over the toolkit (``loadgen.py``) at 224 px, measured against the scoring path it wraps,
side by side in one run.

What it does, each step a process of its own (OpenMP threads = the cores available, float32):

1. Data: ``--images`` JPEGs of ImageNet's size cut from scikit-learn's two photographs (``bench_data``'s tree), made
   into ``val.rec`` by ``tools/prepare_dataset.py``; a ResNet-50 v1.5 checkpoint with 1000 classes from one training
   step of ``./runner`` on synthetic data (weights as good as random: throughput only; ``--bn-gamma-init0``, so
   that the untrained residual blocks do not grow the logits past float32's range at small image sizes), exported
   to ONNX by ``tools/export_onnx.py`` (which checks it against MXNet).
2. Harness overhead, ``--rounds`` rounds in an order that alternates: ``./runner --only-inference -b B`` on synthetic
   data (the scoring executor alone: img/s from its report) and ``loadgen.py --scenario Offline --max-batchsize B``
   (samples/s from LoadGen's summary: the same executor behind the QSL, the queue and the worker thread). The ratio
   of the medians is the harness's cost; at least 0.95 is the target.
3. The four scenarios for ``--backend mxnet`` and ``onnxruntime`` (one run each): SingleStream p90 latency (against
   the p90 batch-1 latency of ``./runner --only-inference -b 1``), MultiStream p99 per query of 8, Offline samples/s,
   and Server: the highest target QPS LoadGen calls VALID with ``--max-latency`` as the bound on the 99th percentile,
   found by bisection between 0 and the Offline rate (``--server-steps`` runs, each long enough for 600 queries,
   as LoadGen's early stopping needs about 460 to call the 99th percentile met, but at most 90 s).

    python tools/bench_loadgen.py          # what `make bench-loadgen` runs (and `make bench`)

Prints markdown tables (docs/loadgen.md's) and writes every number to ``-o`` (JSON). LoadGen runs are short
(``--time``, not MLPerf's 600 s), so LoadGen may call a run INVALID for too few queries (MultiStream's early
stopping, typically); the metrics are measured all the same, and only Server's VALID decides anything (its latency
bound).
"""
from __future__ import annotations

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

from common import (MALLOC_ENV, Parser, UsageError, add_rounds_arg, available_cores, cpu_model, rotated,  # noqa: E402
                    run_child, run_tool, write_json)

SHAPE = "3,{0},{0}"
SERVER_QUERIES = 600
SERVER_MAX_S = 90.0


def _env() -> dict:
    env = dict(os.environ)
    for k in (*MALLOC_ENV, "OMP_NUM_THREADS", "MXNET_SUBGRAPH_BACKEND"):  # each tool sets its own
        env.pop(k, None)
    return env


def _run(cmd, what: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    res = run_child([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True,
                    timeout=timeout)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{what} failed (exit {res.returncode}): {tail}")
    return res


def make_inputs(work: Path, images: int, size: int) -> tuple[Path, Path, Path]:
    """The validation set, the checkpoint (epoch 1) and its ONNX export; returns (data_root, prefix, onnx)."""
    from tools.bench_data import make_photo_tree

    make_photo_tree(work / "tree", images)
    data = work / "data"
    _run([sys.executable, ROOT / "tools" / "prepare_dataset.py", "--val-dir", work / "tree", "--data-root", data,
          "--quiet"], "prepare_dataset.py")
    prefix = work / "ckpt" / "rn50"
    _run([ROOT / "runner", "-n", "1", "-b", "2", "-e", "1", "--data-backend", "synthetic", "--benchmark-iters", "1",
          "--no-val", "--no-metrics", "--bn-gamma-init0", "--image-shape", SHAPE.format(size),
          "--model-prefix", prefix],
         "the runner (the checkpoint)")
    onnx = prefix.parent / "rn50-0001.onnx"
    _run([sys.executable, ROOT / "tools" / "export_onnx.py", prefix, "1", "--image-shape", SHAPE.format(size),
          "--data-val", data / "val.rec", "-o", onnx], "export_onnx.py")
    return data, prefix, onnx


def runner_scoring(batch: int, size: int, iters: int, work: Path) -> dict:
    """``./runner --only-inference`` on synthetic data: img/s and the latency percentiles of its report."""
    report = work / f"score-{time.monotonic_ns()}.json"
    _run([ROOT / "runner", "-n", "1", "-b", batch, "-e", "1", "--data-backend", "synthetic", "--image-shape",
          SHAPE.format(size), "--benchmark-iters", iters, "--only-inference", "--no-metrics", "--report", report],
         f"runner --only-inference -b {batch}")
    m = json.loads(report.read_text())["metrics"]
    return {"img_per_s": m["val.total_ips"][0], "latency_ms_p50": m["val.latency_ms_p50"][0],
            "latency_ms_p90": m["val.latency_ms_p90"][0]}


def loadgen(scenario: str, backend: str, data: Path, prefix: Path, onnx: Path, size: int, out: Path,
            extra: list, count: int) -> dict:
    """One ``loadgen.py`` run; its summary. ``count``: the QSL's samples and LoadGen's min_query_count."""
    cmd = [sys.executable, ROOT / "loadgen.py", "--scenario", scenario, "--backend", backend, "--model-prefix", prefix,
           "--load-epoch", "1", "--data-root", data, "--image-shape", SHAPE.format(size), "--output", out,
           "--count", count, *extra]
    if backend == "onnxruntime":
        cmd += ["--model-file", onnx]
    _run(cmd, f"loadgen.py {scenario} {backend}")
    s = json.loads((out / "summary.json").read_text())
    if s["status"] != "completed":
        raise RuntimeError(f"loadgen.py {scenario} {backend}: {s['status']} ({s.get('error')})")
    return s


def server_time(qps: float, time_s: float) -> float:
    """A Server run's min_duration: long enough for ``SERVER_QUERIES`` queries (LoadGen's early stopping cannot
    call the 99th percentile met on fewer than about 460, even with every query in time), at most
    ``SERVER_MAX_S``."""
    return round(min(max(time_s, SERVER_QUERIES / qps), SERVER_MAX_S), 1)


def server_search(run, high: float, steps: int) -> dict:
    """Bisection on Server's target QPS between 0 and ``high``: ``run(qps)`` gives LoadGen's summary; the highest
    target LoadGen calls VALID is kept."""
    tried, best, low = [], None, 0.0
    for _ in range(steps):
        qps = round((low + high) / 2, 2)
        s = run(qps)
        tried.append({"qps": qps, "result": s["result"], "p99_ms": s["latency_ns"]["p99"] / 1e6,
                      "samples_per_second": s["samples_per_second"], "invalid_reasons": s["invalid_reasons"]})
        if s["result"] == "VALID":
            best, low = tried[-1], qps
        else:
            high = qps
    return {"best": best, "tried": tried}


def build_parser() -> Parser:
    p = Parser(prog="bench_loadgen.py", description="LoadGen's four scenarios over the toolkit (mxnet and "
                                                    "onnxruntime) and Offline against --only-inference.")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="Offline's and the runner's batch size")
    p.add_argument("--image-size", type=int, default=224, help="input side, px")
    p.add_argument("--images", type=int, default=64, help="validation images made (LoadGen's sample library)")
    p.add_argument("--time", type=float, default=15.0, help="each LoadGen run's min_duration, seconds")
    add_rounds_arg(p, "rounds of the Offline/runner comparison (medians)")
    p.add_argument("--max-latency", type=float, default=0.5,
                   help="Server's bound on the 99th percentile latency, seconds")
    p.add_argument("--server-steps", type=int, default=5, help="Server runs in the bisection per backend")
    p.add_argument("--backends", default="mxnet,onnxruntime", help="backends of the scenario table (comma list)")
    p.add_argument("--no-scenarios", dest="scenarios", action="store_false",
                   help="only the Offline/runner comparison")
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out/loadgen.json"), help="JSON with the numbers")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, v in (("--batch-size", args.batch_size), ("--images", args.images), ("--rounds", args.rounds),
                    ("--server-steps", args.server_steps)):
        if v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    backends = [b for b in args.backends.split(",") if b]
    if not backends or set(backends) - {"mxnet", "onnxruntime"}:
        raise UsageError(f"--backends {args.backends}: a comma list of mxnet and onnxruntime")
    size, batch = args.image_size, args.batch_size
    iters = max(10, -(-args.time * 30 // batch))  # about as long as a LoadGen run at ~30 img/s
    result = {"cpu": cpu_model(), "cores": available_cores(), "image_size": size, "batch_size": batch,
              "time_s": args.time, "dtype": "float32"}
    with tempfile.TemporaryDirectory(prefix="bench_loadgen.") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data, prefix, onnx = make_inputs(work, args.images, size)
        print(f"inputs: {args.images} images at {size} px, ResNet-50 v1.5 checkpoint and ONNX "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        # Offline against the executor alone; the first Offline run also sizes the others (expected QPS)
        runner_ips, offline_sps, qps = [], [], 30.0
        for r in range(args.rounds):
            for which in rotated(("runner", "offline"), r):
                if which == "runner":
                    runner_ips.append(runner_scoring(batch, size, int(iters), work)["img_per_s"])
                else:
                    s = loadgen("Offline", "mxnet", data, prefix, onnx, size, work / f"offline{r}",
                                ["--max-batchsize", batch, "--time", args.time, "--qps", qps], args.images)
                    offline_sps.append(s["samples_per_second"])
                    qps = s["samples_per_second"]
            print(f"round {r + 1}: runner --only-inference {runner_ips[-1]:.2f} img/s, LoadGen Offline "
                  f"{offline_sps[-1]:.2f} samples/s", flush=True)
        ratio = statistics.median(offline_sps) / statistics.median(runner_ips)
        result["overhead"] = {"runner_img_per_s": runner_ips, "offline_samples_per_s": offline_sps,
                              "ratio_of_medians": ratio}
        print(f"\nOffline against --only-inference, batch {batch}, {size} px, float32, medians of {args.rounds}:\n")
        print("| candidate | img/s (median) | runs |\n|---|---|---|")
        print(f"| `./runner --only-inference -b {batch}` (synthetic data) | {statistics.median(runner_ips):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in runner_ips)} |")
        print(f"| `loadgen.py --scenario Offline --max-batchsize {batch}` | {statistics.median(offline_sps):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in offline_sps)} |")
        print(f"\nOffline / --only-inference: {ratio:.3f} (target: at least 0.95)\n", flush=True)
        if args.scenarios:
            one = runner_scoring(1, size, max(20, int(args.time * 2)), work)
            result["batch1"] = one
            result["scenarios"] = {b: scenarios(b, args, data, prefix, onnx, work, qps) for b in backends}
            print_scenarios(result, args)
    write_json(args.output, result)
    print(f"numbers: {args.output}")
    return 0


def scenarios(backend: str, args, data: Path, prefix: Path, onnx: Path, work: Path, qps: float) -> dict:
    size, t, out = args.image_size, args.time, {}

    def run(scenario, extra, tag=""):
        return loadgen(scenario, backend, data, prefix, onnx, size, work / f"{backend}-{scenario}{tag}",
                       ["--time", t, *extra], args.images)

    out["Offline"] = run("Offline", ["--max-batchsize", args.batch_size, "--qps", qps])
    rate = out["Offline"]["samples_per_second"]
    out["SingleStream"] = run("SingleStream", ["--max-batchsize", "1"])
    out["MultiStream"] = run("MultiStream", ["--max-batchsize", "8", "--samples-per-query", "8"])
    found = server_search(lambda q: run("Server", ["--max-batchsize", args.batch_size, "--qps", q,
                                                   "--max-latency", args.max_latency,
                                                   "--time", server_time(q, t)], f"-{q}"),
                          rate, args.server_steps)
    print(f"{backend}: Offline {rate:.2f} samples/s, SingleStream p90 "
          f"{out['SingleStream']['latency_ns']['p90'] / 1e6:.1f} ms, Server "
          f"{found['best']['qps'] if found['best'] else 'none'} QPS VALID", flush=True)
    keep = ("result", "invalid_reasons", "metric", "samples_per_second", "queries_per_second", "latency_ns")
    res = {k: {f: v.get(f) for f in keep} for k, v in out.items()}
    res["Server"] = found
    return res


def print_scenarios(result: dict, args) -> None:
    sc, one = result["scenarios"], result["batch1"]
    names = list(sc)
    print(f"\nLoadGen scenarios, {args.image_size} px, float32, {args.time:g} s runs:\n")
    print("| scenario (metric) | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))

    def row(label, fmt):
        print(f"| {label} | " + " | ".join(fmt(sc[n]) for n in names) + " |")

    row("SingleStream (p90 latency)", lambda s: f"{s['SingleStream']['latency_ns']['p90'] / 1e6:.1f} ms")
    row("MultiStream, 8 per query (p99 latency)", lambda s: f"{s['MultiStream']['latency_ns']['p99'] / 1e6:.0f} ms")
    row(f"Server (highest VALID target QPS, p99 <= {args.max_latency * 1000:g} ms)",
        lambda s: f"{s['Server']['best']['qps']:g} QPS (p99 {s['Server']['best']['p99_ms']:.0f} ms)"
        if s["Server"]["best"] else "none")
    row(f"Offline, batch {args.batch_size} (samples/s)", lambda s: f"{s['Offline']['samples_per_second']:.2f}")
    print(f"\nbatch-1 scoring latency (`./runner --only-inference -b 1`): p50 {one['latency_ms_p50']:.1f} ms, "
          f"p90 {one['latency_ms_p90']:.1f} ms")


if __name__ == "__main__":
    sys.exit(run_tool(main, "bench_loadgen.py"))
