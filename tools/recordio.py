"""MXNet RecordIO, written and checked without importing MXNet.

The byte format is dmlc-core's ``RecordIOWriter`` as used by ``mx.recordio.MXIndexedRecordIO`` and
``mxnet/tools/im2rec.py``:

* each record is ``magic (0xced7230a, little-endian u32)``, ``lrec (u32: cflag << 29 | length)``, the payload, and
  zero bytes up to a 4-byte boundary;
* a payload that contains the magic word at a 4-byte-aligned offset is split there into parts with cflag 1 (first),
  2 (middle) and 3 (last), the magic word itself being dropped (readers put it back);
* the payload of an image record is ``IRHeader`` (``<IfQQ``: flag, label, id, id2) followed by the image bytes;
* the ``.idx`` file has one ``key\\toffset`` line per record, in file order.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC_MAX = (1 << 29) - 1
_IR_HEADER = struct.Struct("<IfQQ")


def pack_image_record(label: float, key: int, image: bytes) -> bytes:
    """Payload of one image record: the IRHeader of ``mx.recordio.pack`` (flag 0, one float label) + the bytes."""
    return _IR_HEADER.pack(0, float(label), int(key), 0) + image


def unpack_image_record(payload: bytes) -> tuple[float, int, bytes]:
    """Inverse of ``pack_image_record`` for single-label records: (label, key, image bytes)."""
    flag, label, key, _ = _IR_HEADER.unpack_from(payload)
    if flag != 0:
        raise ValueError(f"record {key} has {flag} labels; only single-label records are supported")
    return label, key, payload[_IR_HEADER.size:]


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
    while True:
        head = rec.read(8)
        if len(head) != 8:
            raise ValueError(f"truncated record header at byte {rec.tell() - len(head)}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise ValueError(f"no RecordIO magic at byte {rec.tell() - 8}")
        cflag, length = lrec >> 29, lrec & _LREC_MAX
        chunk = rec.read(length)
        if len(chunk) != length:
            raise ValueError(f"record at byte {offset} is cut short")
        payload += chunk
        if cflag in (0, 3):
            rec.read(-length % 4)
            return bytes(payload), rec.tell()
        payload += _MAGIC_BYTES  # a split point: the writer dropped the magic word here
        if length % 4:
            raise ValueError(f"record part at byte {offset} is not 4-byte aligned")


def read_index(idx_path: os.PathLike | str) -> list[tuple[int, int]]:
    """Parse an ``.idx`` file into (key, offset) pairs in file order. Raises ValueError on a malformed line."""
    pairs = []
    with open(idx_path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"line {lineno} is not 'key<TAB>offset'")
            pairs.append((int(fields[0]), int(fields[1])))
    return pairs


def check_index_matches(rec_path: os.PathLike | str, idx_path: os.PathLike | str, samples: int = 64) -> int:
    """Check that ``idx_path`` indexes ``rec_path``; return the number of records.

    Offsets must be distinct, start at 0 and stay inside the file, records at up to ``samples`` evenly spaced
    entries (first and last included) must parse, and the last record must end exactly at the end of the ``.rec`` (a truncated or
    appended-to file fails). Raises ValueError with the reason.
    """
    pairs = read_index(idx_path)
    if not pairs:
        raise ValueError("the index is empty")
    size = Path(rec_path).stat().st_size
    offsets = sorted(off for _, off in pairs)
    if any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[0] != 0 or offsets[-1] >= size:
        raise ValueError("its offsets do not fit the .rec (repeated, not starting at 0, or past the end of the file)")
    step = max(1, len(pairs) // max(1, samples - 1))
    picks = sorted(set(range(0, len(pairs), step)) | {len(pairs) - 1})
    with open(rec_path, "rb") as rec:
        for i in picks:
            _, end = read_record_at(rec, offsets[i])
            nxt = offsets[i + 1] if i + 1 < len(offsets) else size
            if end != nxt:
                raise ValueError(f"the record at byte {offsets[i]} ends at byte {end}, the next one starts at {nxt}")
    return len(pairs)
