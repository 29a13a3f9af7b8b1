"""RecordIO checks (in process): every index entry, every label, every record's image signature and JPEG headers, the
strict decode (truncated and corrupt scans, and no valid image refused), the checker command, and the start-up
check's one-line errors."""
from __future__ import annotations

import struct

import numpy as np
import pytest

import data
import recfile
from common import UsageError
from conftest import copy_set
from tools import check_rec


def scan(root, split="train", **kw):
    return recfile.scan(root / f"{split}.rec", root / f"{split}.idx", **kw)


def test_a_good_set_passes_every_check(demo_root):
    for split, n in (("train", 1437), ("val", 360)):
        r = scan(demo_root, split, num_classes=10, headers=True)
        assert r.ok and r.records == n and r.labels == (0.0, 9.0)
    assert scan(demo_root, "val", decode=True).ok


@pytest.mark.parametrize("fault,headers_only,what", [
    ("garbage", False, "not an image (it starts with bytes"),
    ("text", False, "not an image (it starts with bytes 74 68 69 73"),
    ("empty", False, "the record holds no image bytes"),
    ("bad-header", True, "corrupt JPEG (frame header says 0x0 px, 3 components)"),
])
def test_records_that_are_not_readable_images(demo_root, tmp_path, fault, headers_only, what):
    root = copy_set(demo_root, tmp_path / fault, fault)
    key = recfile.read_index(root / "train.idx")[5][0]
    assert scan(root).ok == headers_only  # a JPEG with a broken header still starts like one
    r = scan(root, headers=True)
    assert r.counts == {"image": 1}
    p = r.problems[0]
    assert (p.record, p.key, p.kind) == (5, key, "image") and what in p.what
    assert str(p).startswith(f"record 5 (key {key}, byte {p.offset}): ")


@pytest.mark.parametrize("fault,what", [("label-1", "label -1 is outside [0, 10)"),
                                        ("label-high", "label 1000 is outside [0, 10)")])
def test_labels_outside_the_classes(demo_root, tmp_path, fault, what):
    root = copy_set(demo_root, tmp_path / fault, fault)
    r = scan(root, num_classes=10)
    assert r.counts == {"label": 1} and r.problems[0].record == 5 and r.problems[0].what == what
    assert scan(root).ok == (fault == "label-high")  # without --num-classes only negative labels are wrong
    with pytest.raises(UsageError, match=r"^--num-classes 10: the train set .* has labels outside \[0, 10\): "
                                         r"record 5 .*its labels run from"):
        data.check_record_files(data.DataConfig(data_train=root / "train.rec", data_train_idx=root / "train.idx",
                                                num_classes=10, data_backend="dali-cpu"), want_val=False)


def test_a_label_that_is_not_a_class_number(demo_root, tmp_path):
    root = copy_set(demo_root, tmp_path / "x")
    rec = bytearray((root / "train.rec").read_bytes())
    off = recfile.read_index(root / "train.idx")[7][1]
    struct.pack_into("<f", rec, off + 12, 2.5)  # the IRHeader's label
    (root / "train.rec").write_bytes(bytes(rec))
    assert [p.what for p in scan(root).problems] == ["label 2.5 is not a class number"]


def _edit_index(root, fn):
    pairs = recfile.read_index(root / "train.idx")
    pairs = fn(pairs)
    (root / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in pairs))


@pytest.mark.parametrize("case,record,what", [
    ("shifted", 700, "no record starts there (no RecordIO magic)"),
    ("swapped", 901, "its offset is not after the previous entry's"),
    ("past-end", 1436, "is past the end of the .rec"),
    ("dropped", 299, "the record ends at byte"),
])
def test_a_wrong_offset_anywhere_in_the_index(demo_root, tmp_path, case, record, what):
    """The old start-up check sampled 64 entries; one wrong entry in the middle went through."""
    root = copy_set(demo_root, tmp_path / case)

    def edit(pairs):
        if case == "shifted":
            pairs[700] = (pairs[700][0], pairs[700][1] + 4)
        elif case == "swapped":
            pairs[900], pairs[901] = pairs[901], pairs[900]
        elif case == "past-end":
            pairs[-1] = (pairs[-1][0], 10 ** 9)
        else:
            del pairs[300]
        return pairs

    _edit_index(root, edit)
    r = scan(root)
    assert {p.kind for p in r.problems} == {"index"} and any(p.record == record and what in p.what
                                                             for p in r.problems), r.problems
    first = r.problems[0].record  # a wrong entry also makes the record before it end in the wrong place
    assert record - 2 <= first <= record
    with pytest.raises(UsageError, match=rf"^the train index .*train.idx does not match .*train.rec: record {first} "):
        data.check_record_files(data.DataConfig(data_train=root / "train.rec", data_train_idx=root / "train.idx",
                                                num_classes=10, data_backend="mxnet"), want_val=False)


def test_a_truncated_or_appended_rec(demo_root, tmp_path):
    root = copy_set(demo_root, tmp_path / "t")
    rec = (root / "train.rec").read_bytes()
    (root / "train.rec").write_bytes(rec[:-100])
    assert [p.record for p in scan(root).problems] == [1436]
    (root / "train.rec").write_bytes(rec + b"\0" * 8)
    assert "the next entry starts at" in scan(root).problems[0].what


def test_records_split_at_a_magic_word_are_followed(tmp_path):
    """dmlc splits a payload at every aligned magic word; the scan follows the parts."""
    magic = struct.pack("<I", recfile.MAGIC)
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 12 + magic + b"\xff\xd9" * 6
    with open(tmp_path / "s.rec", "wb") as f:
        w = recfile.IndexedRecordWriter(f)
        for i in range(3):
            w.write(i, recfile.pack_image_record(i, i, jpeg))
    with open(tmp_path / "s.idx", "wb") as f:
        w.write_index(f)
    assert recfile.encode_record(recfile.pack_image_record(0, 0, jpeg)).count(magic) == 2  # really split
    r = recfile.scan(tmp_path / "s.rec", tmp_path / "s.idx", num_classes=3)
    assert r.ok and r.records == 3 and r.labels == (0.0, 2.0)


def test_a_malformed_index_line_is_named(demo_root, tmp_path):
    root = copy_set(demo_root, tmp_path / "m")
    lines = (root / "train.idx").read_text().splitlines()
    lines[41] = "12 not-a-number"
    (root / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 42 is not 'key<TAB>offset'"):
        scan(root)


def test_check_rec_lists_bad_records_and_writes_a_good_copy(demo_root, tmp_path, capsys):
    root = copy_set(demo_root, tmp_path / "bad", "bad-header", split="val")
    assert check_rec.main([str(root / "val.rec"), "--num-classes", "10"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("record 5 (key ") and "corrupt JPEG" in out[0]
    assert out[-1].startswith(f"{root / 'val.rec'}: 360 records, 1 bad (headers checked, labels 0 to 9")
    good = tmp_path / "good" / "val"
    assert check_rec.main([str(root / "val.rec"), "--decode", "--write-good", str(good)]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("wrote 359 good records")
    assert check_rec.main([str(good.with_suffix(".rec")), "--decode"]) == 0
    src = dict(recfile.read_index(root / "val.idx"))
    bad_key = recfile.read_index(root / "val.idx")[5][0]
    copied = recfile.read_index(good.with_suffix(".idx"))
    assert [k for k, _ in copied] == [k for k in src if k != bad_key]
    with open(root / "val.rec", "rb") as a, open(good.with_suffix(".rec"), "rb") as b:
        for k, off in copied[:20]:
            assert recfile.read_record_at(a, src[k])[0] == recfile.read_record_at(b, off)[0]


def test_check_rec_usage_errors(demo_root, tmp_path):
    with pytest.raises(UsageError, match="rec .*nowhere.rec: file not found"):
        check_rec.main([str(tmp_path / "nowhere.rec")])
    with pytest.raises(UsageError, match="--write-good .*: would overwrite the file being checked"):
        check_rec.main([str(demo_root / "val.rec"), "--write-good", str(demo_root / "val")])


def test_image_signatures():
    for head, kind in ((b"\xff\xd8\xff\xe0", "JPEG"), (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "PNG"), (b"BM\0\0", "BMP"),
                       (b"RIFF\0\0\0\0WEBPVP8 ", "WebP"), (b"P6\n640 427", "PNM"), (b"<html>", None)):
        assert recfile.image_format(head) == kind
    info = recfile.jpeg_info(bytes(np.frombuffer(_tiny_jpeg(), np.uint8)))
    assert (info.components, info.height, info.width) == (3, 24, 40)


def _tiny_jpeg() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((24, 40, 3), np.uint8))
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------------------------------------------------
# Strict decoding: the check shared by check_rec.py --decode and prepare_dataset.py --verify

BROKEN = {"cut": "truncated JPEG (no EOI marker at the end)",
          "cut_eoi": "corrupt JPEG (the decoder says: Corrupt JPEG data: premature end of data segment)",
          "flipped": "corrupt JPEG (the decoder says: Corrupt JPEG data: 124 extraneous bytes before marker 0xd9)"}


def write_pair(prefix, images) -> None:
    """``prefix.rec/.idx`` holding ``images`` (label i % 10, key i)."""
    with open(prefix.with_suffix(".rec"), "wb") as f:
        w = recfile.IndexedRecordWriter(f)
        for i, img in enumerate(images):
            w.write(i, recfile.pack_image_record(i % 10, i, img))
    with open(prefix.with_suffix(".idx"), "wb") as f:
        w.write_index(f)


def valid_jpegs(photos) -> dict[str, bytes]:
    """The photographs encoded every way a real data set holds them."""
    import io

    import cv2
    from PIL import Image

    def pil(rgb, mode="RGB", **kw):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, "JPEG", **kw)
        return buf.getvalue()

    out = {}
    for n, rgb in enumerate(photos):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        for q in (50, 75, 90, 100):
            out[f"{n}_q{q}"] = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
        out[f"{n}_restart"] = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes()
        out[f"{n}_progressive"] = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                                             cv2.IMWRITE_JPEG_OPTIMIZE, 1])[1].tobytes()
        out[f"{n}_pil_progressive"] = pil(rgb, progressive=True, quality=85)
        out[f"{n}_444_optimized"] = pil(rgb, subsampling=0, optimize=True, quality=80)
        out[f"{n}_gray"] = pil(rgb, "L", quality=95)
        out[f"{n}_cmyk"] = pil(rgb, "CMYK", quality=95)
        out[f"{n}_odd_size"] = pil(rgb[:333, :501], quality=90)
        out[f"{n}_trailing_bytes"] = out[f"{n}_q90"] + b"\0" * 100  # bytes after the end marker, as in ImageNet
    return out


def test_strict_decode_reports_truncated_and_corrupt_scans(corrupt_jpegs, photos):
    """OpenCV returns an image for each broken copy (padded with gray or noise) and prints a warning at most; the
    check reads the warning, and a missing end marker, and passes every valid encoding of the photographs."""
    import cv2

    for name in BROKEN:
        assert cv2.imdecode(np.frombuffer(corrupt_jpegs[name], np.uint8), cv2.IMREAD_COLOR) is not None
    valid = valid_jpegs(photos)
    with recfile.DecodeChecker(2) as checker:
        assert {name: checker.check(corrupt_jpegs[name]) for name in BROKEN} == BROKEN
        assert {name: checker.check(data) for name, data in valid.items()} == dict.fromkeys(valid)
        assert checker.check(corrupt_jpegs["good"]) is None
        assert checker.check(b"\xff\xd8\xff\xe0" + b"\0" * 20 + b"\xff\xd9") == "corrupt JPEG (does not decode)"


def test_a_worker_that_dies_is_replaced(corrupt_jpegs):
    with recfile.DecodeChecker(1) as checker:
        first = checker._running[0].proc
        first.kill()
        first.wait()
        assert checker.check(corrupt_jpegs["flipped"]) == BROKEN["flipped"]
        assert checker.check(corrupt_jpegs["good"]) is None
        assert [w.proc.pid for w in checker._running] != [first.pid]


def test_check_rec_decode_lists_truncated_and_corrupt_scans(corrupt_jpegs, tmp_path, capsys):
    """The records open, their headers parse and OpenCV decodes them: only the strict decode finds them."""
    images = [corrupt_jpegs["good"], corrupt_jpegs["cut"], corrupt_jpegs["good"], corrupt_jpegs["cut_eoi"],
              corrupt_jpegs["flipped"]]
    write_pair(tmp_path / "x", images)
    assert check_rec.main([str(tmp_path / "x.rec")]) == 0  # headers only
    capsys.readouterr()
    assert check_rec.main([str(tmp_path / "x.rec"), "--decode"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(": ", 1)[1] for ln in lines[:-1]] == [BROKEN["cut"], BROKEN["cut_eoi"], BROKEN["flipped"]]
    assert [ln.split(" (")[0] for ln in lines[:-1]] == ["record 1", "record 3", "record 4"]
    assert lines[-1].startswith(f"{tmp_path / 'x.rec'}: 5 records, 3 bad (every image decoded")


def test_strict_decode_passes_the_digits_and_photographs(demo_root, photos, tmp_path):
    """No valid image is rejected: every digit of the demo set, and the photographs encoded every common way, in
    records read the way check_rec.py reads them."""
    for split in ("train", "val"):
        assert scan(demo_root, split, decode=True, workers=2).ok
    valid = valid_jpegs(photos)
    write_pair(tmp_path / "photos", list(valid.values()))
    r = recfile.scan(tmp_path / "photos.rec", tmp_path / "photos.idx", headers=True, decode=True, workers=2)
    assert r.ok and r.records == len(valid) == 24
