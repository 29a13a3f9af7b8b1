#!/usr/bin/env python3
"""The faster training precision on this machine for a recipe's batch and image size, measured once.

    python tools/pick_dtype.py -b 32 --image-shape 3,32,32 --num-classes 10 --cache runs/mlperf-demo/dtype.json

Prints ``float32`` or ``bfloat16`` on stdout (what ``examples/MLPERF_CPU.sh`` trains in) and one line on stderr
saying why. A CPU without AVX512_BF16 or AMX-BF16 is float32 at once (bfloat16 would be emulated). Otherwise
``benchmark.py`` trains the recipe's shape on synthetic data in both dtypes (one device, ``--iters`` iterations a
epoch, the first epoch left out) and the faster one wins; the result is kept in ``--cache`` under the CPU model, the
batch and the shape, so that later runs on the same machine do not measure again. Whether bfloat16 pays depends on the
CPU and the image size: on an AMD Zen 4 (AVX512_BF16) it trained the 32 px digits faster than float32, on an Intel
Xeon with AMX slower (at 32 px the casts and layout reorders outweigh the faster convolutions), and at 224 px faster
on both.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (Parser, UsageError, check_image_shape, cpu_bf16_flags, cpu_model, int_list,  # noqa: E402
                    path_arg, run_child, run_tool, write_json)


def build_parser() -> Parser:
    p = Parser(prog="pick_dtype.py", description="The faster training dtype here (float32 or bfloat16), measured "
                                                 "once and cached.")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="batch per device of the recipe")
    p.add_argument("--image-shape", type=int_list, default=(3, 224, 224), help="C,H,W of the recipe")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the recipe")
    p.add_argument("--iters", type=int, default=12, help="training iterations per measured epoch")
    p.add_argument("--cache", type=path_arg, default=None, help="JSON file keeping the answers of this machine")
    return p


def measure(args) -> dict:
    """img/s of both dtypes (``benchmark.py``'s training sweep, synthetic data)."""
    with tempfile.TemporaryDirectory(prefix="pick_dtype.") as tmp:
        out = Path(tmp) / "b.json"
        res = run_child([sys.executable, ROOT / "benchmark.py", "-n", "1", "-b", str(args.batch_size), "-i",
                         str(args.iters), "-e", "2", "-w", "1", "--dtype", "float32,bfloat16", "--data-backend",
                         "synthetic", "--image-shape", ",".join(map(str, args.image_shape)), "--num-classes",
                         str(args.num_classes), "-o", out, "--plot", Path(tmp) / "b.png"],
                        capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                              if k != "OMP_NUM_THREADS"})
        if res.returncode != 0 or not out.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-2:]
            raise UsageError(f"the measurement failed ({' | '.join(tail)}); set the dtype yourself (DTYPE=float32)")
        summary = json.loads(out.read_text())
    by = summary["metrics_by_dtype"]
    bs = str(args.batch_size)
    return {d: by[d]["1"][bs]["train.total_ips"] for d in ("float32", "bfloat16")}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    shape = check_image_shape(args.image_shape, 32)
    if args.batch_size < 1 or args.iters < 2:
        raise UsageError("-b must be at least 1 and --iters at least 2")
    if not cpu_bf16_flags():
        print("pick_dtype.py: float32 (this CPU has neither AVX512_BF16 nor AMX-BF16)", file=sys.stderr)
        print("float32")
        return 0
    key = f"{cpu_model()} | batch {args.batch_size} | {','.join(map(str, shape))} | {args.num_classes} classes"
    cache = {}
    if args.cache is not None and args.cache.is_file():
        try:
            cache = json.loads(args.cache.read_text())
        except ValueError:
            cache = {}
    entry = cache.get(key)
    if entry is None:
        ips = measure(args)
        entry = {"img_per_s": ips, "dtype": max(ips, key=ips.get)}
        if args.cache is not None:
            write_json(args.cache, {**cache, key: entry})
        how = "measured now"
    else:
        how = f"measured before, {args.cache}"
    ips = entry["img_per_s"]
    print(f"pick_dtype.py: {entry['dtype']} (training {ips['float32']:.0f} img/s in float32, {ips['bfloat16']:.0f} in "
          f"bfloat16 at batch {args.batch_size}, {shape[1]} px; {how})", file=sys.stderr)
    print(entry["dtype"])
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "pick_dtype.py"))
