#!/usr/bin/env python3
"""The embedded demo data set: scikit-learn's handwritten digits as an ImageNet-style tree, then Stage-1 prepared.

scikit-learn's wheel ships ``digits``: 1,797 real 8x8 scans of handwritten digits (UCI optical recognition data,
43 writers), 10 classes, 16 grey levels. Nothing is downloaded. This script

1. upscales every scan to ``--size`` px (bicubic), as a 3-channel JPEG, into ``<out>/raw/{train,val}/<digit>/``,
   with a fixed-seed stratified split (``--val-fraction``, ``--seed``);
2. runs the Stage-1 tool (``prepare_dataset.py``) on that tree, giving ``<out>/{train,val}.{lst,rec,idx}`` and
   ``<out>/classes.txt``.

The whole folder is built under a temporary name and renamed to ``<out>`` at the end.

    python tools/make_demo_data.py --out data/demo --size 32
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import Parser, UsageError, available_cores, make_temp_dir, run_main  # noqa: E402
from tools import prepare_dataset  # noqa: E402


def write_digit_tree(root: Path, size: int, val_fraction: float, seed: int) -> dict:
    """Write the digits as JPEGs under ``root/{train,val}/<digit>/``; return the number of images per split."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)  # 0..16 ink levels -> 0..255, ink bright
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=val_fraction, random_state=seed,
                                          stratify=digits.target)
    counts = {}
    for split, idx in (("train", idx_train), ("val", idx_val)):
        for i in sorted(idx):
            img = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_CUBIC)
            img = np.clip(img, 0, 255).astype(np.uint8)
            path = root / split / str(digits.target[i]) / f"digit_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", cv2.merge([img, img, img]), [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            path.write_bytes(buf.tobytes())
        counts[split] = len(idx)
    return counts


def build_parser() -> Parser:
    p = Parser(prog="make_demo_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    p.add_argument("--size", type=int, default=32, help="side of the upscaled square images, in px")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified train/val split")
    p.add_argument("--num-thread", type=int, default=available_cores(), help="threads of the Stage-1 tool")
    p.add_argument("--force", action="store_true", help="rebuild even if --out already holds a prepared set")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.size < 8:
        raise UsageError(f"--size {args.size}: must be at least 8 (the scans are 8x8)")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction {args.val_fraction}: must be between 0 and 1")
    out: Path = args.out
    if (out / "val.rec").exists() and not args.force:
        print(f"{out} is already prepared (use --force to rebuild)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        counts = write_digit_tree(tmp / "raw", args.size, args.val_fraction, args.seed)
        prepare_dataset.prepare(tmp / "raw" / "train", tmp / "raw" / "val", tmp, args.num_thread, progress=False)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"digits demo set: {counts['train']} train + {counts['val']} val images, {args.size}x{args.size} px, "
          f"10 classes -> {out}/{{train,val}}.{{rec,idx,lst}}, {out}/classes.txt")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
