"""Stage-1 preparation: pass-through, conversions, labels, skipping, atomic outputs, im2rec interoperability."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from conftest import PY, ROOT, run
from tools import prepare_dataset, recordio

PREPARE = ROOT / "tools" / "prepare_dataset.py"
IM2REC = Path(mx.__file__).parent / "tools" / "im2rec.py"


def read_all(prefix: Path) -> dict:
    """key -> (label, image bytes) through MXNet's own MXIndexedRecordIO."""
    rec = mx.recordio.MXIndexedRecordIO(str(prefix.with_suffix(".idx")), str(prefix.with_suffix(".rec")), "r")
    out = {}
    for k in rec.keys:
        header, img = mx.recordio.unpack(rec.read_idx(k))
        out[k] = (header.label, img)
    rec.close()
    return out


def lst_rows(path: Path) -> list[tuple[int, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        key, label, rel = line.split("\t")
        rows.append((int(key), float(label), rel))
    return rows


@pytest.fixture(scope="module")
def prepared(mixed_tree, tmp_path_factory):
    root, src = mixed_tree
    out = tmp_path_factory.mktemp("prepared")
    res = run([PY, PREPARE, "--train-dir", root / "train", "--val-dir", root / "val", "--data-root", out,
               "--num-thread", "3"], check=True)
    return root, src, out, res


def test_outputs_and_classes(prepared):
    _, _, out, _ = prepared
    for split in ("train", "val"):
        for ext in ("lst", "rec", "idx"):
            assert (out / f"{split}.{ext}").is_file()
    assert (out / "classes.txt").read_text() == "0\tchina\n1\tflower\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_records_are_rgb_jpegs_with_right_labels(prepared):
    root, src, out, _ = prepared
    for split in ("train", "val"):
        records = read_all(out / split)
        rows = lst_rows(out / f"{split}.lst")
        assert sorted(k for k, _, _ in rows) == sorted(records)
        for key, label, rel in rows:
            rec_label, img = records[key]
            assert rec_label == label == {"china": 0, "flower": 1}[rel.split("/")[0]]
            assert prepare_dataset.jpeg_components(img) == 3  # every record is a 3-component (RGB) JPEG
            source_bytes = (root / split / rel).read_bytes()
            source = src[f"{split}/{rel}"]
            decoded = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            assert decoded.shape == source.shape  # nothing resized or cropped
            if rel.endswith(".JPEG"):
                assert img == source_bytes  # pass-through: byte for byte
            else:
                assert img != source_bytes
                assert np.abs(decoded.astype(int) - source).mean() < 6, rel


def test_conversions_and_skips_reported(prepared):
    root, _, out, res = prepared
    assert "converted to RGB JPEG q100: 1 CMYK JPEG, 1 PNG, 1 grayscale JPEG" in res.stdout
    assert "train: skipped 1 corrupt or unreadable image(s):" in res.stdout
    assert f"{root / 'train' / 'flower' / 'truncated.jpg'}: truncated JPEG" in res.stdout
    assert "notes.txt" not in (out / "train.lst").read_text()
    assert len(lst_rows(out / "train.lst")) == 8 + 3  # 8 plain JPEGs + PNG + CMYK + gray; the broken one skipped


def quant_tables(jpeg: bytes) -> list[list[int]]:
    """The quantization tables (DQT segments) of a JPEG."""
    tables, i = [], 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker == 0xDB:
            seg, j = jpeg[i + 4:i + 2 + length], 0
            while j < len(seg):
                wide = seg[j] >> 4
                n = 128 if wide else 64
                vals = seg[j + 1:j + 1 + n]
                tables.append(list(vals) if not wide else [int.from_bytes(vals[k:k + 2], "big")
                                                           for k in range(0, n, 2)])
                j += 1 + n
        if marker == 0xDA:
            break
        i += 2 + length
    return tables


def test_converted_jpegs_are_quality_100(prepared):
    """Quality 100 means every quantization step is 1; a pass-through JPEG keeps its own (q90) tables."""
    _, _, out, _ = prepared
    rows = {rel: key for key, _, rel in lst_rows(out / "train.lst")}
    records = read_all(out / "train")
    for rel in ("china/as_png.png", "china/cmyk.jpg", "flower/gray.jpg"):
        tables = quant_tables(records[rows[rel]][1])
        assert tables and all(v == 1 for t in tables for v in t), rel
    plain = quant_tables(records[rows["china/china_0.JPEG"]][1])
    assert max(max(t) for t in plain) > 1


def test_same_files_as_mxnet_im2rec(jpeg_tree, tmp_path):
    """On plain JPEGs our .lst, .rec and .idx are byte-identical to im2rec --list --recursive + --pass-through."""
    ours = tmp_path / "ours"
    run([PY, PREPARE, "--train-dir", jpeg_tree, "--data-root", ours, "--num-thread", "2"], check=True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    run([PY, IM2REC, "--list", "--recursive", theirs / "train", jpeg_tree], check=True)
    run([PY, IM2REC, "--pass-through", theirs / "train", jpeg_tree], check=True)
    for ext in ("lst", "rec", "idx"):
        assert (ours / f"train.{ext}").read_bytes() == (theirs / f"train.{ext}").read_bytes(), ext


def test_magic_word_inside_a_record_is_escaped_like_dmlc(tmp_path):
    """A payload holding RecordIO's magic word at aligned offsets is framed exactly as MXNet frames it."""
    magic = struct.pack("<I", recordio.MAGIC)
    payload = b"\xff\xd8" + b"ab" + magic + b"12345678" + magic + magic + b"xyz" + magic + b"\xff\xd9q"
    ours = recordio.encode_record(payload)
    w = mx.recordio.MXRecordIO(str(tmp_path / "m.rec"), "w")
    w.write(payload)
    w.close()
    assert ours == (tmp_path / "m.rec").read_bytes()
    with open(tmp_path / "m.rec", "rb") as f:
        assert recordio.read_record_at(f, 0) == (payload, len(ours))


def test_interrupted_run_leaves_nothing(mixed_tree, tmp_path, monkeypatch):
    root, _ = mixed_tree
    calls = {"n": 0}
    real = prepare_dataset.process

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prepare_dataset, "process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset.prepare(root / "train", None, tmp_path, num_thread=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case,expect", [
    ("missing", "--train-dir {d}: not a directory"),
    ("no_classes", "--train-dir {d}: no class folders inside"),
    ("no_images", "--train-dir {d}: no images with extensions"),
    ("val_class", "--val-dir {v}: class folder 'zebra' is not among the training classes"),
])
def test_bad_trees_fail_cleanly(tmp_path, jpeg_tree, case, expect):
    d, v = tmp_path / "in", tmp_path / "val"
    if case == "no_classes":
        d.mkdir()
        (d / "loose.jpg").write_bytes((jpeg_tree / "china" / "china_0.jpg").read_bytes())
    elif case == "no_images":
        (d / "cls").mkdir(parents=True)
        (d / "cls" / "readme.txt").write_text("x")
    elif case == "val_class":
        d = jpeg_tree
        (v / "zebra").mkdir(parents=True)
        (v / "zebra" / "z.jpg").write_bytes((jpeg_tree / "china" / "china_0.jpg").read_bytes())
    out = tmp_path / "out"
    args = [PY, PREPARE, "--train-dir", d, "--data-root", out] + (["--val-dir", v] if case == "val_class" else [])
    res = run(args)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line
    assert expect.format(d=d, v=v) in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_no_input_at_all_is_a_usage_error(tmp_path):
    res = run([PY, PREPARE, "--data-root", tmp_path / "o"])
    assert res.returncode == 2 and "give --train-dir and/or --val-dir" in res.stderr


def test_verify_decodes_pass_through_jpegs(tmp_path, jpeg_tree):
    """A JPEG whose markers are intact but whose Huffman table is garbage passes the structural check and is caught
    by --verify, which decodes."""
    d = tmp_path / "t" / "cls"
    d.mkdir(parents=True)
    good = (jpeg_tree / "china" / "china_0.jpg").read_bytes()
    dht = good.index(b"\xff\xc4")
    bad = good[:dht + 5] + b"\xff" * 16 + good[dht + 21:]  # code counts summing past 256: a bogus table
    (d / "good.jpg").write_bytes(good)
    (d / "bad.jpg").write_bytes(bad)
    plain = run([PY, PREPARE, "--train-dir", d.parent, "--data-root", tmp_path / "a", "--quiet"], check=True)
    assert "skipped" not in plain.stdout and len(lst_rows(tmp_path / "a" / "train.lst")) == 2
    checked = run([PY, PREPARE, "--train-dir", d.parent, "--data-root", tmp_path / "b", "--verify", "--quiet"],
                  check=True)
    assert f"{d / 'bad.jpg'}: corrupt JPEG (does not decode)" in checked.stdout
    assert [rel for _, _, rel in lst_rows(tmp_path / "b" / "train.lst")] == ["cls/good.jpg"]


def test_demo_set_from_digits(demo_root):
    assert (demo_root / "classes.txt").read_text().splitlines() == [f"{i}\t{i}" for i in range(10)]
    train, val = read_all(demo_root / "train"), read_all(demo_root / "val")
    assert (len(train), len(val)) == (1437, 360)  # 1,797 digits, 20 % held out
    val_counts = np.bincount([int(lbl) for lbl, _ in val.values()], minlength=10)
    assert val_counts.min() >= 35 and val_counts.max() <= 37  # stratified
    _, img = next(iter(train.values()))
    assert cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR).shape == (32, 32, 3)
