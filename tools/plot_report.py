#!/usr/bin/env python3
"""Plot a training report (``--report`` JSON, see report.py) as PNG curves: loss, top-1/top-5, throughput per epoch.
An MLPerf-mode report (``train.py --mlperf``) adds its quality target, and the epoch that reached it, to the top-1 panel.

    python tools/plot_report.py runs/demo/report.json -o runs/demo/curves.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import Parser, UsageError, atomic_path, run_main  # noqa: E402


def plot(report: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(report)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def figure(report: dict):
    """The report's curves as a matplotlib figure (panels: loss, accuracy, throughput)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report.get("metrics", {})
    epochs = report.get("epochs") or list(range(max((len(v) for v in m.values()), default=0)))
    if not epochs:
        raise UsageError("the report has no epochs to plot yet")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        (axes[0], "loss (cross-entropy)", [("train.loss", "train"), ("val.loss", "val")]),
        (axes[1], "accuracy (%)", [("train.top1", "train top-1"), ("val.top1", "val top-1"),
                                   ("train.top5", "train top-5"), ("val.top5", "val top-5")]),
        (axes[2], "images per second", [("train.total_ips", "train"), ("val.total_ips", "val")]),
    ]
    for ax, title, series in panels:
        for key, label in series:
            values = m.get(key)
            if values:
                xs = epochs[-len(values):] if len(values) <= len(epochs) else range(len(values))
                ax.plot([e + 1 for e in xs], values, marker="o", markersize=3, label=label,
                        linestyle="--" if "top5" in key else "-")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if m.get("train.loss"):
        axes[0].set_yscale("log")
    mlperf = report.get("mlperf")
    if mlperf and mlperf.get("target_accuracy") is not None:  # MLPerf mode: the quality target, and where it was hit
        target = 100 * mlperf["target_accuracy"]
        axes[1].axhline(target, color="tab:red", linewidth=1, label=f"MLPerf target {target:g}%")
        if mlperf.get("target_epoch") is not None:
            axes[1].axvline(mlperf["target_epoch"], color="tab:red", linestyle=":", linewidth=1,
                            label=f"reached at epoch {mlperf['target_epoch']}")
        axes[1].legend()
    device = report.get("device", {})
    fig.suptitle(f"{report.get('model', '?')} {report.get('dtype', '')}, {device.get('count', '?')} "
                 f"{device.get('type', '')} device(s), global batch {report.get('global_batch_size', '?')} "
                 f"({report.get('status', '?')})")
    fig.tight_layout()
    return fig


def build_parser() -> Parser:
    p = Parser(prog="plot_report.py", description="Plot a training report as PNG curves.")
    p.add_argument("report", type=Path, help="report JSON written by train.py --report")
    p.add_argument("-o", "--output", type=Path, default=None, help="PNG path (default: the report's, .png)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except FileNotFoundError:
        raise UsageError(f"{args.report}: no such report (train.py --report writes one)") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{args.report}: not a JSON report ({err})") from None
    out = args.output or args.report.with_suffix(".png")
    plot(report, out)
    print(summary(report, args.report, out))
    return 0


def summary(report: dict, report_path: Path, png: Path) -> str:
    """Where the run's outputs are, and how it ended."""
    m = report.get("metrics", {})
    lines = [f"run: {report.get('status', '?')}, {len(report.get('epochs', []))} epoch(s) in "
             f"{report.get('total_duration', 0):.0f} s"]
    if m.get("val.top1"):
        lines.append(f"val top-1: {m['val.top1'][-1]:.2f}% after the last epoch (best {max(m['val.top1']):.2f}%), "
                     f"top-5 {m['val.top5'][-1]:.2f}%")
    if m.get("train.total_ips"):
        lines.append(f"training: {m['train.total_ips'][-1]:.1f} img/s in the last epoch")
    mlperf = report.get("mlperf")
    if mlperf:
        target = f"target {100 * mlperf['target_accuracy']:g}%"
        if mlperf.get("status") == "success":
            lines.append(f"MLPerf: {target} reached at epoch {mlperf['target_epoch']}, "
                         f"{mlperf['time_to_target_s'] / 60:.2f} min from run_start")
        else:
            best = mlperf.get("best_accuracy")
            lines.append(f"MLPerf: {mlperf.get('status', 'not ended')}, {target} not reached"
                         + (f" (best {100 * best:.2f}%)" if best is not None else ""))
    lines.append(f"report: {report_path}")
    ckpts = report.get("checkpoints", [])
    if ckpts:
        last = ckpts[-1]
        kept = [c for c in ckpts if Path(f"{c['prefix']}-{c['epoch']:04d}{'-partial' if c.get('partial') else ''}"
                                         ".params").is_file()]  # --save-keep removes older ones
        names = ", ".join(f"{c['epoch']}{' (partial)' if c.get('partial') else ''}" for c in kept) or "none left"
        lines.append(f"checkpoints: {last['prefix']}-symbol.json, {last['prefix']}-NNNN.params of epochs {names}")
    lines.append(f"curves: {png}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main(main))
