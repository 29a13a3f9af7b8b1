#!/usr/bin/env python3
"""Check a RecordIO pair (``.rec`` + ``.idx``) before a long run: every index entry, every record header, every
label, and optionally every image decoded; list the bad records and, on request, write a copy without them.

    python tools/check_rec.py data/demo/train.rec --num-classes 10 --decode
    python tools/check_rec.py /data/imagenet/train.rec --decode --write-good /data/imagenet/train-good

Checks (``recfile.scan``): each ``.idx`` entry points at a record that ends where the next entry starts (the last
one at the end of the file), in file order; each record holds one integer label (in ``[0, --num-classes)`` when
given) and starts like an image; each JPEG's markers parse up to its scan (what every decoder needs before the
first pixel; the ``mxnet`` backend's ``ImageRecordIter`` dies of SIGFPE on a record that fails here). ``--decode``
also decodes every image strictly (``recfile.DecodeChecker``, one process per core): a JPEG fails when it has no
end marker (a truncated file) or when the decoder reports corrupt or truncated data, which OpenCV only prints while
it returns an image padded with gray or noise. ``tools/prepare_dataset.py --verify`` runs the same check, so the two
tools pass and fail the same images. Every bad record is printed on a line of its own (record number in the
``.idx``, key, byte offset, what is wrong). ``--write-good PREFIX`` writes ``PREFIX.rec`` and ``PREFIX.idx`` with
every other record, byte for byte (the set then has fewer images; rebuilding it from the source images with
``tools/prepare_dataset.py --verify`` keeps them all if the sources are intact).

Exit status: 0 when every record passed, 1 when some did not (the good copy is written all the same), 2 for bad
flags or a pair that cannot be read at all.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import recfile  # noqa: E402
from common import Parser, UsageError, atomic_path, available_cores, run_main  # noqa: E402


def build_parser() -> Parser:
    p = Parser(prog="check_rec.py", description="Check every record of a .rec/.idx pair; list the bad ones.")
    p.add_argument("rec", type=Path, help="the .rec file")
    p.add_argument("--idx", type=Path, default=None, help="its index (default: the .rec with .idx)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="labels must be below this (default: any non-negative class number)")
    p.add_argument("--decode", action="store_true",
                   help="also decode every image strictly: a JPEG without its end marker, or whose decoder reports "
                        "corrupt or truncated data, is bad (slower: reads every byte; one process per core)")
    p.add_argument("--max-listed", type=int, default=1000, help="bad records printed at most")
    p.add_argument("--write-good", type=Path, default=None, metavar="PREFIX",
                   help="write PREFIX.rec/.idx holding every record that passed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    idx = args.idx or args.rec.with_suffix(".idx")
    for flag, path in (("rec", args.rec), ("--idx", idx)):
        if not path.is_file():
            raise UsageError(f"{flag} {path}: file not found")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes}: must be at least 1")
    if args.max_listed < 0:
        raise UsageError(f"--max-listed {args.max_listed}: must be at least 0")
    if args.write_good is not None and args.write_good.with_suffix(".rec").resolve() == args.rec.resolve():
        raise UsageError(f"--write-good {args.write_good}: would overwrite the file being checked")
    t0 = time.perf_counter()
    try:
        result = recfile.scan(args.rec, idx, num_classes=args.num_classes, headers=True, decode=args.decode,
                              max_problems=max(args.max_listed, 1) if args.write_good is None else 10 ** 9,
                              workers=available_cores())
    except (ValueError, OSError) as err:
        raise UsageError(f"{idx} cannot be used with {args.rec}: {err}") from None
    for p in result.problems[:args.max_listed]:
        print(p)
    bad = sum(result.counts.values())
    if bad > args.max_listed:
        print(f"... and {bad - args.max_listed} more")
    what = "every image decoded" if args.decode else "headers checked"
    labels = f", labels {result.labels[0]:g} to {result.labels[1]:g}" if result.labels else ""
    print(f"{args.rec}: {result.records} records, {bad} bad ({what}{labels}; {time.perf_counter() - t0:.1f} s)")
    if args.write_good is not None:
        if any(p.kind == "index" for p in result.problems):
            raise UsageError(f"--write-good: the index does not match the records ({result.first('index')}), so "
                             "records cannot be copied by it; rebuild the set with tools/prepare_dataset.py")
        prefix = args.write_good
        with atomic_path(prefix.with_suffix(".rec")) as rec_tmp, atomic_path(prefix.with_suffix(".idx")) as idx_tmp:
            n = recfile.write_good(args.rec, idx, {p.record for p in result.problems}, rec_tmp, idx_tmp)
        print(f"wrote {n} good records to {prefix.with_suffix('.rec')} and {prefix.with_suffix('.idx')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
