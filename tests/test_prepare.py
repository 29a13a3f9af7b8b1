"""Stage-1 preparation: pass-through, conversions, labels, skipping, atomic outputs, im2rec interoperability, which
folders are classes, and --verify against check_rec.py --decode."""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from common import EXIT_OUTPUT
from conftest import PY, ROOT, run, write_jpeg
import recfile as recordio
from tools import prepare_dataset

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


@pytest.mark.e2e
def test_outputs_and_classes(prepared):
    _, _, out, _ = prepared
    for split in ("train", "val"):
        for ext in ("lst", "rec", "idx"):
            assert (out / f"{split}.{ext}").is_file()
    assert (out / "classes.txt").read_text() == "0\tchina\n1\tflower\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.e2e
def test_records_are_rgb_jpegs_with_right_labels(prepared):
    root, src, out, _ = prepared
    for split in ("train", "val"):
        records = read_all(out / split)
        rows = lst_rows(out / f"{split}.lst")
        assert sorted(k for k, _, _ in rows) == sorted(records)
        for key, label, rel in rows:
            rec_label, img = records[key]
            assert rec_label == label == {"china": 0, "flower": 1}[rel.split("/")[0]]
            assert recordio.jpeg_info(img).components == 3  # every record is a 3-component (RGB) JPEG
            source_bytes = (root / split / rel).read_bytes()
            source = src[f"{split}/{rel}"]
            decoded = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            assert decoded.shape == source.shape  # nothing resized or cropped
            if rel.endswith(".JPEG"):
                assert img == source_bytes  # pass-through: byte for byte
            else:
                assert img != source_bytes
                assert np.abs(decoded.astype(int) - source).mean() < 6, rel


@pytest.mark.e2e
def test_conversions_and_skips_reported(prepared):
    root, _, out, res = prepared
    assert "converted to RGB JPEG q100: 1 CMYK JPEG, 1 PNG, 1 grayscale JPEG" in res.stdout
    assert "train: skipped 1 corrupt, unreadable or oversized image(s):" in res.stdout
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_same_files_as_mxnet_im2rec(jpeg_tree, photos, tmp_path):
    """On plain JPEGs our .lst, .rec and .idx are byte-identical to im2rec --list --recursive + --pass-through, names
    with spaces and non-ASCII letters included (only names the .lst must escape differ)."""
    tree = tmp_path / "tree"
    shutil.copytree(jpeg_tree, tree)
    write_jpeg(tree / "china" / "with space ü.jpg", photos[0][:40, :56])
    write_jpeg(tree / "żółw kot" / "é è.jpeg", photos[1][:40, :56])
    ours = tmp_path / "ours"
    run([PY, PREPARE, "--train-dir", tree, "--data-root", ours, "--num-thread", "2"], check=True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    run([PY, IM2REC, "--list", "--recursive", theirs / "train", tree], check=True)
    run([PY, IM2REC, "--pass-through", theirs / "train", tree], check=True)
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_no_input_at_all_is_a_usage_error(tmp_path):
    res = run([PY, PREPARE, "--data-root", tmp_path / "o"])
    assert res.returncode == 2 and "give --train-dir and/or --val-dir" in res.stderr


@pytest.mark.e2e
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


# --------------------------------------------------------------------------------------------------------------------
# Trees a user may give: links, odd names, huge headers, the output inside the input, signals, a full disk


def lst_entries(path: Path) -> list[tuple[int, float, str]]:
    """The .lst rows with the path column unescaped, read the way its docstring says."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    assert text.endswith("\n") and len(text.splitlines()) == text.count("\n"), "a name split a line"
    rows = []
    for line in text[:-1].split("\n"):
        key, label, col = line.split("\t")  # exactly three fields: no raw tab in a path
        assert col == col.strip(), "a reader that strips fields would change this path"
        rows.append((int(key), float(label), prepare_dataset.unescape_path(col)))
    return rows


def stderr_lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


@pytest.mark.e2e
def test_links_are_followed_once_loops_and_broken_links_listed(photos, tmp_path):
    """Linked images, linked folders and a linked class folder are listed like real ones; loops (to a parent, to
    itself, to the tree's parent), broken links, a second path to a listed folder and links into another class's
    folders are skipped with the reason, so each image is listed once, under its own class."""
    tree, ext = tmp_path / "tree", tmp_path / "ext"
    write_jpeg(tree / "china" / "a.jpg", photos[0][:40, :56])
    write_jpeg(tree / "china" / "sub" / "b.jpg", photos[0][40:80, :56])
    write_jpeg(ext / "flower_real" / "c.jpg", photos[1][:40, :56])
    write_jpeg(ext / "img.jpg", photos[1][40:80, :56])
    write_jpeg(tree / "zebra" / "inner" / "z.jpg", photos[1][80:120, :56])
    links = {"flower": ext / "flower_real", "flower_again": ext / "flower_real", "loop": ".", "gone": "nowhere",
             "china/linked.jpg": ext / "img.jpg", "china/broken.jpg": "missing.jpg", "china/self": "self",
             "china/sub/up": "..", "china/to_parent": "../..", "china/zdup": "sub", "china/to_flower": "../flower",
             "alias": "china", "china/to_zebra": "../zebra/inner"}
    for name, target in links.items():
        os.symlink(target, tree / name)
    out = tmp_path / "out"
    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", out, "--no-shuffle"], timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "classes.txt").read_text() == "0\tchina\n1\tflower\n2\tzebra\n"
    rows = lst_entries(out / "train.lst")
    assert [(label, rel) for _, label, rel in rows] == [(0, "china/a.jpg"), (0, "china/linked.jpg"),
                                                       (0, "china/sub/b.jpg"), (1, "flower/c.jpg"),
                                                       (2, "zebra/inner/z.jpg")]
    expected = {"flower_again": f"same folder as {tree / 'flower'}", "loop": "link loop",
                "gone": "broken link (to nowhere)", "china/broken.jpg": "broken link (to missing.jpg)",
                "china/self": "link loop (a chain of links that leads back to itself)",
                "china/sub/up": f"link loop (it leads back to {tree / 'china'})",
                "china/to_parent": f"link loop (it leads to {tmp_path}, which holds the tree)",
                "china/zdup": f"same folder as {tree / 'china' / 'sub'}",
                "china/to_flower": f"same folder as {tree / 'flower'}",
                "alias": f"link to {tree / 'china'}, another folder of the same tree",
                "china/to_zebra": f"link to {tree / 'zebra' / 'inner'}, another folder of the same tree"}
    assert f"train: skipped {len(expected)} link(s) or folder(s) of the tree:" in res.stdout
    for name, why in expected.items():
        assert f"  {tree / name}: {why}" in res.stdout, name


ODD_FILES = ["tab\there.jpg", "new\nline.jpg", "cr\rx.jpg", "back\\slash.jpg", " lead.jpg", "trail .jpg",
             "ünï cödé.jpg", "ctl\x1fx.jpg", "sep\u2028x.jpg", "nel\x85x.jpg", "\\x41 not an escape.jpg",
             os.fsdecode(b"bad\xff\xfe.jpg")]
ODD_CLASSES = [" spaced ", "tab\tclass", os.fsdecode(b"raw\xe9"), "plain"]


@pytest.mark.parametrize("name", ODD_FILES + ODD_CLASSES + ["", "\t", " ", "\\", "a\\tb"])
def test_lst_escaping_round_trips(name):
    col = prepare_dataset.escape_path(name)
    assert prepare_dataset.unescape_path(col) == name
    assert "\t" not in col and len(col.splitlines()) <= 1 and col == col.strip()


@pytest.mark.e2e
def test_odd_file_names_survive_in_the_lst(photos, tmp_path):
    """Every name Linux allows (tabs, newlines, CR, backslashes, spaces at either end, non-ASCII, bytes that are not
    UTF-8) comes back from the .lst and classes.txt exactly, naming the file whose bytes are in the record."""
    tree = tmp_path / "tree"
    made = set()
    for c, cls in enumerate(ODD_CLASSES):
        for i, name in enumerate(ODD_FILES if cls == "plain" else ["x.jpg"]):
            write_jpeg(tree / cls / name, photos[c % 2][i:i + 40, :56])
            made.add(f"{cls}/{name}")
    good = (tree / "plain" / ODD_FILES[0]).read_bytes()
    (tree / "plain" / "cut\nshort.jpg").write_bytes(good[:len(good) // 2])
    out = tmp_path / "out"
    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", out, "--num-thread", "2"])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    classes = [prepare_dataset.unescape_path(line.split("\t", 1)[1]) for line in
               (out / "classes.txt").read_bytes().decode("utf-8", "surrogateescape").splitlines()]
    assert classes == sorted(ODD_CLASSES)
    records = read_all(out / "train")
    rows = lst_entries(out / "train.lst")
    assert {rel for _, _, rel in rows} == made
    for key, label, rel in rows:
        assert records[key] == (label, (tree / rel).read_bytes()), rel
        assert label == classes.index(rel.split("/")[0])
    assert f"  {tree}/plain/cut\\nshort.jpg: truncated JPEG" in res.stdout  # one line per skipped file


def huge_headers(tree: Path, photos) -> None:
    """Small images whose headers claim huge sizes (a 40000x40000 PNG, a 65000x65000 JPEG), a BMP named .png, and
    a 96x128 and a 32x32 JPEG."""
    crop = np.ascontiguousarray(photos[0][:96, :128, ::-1])
    (tree / "c").mkdir(parents=True)
    png = bytearray(cv2.imencode(".png", crop)[1].tobytes())
    png[16:24] = struct.pack(">II", 40000, 40000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # a valid IHDR: its CRC matches
    (tree / "c" / "huge.png").write_bytes(png)
    jpg = bytearray(cv2.imencode(".jpg", crop)[1].tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    (tree / "c" / "huge.jpg").write_bytes(jpg)
    (tree / "c" / "bmp.png").write_bytes(cv2.imencode(".bmp", crop)[1].tobytes())
    write_jpeg(tree / "c" / "ok.jpg", photos[0][:96, :128])
    write_jpeg(tree / "c" / "small.jpg", photos[1][:32, :32])


@pytest.mark.e2e
def test_huge_dimensions_are_skipped_from_the_header(photos, tmp_path):
    """Sizes come from the JPEG frame header and the PNG IHDR, without decoding; above --max-pixels the image is
    skipped and listed. An image OpenCV refuses (its own pixel limit, a cv2.error in a worker) is a skip too."""
    tree = tmp_path / "tree"
    huge_headers(tree, photos)
    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", tmp_path / "a", "--no-shuffle"], timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"{tree}/c/huge.png: 40000x40000 px (1600.0 MP) is above --max-pixels 100000000" in res.stdout
    assert f"{tree}/c/huge.jpg: 65000x65000 px (4225.0 MP) is above --max-pixels 100000000" in res.stdout
    assert [rel for _, _, rel in lst_rows(tmp_path / "a" / "train.lst")] == ["c/bmp.png", "c/ok.jpg", "c/small.jpg"]

    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", tmp_path / "b", "--max-pixels", "5000000000"])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"{tree}/c/huge.png: cannot be processed (cv2.error: OpenCV" in res.stdout

    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", tmp_path / "c", "--max-pixels", "10000"])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"{tree}/c/ok.jpg: 128x96 px (0.0 MP) is above --max-pixels 10000" in res.stdout
    assert f"{tree}/c/bmp.png: cannot be processed (cv2.error:" in res.stdout  # OpenCV's limit, lowered to match
    assert [rel for _, _, rel in lst_rows(tmp_path / "c" / "train.lst")] == ["c/small.jpg"]


@pytest.mark.e2e
@pytest.mark.parametrize("inside", ["out", "china/out"])
def test_output_inside_the_tree_is_left_out(jpeg_tree, tmp_path, inside):
    """Run twice: the second run finds the first one's outputs inside the tree and must not list them (nor make the
    folder a class); each run says so in one warning line."""
    tree = tmp_path / "tree"
    shutil.copytree(jpeg_tree, tree)
    out = tree / inside
    for _ in range(2):
        res = run([PY, PREPARE, "--train-dir", tree, "--data-root", out, "--num-thread", "2"])
        assert res.returncode == 0, res.stderr
        assert stderr_lines(res) == [f"prepare_dataset.py: warning: --data-root {out} is inside --train-dir {tree}; "
                                     "it is left out of the listing"]
        assert (out / "classes.txt").read_text() == "0\tchina\n1\tflower\n"
        assert sorted(rel for _, _, rel in lst_rows(out / "train.lst")) == \
            sorted(f"{c}/{c}_{i}.jpg" for c in ("china", "flower") for i in range(5))


@pytest.mark.e2e
@pytest.mark.parametrize("where,expect", [
    ("", "--data-root {out} is --train-dir itself: the outputs would lie among its class folders"),
    ("china", "--data-root {out} is inside --train-dir {tree} and holds images"),
], ids=["tree", "class_folder"])
def test_output_that_is_the_tree_or_a_class_folder_is_refused(jpeg_tree, tmp_path, where, expect):
    """Outputs among the class folders, or a class folder left out of its own tree: a usage error before any work."""
    tree = tmp_path / "tree"
    shutil.copytree(jpeg_tree, tree)
    before = sorted(tree.rglob("*"))
    out = tree / where
    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", out])
    assert res.returncode == 2
    lines = stderr_lines(res)
    assert len(lines) == 1 and lines[0].startswith(f"prepare_dataset.py: error: {expect.format(out=out, tree=tree)}")
    assert sorted(tree.rglob("*")) == before  # nothing written


@pytest.mark.e2e
def test_same_tree_for_train_and_val_warns(jpeg_tree, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(jpeg_tree)
    out = tmp_path / "out"
    res = run([PY, PREPARE, "--train-dir", jpeg_tree, "--val-dir", alias, "--data-root", out])
    assert res.returncode == 0, res.stderr
    assert stderr_lines(res) == [f"prepare_dataset.py: warning: --val-dir {alias} is the same folder as --train-dir "
                                 f"{jpeg_tree}: the validation set equals the training set"]
    assert len(lst_rows(out / "train.lst")) == len(lst_rows(out / "val.lst")) == 10


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory, photos):
    """300 full-size PNGs (hard links of one): each is decoded and re-encoded, so one thread takes seconds."""
    root = tmp_path_factory.mktemp("slow")
    (root / "c").mkdir()
    first = root / "c" / "p000.png"
    cv2.imwrite(str(first), photos[0][:, :, ::-1])
    for i in range(1, 300):
        os.link(first, root / "c" / f"p{i:03d}.png")
    return root


def _writing_started(out: Path) -> bool:
    """Whether the first record has reached the temporary .rec (the run is inside its main loop)."""
    try:
        return any(p.stat().st_size > 0 for p in out.glob(".train.rec.*"))
    except OSError:  # renamed or removed between the listing and the stat
        return False


def signal_once_writing(args: list, out: Path, sig: int, before=lambda proc: None) -> tuple[int, list[str], object]:
    """Run prepare_dataset.py with ``args`` (writing to ``out``) and send it ``sig`` once its first record has reached
    the temporary .rec, right after ``before(proc)``; return its exit status, its non-empty stderr lines and what
    ``before`` returned."""
    proc = subprocess.Popen([str(a) for a in (PY, PREPARE, *args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while not _writing_started(out):
            assert proc.poll() is None, "the run ended before it could be signalled"
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.005)
        seen = before(proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
    return proc.returncode, [ln for ln in stderr.splitlines() if ln.strip()], seen


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_signal_while_writing_leaves_nothing(slow_tree, tmp_path, sig):
    """A real process signalled in the middle of its .rec: one line, exit 128 + signal, no file left behind."""
    out = tmp_path / "out"
    rc, lines, _ = signal_once_writing(["--train-dir", slow_tree, "--data-root", out, "--num-thread", "1"], out, sig)
    name = signal.Signals(sig).name
    assert rc == 128 + sig
    assert lines == [f"prepare_dataset.py: interrupted ({name}); no output written, temporary files removed"]
    assert list(out.iterdir()) == []  # no temporary file, no half-written output


def decoding_processes(parent: int) -> list[int]:
    """The ids of the ``recfile.DecodeChecker`` workers whose parent is process ``parent``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"recfile._serve()" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):  # it ended while being read
            continue
    return found


@pytest.mark.e2e
def test_signal_during_verify_ends_the_decoding_processes(slow_tree, tmp_path):
    """--verify decodes in processes of its own (in their own session, so Ctrl-C reaches the tool alone); a signal
    stops the run as it does without --verify, and no decoding process outlives the tool."""
    out = tmp_path / "out"
    rc, lines, workers = signal_once_writing(["--train-dir", slow_tree, "--data-root", out, "--num-thread", "1",
                                              "--verify"], out, signal.SIGINT,
                                             before=lambda proc: decoding_processes(proc.pid))
    assert len(workers) == 1
    assert rc == 130
    assert lines == ["prepare_dataset.py: interrupted (SIGINT); no output written, temporary files removed"]
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []
    assert list(out.iterdir()) == []


@pytest.mark.e2e
def test_full_disk_is_one_line_and_leaves_nothing(photos, tmp_path, tmpfs):
    """A 256 KiB tmpfs fills while the .rec is written: one line naming it, no temporary file left."""
    tree = tmp_path / "tree"
    for i in range(8):
        write_jpeg(tree / "c" / f"p{i}.jpg", photos[i % 2], quality=95)  # about 900 KB in all
    out = tmpfs("256k") / "out"
    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", out, "--num-thread", "1"], timeout=60)
    assert res.returncode == EXIT_OUTPUT
    lines = stderr_lines(res)
    assert len(lines) == 1 and lines[0].startswith(f"prepare_dataset.py: error: {out / 'train.rec'}: no space left "
                                                   "on device"), res.stderr
    assert not out.exists() or list(out.iterdir()) == []


def _without_root_powers() -> list[str] | None:
    """A command prefix under which file permissions apply (root ignores them); None if there is none here."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"] if setpriv else None


@pytest.mark.e2e
def test_unreadable_folders_and_files_are_listed(jpeg_tree, tmp_path):
    prefix = _without_root_powers()
    if prefix is None:
        pytest.skip("running as root and no setpriv to drop the permission override")
    tree = tmp_path / "tree"
    shutil.copytree(jpeg_tree, tree)
    locked, unreadable = tree / "china" / "locked", tree / "flower" / "flower_0.jpg"
    shutil.copytree(tree / "flower", locked)
    locked.chmod(0)
    unreadable.chmod(0)
    try:
        probe = subprocess.run(prefix + [PY, "-c", "import os, sys; os.listdir(sys.argv[1])", str(locked)],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            pytest.skip("permissions are not enforced here")
        res = run(prefix + [PY, PREPARE, "--train-dir", tree, "--data-root", tmp_path / "out", "--no-shuffle"])
    finally:
        locked.chmod(0o755)
        unreadable.chmod(0o644)
    assert res.returncode == 0, res.stderr
    assert f"  {locked}: unreadable folder (Permission denied)" in res.stdout
    assert f"  {unreadable}: unreadable (Permission denied)" in res.stdout
    assert len(lst_rows(tmp_path / "out" / "train.lst")) == 9


# --------------------------------------------------------------------------------------------------------------------
# Which folders are classes, the label of each, and the strict decode shared with check_rec.py --decode


@pytest.mark.e2e
def test_folders_without_images_in_a_tree_are_no_classes(jpeg_tree, tmp_path):
    """An earlier output inside the training tree does not become class 0 (shifting every label); one inside the
    validation tree, and a validation folder without images, do not fail the run as classes the training tree
    lacks. Each is left out and listed."""
    train, val = tmp_path / "train", tmp_path / "val"
    shutil.copytree(jpeg_tree, train)
    shutil.copytree(jpeg_tree, val)
    run([PY, PREPARE, "--train-dir", train, "--val-dir", val, "--data-root", train / "0_old"], check=True)
    run([PY, PREPARE, "--train-dir", train, "--data-root", tmp_path / "train_only"], check=True)
    assert (tmp_path / "train_only" / "classes.txt").read_text() == "0\tchina\n1\tflower\n"
    shutil.copytree(train / "0_old", val / "zz_old")
    (val / "zebra").mkdir()
    out = tmp_path / "out"
    res = run([PY, PREPARE, "--train-dir", train, "--val-dir", val, "--data-root", out])
    assert res.returncode == 0 and stderr_lines(res) == [], res.stderr
    assert (out / "classes.txt").read_text() == "0\tchina\n1\tflower\n"
    for split in ("train", "val"):
        assert sorted((label, rel) for _, label, rel in lst_rows(out / f"{split}.lst")) == \
            [(float(c == "flower"), f"{c}/{c}_{i}.jpg") for c in ("china", "flower") for i in range(5)]
    note = "an earlier output (classes.txt, train.idx, train.lst, train.rec and 3 more) without images: not a class"
    assert f"train: skipped 1 link(s) or folder(s) of the tree:\n  {train / '0_old'}: {note}\n" in res.stdout
    assert f"val: skipped 2 link(s) or folder(s) of the tree:\n  {val / 'zebra'}: holds no images\n" \
           f"  {val / 'zz_old'}: {note}\n" in res.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("content", ["nothing", "no_image_file"])
def test_a_training_class_folder_without_images_is_refused(jpeg_tree, tmp_path, content):
    """Labels are the sorted folder names: an image-less 'aardvark' would become class 0 or, left out, move every
    label after it. One line, exit status 2, nothing written."""
    tree = tmp_path / "tree"
    shutil.copytree(jpeg_tree, tree)
    (tree / "aardvark").mkdir()
    if content == "no_image_file":
        (tree / "aardvark" / "notes.txt").write_text("not an image")
        (tree / "aardvark" / "empty").mkdir()
    out = tmp_path / "out"
    res = run([PY, PREPARE, "--train-dir", tree, "--data-root", out])
    assert res.returncode == 2
    assert stderr_lines(res) == [
        f"prepare_dataset.py: error: --train-dir {tree}: class folder 'aardvark' holds no images (.jpeg .jpg .png); "
        "labels are the positions of the sorted class-folder names, so leaving it out would shift the label of every "
        "class after it: add images or remove the folder"]
    assert not out.exists()


def test_summary_shows_the_label_of_each_class(photos, tmp_path, capsys):
    """Every class up to 8, else the first three and the last two; classes.txt has them all."""
    tree = tmp_path / "tree"
    for c in range(12):
        write_jpeg(tree / f"n{c:02d}" / "a.jpg", photos[c % 2][c * 8:c * 8 + 40, :56])
    assert prepare_dataset.main(["--train-dir", str(tree), "--data-root", str(tmp_path / "a"), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "classes: 12, labelled by sorted folder name: 0 n00, 1 n01, 2 n02, ..., 10 n10, 11 n11 "
        f"(all in {tmp_path / 'a' / 'classes.txt'})")
    for c in range(2, 12):
        shutil.rmtree(tree / f"n{c:02d}")
    assert prepare_dataset.main(["--train-dir", str(tree), "--data-root", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"classes: 2, labelled by sorted folder name: 0 n00, 1 n01 (all in {tmp_path / 'b' / 'classes.txt'})")


def check_rec_verdicts(rec: Path, key_to_name: dict[int, str]) -> dict[str, str]:
    """{file name: why} for every record ``tools/check_rec.py --decode`` lists as bad."""
    res = run([PY, ROOT / "tools" / "check_rec.py", rec, "--decode"])
    assert res.returncode in (0, 1) and "Traceback" not in res.stderr, res.stderr
    bad = {}
    for line in res.stdout.splitlines()[:-1]:
        head, why = line.split(": ", 1)
        bad[key_to_name[int(head.split("(key ")[1].split(",")[0])]] = why
    return bad


@pytest.mark.e2e
def test_verify_and_check_rec_decode_agree(corrupt_jpegs, tmp_path):
    """The same files through both tools: prepare_dataset.py --verify skips exactly the images that check_rec.py
    --decode lists, with the same words; without --verify only the file without an end marker is skipped, and
    check_rec.py --decode finds the other two in the records."""
    tree = tmp_path / "tree"
    names = ["cut.jpg", "cut_eoi.jpg", "flipped.jpg", "good.jpg"]
    (tree / "c").mkdir(parents=True)
    for name in names:
        (tree / "c" / name).write_bytes(corrupt_jpegs[name[:-4]])
    verified = run([PY, PREPARE, "--train-dir", tree, "--data-root", tmp_path / "v", "--verify", "--quiet"],
                   check=True)
    skipped = dict(line.strip().rsplit("/", 1)[1].split(": ", 1) for line in verified.stdout.splitlines()
                   if line.startswith(f"  {tree}"))
    assert sorted(skipped) == names[:3]
    assert skipped["cut.jpg"] == "truncated JPEG (no EOI marker at the end)"
    assert all(skipped[n].startswith("corrupt JPEG (the decoder says: Corrupt JPEG data: ") for n in names[1:3])
    assert [rel for _, _, rel in lst_rows(tmp_path / "v" / "train.lst")] == ["c/good.jpg"]
    assert check_rec_verdicts(tmp_path / "v" / "train.rec", {}) == {}

    plain = run([PY, PREPARE, "--train-dir", tree, "--data-root", tmp_path / "p", "--quiet"], check=True)
    assert f"  {tree / 'c' / 'cut.jpg'}: {skipped['cut.jpg']}" in plain.stdout
    keys = {key: rel.split("/")[1] for key, _, rel in lst_rows(tmp_path / "p" / "train.lst")}
    assert check_rec_verdicts(tmp_path / "p" / "train.rec", keys) == {n: skipped[n] for n in names[1:3]}

    with open(tmp_path / "all.rec", "wb") as f:  # every file, the one without an end marker too
        w = recordio.IndexedRecordWriter(f)
        for key, name in enumerate(names):
            w.write(key, recordio.pack_image_record(0, key, (tree / "c" / name).read_bytes()))
    with open(tmp_path / "all.idx", "wb") as f:
        w.write_index(f)
    assert check_rec_verdicts(tmp_path / "all.rec", dict(enumerate(names))) == skipped
