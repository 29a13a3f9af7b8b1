#!/usr/bin/env python3
"""Stage-1 preparation: ImageNet-style image folders -> pass-through RecordIO (``.lst``, ``.rec``, ``.idx``).

Follows the MLPerf image-classification reference, Stage 1: images are not manipulated except that PNGs become JPEGs
and CMYK (and grayscale) JPEGs become RGB JPEGs, both saved at quality 100. Nothing is resized or cropped; every
other JPEG is copied byte for byte. The output is the format of MXNet's ``im2rec.py --list --recursive`` followed by
``im2rec.py --pass-through`` (same ``.lst`` columns, same record header, same RecordIO framing), so MXNet's
``MXIndexedRecordIO``, ``mx.io.ImageRecordIter`` and DALI's MXNet reader read it.

    python tools/prepare_dataset.py --train-dir RAW/train --val-dir RAW/val --data-root OUT --num-thread 8

writes ``OUT/{train,val}.{lst,rec,idx}`` and ``OUT/classes.txt`` (``label<TAB>folder``; labels are the index of the
sorted class-folder names of the training tree). Corrupt or unreadable images are skipped and listed at the end;
they never stop a run. Each output appears under its final name only once it is complete.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import Parser, UsageError, atomic_path, available_cores, run_main  # noqa: E402
from tools.recordio import IndexedRecordWriter, pack_image_record  # noqa: E402

DEFAULT_EXTS = (".jpeg", ".jpg", ".png")  # im2rec's defaults
JPEG_QUALITY = 100  # MLPerf Stage 1: "In both instances the quality saved is 100"
SHUFFLE_SEED = 100  # the seed im2rec.py uses for its shuffled lists


@dataclass(frozen=True)
class Item:
    key: int  # im2rec's image index: position in the sorted walk of the tree
    label: int
    relpath: str


@dataclass(frozen=True)
class Result:
    item: Item
    data: bytes | None  # JPEG bytes to store, or None when skipped
    action: str  # "copied", "converted:<why>" or "skipped:<why>"


# --------------------------------------------------------------------------------------------------------------------
# What kind of image is this? (header parsing only: the pass-through path never decodes)

_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; C4/C8/CC are DHT, JPG, DAC


def jpeg_components(data: bytes) -> int:
    """Number of colour components in a JPEG's frame header (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK).

    Raises ValueError for a file that is not a structurally complete JPEG (no SOI, no frame header before the scan,
    or no EOI marker at the end, the usual sign of a truncated download).
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    if b"\xff\xd9" not in data[-4096:]:
        raise ValueError("truncated JPEG (no EOI marker at the end)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG (expected a marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                break
            return data[i + 9]
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ValueError("corrupt JPEG (no frame header)")


def to_rgb_jpeg(data: bytes) -> bytes:
    """Decode any image OpenCV reads (alpha dropped, CMYK and gray made RGB) and encode it as JPEG quality 100."""
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("cannot be decoded")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot be re-encoded as JPEG")
    return buf.tobytes()


def process(root: Path, item: Item, verify: bool) -> Result:
    """Read one image and decide: copy its bytes, convert it to an RGB JPEG, or skip it (with the reason)."""
    try:
        data = (root / item.relpath).read_bytes()
    except OSError as err:
        return Result(item, None, f"skipped:unreadable ({err.strerror or err})")
    if not data:
        return Result(item, None, "skipped:empty file")
    try:
        if data[:2] == b"\xff\xd8":
            comps = jpeg_components(data)
            if comps == 3:
                if verify:
                    _check_decodes(data)
                return Result(item, data, "copied")
            why = {1: "grayscale JPEG", 4: "CMYK JPEG"}.get(comps, f"{comps}-component JPEG")
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            why = "PNG"
        else:
            why = "not JPEG"
        return Result(item, to_rgb_jpeg(data), f"converted:{why}")
    except ValueError as err:
        return Result(item, None, f"skipped:{err}")


def _check_decodes(data: bytes) -> None:
    import cv2
    import numpy as np

    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8) is None:
        raise ValueError("corrupt JPEG (does not decode)")


# --------------------------------------------------------------------------------------------------------------------
# Listing the tree


def class_folders(root: Path, flag: str) -> list[str]:
    if not root.is_dir():
        raise UsageError(f"{flag} {root}: not a directory (expected <dir>/<class>/<image> folders)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{flag} {root}: no class folders inside (expected <dir>/<class>/<image>)")
    return classes


def list_images(root: Path, classes: Sequence[str], exts: Iterable[str], flag: str) -> list[Item]:
    """Images under ``root/<class>/`` (recursively, like im2rec), in sorted order; keys count from 0."""
    exts = {e.lower() for e in exts}
    label_of = {c: i for i, c in enumerate(classes)}
    items = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if cls not in label_of:
            raise UsageError(f"{flag} {root}: class folder '{cls}' is not among the training classes "
                             f"(val must use the train folder names)")
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if Path(name).suffix.lower() in exts:
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    items.append(Item(len(items), label_of[cls], rel))
    if not items:
        raise UsageError(f"{flag} {root}: no images with extensions {' '.join(sorted(exts))} in its class folders")
    return items


# --------------------------------------------------------------------------------------------------------------------
# Writing one split


def prepare_split(root: Path, items: list[Item], out_prefix: Path, num_thread: int, shuffle: bool, verify: bool,
                  progress: bool = True) -> tuple[int, list[Result], collections.Counter]:
    """Write ``<prefix>.lst/.rec/.idx`` for ``items``; return (records written, skipped results, action counts)."""
    from tqdm import tqdm

    order = list(items)
    if shuffle:  # the DALI reader shuffles through a small buffer only, so the file order must already be mixed
        random.Random(SHUFFLE_SEED).shuffle(order)
    skipped: list[Result] = []
    counts: collections.Counter = collections.Counter()
    written = 0
    with atomic_path(out_prefix.with_suffix(".rec")) as rec_tmp, \
            atomic_path(out_prefix.with_suffix(".idx")) as idx_tmp, \
            atomic_path(out_prefix.with_suffix(".lst")) as lst_tmp:
        with open(rec_tmp, "wb") as rec, open(lst_tmp, "w") as lst, \
                cf.ThreadPoolExecutor(max_workers=num_thread) as pool, \
                tqdm(total=len(order), desc=out_prefix.name, unit="img", disable=not progress or None,
                     file=sys.stderr) as bar:
            writer = IndexedRecordWriter(rec)
            window: collections.deque = collections.deque()
            todo = iter(order)
            for item in _take(todo, 4 * num_thread):
                window.append(pool.submit(process, root, item, verify))
            while window:
                res = window.popleft().result()
                for item in _take(todo, 1):
                    window.append(pool.submit(process, root, item, verify))
                counts[res.action.split(":")[0]] += 1
                bar.update()
                if res.data is None:
                    skipped.append(res)
                    continue
                if res.action != "copied":
                    counts[res.action] += 1
                writer.write(res.item.key, pack_image_record(res.item.label, res.item.key, res.data))
                lst.write(f"{res.item.key}\t{float(res.item.label):f}\t{res.item.relpath}\n")
                written += 1
        with open(idx_tmp, "wb") as idx:
            writer.write_index(idx)
        if written == 0:
            raise UsageError(f"{root}: none of its {len(items)} images could be read; nothing was written")
    return written, skipped, counts


def _take(it, n):
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def write_classes(path: Path, classes: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes)))


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> Parser:
    p = Parser(prog="prepare_dataset.py",
               description="Stage-1 preparation of ImageNet-style folders into pass-through RecordIO (im2rec format).")
    p.add_argument("--train-dir", type=Path, help="training tree <dir>/<class>/<image>; its sorted class folders "
                   "define the labels")
    p.add_argument("--val-dir", type=Path, help="validation tree with the same class folder names")
    p.add_argument("--data-root", type=Path, required=True,
                   help="output folder for {train,val}.{lst,rec,idx} and classes.txt")
    p.add_argument("--num-thread", type=int, default=available_cores(), help="reader/converter threads")
    p.add_argument("--exts", nargs="+", default=list(DEFAULT_EXTS), help="image file extensions to include")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                   help="keep records in sorted order (default: shuffled with a fixed seed, as im2rec does)")
    p.add_argument("--verify", action="store_true",
                   help="also decode every pass-through JPEG to catch corruption inside the entropy-coded data "
                        "(slower; the default checks the JPEG structure only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def prepare(train_dir: Path | None, val_dir: Path | None, data_root: Path, num_thread: int,
            exts: Sequence[str] = DEFAULT_EXTS, shuffle: bool = True, verify: bool = False,
            progress: bool = True) -> dict:
    """Prepare the given trees into ``data_root``. Returns {split: {"records": n, "skipped": [(path, why)]}}."""
    if train_dir is None and val_dir is None:
        raise UsageError("give --train-dir and/or --val-dir (ImageNet-style <dir>/<class>/<image> trees)")
    if num_thread < 1:
        raise UsageError(f"--num-thread {num_thread}: must be at least 1")
    if data_root.exists() and not data_root.is_dir():
        raise UsageError(f"--data-root {data_root}: exists and is not a directory")
    classes = class_folders(train_dir, "--train-dir") if train_dir else class_folders(val_dir, "--val-dir")
    splits = [(name, d, flag) for name, d, flag in (("train", train_dir, "--train-dir"), ("val", val_dir, "--val-dir"))
              if d is not None]
    listed = {name: list_images(d, classes, exts, flag) for name, d, flag in splits}  # all checks before writing
    data_root.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, d, _ in splits:
        written, skipped, counts = prepare_split(d, listed[name], data_root / name, num_thread, shuffle, verify,
                                                 progress)
        converted = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("converted:")}
        summary[name] = {"records": written, "copied": counts["copied"], "converted": converted,
                         "skipped": [(str(d / r.item.relpath), r.action.split(":", 1)[1]) for r in skipped]}
    write_classes(data_root / "classes.txt", classes)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = prepare(args.train_dir, args.val_dir, args.data_root, args.num_thread, args.exts, args.shuffle,
                      args.verify, progress=not args.quiet)
    for name, s in summary.items():
        conv = ", ".join(f"{v} {k}" for k, v in sorted(s["converted"].items())) or "none"
        print(f"{name}: {s['records']} records in {args.data_root / name}.rec "
              f"({s['copied']} JPEGs copied as they are; converted to RGB JPEG q{JPEG_QUALITY}: {conv})")
        if s["skipped"]:
            print(f"{name}: skipped {len(s['skipped'])} corrupt or unreadable image(s):")
            for path, why in s["skipped"]:
                print(f"  {path}: {why}")
    print(f"classes: {args.data_root / 'classes.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
