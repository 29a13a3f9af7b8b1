"""MXNet RecordIO (``.rec`` + ``.idx``): the byte format, written and read without MXNet, and the checks that every
run makes before it trusts a pair of files.

The byte format is dmlc-core's ``RecordIOWriter`` as used by ``mx.recordio.MXIndexedRecordIO`` and
``mxnet/tools/im2rec.py``:

* each record is ``magic (0xced7230a, little-endian u32)``, ``lrec (u32: cflag << 29 | length)``, the payload, and
  zero bytes up to a 4-byte boundary;
* a payload that contains the magic word at a 4-byte-aligned offset is split there into parts with cflag 1 (first),
  2 (middle) and 3 (last), the magic word itself being dropped (readers put it back);
* the payload of an image record is ``IRHeader`` (``<IfQQ``: flag, label, id, id2) followed by the image bytes;
* the ``.idx`` file has one ``key\\toffset`` line per record, in file order.

``scan`` checks a pair entry by entry: every index entry must point at a record header, each record must end where
the next entry starts (the last one at the end of the file), every record must carry one integer label in
``[0, num_classes)`` and start with the signature of an image format the decoders read; ``headers=True`` also parses
every JPEG's markers up to the start of its scan (what a decoder needs before it can produce any pixel; a record that
fails there is what kills MXNet's ``ImageRecordIter`` with SIGFPE), and ``decode=True`` decodes every image
strictly (``DecodeChecker``: a JPEG without its end marker, or one whose decoder reports corrupt data, fails). The
first checks read 40 bytes per record through a memory map, vectorized (65536 records at a time): 2.3-3.5 s for
ImageNet's 1.28 million records once they are in the page cache (2 cores of an AMD EPYC), about 15 s with the JPEG
headers.

``DecodeChecker`` is the one decode check of the toolkit: ``tools/check_rec.py --decode`` and
``tools/prepare_dataset.py --verify`` both use it, so they pass and fail the same images with the same words.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import mmap
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC_MAX = (1 << 29) - 1
_IR_HEADER = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR_HEADER.size  # 24


def pack_image_record(label: float, key: int, image: bytes) -> bytes:
    """Payload of one image record: the IRHeader of ``mx.recordio.pack`` (flag 0, one float label) + the bytes."""
    return _IR_HEADER.pack(0, float(label), int(key), 0) + image


def unpack_image_record(payload: bytes) -> tuple[float, int, bytes]:
    """Inverse of ``pack_image_record`` for single-label records: (label, key, image bytes)."""
    if len(payload) < IR_HEADER_SIZE:
        raise ValueError(f"record of {len(payload)} bytes is shorter than its {IR_HEADER_SIZE}-byte header")
    flag, label, key, _ = _IR_HEADER.unpack_from(payload)
    if flag != 0:
        raise ValueError(f"record {key} has {flag} labels; only single-label records are supported")
    return label, key, payload[IR_HEADER_SIZE:]


def encode_record(payload: bytes) -> bytes:
    """The bytes dmlc-core writes for ``payload`` (split at aligned magic words, padded to 4 bytes)."""
    n = len(payload)
    if n > _LREC_MAX:
        raise ValueError(f"record of {n} bytes is larger than RecordIO's limit of {_LREC_MAX}")
    parts = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0 and pos + 4 <= (n >> 2) << 2:
            parts.append((1 if start == 0 else 2, payload[start:pos]))
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    parts.append((3 if start else 0, payload[start:]))
    out = bytearray()
    for cflag, chunk in parts:
        out += _MAGIC_BYTES
        out += struct.pack("<I", (cflag << 29) | len(chunk))
        out += chunk
    out += b"\0" * (-n % 4)
    return bytes(out)


class IndexedRecordWriter:
    """Append records to an open ``.rec`` stream and remember ``key -> offset`` for the ``.idx`` file."""

    def __init__(self, rec: BinaryIO):
        self._rec = rec
        self.index: list[tuple[int, int]] = []

    def write(self, key: int, payload: bytes) -> None:
        self.index.append((key, self._rec.tell()))
        self._rec.write(encode_record(payload))

    def write_index(self, idx: BinaryIO) -> None:
        idx.write("".join(f"{k}\t{off}\n" for k, off in self.index).encode())


def read_record_at(rec: BinaryIO, offset: int) -> tuple[bytes, int]:
    """Read the record that starts at ``offset``: (payload, offset just past it). Raises ValueError if malformed."""
    rec.seek(offset)
    payload = bytearray()
    first = True
    while True:
        at = rec.tell()
        head = rec.read(8)
        if len(head) != 8:
            raise ValueError(f"the file ends inside the record header at byte {at}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise ValueError(f"no RecordIO magic at byte {at}")
        cflag, length = lrec >> 29, lrec & _LREC_MAX
        if cflag not in ((0, 1) if first else (2, 3)):
            raise ValueError(f"byte {at} starts {'the middle of a split record' if first else 'a new record'} "
                             "(RecordIO continuation flag {cflag})")
        chunk = rec.read(length)
        if len(chunk) != length:
            raise ValueError(f"the file ends inside the record at byte {offset}")
        payload += chunk
        if cflag in (0, 3):
            rec.read(-length % 4)
            return bytes(payload), rec.tell()
        payload += _MAGIC_BYTES  # a split point: the writer dropped the magic word here
        if length % 4:
            raise ValueError(f"record part at byte {at} is not 4-byte aligned")
        first = False


def read_label_at(rec: BinaryIO, offset: int) -> float:
    """The label of the image record at ``offset``, from its IRHeader alone (the image is not read): for a pair that
    ``scan`` has checked."""
    rec.seek(offset + 8)
    return _IR_HEADER.unpack(rec.read(IR_HEADER_SIZE))[1]


def read_index(idx_path: os.PathLike | str) -> list[tuple[int, int]]:
    """Parse an ``.idx`` file into (key, offset) pairs in file order. Raises ValueError on a malformed line."""
    keys, offsets = _parse_index(Path(idx_path).read_bytes())
    return list(zip(keys.tolist(), offsets.tolist()))


def _parse_index(text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of an ``.idx`` file's text; ValueError naming the first bad line."""
    lines = text.splitlines()
    tokens = text.split()
    if len(tokens) == 2 * (len(lines) - lines.count(b"")):  # a whitespace-only line takes the slow path below
        try:
            values = np.array(tokens, dtype=np.int64).reshape(-1, 2)  # numpy parses the digits itself
            if (values >= 0).all():
                return values[:, 0], values[:, 1]
        except (ValueError, OverflowError):
            pass
    for lineno, line in enumerate(lines, 1):  # something is wrong: find the first bad line
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            shown = line[:60].decode("utf-8", "replace")
            raise ValueError(f"line {lineno} is not 'key<TAB>offset' (it reads '{shown}')")
    raise ValueError("unreadable index")


# --------------------------------------------------------------------------------------------------------------------
# What kind of image is this? (signatures and JPEG header parsing: no decoding)

# The formats both DALI and OpenCV (MXNet's ImageRecordIter) decode, by their leading bytes.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"))


def image_format(head: bytes) -> str | None:
    """The image format ``head`` (the first 12 or more bytes of a file) starts like, or None."""
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "PNM"
    return None


_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; C4/C8/CC are DHT, JPG, DAC


@dataclass(frozen=True)
class JpegInfo:
    components: int  # 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
    height: int
    width: int


_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and RSTn: markers without a length


def jpeg_info(data: bytes, need_scan: bool = True) -> JpegInfo:
    """Parse a JPEG's markers from SOI up to the start of the scan (or, without ``need_scan``, up to the frame
    header): component count and size. Raises ValueError naming what is wrong (a decoder would fail there too).
    Corrupt entropy-coded data and a missing end marker are not detected here: decoders tolerate both."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    i, n = 2, len(data)
    info = None
    while True:
        if i + 4 > n:
            raise ValueError(f"corrupt JPEG (the headers end at byte {n} before the "
                             f"{'frame header' if info is None else 'scan'})")
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG (expected a marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker == 0xD8 or marker == 0xD9:
            raise ValueError(f"corrupt JPEG ({'a second SOI' if marker == 0xD8 else 'end of image'} marker at "
                             f"byte {i} before the {'frame header' if info is None else 'scan'})")
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            raise ValueError(f"corrupt JPEG (marker segment of length {length} at byte {i})")
        if marker in _SOF_MARKERS:
            if i + 10 > n or length < 8:
                raise ValueError("corrupt JPEG (frame header cut short)")
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            comps = data[i + 9]
            if width == 0 or height == 0 or comps not in (1, 3, 4):
                raise ValueError(f"corrupt JPEG (frame header says {width}x{height} px, {comps} components)")
            info = JpegInfo(comps, height, width)
            if not need_scan:
                return info
        elif marker == 0xDA:  # start of scan
            if info is None:
                raise ValueError("corrupt JPEG (scan before any frame header)")
            return info
        i += 2 + length


def png_info(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk; ValueError if there is none."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("corrupt PNG (no IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ValueError(f"corrupt PNG (IHDR says {width}x{height} px)")
    return height, width


# --------------------------------------------------------------------------------------------------------------------
# Decoding strictly: what the decoder says about the entropy-coded data

JPEG_END_WINDOW = 4096  # the end marker must lie in a JPEG's last 4 KiB (a few bytes may trail it, as in ImageNet)
# libjpeg's warnings about the data itself (jerror.h): it prints one to stderr, pads what it could not decode with
# gray or leftovers, and returns an image, so OpenCV's ``imdecode`` succeeds on such a file.
_CORRUPT_DATA = (b"Corrupt JPEG data", b"Premature end of JPEG file")


def jpeg_end_problem(data: bytes) -> str | None:
    """Why a JPEG looks cut short (no EOI marker near its end), or None. Decoders pad a truncated scan with gray and
    OpenCV's decoder says nothing about it, so this is checked from the bytes."""
    if b"\xff\xd9" not in data[-JPEG_END_WINDOW:]:
        return "truncated JPEG (no EOI marker at the end)"
    return None


def _decode_problem(image: bytes) -> str | None:
    """Why ``image`` does not decode cleanly, or None. For a JPEG: no end marker (``jpeg_end_problem``), any of the
    decoder's messages about corrupt or truncated data, or no image at all; it decodes at 1/8 scale, which runs the
    whole entropy decoder (where such data is found) and skips most of the inverse DCT. Other formats: whether OpenCV
    decodes them. The messages are read back from fd 2, so this runs only in a ``DecodeChecker`` worker."""
    import cv2

    kind = image_format(image[:12]) or "image"
    if kind == "JPEG" and (truncated := jpeg_end_problem(image)):
        return truncated
    os.lseek(2, 0, os.SEEK_SET)
    os.ftruncate(2, 0)
    try:
        img = cv2.imdecode(np.frombuffer(image, np.uint8),
                           cv2.IMREAD_REDUCED_COLOR_8 if kind == "JPEG" else cv2.IMREAD_COLOR)
    except cv2.error:
        img = None
    if img is None or not img.size:
        return f"corrupt {kind} (does not decode)"
    if kind == "JPEG":
        for line in os.pread(2, os.fstat(2).st_size, 0).splitlines():
            if line.startswith(_CORRUPT_DATA):
                return f"corrupt JPEG (the decoder says: {line.decode('ascii', 'replace').strip()})"
    return None


def _serve() -> None:
    """A ``DecodeChecker`` worker: reads images (8-byte length, bytes) from stdin and answers each with a 4-byte
    length and ``_decode_problem``'s text (empty: the image is fine). Its stdout and stderr go to a temporary file,
    so the decoder's messages can be read back and nothing else can reach the answers."""
    import cv2  # noqa: F401 - before the first answer, so a worker that cannot decode fails at its start

    answers = os.fdopen(os.dup(1), "wb")
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    answers.write(b"ready\n")
    answers.flush()
    images = sys.stdin.buffer
    while len(head := images.read(8)) == 8:
        answer = (_decode_problem(images.read(struct.unpack("<Q", head)[0])) or "").encode()
        answers.write(struct.pack("<I", len(answer)) + answer)
        answers.flush()


class _WorkerDied(Exception):
    pass


class _Worker:
    """One ``_serve`` process (in a session of its own: Ctrl-C goes to the tool, which ends its workers). Start
    several at once, then ``wait_ready`` for each."""

    def __init__(self):
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import recfile; " \
               "recfile._serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)

    def wait_ready(self) -> "_Worker":
        if self.proc.stdout.readline() != b"ready\n":
            said = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            self.close()
            raise RuntimeError("the decode check's worker process did not start: "
                               f"{said[-1] if said else f'exit status {self.proc.returncode}'}")
        self.proc.stderr.close()
        return self

    def ask(self, image: bytes) -> str | None:
        try:
            self.proc.stdin.write(struct.pack("<Q", len(image)))
            self.proc.stdin.write(image)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(4)
            if len(head) == 4:
                n = struct.unpack("<I", head)[0]
                answer = self.proc.stdout.read(n)
                if len(answer) == n:
                    return answer.decode() or None
        except OSError:  # a broken pipe: it died
            pass
        raise _WorkerDied

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # it ends at the end of its input
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()


class DecodeChecker:
    """Strict decoding (``_decode_problem``) in ``workers`` processes, each with its stderr captured: OpenCV prints
    the decoder's messages about corrupt data and returns an image, stderr is one per process, and no API returns
    them, so a process of its own is the one way to know which image each message is about. ``check(image)`` returns
    None or one line saying what is wrong, and may be called from many threads at once (each waits for a free
    worker). The workers start together, in about the time of one (0.1-0.3 s: Python, numpy, OpenCV; about 50 MB
    each); RuntimeError if they cannot. A worker that dies (a crash, the OOM killer) is replaced and the image tried
    once more, then reported. Close it, or use it as a context manager."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = [_Worker() for _ in range(self.workers)]
        try:
            for worker in self._running:
                self._idle.put(worker.wait_ready())
        except BaseException:
            self.close()
            raise

    def _take(self) -> _Worker:
        while True:
            with contextlib.suppress(queue.Empty):
                return self._idle.get(timeout=1)
            with self._lock:
                if not self._running:
                    raise RuntimeError("the decode check has no worker process left")

    def _replace(self, worker: _Worker) -> None:
        """Start a worker in place of one that died (none, if it cannot start: RuntimeError)."""
        worker.close()
        with self._lock:
            self._running.remove(worker)
        new = _Worker()
        with self._lock:
            self._running.append(new)
        try:
            self._idle.put(new.wait_ready())
        except BaseException:
            with self._lock:
                self._running.remove(new)
            raise

    def check(self, image: bytes) -> str | None:
        image = bytes(image)
        for _ in range(2):
            worker = self._take()
            try:
                answer = worker.ask(image)
            except _WorkerDied:
                self._replace(worker)
                continue
            self._idle.put(worker)
            return answer
        return "the decoding process died on it (a crash, or out of memory)"

    def close(self) -> None:
        with self._lock:
            running, self._running = self._running, []
        for worker in running:
            worker.close()

    def __enter__(self) -> "DecodeChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------------
# Checking a .rec/.idx pair


@dataclass(frozen=True)
class Problem:
    """One bad entry: its position in the ``.idx`` (0-based record number), key, byte offset, and what is wrong.
    ``kind`` is ``index`` (the entry does not point at a record), ``label`` or ``image``."""
    record: int
    key: int
    offset: int
    kind: str
    what: str

    def __str__(self) -> str:
        return f"record {self.record} (key {self.key}, byte {self.offset}): {self.what}"


@dataclass
class ScanReport:
    records: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first ``max_problems``
    counts: dict = field(default_factory=dict)  # kind -> number of problems of that kind
    labels: tuple[float, float] | None = None  # smallest and largest label

    @property
    def ok(self) -> bool:
        return not self.counts

    def first(self, kind: str) -> Problem | None:
        return next((p for p in self.problems if p.kind == kind), None)


def scan(rec_path: os.PathLike | str, idx_path: os.PathLike | str, *, num_classes: int | None = None,
         headers: bool = False, decode: bool = False, max_problems: int = 1000,
         progress: Callable[[int], None] | None = None, workers: int = 1) -> ScanReport:
    """Check every entry of ``idx_path`` against ``rec_path`` (see the module docstring); ``decode`` runs
    ``DecodeChecker`` with ``workers`` processes. An unreadable or malformed index raises ValueError; everything found
    in the records is listed in the report, step by step: the index entries (``_check_index``), the records in one
    part (``_check_single``), the split ones (``_check_split``), then the images of the records in one part."""
    keys, offsets = _parse_index(Path(idx_path).read_bytes())
    if progress is not None:
        progress(0)
    out = ScanReport(records=len(keys))
    if not len(keys):
        raise ValueError("the index is empty")
    size = os.path.getsize(rec_path)
    if size == 0:
        raise ValueError("the .rec file is empty")

    def add(i: int, kind: str, what: str) -> None:
        out.counts[kind] = out.counts.get(kind, 0) + 1
        if len(out.problems) < max_problems:
            out.problems.append(Problem(int(i), int(keys[i]), int(offsets[i]), kind, what))

    with open(rec_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        heads = _Heads.read(mm, offsets, size)
        one_part, split = _check_index(heads, add)
        single, images = _check_single(heads, one_part, num_classes, add)
        with open(rec_path, "rb") as rf, _Decoding(decode, workers, add) as decoding:
            split_labels = _check_split(rf, heads, split, num_classes, headers, decoding, add)
            # without a deeper check a JPEG's image is done: its signature came with its head
            todo = np.flatnonzero(images if headers or decode else images & ~heads.jpeg)
            _check_images(mm, heads, todo, headers, decode, decoding, progress)
    values = np.concatenate([heads.label[single], np.array(split_labels, np.float32)])
    if len(values):
        out.labels = (float(values.min()), float(values.max()))
    return out


_HEAD_BYTES = np.arange(40)  # of a record: its header (8), the IRHeader (24), the image's first 8 bytes
_HEAD_CHUNK = 1 << 16  # records per vectorized read (the gather's index array: 21 MB)


@dataclass(frozen=True)
class _Heads:
    """The head of every record, one array per field, read through the memory map ``_HEAD_CHUNK`` records at a
    time (zeros for an entry that does not lie in the file or does not come after the one before it)."""
    offsets: np.ndarray  # of each entry
    ends: np.ndarray  # where each record must end: the next entry, or the end of the file
    size: int  # of the .rec
    order_bad: np.ndarray  # the entry does not come after the one before it
    inside: np.ndarray  # the entry's record header lies in the file (and its order is right)
    magic: np.ndarray
    cflag: np.ndarray
    length: np.ndarray  # of the first part (int64)
    whole_end: np.ndarray  # where the record ends if it is in one part
    flag: np.ndarray  # IRHeader: 0 for a single label, in ``label``
    label: np.ndarray
    jpeg: np.ndarray  # the image starts with a JPEG's signature

    @classmethod
    def read(cls, mm: mmap.mmap, offsets: np.ndarray, size: int) -> "_Heads":
        n = len(offsets)
        order_bad = np.zeros(n, bool)
        order_bad[1:] = offsets[1:] <= offsets[:-1]
        inside = (offsets + 8 <= size) & ~order_bad
        words = np.zeros((n, 4), "<u4")  # magic, lrec, flag, the label's bits
        jpeg = np.zeros(n, bool)
        buf = np.frombuffer(mm, dtype=np.uint8)
        try:
            rows = np.flatnonzero(inside)
            for start in range(0, len(rows), _HEAD_CHUNK):
                at = rows[start:start + _HEAD_CHUNK]
                head = buf[np.minimum(offsets[at, None] + _HEAD_BYTES, size - 1)]
                words[at] = head[:, :16].copy().view("<u4")
                jpeg[at] = (head[:, 32] == 0xFF) & (head[:, 33] == 0xD8) & (head[:, 34] == 0xFF)
        finally:
            del buf  # the memory map cannot close while an array holds it
        length = (words[:, 1] & _LREC_MAX).astype(np.int64)
        return cls(offsets, np.append(offsets[1:], size), size, order_bad, inside, words[:, 0], words[:, 1] >> 29,
                   length, offsets + 8 + length + (-length % 4), words[:, 2], words[:, 3].view("<f4"), jpeg)


def _check_index(h: _Heads, add) -> tuple[np.ndarray, np.ndarray]:
    """``index`` problems, from the heads alone: entries that do not point at a record ending where the next entry
    starts. Returns (mask of the records in one part that end right, numbers of the split records to follow)."""
    one_part = np.ones(len(h.offsets), bool)
    split = []
    for i in np.flatnonzero(~h.inside | (h.magic != MAGIC) | (h.cflag != 0) | (h.whole_end != h.ends)):
        one_part[i] = False
        what = _index_problem(h, i)
        if what is None:
            split.append(i)
        else:
            add(i, "index", what)
    return one_part, np.array(split, np.int64)


def _index_problem(h: _Heads, i: int) -> str | None:
    """What is wrong with entry ``i`` by its head, or None: it starts a split record."""
    if h.order_bad[i]:
        return f"its offset is not after the previous entry's ({h.offsets[i - 1]}); the .idx must list records in " \
               "file order"
    if not h.inside[i]:
        return f"offset {h.offsets[i]} is past the end of the .rec ({h.size} bytes)"
    if h.magic[i] != MAGIC:
        return "no record starts there (no RecordIO magic)"
    if h.cflag[i] in (2, 3):
        return "it points into the middle of a split record"
    if h.cflag[i] == 1:
        return None
    if h.whole_end[i] > h.size:
        return f"the record runs past the end of the .rec ({h.whole_end[i]} > {h.size} bytes)"
    return f"the record ends at byte {h.whole_end[i]}, but the next entry starts at {h.ends[i]}"


def _check_single(h: _Heads, one_part: np.ndarray, num_classes: int | None, add) -> tuple[np.ndarray, np.ndarray]:
    """Records in one part, vectorized: too short for their IRHeader, label problems, no image bytes. Returns the
    masks (records whose label was read, records with image bytes)."""
    short = one_part & (h.length < IR_HEADER_SIZE)
    for i in np.flatnonzero(short):
        add(i, "image", f"the record has {h.length[i]} bytes, fewer than its {IR_HEADER_SIZE}-byte header")
    single = one_part & ~short
    _check_labels(single, h.flag, h.label, num_classes, add)
    empty = single & (h.length == IR_HEADER_SIZE)
    for i in np.flatnonzero(empty):
        add(i, "image", "the record holds no image bytes")
    return single, single & ~empty


def _check_split(rf: BinaryIO, h: _Heads, split: np.ndarray, num_classes: int | None, headers: bool,
                 decoding: "_Decoding", add) -> list[float]:
    """Split records, followed part by part: where each ends, its label and its image. Returns the labels read."""
    labels = []
    for i in split:
        try:
            payload, end = read_record_at(rf, int(h.offsets[i]))
        except ValueError as err:
            add(i, "index", str(err))
            continue
        if end != h.ends[i]:
            add(i, "index", f"the record ends at byte {end}, but the next entry starts at {h.ends[i]}")
            continue
        if len(payload) < IR_HEADER_SIZE:
            add(i, "image", f"the record has {len(payload)} bytes, fewer than its header")
            continue
        flag, label, _, _ = _IR_HEADER.unpack_from(payload)
        labels.append(label)
        if (what := _label_problem(flag, label, num_classes)) is not None:
            add(i, "label", what)
        decoding.put(i, payload[IR_HEADER_SIZE:], headers)
    return labels


def _check_images(mm: mmap.mmap, h: _Heads, todo: np.ndarray, headers: bool, decode: bool, decoding: "_Decoding",
                  progress: Callable[[int], None] | None) -> None:
    """The images of the records ``todo`` (in one part): all their bytes when decoding, else the first 12 (4 KiB
    with ``headers``: a JPEG's headers are a few hundred bytes, more with EXIF or ICC data; the rest if needed)."""
    for done, i in enumerate(todo):
        start = int(h.offsets[i]) + 8 + IR_HEADER_SIZE
        stop = start + int(h.length[i]) - IR_HEADER_SIZE
        limit = stop if decode else min(stop, start + (4096 if headers else 12))
        decoding.put(i, mm[start:limit], headers, whole=None if limit == stop else lambda a=start, b=stop: mm[a:b])
        if progress is not None and done % 4096 == 0:
            progress(done)


def _check_labels(mask, flag, label, num_classes, add) -> None:
    """The label problems of the records in ``mask``, found vectorized (a loop only over the bad ones) and listed
    kind by kind."""
    multi = mask & (flag != 0)
    with np.errstate(invalid="ignore"):
        not_class = mask & ~multi & (~np.isfinite(label) | (label != np.round(label)))
        outside = mask & ~multi & ~not_class & (label < 0)
        if num_classes is not None:
            outside |= mask & ~multi & ~not_class & (label >= num_classes)
    for bad in (multi, not_class, outside):
        for i in np.flatnonzero(bad):
            add(i, "label", _label_problem(flag[i], label[i], num_classes))


def _label_problem(flag: int, label: float, num_classes: int | None) -> str | None:
    """What is wrong with one record's IRHeader ``flag`` (its number of labels) and ``label``, or None."""
    if flag != 0:
        return f"it has {int(flag)} labels; the toolkit reads single-label records"
    if not float(label).is_integer():
        return f"label {float(label)!r} is not a class number"
    if label < 0 or (num_classes is not None and label >= num_classes):
        return f"label {int(label)} is outside [0, {num_classes})" if num_classes is not None \
            else f"label {int(label)} is negative"
    return None


def _image_problem(image: bytes, headers: bool, whole=None) -> str | None:
    """What is wrong with one record's image bytes before any decoding (``image``: all of them, or the first ones
    with ``whole()`` giving all), or None."""
    kind = image_format(image[:12])
    if kind is None:
        return f"not an image (it starts with bytes {image[:8].hex(' ')})"
    try:
        if headers and kind == "JPEG":
            try:
                jpeg_info(image)
            except ValueError as err:
                if whole is None or "headers end" not in str(err):
                    raise
                jpeg_info(bytes(whole()))  # long APP segments (EXIF, ICC): parse the whole record
        elif headers and kind == "PNG":
            png_info(image)
    except ValueError as err:
        return str(err)
    return None


class _Decoding:
    """The image checks of ``scan``: the header checks at once, the decode checks (with ``decode``) in a
    ``DecodeChecker`` while the scan reads on; problems are added in record order."""

    def __init__(self, decode: bool, workers: int, add):
        self._add = add
        self._pending: collections.deque = collections.deque()  # (record, problem or Future of one)
        self._checker = DecodeChecker(workers) if decode else None
        self._threads = cf.ThreadPoolExecutor(self._checker.workers) if decode else None
        self._window = 4 * self._checker.workers if decode else 0

    def put(self, i: int, image, headers: bool, whole=None) -> None:
        """Check record ``i``'s image (all its bytes when decoding)."""
        image = bytes(image)
        problem = _image_problem(image, headers, whole)
        if self._checker is None:
            if problem:
                self._add(i, "image", problem)
            return
        self._pending.append((i, problem or self._threads.submit(self._checker.check, image)))
        self._settle(self._window)

    def _settle(self, keep: int) -> None:
        while len(self._pending) > keep:
            i, problem = self._pending.popleft()
            if isinstance(problem, cf.Future):
                problem = problem.result()
            if problem:
                self._add(i, "image", problem)

    def __enter__(self) -> "_Decoding":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self._settle(0)
        finally:
            if self._checker is not None:
                self._threads.shutdown(wait=True, cancel_futures=True)
                self._checker.close()


def write_good(rec_path: os.PathLike | str, idx_path: os.PathLike | str, bad: set[int], out_rec: Path,
               out_idx: Path) -> int:
    """Copy every record of ``rec_path`` whose number (position in ``idx_path``) is not in ``bad`` to ``out_rec``
    / ``out_idx`` (written by the caller's atomic paths). Returns the number of records written."""
    pairs = read_index(idx_path)
    written = 0
    with open(rec_path, "rb") as rec, open(out_rec, "wb") as o:
        w = IndexedRecordWriter(o)
        for i, (key, off) in enumerate(pairs):
            if i in bad:
                continue
            payload, _ = read_record_at(rec, off)
            w.write(key, payload)
            written += 1
        with open(out_idx, "wb") as idx:
            w.write_index(idx)
    return written
