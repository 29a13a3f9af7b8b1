#!/usr/bin/env python3
"""A model of weak scaling on MXNet's parameter server: N nodes x G GPUs, one worker and one server per node.

A step of one node is its compute (G GPUs in parallel, B images each, at the per-GPU rate R) plus the gradient
exchange, taken here as not overlapped with the compute (MXNet 1.9.1's Module pushes after the backward pass and
waits for the pull before the next forward):

    compute  = B / R
    exchange = 2 x P x bytes_per_value x (N - 1) / N / link      (push the gradients, pull the sums)

Each node's worker pushes its gradients (P values, summed over its GPUs first) to the N servers, each holding 1/N of
the keys, and pulls the sums back; the share of the node's own server stays on the node, so (N - 1)/N of the
2 x P values cross the node's link in each direction (full duplex, every node at once). Weak scaling at N nodes
= N x compute / (compute + exchange), against one node (whose GPUs exchange over NVLink, not modelled).

    python tools/scaling_model.py            # docs/multinode.md's table (A100 and H100 rates, fp16 gradients)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import Parser, UsageError, float_list, int_list, run_main  # noqa: E402

PARAMS = 25_557_032  # ResNet-50 v1.5 parameters (torchvision's count; the toolkit's symbol, 1000 classes: the same)
# NVIDIA's per-GPU training rates with MXNet + DALI, mixed precision (MLPerf Training v2.0 DGX A100, v4.0 Eos H100;
# per-GPU batch as in those runs)
GPUS = {"A100": (3399.0, 408), "H100": (7161.0, 400)}


def step_times(nodes: int, rate: float, batch: int, link_gbps: float, bytes_per_value: int = 2,
               params: int = PARAMS) -> tuple[float, float]:
    """(compute, exchange) seconds of one step."""
    compute = batch / rate
    exchange = 2 * params * bytes_per_value * (nodes - 1) / nodes * 8 / (link_gbps * 1e9)
    return compute, exchange


def weak_scaling(nodes: int, rate: float, batch: int, link_gbps: float, bytes_per_value: int = 2) -> float:
    compute, exchange = step_times(nodes, rate, batch, link_gbps, bytes_per_value)
    return nodes * compute / (compute + exchange)


def table(nodes: Sequence[int], links: Sequence[float], gpus_per_node: int, bytes_per_value: int) -> str:
    head = ("| GPU (img/s per GPU, batch) | link | " + " | ".join(f"{n} nodes" for n in nodes) +
            " | exchange per step |\n|---|---|" + "---|" * (len(nodes) + 1))
    rows = []
    for gpu, (rate, batch) in GPUS.items():
        for link in links:
            cells = []
            for n in nodes:
                w = weak_scaling(n, rate, batch, link, bytes_per_value)
                cells.append(f"{w:.2f} ({100 * w / n:.0f}%)")
            compute, exchange = step_times(max(nodes), rate, batch, link, bytes_per_value)
            rows.append(f"| {gpu} ({rate:,.0f}, {batch}) | {link:g} Gb/s | " + " | ".join(cells) +
                        f" | {1000 * exchange:.1f} ms of a {1000 * compute:.0f} ms step |")
    mb = 2 * PARAMS * bytes_per_value / 1e6
    return (f"{gpus_per_node} GPUs per node, {bytes_per_value}-byte gradients: {mb:.0f} MB pushed and pulled per "
            f"node and step; weak scaling against one node (efficiency)\n\n{head}\n" + "\n".join(rows))


def build_parser() -> Parser:
    p = Parser(prog="scaling_model.py", description="Weak scaling of ResNet-50 on MXNet's parameter server, "
                                                    "modelled from per-GPU rates and the link bandwidth.")
    p.add_argument("--nodes", type=int_list, default=[2, 8, 32], help="node counts")
    p.add_argument("--links", type=float_list, default=(100.0, 400.0), help="link bandwidths per node, Gb/s")
    p.add_argument("--bytes-per-value", type=int, choices=(2, 4), default=2,
                   help="gradient bytes per value: 2 (fp16, NVIDIA's mixed precision) or 4 (fp32)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.nodes) < 1 or min(args.links) <= 0:
        raise UsageError("--nodes and --links: positive values, e.g. --nodes 2,8 --links 100,400")
    print(table(args.nodes, args.links, 8, args.bytes_per_value))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
