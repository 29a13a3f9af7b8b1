#!/usr/bin/env python3
"""Stage-1 preparation: ImageNet-style image folders -> pass-through RecordIO (``.lst``, ``.rec``, ``.idx``).

Follows the MLPerf image-classification reference, Stage 1: images are not manipulated except that PNGs become JPEGs
and CMYK (and grayscale) JPEGs become RGB JPEGs, both saved at quality 100. Nothing is resized or cropped; every
other JPEG is copied byte for byte. The output is the format of MXNet's ``im2rec.py --list --recursive`` followed by
``im2rec.py --pass-through`` (same ``.lst`` columns, same record header, same RecordIO framing), so MXNet's
``MXIndexedRecordIO``, ``mx.io.ImageRecordIter`` and DALI's MXNet reader read it.

    python tools/prepare_dataset.py --train-dir RAW/train --val-dir RAW/val --data-root OUT --num-thread 8

writes ``OUT/{train,val}.{lst,rec,idx}`` and ``OUT/classes.txt`` (``label<TAB>folder``; labels are the index of the
sorted class-folder names of the training tree, as ImageNet's class indices are; the summary prints them, the first
and last few when there are many). Each output appears under its final name only once it is complete.

Every class folder of the training tree must hold an image: one without any is refused (exit status 2, before
anything is written), since leaving it out would shift the label of every class after it and keeping it would make
a class without images. A folder that holds an earlier output of this tool or of im2rec (``classes.txt``, ``*.rec``,
``*.idx``, ``*.lst``) and no image is not a class: it is left out and listed, in either tree.

Any tree is taken as it is, never with a traceback; what cannot be used is skipped and listed at the end:

* corrupt, truncated, unreadable images, and images whose header claims more than ``--max-pixels`` pixels (read from
  the JPEG frame header or the PNG IHDR chunk, so a bogus size costs no memory). Any failure while processing one
  image (OpenCV's, a MemoryError) skips that image only. A JPEG without its end marker is always skipped;
  ``--verify`` also decodes every JPEG with the check of ``tools/check_rec.py --decode`` (``recfile.DecodeChecker``)
  and skips those whose decoder reports corrupt or truncated data, so the two tools agree on every image;
* links are followed, as im2rec does, but each real folder is listed once: a link that leads back into its own
  folders (a loop) or to a folder listed already, a link to a folder of another class, broken links and unreadable
  folders are listed with the reason. A class folder may itself be a link to a folder outside the tree.

The ``.lst`` names every file exactly. Its path column is the path relative to the tree, written as UTF-8; a byte
of a name that is not valid UTF-8 is written as that byte (read the file as UTF-8 with ``errors="surrogateescape"``
to get it back). Backslash escapes stand for what a line-based reader would split or strip: ``\\\\`` (a backslash),
``\\t``, ``\\n``, ``\\r``, ``\\xHH`` for other control characters and for whitespace at either end of the column,
``\\uHHHH`` for the Unicode line separators. ``unescape_path`` reverses this; plain names are written exactly as
im2rec writes them. ``classes.txt`` writes folder names the same way.

``--data-root`` may lie inside an input tree (it is left out of the listing, with a warning) but may not be the tree
itself (the outputs would lie among the class folders) nor a folder that holds images (a class). SIGINT and SIGTERM
stop the run between two images: temporary files are removed, one line says so, and the exit status is 128 + the
signal. A full disk is one line naming the file (exit status 5, ``common.OutputError``).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import errno
import itertools
import os
import random
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import (EXIT_OUTPUT, EXIT_USAGE, Parser, StopFlag, UsageError, atomic_path, available_cores,  # noqa: E402
                    output_error, run_main)
from recfile import (IR_HEADER_SIZE, DecodeChecker, IndexedRecordWriter, jpeg_end_problem, jpeg_info,  # noqa: E402
                     pack_image_record, png_info)

PROG = "prepare_dataset.py"
DEFAULT_EXTS = (".jpeg", ".jpg", ".png")  # im2rec's defaults
JPEG_QUALITY = 100  # MLPerf Stage 1: "In both instances the quality saved is 100"
SHUFFLE_SEED = 100  # the seed im2rec.py uses for its shuffled lists
MAX_PIXELS = 100_000_000  # 2.6x ImageNet's largest image (5980x6430); decoded, 300 MB
OPENCV_MAX_PIXELS = 1 << 30  # OpenCV's own limit: above it imdecode raises cv2.error
MAX_IMAGE_BYTES = (1 << 29) - 1 - IR_HEADER_SIZE  # a RecordIO record's length field has 29 bits
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Item:
    key: int  # im2rec's image index: position in the sorted walk of the tree
    label: int
    relpath: str  # as the OS gives it (undecodable bytes as surrogate escapes), not escaped


@dataclass(frozen=True)
class Result:
    item: Item
    data: bytes | None  # JPEG bytes to store, or None when skipped
    action: str  # "copied", "converted:<why>" or "skipped:<why>"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: raised between two images, so every ``atomic_path`` removes its temporary file.
    ``complete`` names the splits whose outputs were in place before."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.complete: list[str] = []


def check_stop(stop: StopFlag | None) -> None:
    if stop is not None and stop.signum:
        raise Interrupted(stop.signum)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------------
# Names in the .lst: any file name Linux allows must come back exactly

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
# What a reader splitting lines (str.splitlines included), splitting at tabs, or stripping fields would cut.
_NEEDS_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f\x85\u2028\u2029]|\A\s|\s\Z")
_ESCAPED = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[\\tnr])")


def escape_path(name: str) -> str:
    """The ``.lst`` path column for ``name`` (see the module docstring); a plain name is returned unchanged."""
    return _NEEDS_ESCAPE.sub(_escape_char, name)


def _escape_char(match: re.Match) -> str:
    ch = match.group()
    return _ESCAPES.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def unescape_path(column: str) -> str:
    """The file name a ``.lst`` path column (read as UTF-8 with ``errors="surrogateescape"``) stands for."""
    return _ESCAPED.sub(lambda m: _UNESCAPES.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), column)


def shown(path: os.PathLike | str) -> str:
    """A path as printed: escaped like the ``.lst``, so every reported path is one line and prints in any locale."""
    return escape_path(str(path)).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------------------------------
# What kind of image is this? (header parsing only: the pass-through path never decodes)


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


def process(root: Path, item: Item, checker: DecodeChecker | None, max_pixels: int = MAX_PIXELS) -> Result:
    """Read one image and decide: copy its bytes, convert it to an RGB JPEG, or skip it (with the reason). Whatever
    goes wrong here (OpenCV's errors, a MemoryError, ...) skips this image only; it never ends the run. ``checker``
    (``--verify``) decodes every JPEG strictly first."""
    try:
        data, action = _convert(root / item.relpath, checker, max_pixels)
    except Exception as err:  # noqa: BLE001 - one image must never end the run
        return Result(item, None, f"skipped:{_reason(err)}")
    return Result(item, data, action)


def _convert(path: Path, checker: DecodeChecker | None, max_pixels: int) -> tuple[bytes, str]:
    """(bytes to store, action) for one file; ValueError says why it is skipped."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"file of {size} bytes is larger than a RecordIO record holds")
    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    if data[:2] == b"\xff\xd8":
        truncated = jpeg_end_problem(data)  # Stage 1 skips truncated downloads, which decoders would pad with gray
        if truncated:
            raise ValueError(truncated)
        info = jpeg_info(data)
        check_pixels(info.width, info.height, max_pixels)
        problem = checker.check(data) if checker is not None else None  # the check of check_rec.py --decode
        if problem:
            raise ValueError(problem)
        if info.components == 3:
            return data, "copied"
        why = {1: "grayscale JPEG", 4: "CMYK JPEG"}[info.components]
    elif data[:8] == PNG_SIGNATURE:
        height, width = png_info(data)
        check_pixels(width, height, max_pixels)
        why = "PNG"
    else:
        why = "not JPEG"  # another format OpenCV may read; OpenCV's own pixel limit applies (see limit_opencv)
    out = to_rgb_jpeg(data)
    if len(out) > MAX_IMAGE_BYTES:
        raise ValueError(f"converted JPEG of {len(out)} bytes is larger than a RecordIO record holds")
    return out, f"converted:{why}"


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Skip an image whose header claims more pixels than ``--max-pixels``, before anything decodes it."""
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} px ({width * height / 1e6:.1f} MP) is above --max-pixels {max_pixels}")


def _reason(err: Exception) -> str:
    """One line saying why an image was skipped."""
    if type(err) is ValueError:  # this module's own reasons, and recfile's header checks
        return str(err)
    if isinstance(err, OSError):
        return f"unreadable ({err.strerror or err})"
    if isinstance(err, MemoryError):
        return "out of memory while reading or converting it"
    text = " ".join(str(err).split())[:300]
    return f"cannot be processed ({type(err).__module__}.{type(err).__qualname__}: {text})"


def limit_opencv(max_pixels: int) -> None:
    """Make OpenCV refuse images above ``max_pixels`` too, for the formats whose header this tool does not read (a
    BMP or WebP under an image extension). OpenCV reads the limit once, when it loads: this works before cv2 is
    imported, and only lowers the limit (above 2^30 pixels OpenCV's own limit stays)."""
    if "cv2" not in sys.modules and "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ:
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(min(max_pixels, OPENCV_MAX_PIXELS))


# --------------------------------------------------------------------------------------------------------------------
# Listing the tree


def _within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _dir_id(path: os.PathLike | str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _sorted_entries(path: os.PathLike | str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def entry_kind(entry: os.DirEntry) -> tuple[str, object]:
    """One directory entry, links followed: ("dir", (st_dev, st_ino)), ("file", None), ("skip", why) for a link
    that cannot be followed or an entry that cannot be read, or ("other", None) (sockets, devices: never images)."""
    try:
        if entry.is_dir():
            st = entry.stat()
            return "dir", (st.st_dev, st.st_ino)
        if entry.is_file():
            return "file", None
        if entry.is_symlink():
            return "skip", f"broken link (to {shown(os.readlink(entry.path))})"
        return "other", None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "skip", "link loop (a chain of links that leads back to itself)"
        return "skip", f"unreadable ({err.strerror or err})"


def link_problem(path: str, tree_real: str, class_real: str | None) -> str | None:
    """Why a link to a folder is not followed: it holds the tree (a loop), or it leads to another part of the tree
    (whose images belong to that folder's class). None: follow it."""
    target = os.path.realpath(path)
    if _within(tree_real, target):
        return f"link loop (it leads to {shown(target)}, which holds the tree)"
    if _within(target, tree_real) and not (class_real and _within(target, class_real)):
        return f"link to {shown(target)}, another folder of the same tree (its images are listed there)"
    return None


def top_folders(root: Path, flag: str, exclude: tuple | None) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A tree's class folders, {name: real path} (its visible sub-folders; a link to a folder outside the tree
    counts), and the top-level entries left out, (path, why). ``exclude``: the (st_dev, st_ino) of --data-root."""
    if not root.is_dir():
        raise UsageError(f"{flag} {root}: not a directory (expected <dir>/<class>/<image> folders)")
    try:
        entries = _sorted_entries(root)
    except OSError as err:
        raise UsageError(f"{flag} {root}: cannot be read ({err.strerror or err})") from None
    tree_real = os.path.realpath(root)
    folders, ids, left_out = {}, {}, []
    for e in entries:
        if e.name.startswith("."):
            continue
        kind, info = entry_kind(e)
        if kind == "skip":
            left_out.append((e.path, info))
        if kind != "dir" or info == exclude:
            continue
        why = (link_problem(e.path, tree_real, None) if e.is_symlink() else None) or \
            _seen_before(e.path, ids.get(info))  # two links to one folder outside the tree: one class
        if why:
            left_out.append((e.path, why))
            continue
        folders[e.name] = os.path.realpath(e.path)
        ids[info] = str(root / e.name)
    if not folders:
        raise UsageError(f"{flag} {root}: no class folders inside (expected <dir>/<class>/<image>)")
    return folders, left_out


def list_images(root: Path, folders: dict[str, str], exts: Iterable[str], flag: str, exclude: tuple | None = None,
                stop: StopFlag | None = None) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """The images under each ``root/<class>/`` (paths relative to ``root``) in im2rec's order: a folder's files
    sorted, then its sub-folders, depth first. Links are followed, each real folder once (by st_dev, st_ino). Returns
    {class: paths} (every class folder, with an empty list where none was found) and the entries left out, (path,
    why). A tree without any image is a usage error."""
    exts = {e.lower() for e in exts}
    tree_real = os.path.realpath(root)
    seen = {_dir_id(root): str(root)}  # folder id -> where it is listed; a link to a class folder is not followed
    seen.update((_dir_id(real), str(root / cls)) for cls, real in folders.items())
    found: dict[str, list[str]] = {}
    left_out = []
    for cls in sorted(folders):
        images = found[cls] = []
        stack = [(str(root / cls), cls)]
        while stack:
            check_stop(stop)
            path, rel = stack.pop()
            try:
                entries = _sorted_entries(path)
            except OSError as err:
                left_out.append((path, f"unreadable folder ({err.strerror or err})"))
                continue
            subdirs = []
            for e in entries:
                kind, info = entry_kind(e)
                if kind == "file" and os.path.splitext(e.name)[1].lower() in exts:
                    images.append(f"{rel}/{e.name}")
                elif kind == "skip":
                    left_out.append((e.path, info))
                elif kind == "dir" and info != exclude:
                    why = (link_problem(e.path, tree_real, folders[cls]) if e.is_symlink() else None) or \
                        _seen_before(e.path, seen.get(info))
                    if why:
                        left_out.append((e.path, why))
                        continue
                    seen[info] = e.path
                    subdirs.append((e.path, f"{rel}/{e.name}"))
            stack.extend(reversed(subdirs))
    if not any(found.values()):
        raise UsageError(f"{flag} {root}: no images with extensions {' '.join(sorted(exts))} in its class folders")
    return found, left_out


OUTPUT_NAMES = ("classes.txt",)
OUTPUT_EXTS = (".rec", ".idx", ".lst")  # what this tool writes beside classes.txt (im2rec writes them too)


def earlier_output(folder: os.PathLike | str) -> list[str]:
    """The files directly in ``folder`` that look like an output of this tool or of im2rec: ``classes.txt``,
    ``*.rec``, ``*.idx``, ``*.lst`` (sorted names; empty if none or unreadable)."""
    try:
        entries = _sorted_entries(folder)
    except OSError:
        return []
    return [e.name for e in entries if (e.name in OUTPUT_NAMES or os.path.splitext(e.name)[1] in OUTPUT_EXTS)
            and e.is_file()]


def class_images(root: Path, flag: str, found: dict[str, list[str]], left_out: list[tuple[str, str]],
                 exts: Iterable[str], defines_labels: bool) -> dict[str, list[str]]:
    """The class folders of ``found`` that hold images. A folder without images is left out and listed in
    ``left_out`` when it holds an earlier output (``earlier_output``), or when its tree does not define the labels
    (the validation tree). In the tree that defines the labels any other folder without images is a usage error:
    leaving it out would shift the label of every class after it, keeping it would make a class without images."""
    kept, empty = {}, []
    for cls, images in found.items():
        if images:
            kept[cls] = images
        elif outputs := earlier_output(root / cls):
            more = f" and {len(outputs) - 4} more" if len(outputs) > 4 else ""
            left_out.append((str(root / cls), f"an earlier output ({', '.join(map(shown, outputs[:4]))}{more}) "
                                              "without images: not a class"))
        elif defines_labels:
            empty.append(cls)
        else:
            left_out.append((str(root / cls), "holds no images"))
    if empty:
        names = ", ".join(f"'{shown(c)}'" for c in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3
                                                                  else "")
        first = root / empty[0]
        why = next((f" ({shown(path)}: {w})" for path, w in left_out if _within(path, str(first))), "")
        one = len(empty) == 1
        raise UsageError(f"{flag} {root}: class folder{'' if one else 's'} {names} hold{'s' if one else ''} no images "
                         f"({' '.join(sorted({e.lower() for e in exts}))}){why}; labels are the positions of the "
                         f"sorted class-folder names, so leaving {'it' if one else 'them'} out would shift the label "
                         f"of every class after {'it' if one else 'them'}: add images or remove the "
                         f"folder{'' if one else 's'}")
    return kept


def numbered(found: dict[str, list[str]], label_of: dict[str, int]) -> list[Item]:
    """Items of the class folders in sorted order; keys count from 0 (im2rec's image index)."""
    paths = [(cls, rel) for cls in sorted(found) for rel in found[cls]]
    return [Item(key, label_of[cls], rel) for key, (cls, rel) in enumerate(paths)]


def _seen_before(path: str, first: str | None) -> str | None:
    if first is None:
        return None
    if _within(path, first):
        return f"link loop (it leads back to {shown(first)})"
    return f"same folder as {shown(first)} (its images are listed there)"


def check_output_place(data_root: Path, splits: Sequence[tuple[str, Path, str]], exts: Iterable[str]) -> None:
    """--data-root inside an input tree: the tree itself would mix the outputs with its class folders, and a folder
    that holds images is a class folder: both are usage errors. Any other folder inside a tree is left out of the
    listing (so its outputs and temporary files never become images or a class), with one warning."""
    out = os.path.realpath(data_root)
    warned = set()
    for _, tree, flag in splits:
        top = os.path.realpath(tree)
        if out == top:
            raise UsageError(f"--data-root {data_root} is {flag} itself: the outputs would lie among its class "
                             "folders; choose a folder outside the tree")
        if not _within(out, top) or top in warned:
            continue
        image = _first_image(data_root, exts)
        if image:
            raise UsageError(f"--data-root {data_root} is inside {flag} {tree} and holds images ({shown(image)}); "
                             "choose an output folder outside the tree")
        warn(f"--data-root {data_root} is inside {flag} {tree}; it is left out of the listing")
        warned.add(top)


def _first_image(folder: Path, exts: Iterable[str]) -> str | None:
    exts = {e.lower() for e in exts}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts:
                return os.path.join(dirpath, name)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Writing one split


def processed(root: Path, items: Sequence[Item], num_thread: int, checker: DecodeChecker | None,
              max_pixels: int) -> Iterator[Result]:
    """``process`` over ``items`` on ``num_thread`` threads, results in order. At most 4 images per thread are in
    flight, so memory stays bounded; closing the generator (an error or a signal in the caller) cancels the rest and
    waits only for the images being read now."""
    pool = cf.ThreadPoolExecutor(max_workers=num_thread)
    try:
        todo = iter(items)
        window = collections.deque(pool.submit(process, root, item, checker, max_pixels)
                                   for item in itertools.islice(todo, 4 * num_thread))
        while window:
            res = window.popleft().result()
            window.extend(pool.submit(process, root, item, checker, max_pixels) for item in itertools.islice(todo, 1))
            yield res
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """A failed write names ``path``, the output the user knows (not its temporary file, nor a sibling output)."""
    try:
        yield
    except OSError as err:
        raise output_error(path, err) from None


def prepare_split(root: Path, items: list[Item], out_prefix: Path, num_thread: int, shuffle: bool,
                  checker: DecodeChecker | None, progress: bool = True, max_pixels: int = MAX_PIXELS,
                  stop: StopFlag | None = None) -> tuple[int, list[Result], collections.Counter]:
    """Write ``<prefix>.lst/.rec/.idx`` for ``items``; return (records written, skipped results, action counts)."""
    from tqdm import tqdm

    order = list(items)
    if shuffle:  # the DALI reader shuffles through a small buffer only, so the file order must already be mixed
        random.Random(SHUFFLE_SEED).shuffle(order)
    skipped: list[Result] = []
    counts: collections.Counter = collections.Counter()
    kept: list[Item] = []
    rec_path, idx_path, lst_path = (out_prefix.with_suffix(s) for s in (".rec", ".idx", ".lst"))
    with atomic_path(rec_path) as rec_tmp, atomic_path(idx_path) as idx_tmp, atomic_path(lst_path) as lst_tmp:
        with naming(rec_path), open(rec_tmp, "wb") as rec, \
                contextlib.closing(processed(root, order, num_thread, checker, max_pixels)) as results, \
                tqdm(total=len(order), desc=out_prefix.name, unit="img", disable=not progress or None,
                     file=sys.stderr) as bar:
            writer = IndexedRecordWriter(rec)
            for res in results:
                check_stop(stop)
                counts[res.action.split(":")[0]] += 1
                bar.update()
                if res.data is None:
                    skipped.append(res)
                    continue
                if res.action != "copied":
                    counts[res.action] += 1
                writer.write(res.item.key, pack_image_record(res.item.label, res.item.key, res.data))
                kept.append(res.item)
        if not kept:
            raise UsageError(f"{root}: none of its {len(items)} images could be read; nothing was written")
        with naming(idx_path), open(idx_tmp, "wb") as idx:
            writer.write_index(idx)
        with naming(lst_path):
            write_lst(lst_tmp, kept)
        check_stop(stop)  # a signal during the last writes: still nothing in place
    return len(kept), skipped, counts


def write_lst(path: Path, items: Iterable[Item]) -> None:
    """im2rec's ``.lst`` lines (``key<TAB>label<TAB>path``), the path escaped (``escape_path``)."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as lst:
        for item in items:
            lst.write(f"{item.key}\t{float(item.label):f}\t{escape_path(item.relpath)}\n")


def write_classes(path: Path, classes: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\t{escape_path(c)}\n" for i, c in enumerate(classes)), encoding="utf-8",
                       errors="surrogateescape")


# --------------------------------------------------------------------------------------------------------------------
# Command line

EPILOG = (f"Links are followed (each real folder once; loops, broken links and unreadable folders are skipped and "
          f"listed). The .lst path column is UTF-8, with bytes that are not UTF-8 written as they are; backslash "
          f"escapes stand for a backslash (\\\\), tab (\\t), newline (\\n), carriage return (\\r), other control "
          f"characters and whitespace at either end of the path (\\xHH), and Unicode line separators (\\uHHHH); "
          f"plain names are written as im2rec writes them, classes.txt writes folder names the same way, and "
          f"unescape_path() in this file reverses the escapes. Labels are the positions of the sorted class-folder "
          f"names of the training tree; a class folder without images is refused, one that holds an earlier output "
          f"(classes.txt, *.rec, *.idx, *.lst) and no images is left out and listed. "
          f"Exit status: 0 done, {EXIT_USAGE} bad arguments or trees, {EXIT_OUTPUT} an output could not be written "
          f"(full disk, permissions), 128 + the signal when stopped by SIGINT (130) or SIGTERM (143); temporary "
          f"files are always removed.")


def build_parser() -> Parser:
    p = Parser(prog=PROG, epilog=EPILOG,
               description="Stage-1 preparation of ImageNet-style folders into pass-through RecordIO (im2rec format).")
    p.add_argument("--train-dir", type=Path, help="training tree <dir>/<class>/<image>; its sorted class folders "
                   "define the labels")
    p.add_argument("--val-dir", type=Path, help="validation tree with the same class folder names")
    p.add_argument("--data-root", type=Path, required=True,
                   help="output folder for {train,val}.{lst,rec,idx} and classes.txt; not a --train-dir or "
                        "--val-dir itself (a folder inside one is left out of its listing)")
    p.add_argument("--num-thread", type=int, default=available_cores(), help="reader/converter threads")
    p.add_argument("--exts", nargs="+", default=list(DEFAULT_EXTS), help="image file extensions to include")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                   help="keep records in sorted order (default: shuffled with a fixed seed, as im2rec does)")
    p.add_argument("--verify", action="store_true",
                   help="also decode every JPEG strictly, as tools/check_rec.py --decode does, and skip those whose "
                        "decoder reports corrupt or truncated data (slower; one decoding process per thread, at most "
                        "one per core; the default checks the JPEG structure and its end marker only)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="skip (and list) any image whose header claims more pixels (width x height, read from the "
                        "JPEG frame header or PNG IHDR without decoding). The default, 100,000,000, is 2.6 times "
                        "ImageNet's largest image (5980x6430 = 38.5 MP) and a tenth of OpenCV's own limit (2^30 "
                        "pixels, above which it refuses to decode); a decoded image at the limit takes 300 MB, so "
                        "8 threads converting at once need at most 2.4 GB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def prepare(train_dir: Path | None, val_dir: Path | None, data_root: Path, num_thread: int,
            exts: Sequence[str] = DEFAULT_EXTS, shuffle: bool = True, verify: bool = False,
            progress: bool = True, max_pixels: int = MAX_PIXELS, stop: StopFlag | None = None) -> dict:
    """Prepare the given trees into ``data_root``. Returns {"classes": [folder names, in label order], split:
    {"records": n, "copied": n, "converted": {why: n}, "skipped": [(image path, why)], "left_out": [(path, why)]
    (links and folders of the tree)}}. ``verify``: every JPEG is decoded by ``recfile.DecodeChecker`` first."""
    if train_dir is None and val_dir is None:
        raise UsageError("give --train-dir and/or --val-dir (ImageNet-style <dir>/<class>/<image> trees)")
    if num_thread < 1:
        raise UsageError(f"--num-thread {num_thread}: must be at least 1")
    if max_pixels < 1:
        raise UsageError(f"--max-pixels {max_pixels}: must be at least 1")
    if data_root.exists() and not data_root.is_dir():
        raise UsageError(f"--data-root {data_root}: exists and is not a directory")
    splits = [(name, d, flag) for name, d, flag in (("train", train_dir, "--train-dir"), ("val", val_dir, "--val-dir"))
              if d is not None]
    exclude = _dir_id(data_root) if data_root.is_dir() else None
    tops = {name: top_folders(d, flag, exclude) for name, d, flag in splits}
    check_output_place(data_root, splits, exts)
    if train_dir is not None and val_dir is not None and os.path.samefile(train_dir, val_dir):
        warn(f"--val-dir {val_dir} is the same folder as --train-dir {train_dir}: the validation set equals the "
             "training set")
    left_out = {name: list(tops[name][1]) for name, _, _ in splits}
    found = {}
    for n, (name, d, flag) in enumerate(splits):  # the first tree (train, if given) defines the labels
        images, left_out_inside = list_images(d, tops[name][0], exts, flag, exclude, stop)
        left_out[name] += left_out_inside
        found[name] = class_images(d, flag, images, left_out[name], exts, defines_labels=n == 0)
    classes = sorted(found[splits[0][0]])
    label_of = {c: i for i, c in enumerate(classes)}
    for name, d, flag in splits[1:]:
        for cls in sorted(found[name]):
            if cls not in label_of:
                raise UsageError(f"{flag} {d}: class folder '{shown(cls)}' is not among the training classes "
                                 f"(val must use the train folder names)")
    summary: dict = {"classes": classes}
    try:
        with DecodeChecker(min(num_thread, available_cores())) if verify else contextlib.nullcontext() as checker:
            for name, d, _ in splits:
                written, skipped, counts = prepare_split(d, numbered(found[name], label_of), data_root / name,
                                                         num_thread, shuffle, checker, progress, max_pixels, stop)
                if name == splits[0][0]:
                    write_classes(data_root / "classes.txt", classes)
                converted = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("converted:")}
                summary[name] = {"records": written, "copied": counts["copied"], "converted": converted,
                                 "skipped": [(str(d / r.item.relpath), r.action.split(":", 1)[1]) for r in skipped],
                                 "left_out": left_out[name]}
    except Interrupted as err:
        err.complete = [name for name, _, _ in splits if name in summary]
        raise
    return summary


def interrupted_message(err: Interrupted) -> str:
    done = " and ".join(f"{name}.{{lst,rec,idx}}" for name in err.complete)
    state = f"{done} and classes.txt are complete, nothing else was written" if done else "no output written"
    return f"{PROG}: interrupted ({signal.Signals(err.signum).name}); {state}, temporary files removed"


def label_mapping(classes: Sequence[str], most: int = 8) -> str:
    """``0 <folder>, 1 <folder>, ...`` for the summary: every class up to ``most``, else the first three, ``...``
    and the last two."""
    pairs = [f"{i} {shown(c)}" for i, c in enumerate(classes)]
    return ", ".join(pairs if len(pairs) <= most else pairs[:3] + ["..."] + pairs[-2:])


def print_summary(summary: dict, data_root: Path) -> None:
    for name in ("train", "val"):
        if name not in summary:
            continue
        s = summary[name]
        conv = ", ".join(f"{v} {k}" for k, v in sorted(s["converted"].items())) or "none"
        print(f"{name}: {s['records']} records in {shown(data_root / name)}.rec "
              f"({s['copied']} JPEGs copied as they are; converted to RGB JPEG q{JPEG_QUALITY}: {conv})")
        for entries, what in ((s["skipped"], "corrupt, unreadable or oversized image(s)"),
                              (s["left_out"], "link(s) or folder(s) of the tree")):
            if entries:
                print(f"{name}: skipped {len(entries)} {what}:")
                for path, why in entries:
                    print(f"  {shown(path)}: {why}")
    classes = summary["classes"]
    print(f"classes: {len(classes)}, labelled by sorted folder name: {label_mapping(classes)} "
          f"(all in {shown(data_root / 'classes.txt')})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit_opencv(args.max_pixels)
    with StopFlag(PROG) as stop:
        try:
            summary = prepare(args.train_dir, args.val_dir, args.data_root, args.num_thread, args.exts, args.shuffle,
                              args.verify, progress=not args.quiet, max_pixels=args.max_pixels, stop=stop)
        except Interrupted as err:
            print(interrupted_message(err), file=sys.stderr)
            return 128 + err.signum
    print_summary(summary, args.data_root)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
