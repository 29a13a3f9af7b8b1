#!/usr/bin/env python3
"""Throughput sweep: one ``./runner`` job per (dtype, workers, device count, batch size per device).

    python benchmark.py -n 1,2,4 -b 32,64 -i 100 -e 2 -w 1 -o sweep.json [runner flags ...]

Each configuration runs ``runner -n N -b B -e E --benchmark-iters I --no-metrics --report <fresh path>`` (plus
``--no-val`` for training, ``--only-inference`` for inference) and any flag this script does not know, under an
optional ``--timeout``. A configuration whose runner exits non-zero, times out, or leaves a report that is missing,
not ``completed`` or short of E epochs is recorded as an error for that cell, never as a number, and the sweep goes
on. The first ``-w`` epochs of each run are left out; img/s over the kept epochs is their harmonic mean (the mean
rate over equal amounts of work, as NVIDIA's benchmark.py computes it) and latencies their arithmetic mean.

The summary JSON keeps the shape of NVIDIA's (``model``, ``ngpus``, ``bs``, ``metric_keys``,
``metrics[n][bs][key]``; a failed cell's values are ``null``) and adds:

    ``schema``        ``"rn50-benchmark/1"``
    ``mode``          ``train`` or ``inference``
    ``dtypes``        the dtypes swept (``metrics`` holds the first; ``metrics_by_dtype[dtype]`` all of them)
    ``weak_scaling``  ``[n][bs]``: img/s at n devices / img/s at 1 device, same batch per device (needs -n 1)
    ``workers``       the worker counts swept (``--workers``: processes of one job, ``./runner --workers W``);
                      ``metrics``, ``weak_scaling`` and the tables above are of the first
    ``metrics_by_workers``  ``[dtype][w][n][bs]``; ``devices_total[w][n]`` = w x n
    ``weak_scaling_by_workers``  ``[dtype][w][n][bs]``: img/s of w workers x n devices / img/s of 1 worker x 1
                      device, same batch per device (needs --workers 1 and -n 1)
    ``speedup``       ``[dtype][n][bs]``: img/s of dtype / img/s of float32, where both were swept
    ``errors``        ``[dtype][n][bs]``: why a cell has no numbers
    ``runs``          ``[dtype][n][bs]``: the cell's report and log paths, exit status and wall time
    ``env``           device, cores, versions, the flags passed through, and the command line

It prints the img/s, weak-scaling and speedup tables (errors shown in their cells) and writes a PNG (``--plot``) of
img/s against batch size per device count and of weak scaling against device count. Exit status: 0 when every cell
produced numbers, 1 when some failed (the JSON and PNG are written all the same), 2 for bad flags or outputs that
cannot be written (checked before any configuration runs). SIGINT/SIGTERM are passed on to the running
configuration's runner (it stops within a batch and writes its report); the sweep then stops with nothing left
running, exit 130/143, and writes no summary.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from common import use_project_python  # noqa: E402

use_project_python(__file__)

from common import (Children, Parser, UsageError, atomic_path, available_cores, check_writable,  # noqa: E402
                    end_groups, int_list, run_main, write_json)

SCHEMA = "rn50-benchmark/1"
TRAIN_KEYS = ["train.total_ips"]
INFER_KEYS = ["val.total_ips", "val.latency_ms_avg", "val.latency_ms_p50", "val.latency_ms_p90",
              "val.latency_ms_p95", "val.latency_ms_p99", "val.latency_ms_p100"]
IPS_KEY = {"train": "train.total_ips", "inference": "val.total_ips"}


def str_list(text: str) -> list:
    return [t for t in text.split(",") if t]


def build_parser() -> Parser:
    p = Parser(prog="benchmark.py", description="Sweep ./runner over device counts and batch sizes; write img/s, "
                                                "weak scaling and speedup. Unknown flags go to the runner.")
    p.add_argument("-n", "--ngpus", type=int_list, required=True, help="device counts, e.g. 1,2,4")
    p.add_argument("-b", "--batch-sizes", type=int_list, required=True, help="batch sizes per device, e.g. 32,64")
    p.add_argument("--workers", type=int_list, default=[1],
                   help="worker processes per job (./runner --workers), e.g. 1,2: weak scaling across processes")
    p.add_argument("-i", "--benchmark-iters", type=int, default=100, help="iterations per epoch")
    p.add_argument("-e", "--epochs", type=int, default=1, help="epochs (scoring passes with --only-inference)")
    p.add_argument("-w", "--warmup", type=int, default=0, help="first epochs left out of the averages")
    p.add_argument("--num-examples", type=int, default=None, help="limit the data set to this many images")
    p.add_argument("--only-inference", action="store_true",
                   help="score instead of train: img/s and per-batch latency percentiles")
    p.add_argument("--dtype", type=str_list, default=None,
                   help="comma-separated dtypes to sweep, e.g. float32,bfloat16 (default: the runner's)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per configuration")
    p.add_argument("--executable", default=str(ROOT / "runner"), help="the runner to call")
    p.add_argument("-o", "--output", type=Path, required=True, help="summary JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the sweep (default: the output with .png)")
    p.add_argument("--dry-run", action="store_true", help="print the runner commands, run nothing")
    return p


def check_args(args) -> None:
    for flag, values in (("-n", args.ngpus), ("-b", args.batch_sizes), ("--workers", args.workers)):
        if not values or min(values) < 1:
            raise UsageError(f"{flag} {','.join(map(str, values))}: give positive integers, e.g. {flag} 1,2")
    if args.benchmark_iters < 1:
        raise UsageError(f"-i {args.benchmark_iters}: must be at least 1")
    if args.epochs < 1:
        raise UsageError(f"-e {args.epochs}: must be at least 1")
    if not 0 <= args.warmup < args.epochs:
        raise UsageError(f"-w {args.warmup}: must be at least 0 and less than -e {args.epochs} (an epoch must be kept)")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: must be positive")
    if not Path(args.executable).is_file():
        raise UsageError(f"--executable {args.executable}: no such file")
    if args.output.suffix != ".json":
        raise UsageError(f"-o {args.output}: the summary is JSON; name it *.json")


def harmonic_mean(values) -> float:
    return len(values) / sum(1.0 / v for v in values)


def runner_cmd(args, extra, dtype, n, bs, report: Path, w: int = 1) -> list:
    cmd = [args.executable, "-n", str(n), "-b", str(bs), "-e", str(args.epochs), "--benchmark-iters",
           str(args.benchmark_iters), "--no-metrics", "--report", str(report)]
    if w > 1:
        cmd += ["--workers", str(w)]
    cmd += ["--only-inference"] if args.only_inference else ["--no-val"]
    if args.num_examples is not None:
        cmd += ["--num-examples", str(args.num_examples)]
    if dtype:
        cmd += ["--dtype", dtype]
    return cmd + extra


def run_cell(args, extra, dtype, n, bs, run_dir: Path, w: int, kids: Children) -> dict:
    """Run one configuration; return ``{"values": {key: number}}`` or ``{"error": str}``, plus run details."""
    tag = f"{dtype or 'default'}-n{n}-b{bs}" + (f"-w{w}" if w > 1 else "")
    report, logf = run_dir / f"{tag}.json", run_dir / f"{tag}.log"
    for f in (report, logf):
        f.unlink(missing_ok=True)  # never read a stale report
    cmd = runner_cmd(args, extra, dtype, n, bs, report, w)
    info = {"report": str(report), "log": str(logf), "cmd": cmd}
    t0 = time.perf_counter()
    with open(logf, "wb") as log:
        proc = kids.popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            end_groups([proc], grace=15.0)
            rc = None
    kids.check()  # a signal was passed on to the runner, which has ended: the sweep stops here
    info["wall_s"] = round(time.perf_counter() - t0, 2)
    info["exit_status"] = rc
    if rc is None:
        return dict(info, error=f"timed out after {args.timeout:g} s (--timeout)")
    if rc != 0:
        why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return dict(info, error=f"runner {why}: {_last_line(logf)}")
    return dict(info, **read_report(report, args))


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def read_report(path: Path, args) -> dict:
    if not path.is_file():
        return {"error": f"no report at {path}"}
    try:
        r = json.loads(path.read_text())
    except ValueError as e:
        return {"error": f"unreadable report {path}: {e}"}
    if r.get("status") != "completed":
        return {"error": f"report status {r.get('status')!r}, not 'completed'"}
    keys = INFER_KEYS if args.only_inference else TRAIN_KEYS
    values = {}
    for key in keys:
        series = r.get("metrics", {}).get(key, [])
        if len(series) != args.epochs or any(v is None for v in series):
            return {"error": f"report has {len(series)} of {args.epochs} epochs of {key}"}
        kept = series[args.warmup:]
        if key.endswith("total_ips"):
            if min(kept) <= 0:
                return {"error": f"{key} not positive in the report"}
            values[key] = harmonic_mean(kept)
        else:
            values[key] = sum(kept) / len(kept)
    return {"values": values, "device": r.get("device"), "versions": r.get("versions"), "dtype": r.get("dtype"),
            "model": r.get("model")}


def ratio(a, b):
    return a / b if a is not None and b is not None and b > 0 else None


def summarize(args, extra, cells: dict) -> dict:
    """cells[(dtype, workers, n, bs)] = run_cell result -> the summary JSON (its fields: the module docstring)."""
    mode = "inference" if args.only_inference else "train"
    keys, ips = (INFER_KEYS if args.only_inference else TRAIN_KEYS), IPS_KEY[mode]
    dtypes = [(d, d or "default") for d in args.dtype or [None]]
    names = [name for _, name in dtypes]
    by_dtype = {name: _metrics(args, cells, keys, d, args.workers[0]) for d, name in dtypes}
    by_workers = {name: {str(w): _metrics(args, cells, keys, d, w) for w in args.workers} for d, name in dtypes}
    weak = {name: _scaling(args, m, m.get("1"), ips) for name, m in by_dtype.items()}
    first = next((c for c in cells.values() if "values" in c), {})
    return {
        "model": first.get("model") or "",
        "ngpus": args.ngpus,
        "bs": args.batch_sizes,
        "metric_keys": keys,
        "metrics": by_dtype[names[0]],
        "schema": SCHEMA,
        "mode": mode,
        "dtypes": names,
        "metrics_by_dtype": by_dtype,
        "weak_scaling": weak[names[0]],
        "weak_scaling_by_dtype": weak,
        "speedup": _speedup(args, by_dtype, ips),
        "workers": args.workers,
        "metrics_by_workers": by_workers,
        "devices_total": {str(w): {str(n): w * n for n in args.ngpus} for w in args.workers},
        "weak_scaling_by_workers": {name: {str(w): _scaling(args, bw[str(w)], bw.get("1", {}).get("1"), ips)
                                           for w in args.workers} for name, bw in by_workers.items()},
        "errors": {name: _errors(args, cells, d) for d, name in dtypes},
        "runs": {name: _runs(args, cells, d) for d, name in dtypes},
        "settings": {"benchmark_iters": args.benchmark_iters, "epochs": args.epochs, "warmup": args.warmup,
                     "num_examples": args.num_examples, "timeout": args.timeout, "runner_flags": extra},
        "env": {"device": first.get("device"), "versions": first.get("versions"), "cores": available_cores(),
                "machine": platform.machine(), "cmd": [sys.argv[0], *sys.argv[1:]]},
    }


def _grid(args, cell) -> dict:
    """``{n: {bs: cell(n, bs)}}`` over the swept device counts and batch sizes (as strings: the JSON's keys)."""
    return {str(n): {str(bs): cell(n, bs) for bs in args.batch_sizes} for n in args.ngpus}


def _metrics(args, cells: dict, keys: list, dtype, w: int) -> dict:
    """``[n][bs][key]`` of ``dtype`` at ``w`` workers; None where the cell failed."""
    return _grid(args, lambda n, bs: {k: (cells[(dtype, w, n, bs)].get("values") or {}).get(k) for k in keys})


def _scaling(args, metrics: dict, base: dict | None, ips: str) -> dict:
    """``[n][bs]``: img/s in ``metrics`` over img/s of ``base[bs]`` (the same batch per device on the base
    configuration); all None without a base."""
    return _grid(args, lambda n, bs: ratio(metrics[str(n)][str(bs)][ips], base[str(bs)][ips]) if base else None)


def _speedup(args, by_dtype: dict, ips: str) -> dict:
    """``[dtype][n][bs]``: img/s of each dtype over img/s of float32, where float32 was swept."""
    if "float32" not in by_dtype:
        return {}
    base = by_dtype["float32"]
    return {name: _grid(args, lambda n, bs, m=m: ratio(m[str(n)][str(bs)][ips], base[str(n)][str(bs)][ips]))
            for name, m in by_dtype.items() if name != "float32"}


def _errors(args, cells: dict, dtype) -> dict:
    """``[n][bs]``: why a cell of ``dtype`` has no numbers; ``n`` reads ``WxN`` for the worker counts after the
    first."""
    out = {}
    for w in args.workers:
        for n in args.ngpus:
            for bs in args.batch_sizes:
                c = cells[(dtype, w, n, bs)]
                if "error" in c:
                    out.setdefault(str(n) if w == args.workers[0] else f"{w}x{n}", {})[str(bs)] = c["error"]
    return out


def _runs(args, cells: dict, dtype) -> dict:
    """``[n][bs]``: where each run of ``dtype`` at the first worker count left its report and log, and how it ended."""
    return _grid(args, lambda n, bs: {k: cells[(dtype, args.workers[0], n, bs)][k]
                                      for k in ("report", "log", "exit_status", "wall_s")})


def _fmt(v, digits=5) -> str:
    if v is None:
        return "error"
    return f"{v:.{digits}g}"


def tables(summary: dict) -> str:
    """The Markdown tables: img/s (and latencies for inference), weak scaling, speedup; errors listed below."""
    out = []
    ns, bss = summary["ngpus"], summary["bs"]
    ips = IPS_KEY[summary["mode"]]
    head = "| devices | " + " | ".join(f"bs {b}" for b in bss) + " |\n|---|" + "---|" * len(bss)
    for name in summary["dtypes"]:
        m = summary["metrics_by_dtype"][name]
        out.append(f"{ips} (img/s), dtype {name}\n\n{head}")
        for n in ns:
            out[-1] += f"\n| {n} | " + " | ".join(_fmt(m[str(n)][str(b)][ips]) for b in bss) + " |"
        if summary["mode"] == "inference":
            lat = ("| devices | bs | img/s | avg ms | p50 | p90 | p95 | p99 | p100 |\n"
                   "|---|---|---|---|---|---|---|---|---|")
            for n in ns:
                for b in bss:
                    c = m[str(n)][str(b)]
                    lat += f"\n| {n} | {b} | " + " | ".join(_fmt(c[k], 4) for k in INFER_KEYS) + " |"
            out.append(f"latency per batch, dtype {name}\n\n{lat}")
        w = summary["weak_scaling_by_dtype"][name]
        if "1" in w and any(v is not None for row in w.values() for v in row.values()):
            out.append(f"weak scaling (img/s at n devices / at 1 device), dtype {name}\n\n{head}")
            for n in ns:
                out[-1] += f"\n| {n} | " + " | ".join(_fmt(w[str(n)][str(b)], 3) for b in bss) + " |"
    ws = summary.get("workers", [1])
    if len(ws) > 1:
        for name in summary["dtypes"]:
            t = ("| workers x devices | " + " | ".join(f"bs {b}: img/s | weak scaling" for b in bss) + " |\n|---|"
                 + "---|---|" * len(bss))
            for w in ws:
                for n in ns:
                    cells = summary["metrics_by_workers"][name][str(w)][str(n)]
                    weak = summary["weak_scaling_by_workers"][name][str(w)][str(n)]
                    t += f"\n| {w} x {n} | " + " | ".join(f"{_fmt(cells[str(b)][ips])} | {_fmt(weak[str(b)], 3)}"
                                                         for b in bss) + " |"
            out.append(f"across worker processes (weak scaling vs 1 worker x 1 device), dtype {name}\n\n{t}")
    for name, s in summary["speedup"].items():
        out.append(f"speedup {name} / float32\n\n{head}")
        for n in ns:
            out[-1] += f"\n| {n} | " + " | ".join(_fmt(s[str(n)][str(b)], 3) for b in bss) + " |"
    errs = [f"- {name} n={n} bs={b}: {msg}" for name, e in summary["errors"].items()
            for n, row in e.items() for b, msg in row.items()]
    if errs:
        out.append("errors\n\n" + "\n".join(errs))
    return "\n\n".join(out)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns, bss = summary["ngpus"], summary["bs"]
    ips = IPS_KEY[summary["mode"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in summary["dtypes"]:
        m, w = summary["metrics_by_dtype"][name], summary["weak_scaling_by_dtype"][name]
        for n in ns:
            ys = [m[str(n)][str(x)][ips] for x in bss]
            a.plot(bss, [float("nan") if y is None else y for y in ys], marker="o", label=f"{name}, {n} dev")
        for x in bss:
            ys = [w[str(n)][str(x)] for n in ns]
            b.plot(ns, [float("nan") if y is None else y for y in ys], marker="o", label=f"{name}, bs {x}")
    b.plot(ns, ns, ls="--", color="grey", label="ideal")
    a.set_xticks(bss)
    b.set_xticks(ns)
    a.set(xlabel="batch size per device", ylabel="img/s", title=f"{ips} by batch size")
    b.set(xlabel="devices", ylabel="weak scaling", title="weak scaling (vs 1 device)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    check_args(args)
    for flag in ("--report", "--no-metrics", "--no-val"):
        if flag in extra:
            raise UsageError(f"{flag} is set by benchmark.py for every configuration; remove it")
    plot_path = args.plot or args.output.with_suffix(".png")
    run_dir = args.output.with_name(args.output.stem + "-runs")
    if args.dry_run:
        for d in args.dtype or [None]:
            for w in args.workers:
                for n in args.ngpus:
                    for bs in args.batch_sizes:
                        print(" ".join(runner_cmd(args, extra, d, n, bs, run_dir / "REPORT.json", w)))
        return 0
    check_writable(args.output, "-o")
    check_writable(plot_path, "--plot")
    check_writable(run_dir / "probe.json", f"-o {args.output} (its runs folder {run_dir})")
    cells = {}
    with Children("benchmark.py") as kids:
        for d in args.dtype or [None]:
            for w in args.workers:
                for n in args.ngpus:
                    for bs in args.batch_sizes:
                        print(f"benchmark: dtype {d or 'default'}, {w} worker(s) x {n} device(s), batch {bs} per "
                              "device ...", file=sys.stderr, flush=True)
                        c = cells[(d, w, n, bs)] = run_cell(args, extra, d, n, bs, run_dir, w, kids)
                        ips = (c.get("values") or {}).get(IPS_KEY["inference" if args.only_inference else "train"])
                        print(f"  -> {_fmt(ips)} img/s" if "error" not in c else f"  -> error: {c['error']}",
                              file=sys.stderr, flush=True)
    summary = summarize(args, extra, cells)
    write_json(args.output, summary)
    plot(summary, plot_path)
    print(tables(summary))
    print(f"\nsummary: {args.output}\nplot: {plot_path}\nper-run reports and logs: {run_dir}")
    failed = sum(1 for c in cells.values() if "error" in c)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
