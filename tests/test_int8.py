"""INT8 under MLPerf's 99% rule (``tools/quantize.py``, ``calibration.py``) on a ResNet-18 trained here for four
epochs on the 32 px digits: each runtime's INT8 model (MXNet oneDNN naive and entropy, onnxruntime QDQ and OpenVINO
through NNCF) with its manifest (the calibration records, the source's hash, both top-1 scores); ``--only-inference
--dtype int8`` and LoadGen's AccuracyOnly top-1 against the manifests and against float32 (and bfloat16) scoring, in
every runtime and precision; the four scenarios in each runtime; a model calibrated on solid colours refused
(nothing written) or, with ``--accept-accuracy-loss``, written and marked; an injected failure and SIGINT in the
OpenVINO runtime; bad input (calibration data, flags, files of another runtime or precision) as one line."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
from pathlib import Path

import pytest

from common import UsageError, cpu_bf16_flags
from conftest import PY, ROOT, error_lines, run, run_until
from test_config import call, runner_module

MODEL = ["--image-shape", "3,32,32", "--num-classes", "10", "--num-layers", "18"]
EPOCH = 4
CALIB = 64  # calibration images of the naive MXNet, onnxruntime and OpenVINO models (entropy: ENTROPY_CALIB)
ENTROPY_CALIB = 128  # entropy's thresholds need more than 64 images here to keep 99%
TRAIN_RECORDS, VAL_RECORDS = 1437, 360  # the digits' split
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
SHORT = ["--time", "0.3", "--count", "32", "--qps", "100", "--max-batchsize", "8"]  # each scenario within a second
LOADGEN = ROOT / "loadgen.py"
QUANTIZE = ROOT / "tools" / "quantize.py"
HAS_BF16 = bool(cpu_bf16_flags())


@contextlib.contextmanager
def environ_kept():
    """The tools' ``main`` set MXNet's environment defaults in this process: give them back afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture()
def kept_env():
    with environ_kept():
        yield


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> dict:
    """Every file of ``folder`` (hidden ones too; not its subfolders) with its size and modification time."""
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in Path(folder).iterdir() if not f.is_dir()}


def quantize_args(prefix: Path, demo_root: Path, *extra) -> list[str]:
    return ["--model-prefix", str(prefix), "--load-epoch", str(EPOCH), "--data-root", str(demo_root), *MODEL,
            *map(str, extra)]


def score(prefix: Path, dtype: str, demo_root: Path, report: Path) -> float:
    """The val top-1 (percent) of ``--only-inference --dtype DTYPE`` (train.py in this process, the report's)."""
    import train

    with environ_kept():
        assert train.main(["--cpu-devices", "1", "--batch-size", "32", "--num-epochs", "1", "--only-inference",
                           "--dtype", dtype, "--model-prefix", str(prefix), "--load-epoch", str(EPOCH),
                           "--data-root", str(demo_root), *MODEL, "--report", str(report)]) == 0
    return json.loads(report.read_text())["metrics"]["val.top1"][0]


def loadgen_here(out: Path, *args) -> tuple[int, dict]:
    """``loadgen.py`` in this process (its ``main`` under ``run_main``): (exit status, summary.json)."""
    import loadgen

    with environ_kept():
        status = call(loadgen.main, [*map(str, args), "--output", str(out)])
    path = out / "summary.json"
    return status, json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root):
    """A ResNet-18 checkpoint (epoch 4) of the digits trained in this process (the demo recipe shortened: cosine
    from 0.2 after one warmup epoch, zero-init residual branches; batchnorm statistics averaged with momentum 0.5,
    so that four epochs' worth are not dominated by the first ones), about 94% top-1; its prefix."""
    import train

    prefix = tmp_path_factory.mktemp("int8") / "m"
    with environ_kept():
        assert train.main(["--cpu-devices", "1", "--batch-size", "64", "--num-epochs", str(EPOCH), "--lr", "0.2",
                           "--lr-schedule", "cosine", "--warmup-epochs", "1", "--bn-gamma-init0",
                           "--batchnorm-mom", "0.5", "--no-random-mirror", "--min-random-area", "0.25", "--seed", "0",
                           "--no-val", "--data-root", str(demo_root), *MODEL, "--model-prefix", str(prefix)]) == 0
    return prefix


@pytest.fixture(scope="module")
def fp32_top1(trained, demo_root, tmp_path_factory):
    """The checkpoint's val top-1 as ``--only-inference`` scores it in float32."""
    top1 = score(trained, "float32", demo_root, tmp_path_factory.mktemp("score") / "fp32.json")
    assert top1 > 80  # well past chance (10%): a model whose INT8 loss can show
    return top1


@pytest.fixture(scope="module")
def quantized(trained, demo_root):
    """Each INT8 model as ``tools/quantize.py`` writes it (in this process): {name: (its files, its manifest)}.
    mxnet (naive) and the two file runtimes at their default names beside the checkpoint, from the same 64
    calibration images; mxnet entropy in a folder of its own from 128."""
    from tools import export_onnx, quantize

    models = {}
    with environ_kept():
        export_onnx.export(trained, EPOCH, image_shape=(3, 32, 32))
        for name, flags in (("mxnet", ["--calib-images", CALIB]),
                            ("mxnet-entropy", ["--calib-mode", "entropy", "--calib-images", ENTROPY_CALIB,
                                               "--output", trained.parent / "entropy" / "m-int8"]),
                            ("onnxruntime", ["--backend", "onnxruntime", "--calib-images", CALIB]),
                            ("openvino", ["--backend", "openvino", "--calib-images", CALIB])):
            assert quantize.main(quantize_args(trained, demo_root, *flags)) == 0, name
    stem = f"{trained}-{EPOCH:04d}"
    files = {"mxnet": [Path(f"{trained}-int8-symbol.json"), Path(f"{trained}-int8-{EPOCH:04d}.params"),
                       Path(f"{trained}-int8-{EPOCH:04d}.json")],
             "mxnet-entropy": [trained.parent / "entropy" / n for n in
                               ("m-int8-symbol.json", f"m-int8-{EPOCH:04d}.params", f"m-int8-{EPOCH:04d}.json")],
             "onnxruntime": [Path(f"{stem}-int8.onnx"), Path(f"{stem}-int8.onnx.json")],
             "openvino": [Path(f"{stem}-int8.xml"), Path(f"{stem}-int8.bin"), Path(f"{stem}-int8.xml.json")]}
    for name, paths in files.items():
        assert all(p.is_file() for p in paths), (name, paths)
        models[name] = (paths, json.loads(paths[-1].read_text()))
    return models


# ------------------------------------------------------------------------------------------------ calibration


@pytest.mark.parametrize("name", ["mxnet", "mxnet-entropy", "onnxruntime", "openvino"])
def test_each_runtime_writes_its_int8_model_with_a_manifest(trained, demo_root, quantized, fp32_top1, name):
    """The files at their names, quantized (oneDNN's quantized convolutions with calibrated ranges, QDQ pairs,
    FakeQuantize), and the manifest: what calibrated it (sorted distinct records of train.rec, as many as
    --calib-images), from which float32 model (its SHA-256), both top-1 scores with INT8 at least 99% of float32,
    which is what --only-inference scores the checkpoint at. Nothing else is left in the folder."""
    paths, meta = quantized[name]
    backend = name.split("-")[0]
    assert (meta["schema"], meta["precision"], meta["runtime"]) == ("rn50-int8/1", "int8", backend)
    q = meta["quantization"]
    mode = {"mxnet": "naive", "mxnet-entropy": "entropy"}.get(name, "nncf-minmax")
    count = ENTROPY_CALIB if name == "mxnet-entropy" else CALIB
    assert (q["mode"], q["images"], q["seed"], Path(q["file"])) == (mode, count, 0, demo_root / "train.rec")
    assert q["bytes"] == (demo_root / "train.rec").stat().st_size
    records = q["records"]
    assert len(records) == count and records == sorted(set(records))
    assert all(isinstance(r, int) and 0 <= r < TRAIN_RECORDS for r in records)

    a = meta["accuracy"]
    assert (Path(a["file"]), a["images"], a["passes"]) == (demo_root / "val.rec", VAL_RECORDS, True)
    assert "accepted_below_rule" not in a
    assert a["top1_float32"] == pytest.approx(fp32_top1, abs=1e-3)  # each runtime scores the float32 model alike
    assert a["top1_int8"] >= 0.99 * a["top1_float32"] and a["ratio"] >= 0.99
    assert a["ratio"] == pytest.approx(a["top1_int8"] / a["top1_float32"], abs=1e-4)

    src = meta["source"]
    assert src["checkpoint"] == f"{trained}-{EPOCH:04d}"
    if backend == "mxnet":
        symbol, params, _ = paths
        assert src["params_sha256"] == sha256(f"{trained}-{EPOCH:04d}.params")
        assert meta["model"] == {"num_layers": 18, "resnet_version": "1.5", "num_classes": 10,
                                 "image_channels": 3, "dtype": "int8"}
        assert meta["files"]["params"] == {"name": params.name, "bytes": params.stat().st_size,
                                           "sha256": sha256(params)}
        nodes = json.loads(symbol.read_text())["nodes"]
        convs = [n for n in nodes if n["op"] == "_sg_mkldnn_conv"]
        assert len(convs) == 20  # ResNet-18: 17 3x3/7x7 convolutions and 3 projections, each fused and quantized
        assert all(n["attrs"].get("quantized") == "true" and "min_calib_range" in n["attrs"] for n in convs)
        assert any(n["op"] == "_contrib_quantize_v2" for n in nodes)
    else:
        onnx_file = Path(f"{trained}-{EPOCH:04d}.onnx")
        assert (Path(src["model_file"]), src["sha256"]) == (onnx_file, sha256(onnx_file))
        model_files = paths[:-1]
        assert meta["files"] == {p.suffix[1:]: {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256(p)}
                                 for p in model_files}
        if backend == "onnxruntime":
            import onnx

            ops = [n.op_type for n in onnx.load(str(paths[0])).graph.node]
            assert ops.count("QuantizeLinear") >= 20 and ops.count("DequantizeLinear") >= 20
            assert "BatchNormalization" not in ops  # folded into the convolutions before quantization
        else:
            assert paths[0].read_text().count('type="FakeQuantize"') >= 20
    leftovers = [f for f in os.listdir(paths[0].parent) if f.endswith(".tmp")]
    assert leftovers == []  # the staging folder is gone


def test_the_same_seed_calibrates_every_runtime_on_the_same_records(quantized):
    records = {name: meta["quantization"]["records"] for name, (_, meta) in quantized.items()}
    assert records["mxnet"] == records["onnxruntime"] == records["openvino"]
    assert records["mxnet-entropy"] != records["mxnet"]  # 128 of them: another draw


def test_calib_seed_draws_the_calibration_records(demo_root, kept_env):
    """--calib-seed picks which training records calibrate: the same seed the same records (in order, distinct,
    within the set), another seed others; the images are those records through the validation preprocessing."""
    import calibration
    import loadgen
    from tools import quantize

    args = quantize.build_parser().parse_args(quantize_args(Path("m"), demo_root, "--calib-seed", "7"))
    assert args.calib_seed == 7
    ns = loadgen.build_parser().parse_args(["--data-root", str(demo_root), *MODEL[:4]])
    dcfg = loadgen.data_config(ns, 8)
    a = calibration.calibration_set(dcfg, demo_root / "train.rec", 8, 7)
    b = calibration.calibration_set(dcfg, demo_root / "train.rec", 8, 7)
    c = calibration.calibration_set(dcfg, demo_root / "train.rec", 8, 8)
    assert a.records == b.records == sorted(set(a.records)) and a.records != c.records
    assert all(0 <= r < TRAIN_RECORDS for r in a.records + c.records)
    lib = calibration.sample_library(dcfg, demo_root / "train.rec", "--data-train")
    lib.load(a.records)
    assert (a.images == lib.batch(a.records)).all() and a.images.shape == (8, 3, 32, 32)
    assert a.describe("naive")["seed"] == 7 and a.describe("naive")["records"] == a.records


@pytest.mark.parametrize("name", ["mxnet", "mxnet-entropy"])
def test_only_inference_int8_scores_the_manifest_top1(quantized, demo_root, tmp_path, name):
    paths, meta = quantized[name]
    prefix = Path(str(paths[0])[:-len("-symbol.json")])
    top1 = score(prefix, "int8", demo_root, tmp_path / "int8.json")
    assert top1 == pytest.approx(meta["accuracy"]["top1_int8"], abs=1e-3)
    report = json.loads((tmp_path / "int8.json").read_text())
    assert (report["status"], report["dtype"]) == ("completed", "int8")


@pytest.mark.parametrize("backend,dtype", [("mxnet", "float32"), ("mxnet", "bfloat16"), ("mxnet", "int8"),
                                           ("onnxruntime", "float32"), ("onnxruntime", "int8"),
                                           ("openvino", "float32"), ("openvino", "bfloat16"), ("openvino", "int8")])
def test_loadgen_accuracy_is_the_scoring_top1(trained, demo_root, quantized, fp32_top1, tmp_path, backend, dtype):
    """LoadGen's AccuracyOnly over the 360 val images (Offline, in this process) gives the top-1 the toolkit scores:
    float32 that of --only-inference (in every runtime), int8 the manifest's (measured by quantize.py through the
    same runtime), mxnet bfloat16 that of --only-inference --dtype bfloat16. The model files are found by their
    default names (--model-prefix, --load-epoch, --dtype)."""
    if dtype == "bfloat16" and not HAS_BF16:
        pytest.skip("no AVX512_BF16 or AMX-BF16 on this CPU")
    prefix = Path(f"{trained}-int8") if (backend, dtype) == ("mxnet", "int8") else trained
    status, s = loadgen_here(tmp_path / "out", "--scenario", "Offline", "--accuracy", "--backend", backend,
                             "--dtype", dtype, "--model-prefix", prefix, "--load-epoch", EPOCH,
                             "--data-root", demo_root, *MODEL)
    assert status == 0
    assert (s["status"], s["mode"], s["model"]["backend"], s["model"]["dtype"]) == \
        ("completed", "AccuracyOnly", backend, dtype)
    a = s["accuracy"]
    assert (a["total"], a["missing"], s["samples"]["empty"]) == (VAL_RECORDS, 0, 0)
    if backend != "mxnet":
        suffix = {"float32": ".onnx", "bfloat16": ".onnx"}.get(dtype, "-int8.onnx" if backend == "onnxruntime"
                                                               else "-int8.xml")
        assert s["model"]["model_file"] == f"{trained}-{EPOCH:04d}{suffix}"
    if dtype == "float32":
        want = fp32_top1
        assert quantized[backend][1]["accuracy"]["top1_float32"] == pytest.approx(want, abs=1e-3)
    elif dtype == "int8":
        want = quantized[backend][1]["accuracy"]["top1_int8"]
    elif backend == "mxnet":
        want = score(trained, "bfloat16", demo_root, tmp_path / "bf16.json")
    else:  # no other scorer runs OpenVINO in bfloat16: its top-1 is float32's, give or take 3 images of 360
        assert s["model"]["precision_hint"] == "bf16"
        assert abs(a["top1"] - fp32_top1) <= 100 * 3 / VAL_RECORDS + 1e-9
        return
    assert a["top1"] == pytest.approx(want, abs=1e-3)


# ------------------------------------------------------------------------------------------------ the 99% rule


def test_int8_below_99_percent_is_refused_and_writes_nothing(trained, demo_root, solid_rec, tmp_path, capsys,
                                                             kept_env):
    """Calibrated on 6 solid-colour images, the activation ranges are far too narrow for the digits: INT8 top-1
    falls far below 99% of float32's. quantize.py says so in one line, exit 1, and writes nothing (no model, no
    staging folder; the checkpoint's folder untouched). --accept-accuracy-loss writes it, and the manifest says
    it fails the rule; a later refusal leaves those files as they were."""
    from tools import quantize

    solid = solid_rec[0] / "train.rec"
    out = tmp_path / "out"
    argv = quantize_args(trained, demo_root, "--data-train", solid, "--calib-images", 6, "--calib-mode", "naive",
                         "--output", out / "m-int8")
    before = listing(trained.parent)
    assert call(quantize.main, argv) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln or "Traceback" in ln]
    assert len(lines) == 1 and re.search(r": error: INT8 top-1 [\d.]+% is [\d.]+% of float32's [\d.]+%, below "
                                         r"MLPerf's 99%: nothing written \(try more --calib-images", lines[0]), lines
    assert not out.exists() or os.listdir(out) == []
    assert listing(trained.parent) == before

    assert call(quantize.main, [*argv, "--accept-accuracy-loss"]) == 0
    written = sorted(os.listdir(out))
    assert written == ["m-int8-0004.json", "m-int8-0004.params", "m-int8-symbol.json"]
    meta = json.loads((out / "m-int8-0004.json").read_text())
    a = meta["accuracy"]
    assert (a["passes"], a["accepted_below_rule"]) == (False, True)
    assert a["ratio"] < 0.9 and a["top1_int8"] < 0.9 * a["top1_float32"]  # far below: the refusal is no accident
    q = meta["quantization"]
    assert (Path(q["file"]), q["images"], q["records"]) == (solid, 6, list(range(6)))
    assert listing(trained.parent) == before

    kept = listing(out)
    capsys.readouterr()
    assert call(quantize.main, argv) == 1
    assert "below MLPerf's 99%: nothing written" in capsys.readouterr().err
    assert listing(out) == kept  # the accepted model is left as it was


# ------------------------------------------------------------------------------------------------ the scenarios


@pytest.mark.parametrize("backend,dtype", [("openvino", "float32"), ("openvino", "int8"), ("onnxruntime", "int8"),
                                           ("mxnet", "int8")])
def test_every_scenario_runs_in_each_runtime(trained, demo_root, quantized, tmp_path, backend, dtype):
    """SingleStream, MultiStream, Server and Offline through LoadGen (in this process), short runs: each completes
    with LoadGen's verdict (INVALID says why), its metric, ordered latencies and every sample answered."""
    prefix = Path(f"{trained}-int8") if backend == "mxnet" else trained
    for scenario in SCENARIOS:
        status, s = loadgen_here(tmp_path / scenario, "--scenario", scenario, *SHORT, "--backend", backend,
                                 "--dtype", dtype, "--model-prefix", prefix, "--load-epoch", EPOCH,
                                 "--data-root", demo_root, *MODEL)
        assert status == 0, scenario
        assert (s["scenario"], s["mode"], s["status"], s["error"]) == (scenario, "PerformanceOnly", "completed",
                                                                       None)
        assert s["result"] == "VALID" or (s["result"] == "INVALID" and s["invalid_reasons"]), s
        assert s["loadgen"]["finished"] and s["accuracy"] is None and s["metric"]["value"] > 0
        lat = s["latency_ns"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        n = s["samples"]
        assert n["issued"] == n["answered"] > 0 and n["empty"] == 0
        assert (s["model"]["backend"], s["model"]["dtype"], s["qsl"]["total"]) == (backend, dtype, 32)
        if backend == "openvino":
            assert s["model"]["precision_hint"] == "f32"  # int8: the layers left in float run in f32
        if backend == "mxnet":
            assert s["model"]["checkpoint"] == f"{trained}-int8-{EPOCH:04d}"
        assert (tmp_path / scenario / "mlperf_log_summary.txt").is_file()


@pytest.mark.e2e
def test_openvino_int8_scenarios_as_a_command(trained, demo_root, quantized, tmp_path):
    """loadgen.py as a process, a comma list: each scenario in its own process, one combined summary (the two that
    the failure and signal tests below do not run; every scenario of every runtime runs in process above)."""
    scenarios = ("SingleStream", "MultiStream")
    res = run([PY, LOADGEN, "--scenario", ",".join(scenarios), "--output", tmp_path, *SHORT, "--backend",
               "openvino", "--dtype", "int8", "--model-prefix", trained, "--load-epoch", EPOCH, "--data-root",
               demo_root, *MODEL], timeout=300)
    assert res.returncode == 0, res.stderr
    assert error_lines(res.stderr, "loadgen.py") == []
    combined = json.loads((tmp_path / "summary.json").read_text())
    assert combined["status"] == "completed" and list(combined["scenarios"]) == list(scenarios)
    for name, s in combined["scenarios"].items():
        assert (s["scenario"], s["status"], s["exit_status"]) == (name, "completed", 0)
        assert s["result"] in ("VALID", "INVALID") and s["samples"]["empty"] == 0 and s["samples"]["answered"] > 0
        assert s["model"]["model_file"] == f"{trained}-{EPOCH:04d}-int8.xml"


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", ["Server", "Offline"])
def test_a_failure_in_openvino_completes_every_sample(trained, demo_root, quantized, tmp_path, scenario):
    """RN50_LOADGEN_FAIL_AFTER=2 raises in the OpenVINO runtime at the third batch of the test: every sample still
    gets an answer, the test ends, exit 1 with one line naming the injected failure."""
    out = tmp_path / "out"
    res = run([PY, LOADGEN, "--scenario", scenario, "--output", out, "--time", "1", "--count", "32", "--qps", "60",
               "--max-batchsize", "4", "--backend", "openvino", "--dtype", "int8", "--model-prefix", trained,
               "--load-epoch", EPOCH, "--data-root", demo_root, *MODEL], env={"RN50_LOADGEN_FAIL_AFTER": "2"},
              timeout=120)
    assert res.returncode == 1, res.stderr
    [line] = error_lines(res.stderr, "loadgen.py")
    assert "the model path (openvino backend) failed: RuntimeError: injected failure (RN50_LOADGEN_FAIL_AFTER=2: " \
           "after 2 batches)" in line
    assert "every sample was completed" in line and "the test ended" in line
    s = json.loads((out / "summary.json").read_text())
    assert (s["status"], s["loadgen"]["finished"]) == ("failed", True) and "injected failure" in s["error"]
    n = s["samples"]
    assert n["issued"] == n["answered"] + n["empty"] and n["empty"] > 0 and 1 <= n["answered"] <= 8


@pytest.mark.e2e
def test_sigint_ends_an_openvino_test(trained, demo_root, quantized, tmp_path):
    out = tmp_path / "out"
    code, err = run_until([PY, LOADGEN, "--scenario", "Server", "--output", out, "--time", "3", "--count", "32",
                           "--qps", "50", "--backend", "openvino", "--model-prefix", trained, "--load-epoch", EPOCH,
                           "--data-root", demo_root, *MODEL], "samples in the QSL", sig=signal.SIGINT, timeout=120)
    assert code == 128 + signal.SIGINT and "Traceback" not in err, err
    assert "SIGINT: stopped the Server test" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["samples"]["issued"] == s["samples"]["answered"] + s["samples"]["empty"]


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("flags,message", [
    (["--data-root", "{tmp}/valonly"],
     "--data-root {tmp}/valonly has no train.rec (tools/prepare_dataset.py writes"),
    (["--data-train", "{tmp}/none.rec"], "--data-train {tmp}/none.rec: file not found"),
    (["--data-train", "{tmp}/noidx/train.rec"], "--data-train {tmp}/noidx/train.rec: its index train.idx is missing"),
    (["--calib-images", "1438"], "--calib-images 1438: {root}/train.rec has only 1437 records"),
    (["--calib-images", "0"], "--calib-images 0: must be at least 1"),
    (["--backend", "openvino", "--calib-mode", "entropy"],
     "--calib-mode entropy is MXNet's; --backend openvino calibrates with NNCF's min-max statistics"),
    (["--backend", "onnxruntime", "--model-prefix", "{tmp}/bare/m"],
     "--model-file {tmp}/bare/m-0004.onnx: file not found (export the checkpoint with tools/export_onnx.py"),
    (["--backend", "openvino", "--model-file", "{p}-0004.params"],
     "--model-file {p}-0004.params: an MXNet checkpoint file, not a model openvino runs"),
    (["--backend", "onnxruntime", "--model-file", "{p}-0004-int8.xml"],
     "--model-file {p}-0004-int8.xml: an OpenVINO IR model; run it with --backend openvino"),
    (["--backend", "openvino", "--model-file", "{p}-0004-int8.xml"],
     "--model-file {p}-0004-int8.xml: an INT8 model (m-0004-int8.xml.json); run it with --dtype int8"),
    (["--model-file", "{p}-0004.onnx"], "--model-file is the ONNX model of --backend onnxruntime or openvino"),
    (["--backend", "openvino", "--output", "{tmp}/out/m.onnx"], "--output {tmp}/out/m.onnx: OpenVINO's IR is an .xml"),
    (["--model-prefix", "{p}-int8"], "{p}-int8-0004.json: an INT8 checkpoint (tools/quantize.py); score it with "
                                     "--dtype int8"),
    (["--data-root", "{tmp}/none"], "--data-root {tmp}/none has no val.rec"),
])
def test_bad_quantize_input_is_one_usage_error_before_any_work(trained, demo_root, quantized, tmp_path, kept_env,
                                                                flags, message):
    from tools import quantize

    (tmp_path / "valonly").mkdir()
    (tmp_path / "noidx").mkdir()
    (tmp_path / "bare").mkdir()
    for name in ("val.rec", "val.idx"):
        (tmp_path / "valonly" / name).symlink_to(demo_root / name)
    (tmp_path / "noidx" / "train.rec").symlink_to(demo_root / "train.rec")
    for suffix in ("-symbol.json", f"-{EPOCH:04d}.params", f"-{EPOCH:04d}.json"):  # a checkpoint not exported
        (tmp_path / "bare" / f"m{suffix}").symlink_to(f"{trained}{suffix}")
    fill = {"tmp": tmp_path, "p": trained, "root": demo_root}
    before = {d: listing(d) for d in (tmp_path, trained.parent, trained.parent / "entropy")}
    with pytest.raises(UsageError) as err:
        quantize.main(quantize_args(trained, demo_root, "--output", tmp_path / "out" / "m-int8.xml",
                                    *[f.format(**fill) for f in flags]))
    assert message.format(**fill) in str(err.value) and "\n" not in str(err.value)
    assert {d: listing(d) for d in before} == before  # nothing written, no staging folder
    if "--output" not in flags:  # the inputs are checked before the output's folder is made
        assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_quantize_command_line_without_calibration_data(trained, demo_root, tmp_path):
    """The command line: exit 2 and nothing but the one line naming --data-train, before any work."""
    res = run([PY, QUANTIZE, *quantize_args(trained, demo_root, "--data-train", tmp_path / "none.rec", "--output",
                                            tmp_path / "out" / "m-int8")], timeout=120)
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"quantize.py: error: --data-train {tmp_path / 'none.rec'}: file not found "
                           "(tools/prepare_dataset.py writes train.rec and val.rec, `make demo-data` the digits' "
                           "set)"), line
    assert not (tmp_path / "out").exists()


def no_manifest_copy(trained: Path, tmp_path: Path) -> Path:
    """The INT8 checkpoint's symbol and params without its manifest (as plain MXNet would save them)."""
    for suffix in ("-symbol.json", f"-{EPOCH:04d}.params"):
        (tmp_path / f"plain-int8{suffix}").symlink_to(f"{trained}-int8{suffix}")
    return tmp_path / "plain-int8"


@pytest.mark.parametrize("which,dtype,extra,message", [
    ("plain", "int8", ["--only-inference"], "plain-int8-0004.params: --dtype int8 takes an INT8 checkpoint with its "
                                            "manifest, and this one has none; make one with tools/quantize.py"),
    ("float32", "int8", ["--only-inference"], "m-0004.json: a float32 checkpoint, not an INT8 one; make its INT8 "
                                              "form with tools/quantize.py --backend mxnet"),
    ("int8", "float32", ["--only-inference"], "m-int8-0004.json: an INT8 checkpoint (tools/quantize.py); score it "
                                              "with --dtype int8"),
    ("int8", "int8", [], "--dtype int8 scores an INT8 checkpoint (tools/quantize.py writes it): add "
                         "--only-inference and --load-epoch"),
])
def test_scoring_int8_needs_the_int8_checkpoint_and_its_manifest(trained, demo_root, quantized, tmp_path, kept_env,
                                                                 which, dtype, extra, message):
    import train

    prefix = {"plain": no_manifest_copy(trained, tmp_path), "float32": trained, "int8": Path(f"{trained}-int8")}
    with pytest.raises(UsageError) as err:
        train.main(["--cpu-devices", "1", "--batch-size", "32", "--num-epochs", "1", "--dtype", dtype, *extra,
                    "--model-prefix", str(prefix[which]), "--load-epoch", str(EPOCH), "--data-root", str(demo_root),
                    *MODEL])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_runner_takes_int8_only_with_only_inference(trained, demo_root, capsys, kept_env):
    argv = ["-n", "1", "-b", "32", "-e", "1", "--dtype", "int8", "--model-prefix", f"{trained}-int8",
            "--load-epoch", str(EPOCH), "--data-root", str(demo_root), *MODEL, "--dry-run"]
    assert call(runner_module().main, argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].endswith(": error: --dtype int8 scores an INT8 checkpoint (tools/quantize.py "
                                                 "writes it): add --only-inference and --load-epoch; training runs "
                                                 "in float32, bfloat16 or float16"), lines
    assert call(runner_module().main, [*argv, "--only-inference"]) == 0
    cmd = capsys.readouterr().out.strip().splitlines()[-1]
    assert "train.py" in cmd and "--dtype int8" in cmd and "--only-inference" in cmd


@pytest.mark.parametrize("flags,message", [
    (["--backend", "onnxruntime", "--model-file", "{p}-0004-int8.xml"],
     "--model-file {p}-0004-int8.xml: an OpenVINO IR model; run it with --backend openvino"),
    (["--backend", "openvino", "--model-file", "{p}-0004.params"],
     "--model-file {p}-0004.params: an MXNet checkpoint file, not a model openvino runs"),
    (["--backend", "onnxruntime", "--dtype", "int8", "--model-file", "{p}-0004.onnx"],
     "--model-file {p}-0004.onnx: --dtype int8 takes an INT8 model with its manifest m-0004.onnx.json, and there "
     "is none"),
    (["--backend", "openvino", "--dtype", "int8", "--model-file", "{p}-0004.onnx"],
     "--dtype int8 takes an INT8 model with its manifest m-0004.onnx.json"),
    (["--backend", "openvino", "--model-file", "{p}-0004-int8.xml"],
     "--model-file {p}-0004-int8.xml: an INT8 model (m-0004-int8.xml.json); run it with --dtype int8"),
    (["--backend", "onnxruntime", "--model-prefix", "{p}", "--load-epoch", "4", "--dtype", "float32",
      "--model-file", "{p}-0004-int8.onnx"], "an INT8 model (m-0004-int8.onnx.json); run it with --dtype int8"),
    (["--backend", "openvino", "--dtype", "int8", "--model-file", "{p}-0004-int8.onnx"],
     "--model-file {p}-0004-int8.onnx: quantized for --backend onnxruntime, not openvino"),
    (["--backend", "onnxruntime", "--dtype", "bfloat16", "--model-file", "{p}-0004.onnx"],
     "--dtype bfloat16: --backend onnxruntime runs float32, int8"),
    (["--backend", "mxnet", "--dtype", "int8", "--model-prefix", "{p}-int8"],
     "--dtype int8 needs the INT8 checkpoint: --model-prefix and --load-epoch"),
    (["--backend", "mxnet", "--dtype", "int8", "--model-prefix", "{p}", "--load-epoch", "4"],
     "m-0004.json: a float32 checkpoint, not an INT8 one"),
    (["--backend", "mxnet", "--dtype", "float32", "--model-prefix", "{p}-int8", "--load-epoch", "4"],
     "m-int8-0004.json: an INT8 checkpoint (tools/quantize.py); score it with --dtype int8"),
    (["--backend", "mxnet", "--dtype", "int8", "--model-prefix", "{tmp}/plain-int8", "--load-epoch", "4"],
     "--dtype int8 takes an INT8 checkpoint with its manifest, and this one has none"),
])
def test_loadgen_refuses_a_model_of_another_runtime_or_precision(trained, demo_root, quantized, tmp_path, capsys,
                                                                 flags, message):
    no_manifest_copy(trained, tmp_path)
    fill = {"p": trained, "tmp": tmp_path}
    status, s = loadgen_here(tmp_path / "out", "--scenario", "Offline", "--accuracy", "--data-root", demo_root,
                             *MODEL, *[f.format(**fill) for f in flags])
    err = capsys.readouterr().err
    assert status == 2 and s == {}, err
    lines = [ln for ln in err.splitlines() if ": error: " in ln or "Traceback" in ln]
    assert len(lines) == 1 and message.format(**fill) in lines[0], lines
