"""Shared fixtures: small real images (the photographs shipped in scikit-learn's wheel, the digits) made into trees
and RecordIO files once per session, data sets with one fault each, and a small tmpfs for full-disk tests.

Two tiers: tests marked ``e2e`` start processes of the toolkit (the runner, tools, signals, exit codes); the others
run in this process in seconds (``make test-fast`` runs them alone). Whatever the order, nothing a test starts may be
left running when the session ends (``pytest_sessionfinish`` fails the run, naming it)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    out = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def descendants(pid: int) -> list[int]:
    """The live (not zombie) processes below ``pid``, from /proc."""
    parents = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pytest_sessionfinish(session, exitstatus):
    """Nothing a test started may outlive the session: every process of the toolkit ends by itself, whichever way
    its test went. One left behind fails the run, naming it (and is ended)."""
    names = []
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(ROOT) in cmd and "resource_tracker" not in cmd:  # the toolkit's (or its .venv's Python's)
            names.append(f"{pid} {cmd[:200]}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    if not names:
        return
    print("\nprocesses left running by the tests (ended now):\n  " + "\n  ".join(names), file=sys.stderr)
    session.exitstatus = 1


def run(args, cwd=ROOT, env=None, timeout=600, check=False):
    """Run a command of the toolkit (argv list), returning the CompletedProcess with text output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


def run_until(args, stop_after: str, sig=signal.SIGTERM, timeout=300, env=None):
    """Start a command (argv list), send ``sig`` once its stderr shows ``stop_after``; return (exit status,
    stderr). Bounded: the process is killed if it does not end in ``timeout`` seconds."""
    p = subprocess.Popen([str(a) for a in args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    lines, deadline = [], time.monotonic() + timeout
    try:
        for line in p.stderr:
            lines.append(line)
            if stop_after in line:
                p.send_signal(sig)
                break
            assert time.monotonic() < deadline, f"no '{stop_after}' line in time"
        _, rest = p.communicate(timeout=timeout)
        lines.append(rest)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, "".join(lines)


def params_of(path):
    import mxnet as mx

    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def error_lines(stderr: str, prog: str = "train.py") -> list[str]:
    """The lines of ``stderr`` that report an error (``<prog>: error:``) or a traceback."""
    return [ln for ln in stderr.splitlines() if ln.startswith(f"{prog}: error:") or "Traceback" in ln]


@pytest.fixture(scope="session")
def photos():
    """The two real photographs in scikit-learn's wheel (china, flower), RGB uint8, 427x640."""
    from sklearn.datasets import load_sample_images

    return load_sample_images().images


def _crop(img, i, h=96, w=128):
    y = (i * 37) % (img.shape[0] - h)
    x = (i * 53) % (img.shape[1] - w)
    return np.ascontiguousarray(img[y:y + h, x:x + w])


def write_jpeg(path: Path, rgb: np.ndarray, quality=90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


@pytest.fixture(scope="session")
def mixed_tree(tmp_path_factory, photos):
    """An ImageNet-style tree with plain RGB JPEGs, a PNG, a CMYK JPEG, a grayscale JPEG, a truncated JPEG and a
    text file; returns (root, {relpath: source RGB array or None for the broken one})."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mixed")
    src = {}
    for split, n in (("train", 4), ("val", 2)):
        for c, name in enumerate(("china", "flower")):
            for i in range(n):
                rgb = _crop(photos[c], i + (0 if split == "train" else 10))
                rel = f"{name}/{name}_{i}.JPEG"
                write_jpeg(root / split / rel, rgb)
                src[f"{split}/{rel}"] = rgb
    special = root / "train" / "china"
    png = _crop(photos[0], 20)
    Image.fromarray(png).save(special / "as_png.png")
    src["train/china/as_png.png"] = png
    cmyk = _crop(photos[0], 21)
    Image.fromarray(cmyk).convert("CMYK").save(special / "cmyk.jpg", quality=95)
    src["train/china/cmyk.jpg"] = cmyk
    gray = _crop(photos[1], 22)
    Image.fromarray(gray).convert("L").save(root / "train" / "flower" / "gray.jpg", quality=95)
    src["train/flower/gray.jpg"] = np.asarray(Image.fromarray(gray).convert("L").convert("RGB"))
    good = write_jpeg(root / "tmp.jpg", _crop(photos[1], 23))
    (root / "tmp.jpg").unlink()
    (root / "train" / "flower" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    src["train/flower/truncated.jpg"] = None
    (root / "train" / "flower" / "notes.txt").write_text("not an image")
    return root, src


@pytest.fixture(scope="session")
def jpeg_tree(tmp_path_factory, photos):
    """Plain RGB JPEGs only (so MXNet's im2rec --pass-through and our tool must agree byte for byte)."""
    root = tmp_path_factory.mktemp("jpegs")
    for c, name in enumerate(("china", "flower")):
        for i in range(5):
            write_jpeg(root / name / f"{name}_{i}.jpg", _crop(photos[c], i))
    return root


@pytest.fixture(scope="session")
def unique_rec(tmp_path_factory, photos):
    """A prepared set in which every image is its own class (label == image), 23 train and 21 val images, so a test
    can tell exactly which images an epoch or a validation pass delivered."""
    from tools import prepare_dataset

    raw = tmp_path_factory.mktemp("unique_raw")
    for split, n in (("train", 23), ("val", 21)):
        for i in range(n):
            write_jpeg(raw / split / f"c{i:03d}" / "img.jpg", _crop(photos[i % 2], i, 40, 56))
    out = tmp_path_factory.mktemp("unique")
    prepare_dataset.prepare(raw / "train", raw / "val", out, num_thread=2, progress=False)
    return out


@pytest.fixture(scope="session")
def solid_rec(tmp_path_factory):
    """Two classes of solid-colour images (RGB (200,100,50) and (20,180,240)); their normalized values are known."""
    from tools import prepare_dataset

    raw = tmp_path_factory.mktemp("solid_raw")
    colours = [(200, 100, 50), (20, 180, 240)]
    for split in ("train", "val"):
        for c, rgb in enumerate(colours):
            for i in range(3):
                write_jpeg(raw / split / f"c{c}" / f"{i}.jpg", np.full((48, 64, 3), rgb, np.uint8), quality=100)
    out = tmp_path_factory.mktemp("solid")
    prepare_dataset.prepare(raw / "train", raw / "val", out, num_thread=1, progress=False)
    return out, colours


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The digits demo set, built by the real tool (in this process) into a temporary folder."""
    from tools import make_demo_data

    out = tmp_path_factory.mktemp("demo") / "demo"
    assert make_demo_data.main(["--out", str(out), "--size", "32"]) == 0
    return out


def copy_set(src: Path, dst: Path, fault: str | None = None, split: str = "train", record: int = 5) -> Path:
    """Copy the prepared set ``src`` to ``dst``, record by record, giving record ``record`` of ``split`` one
    ``fault``: ``garbage`` (random bytes), ``text`` (not an image), ``empty``, ``bad-header`` (a JPEG whose marker
    segments are broken: the SOF says 0x0 px), ``label-1`` / ``label-high`` (label -1 / 1000), or None."""
    import recfile

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        pairs = recfile.read_index(src / f"{name}.idx")
        with open(src / f"{name}.rec", "rb") as f, open(dst / f"{name}.rec", "wb") as out:
            w = recfile.IndexedRecordWriter(out)
            for i, (key, off) in enumerate(pairs):
                label, k, img = recfile.unpack_image_record(recfile.read_record_at(f, off)[0])
                if name == split and i == record and fault:
                    img, label = _fault(fault, img, label)
                w.write(key, recfile.pack_image_record(label, k, img))
        with open(dst / f"{name}.idx", "wb") as out:
            w.write_index(out)
    return dst


def _fault(fault: str, img: bytes, label: float):
    if fault == "garbage":
        return bytes(np.random.default_rng(0).integers(0, 256, len(img), dtype=np.uint8)), label
    if fault == "text":
        return b"this record holds a text, not an image\n" * 4, label
    if fault == "empty":
        return b"", label
    if fault == "bad-header":
        sof = img.find(b"\xff\xc0")
        return img[:sof + 5] + b"\0\0\0\0" + img[sof + 9:], label
    if fault == "label-1":
        return img, -1
    if fault == "label-high":
        return img, 1000
    raise ValueError(fault)


@pytest.fixture()
def tmpfs(tmp_path):
    """A factory of small tmpfs mounts (full-disk tests); skips where this process may not mount one."""
    mounted = []

    def make(size: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip() or res.returncode}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def jpeg_scan_start(jpeg: bytes) -> int:
    """The offset of the first byte of a JPEG's entropy-coded data (just past its SOS segment)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


@pytest.fixture(scope="session")
def corrupt_jpegs(photos):
    """A JPEG of a 240x320 crop of a photograph and three broken copies whose headers all parse: ``cut`` ends in the
    middle of its scan, ``cut_eoi`` is the same with an end marker appended (a decoder reads it to the end),
    ``flipped`` has 64 bytes in the middle of its scan XORed with 0x5a (never made 0xff). {name: bytes}."""
    import cv2

    good = cv2.imencode(".jpg", np.ascontiguousarray(photos[0][80:320, 100:420, ::-1]),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    start = jpeg_scan_start(good)
    mid = start + (len(good) - 2 - start) // 2
    flipped = bytearray(good)
    for i in range(mid, mid + 64):
        flipped[i] = flipped[i] ^ 0x5A if flipped[i] ^ 0x5A != 0xFF else 0x3C
    return {"good": good, "cut": good[:mid], "cut_eoi": good[:mid] + b"\xff\xd9", "flipped": bytes(flipped)}
