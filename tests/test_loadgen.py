"""loadgen.py: MLPerf Inference LoadGen (the real one) over the toolkit's scoring path (real MXNet, real onnxruntime),
on a ResNet-18 trained for two epochs on the 32 px digits: every scenario, accuracy against --only-inference scoring
and between the backends, a failure in the model path, a signal, bad input, the examples; in process, LoadGen's logs
read without LoadGen or MXNet, the runtimes chosen by name, the plan and the memory fit."""
from __future__ import annotations

import json
import re
import signal
import subprocess

import numpy as np
import pytest

from conftest import PY, ROOT, error_lines, has_gpu, run, run_until

LOADGEN = ROOT / "loadgen.py"
TINY = ["--image-shape", "3,32,32", "--num-classes", "10", "--num-layers", "18"]
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
SHORT = ["--time", "0.5", "--count", "32", "--qps", "100", "--max-batchsize", "8"]  # each scenario in about a second


@pytest.fixture(scope="session")
def trained(demo_root, tmp_path_factory):
    """A ResNet-18 checkpoint (epoch 2) of the digits and its val top-1 as scored by examples/SCORE_FP32.sh
    (``runner --only-inference``, the report's val.top1)."""
    out = tmp_path_factory.mktemp("loadgen_ckpt")
    prefix = out / "model"
    run([ROOT / "runner", "-n", "1", "-b", "64", "-e", "2", "-l", "0.2", "--data-root", demo_root, "--model-prefix",
         prefix, "--warmup-epochs", "1", "--bn-gamma-init0", "--min-random-area", "0.25", "--no-random-mirror",
         "--seed", "0", "--no-val", *TINY], check=True, timeout=600)
    report = out / "score.json"
    run([ROOT / "examples" / "SCORE_FP32.sh", prefix, "2", "--data-root", demo_root, "--report", report, *TINY],
        check=True, timeout=600)
    return prefix, json.loads(report.read_text())["metrics"]["val.top1"][0]


def model_args(trained, demo_root):
    return ["--model-prefix", trained[0], "--load-epoch", "2", "--data-root", demo_root, *TINY]


def loadgen(args, env=None, cwd=ROOT, timeout=300):
    return run([PY, LOADGEN, *args], env=env, cwd=cwd, timeout=timeout)


def summary(out):
    return json.loads((out / "summary.json").read_text())


def official_top1(accuracy_log, val_lst) -> tuple[int, int]:
    """(good, total) as MLPerf's tools/accuracy-imagenet.py computes them with its default --dtype float32: the first
    value of each response, qsl_idx i being the i-th line of the val list."""
    labels = [int(float(line.split("\t")[1])) for line in val_lst.read_text().splitlines() if line.strip()]
    seen, good = set(), 0
    for entry in json.loads(accuracy_log.read_text()):
        if entry["qsl_idx"] in seen:
            continue
        seen.add(entry["qsl_idx"])
        good += int(np.frombuffer(bytes.fromhex(entry["data"]), np.float32)[0]) == labels[entry["qsl_idx"]]
    return good, len(seen)


@pytest.fixture(scope="session")
def onnx_model(trained, tmp_path_factory):
    """The checkpoint exported by tools/export_onnx.py."""
    from tools import export_onnx

    return export_onnx.export(trained[0], 2, tmp_path_factory.mktemp("loadgen_onnx") / "model.onnx",
                              image_shape=(3, 32, 32))


def generated(detail_log) -> dict:
    """LoadGen's own count of what it generated, from its detail log: generated_query_count and
    generated_samples_per_query."""
    out = {}
    for line in detail_log.read_text().splitlines():
        if line.startswith(":::MLLOG"):
            rec = json.loads(line[len(":::MLLOG"):])
            if rec["key"].startswith("generated_"):
                out[rec["key"]] = rec["value"]
    return out


@pytest.fixture(scope="session")
def mxnet_accuracy(trained, demo_root, tmp_path_factory):
    """AccuracyOnly, Offline, all 360 val images, mxnet backend: the summary and the output folder."""
    out = tmp_path_factory.mktemp("loadgen_acc_mxnet")
    res = loadgen(["--scenario", "Offline", "--accuracy", "--output", out, *model_args(trained, demo_root)])
    assert res.returncode == 0, res.stderr
    return summary(out), out


# ------------------------------------------------------------------------------------------------ in process

SERVER_SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Server
Mode     : PerformanceOnly
Completed samples per second    : 47.13
Result is : INVALID
  Performance constraints satisfied : Yes
  Min duration satisfied : Yes
  Min queries satisfied : NO
  Early stopping satisfied: NO
Recommendations:
 * The test exited early, before enough queries were issued.
   See the detailed log for why this may have occurred.
Early Stopping Result:
 * Run unsuccessful.
 * Processed 25 queries.
 * Would need to run at least 434 more queries,
 with the run being successful if every additional
 query were under latency.

================================================
Additional Stats
================================================
Scheduled samples per second : 47.16
Min latency (ns)                : 64636
Max latency (ns)                : 318878
Mean latency (ns)               : 264755
50.00 percentile latency (ns)   : 276360
90.00 percentile latency (ns)   : 302823
95.00 percentile latency (ns)   : 317316
97.00 percentile latency (ns)   : 318878
99.00 percentile latency (ns)   : 318878
99.90 percentile latency (ns)   : 318878

================================================
Test Parameters Used
================================================
samples_per_query : 1
target_qps : 50
target_latency (ns): 100000000
min_duration (ms): 500

No warnings encountered during test.

1 ERROR encountered. See detailed log.
"""  # a LoadGen 6.0.17 summary, as written


def test_parse_summary_keeps_result_reasons_metric_and_units():
    import loadgen_logs

    s = loadgen_logs.parse_summary(SERVER_SUMMARY)
    assert (s["scenario"], s["mode"], s["result"]) == ("Server", "PerformanceOnly", "INVALID")
    assert s["invalid_reasons"] == ["Min queries satisfied: NO", "Early stopping satisfied: NO"]
    assert s["constraints"]["Performance constraints satisfied"] is True
    assert s["recommendations"] == ["The test exited early, before enough queries were issued. See the detailed log "
                                    "for why this may have occurred."]
    assert s["early_stopping"][2] == ("Would need to run at least 434 more queries, with the run being successful if "
                                      "every additional query were under latency.")
    assert s["metric"] == {"name": "Completed samples per second", "value": 47.13, "unit": "samples/s"}
    assert (s["samples_per_second"], s["queries_per_second"], s["scheduled_samples_per_second"]) == (47.13, 47.13,
                                                                                                     47.16)
    assert s["latency_ns"] == {"min": 64636, "max": 318878, "mean": 264755, "p50": 276360, "p90": 302823,
                               "p95": 317316, "p97": 318878, "p99": 318878, "p99.9": 318878}
    assert s["settings"] == {"samples_per_query": 1, "target_qps": 50, "target_latency_ns": 100000000,
                             "min_duration_ms": 500}
    assert (s["loadgen"]["warnings"], s["loadgen"]["errors"]) == (0, 1) and s["early_stopping_ns"] == {}


DETAIL_LOG = "\n".join([
    ':::MLLOG {"key": "loadgen_version", "value": "6.0.17", "metadata": {"is_error": false, "is_warning": false}}',
    ':::MLLOG {"key": "error_invalid_config", "value": "bad qps", "metadata": {"is_error": true}}',
    ':::MLLOG {"key": "warning_generic_message", "value": "short run", "metadata": {"is_warning": true}}',
    ":::MLLOG not json",
    "a line of something else",
])

READ_LOGS = """
import json, sys
from pathlib import Path

import numpy as np

import loadgen_logs

folder = Path(sys.argv[1])
summary = loadgen_logs.parse_summary((folder / "mlperf_log_summary.txt").read_text())
print(json.dumps({"summary": summary, "detail": loadgen_logs.detail_messages(folder / "mlperf_log_detail.txt"),
                  "missing": loadgen_logs.detail_messages(folder / "none.txt"),
                  "accuracy": loadgen_logs.accuracy(folder / "mlperf_log_accuracy.json", np.array([3, 1, 4, 1])),
                  "loaded": sorted({"mxnet", "mlperf_loadgen", "onnxruntime"} & set(sys.modules))}))
"""


def test_loadgen_logs_are_read_without_loadgen_or_mxnet(tmp_path):
    """A process that imports only the log reader parses a summary, a detail log and an accuracy log written here
    (answers float32 as the SUT writes them; a sample answered twice counts once, its first answer); neither
    LoadGen nor MXNet is loaded."""
    (tmp_path / "mlperf_log_summary.txt").write_text(SERVER_SUMMARY)
    (tmp_path / "mlperf_log_detail.txt").write_text(DETAIL_LOG)
    answers = [(0, 3.0), (1, 7.0), (2, 4.0), (0, 5.0)]  # sample 3 unanswered
    (tmp_path / "mlperf_log_accuracy.json").write_text(json.dumps(
        [{"seq_id": i, "qsl_idx": idx, "data": np.array([v], np.float32).tobytes().hex()}
         for i, (idx, v) in enumerate(answers)]))
    res = run([PY, "-c", READ_LOGS, tmp_path])
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["loaded"] == []
    s = got["summary"]
    assert (s["scenario"], s["result"], s["metric"]["value"], s["latency_ns"]["p99.9"]) == \
        ("Server", "INVALID", 47.13, 318878)
    assert got["detail"] == {"error_messages": ["error_invalid_config: bad qps"],
                             "warning_messages": ["warning_generic_message: short run"]}
    assert got["missing"] == {"error_messages": [], "warning_messages": []}
    assert got["accuracy"] == {"top1": 100 * 2 / 3, "good": 2, "total": 3, "missing": 1, "dtype": "float32"}


def test_runtimes_are_chosen_by_name_and_load_their_libraries_only_when_opened():
    code = """
import sys

import loadgen_plan, runtimes

print(sorted({"mxnet", "onnxruntime", "openvino", "mlperf_loadgen"} & set(sys.modules)))
for call in (lambda: runtimes.open_runtime("tensorrt", None, None, 1, 1), lambda: runtimes.open_session("mxnet", "x")):
    try:
        call()
    except ValueError as err:
        print(err)
print(sorted({"mxnet", "onnxruntime", "openvino"} & set(sys.modules)), sorted(runtimes.RUNTIMES))
"""
    res = run([PY, "-c", code])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["[]", "no runtime 'tensorrt'; the runtimes are mxnet, onnxruntime, openvino",
                                       "the mxnet runtime runs checkpoints, not model files",
                                       "[] ['mxnet', 'onnxruntime', 'openvino']"]


def test_the_fail_hook_counts_the_test_batches_only(monkeypatch):
    import runtimes
    from common import UsageError

    monkeypatch.setenv("RN50_LOADGEN_FAIL_AFTER", "2")
    hook = runtimes.FailHook()
    hook.check()  # the warm-up: not counted
    hook.armed = True
    hook.check()
    hook.check()
    with pytest.raises(RuntimeError, match=r"^injected failure \(RN50_LOADGEN_FAIL_AFTER=2: after 2 batches\)$"):
        hook.check()
    monkeypatch.setenv("RN50_LOADGEN_FAIL_AFTER", "two")
    with pytest.raises(UsageError, match="^RN50_LOADGEN_FAIL_AFTER=two: expected a number of batches$"):
        runtimes.FailHook()


def test_scenario_names_are_checked():
    import loadgen_plan
    from common import UsageError

    assert loadgen_plan.parse_scenarios("offline, Server") == ["Offline", "Server"]
    with pytest.raises(UsageError, match="--scenario Single: unknown scenario Single; choose from SingleStream"):
        loadgen_plan.parse_scenarios("Single")
    with pytest.raises(UsageError, match="named twice"):
        loadgen_plan.parse_scenarios("Offline,offline")


def test_bench_server_search_finds_the_highest_valid_rate():
    """tools/bench_loadgen.py's bisection, over a stand-in for LoadGen's verdict (VALID up to 13.7 QPS)."""
    from tools import bench_loadgen

    calls = []

    def run(qps):
        calls.append(qps)
        return {"result": "VALID" if qps <= 13.7 else "INVALID", "latency_ns": {"p99": 1e8},
                "samples_per_second": qps, "invalid_reasons": [] if qps <= 13.7 else ["Early stopping satisfied: NO"]}

    found = bench_loadgen.server_search(run, 40.0, 6)
    assert calls[0] == 20.0 and len(calls) == 6 and found["best"]["qps"] <= 13.7 < found["best"]["qps"] + 40 / 2 ** 6
    assert bench_loadgen.server_search(lambda q: {**run(q), "result": "INVALID"}, 40.0, 3)["best"] is None
    assert bench_loadgen.server_time(10.0, 15.0) == 60.0 and bench_loadgen.server_time(100.0, 15.0) == 15.0
    assert bench_loadgen.server_time(1.0, 15.0) == bench_loadgen.SERVER_MAX_S


# ------------------------------------------------------------------------------------------------ the scenarios


@pytest.mark.e2e
def test_every_scenario_runs_through_loadgen(trained, demo_root, tmp_path):
    """A comma list: each scenario in its own process, LoadGen's logs in a folder each, one combined summary with
    the scenario, mode, VALID/INVALID and why, and the scenario's metric."""
    res = loadgen(["--scenario", ",".join(SCENARIOS), "--output", tmp_path, *SHORT, *model_args(trained, demo_root)])
    assert res.returncode == 0, res.stderr
    assert error_lines(res.stderr, "loadgen.py") == [] and "far beyond" not in res.stderr
    combined = summary(tmp_path)
    assert combined["schema"] == "rn50-loadgen/1" and combined["status"] == "completed"
    assert list(combined["scenarios"]) == list(SCENARIOS)
    for name, s in combined["scenarios"].items():
        folder = tmp_path / name
        assert s == {**summary(folder), "exit_status": 0}
        assert (s["scenario"], s["mode"], s["status"], s["error"]) == (name, "PerformanceOnly", "completed", None)
        assert s["result"] in ("VALID", "INVALID") and s["loadgen"]["finished"]
        assert s["result"] == "VALID" or s["invalid_reasons"], s  # INVALID says why
        assert all(isinstance(ok, bool) for ok in s["constraints"].values()) and s["constraints"]
        text = (folder / "mlperf_log_summary.txt").read_text()
        assert f"Scenario : {name}" in text and f"Result is : {s['result']}" in text
        assert {"mlperf_log_detail.txt", "mlperf_log_accuracy.json"} <= set(s["files"])
        lat = s["latency_ns"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert s["samples"]["issued"] == s["samples"]["answered"] > 0 and s["samples"]["empty"] == 0
        assert s["qsl"]["total"] == 32 and s["model"]["checkpoint"].endswith("model-0002")
        assert s["settings"]["min_duration_ms"] == 500
        assert s["settings"]["min_query_count"] == (1 if name == "Offline" else 32)  # Offline: one query
        assert s["accuracy"] is None and s["metric"]["value"] > 0
        # the plan the memory and duration checks use is what LoadGen generated (Server's arrivals: Poisson)
        made, plan = generated(folder / "mlperf_log_detail.txt"), s["plan"]
        assert plan["samples_per_query"] == made["generated_samples_per_query"]
        assert plan["queries"] == pytest.approx(made["generated_query_count"], rel=0.3 if name == "Server" else 0)
        assert 0 < plan["expected_s"] and plan["batch"] == {"SingleStream": 1, "MultiStream": 8}.get(name, 8)
        assert 0 < plan["memory_bytes"] < 4 << 30
    ss, ms, server, offline = (combined["scenarios"][n] for n in SCENARIOS)
    assert ss["metric"]["name"].startswith("90.0th percentile latency") and ss["metric"]["unit"] == "ns"
    assert ss["metric"]["value"] == ss["latency_ns"]["p90"] > 0 and ss["samples_per_second"] > 0
    if ss["result"] == "VALID":  # enough queries for early stopping: its p90 estimate
        assert ss["early_stopping_ns"]["90.0th"] >= ss["latency_ns"]["p90"]
    assert ms["metric"]["name"].startswith("99.0th percentile latency") and ms["settings"]["samples_per_query"] == 8
    assert ms["samples_per_second"] == pytest.approx(8 * ms["queries_per_second"])
    assert server["metric"]["unit"] == "samples/s" and server["samples_per_second"] > 0
    assert server["settings"]["target_qps"] == 100 and server["scheduled_samples_per_second"] > 0
    assert offline["metric"]["name"] == "Samples per second" and offline["samples_per_second"] > 0
    assert offline["queries_per_second"] is None and offline["settings"]["samples_per_query"] >= 32  # --count


# ------------------------------------------------------------------------------------------------ accuracy


@pytest.mark.e2e
def test_accuracy_equals_score_fp32(trained, demo_root, mxnet_accuracy):
    """AccuracyOnly over the 360 val images gives exactly the top-1 that examples/SCORE_FP32.sh reports for the
    checkpoint, and MLPerf's accuracy-imagenet.py (float32 answers) would count the same images right."""
    s, out = mxnet_accuracy
    a = s["accuracy"]
    assert (a["total"], a["missing"], a["dtype"]) == (360, 0, "float32")
    assert a["top1"] == pytest.approx(trained[1], abs=1e-9) and a["top1"] > 20  # two epochs: well past chance
    assert official_top1(out / "mlperf_log_accuracy.json", demo_root / "val.lst") == (a["good"], 360)
    assert (s["mode"], s["result"], s["samples"]["empty"]) == ("AccuracyOnly", None, 0)


@pytest.mark.e2e
def test_batches_of_any_size_answer_each_sample_as_batch_1_does(trained, demo_root, tmp_path):
    """45 samples at --max-batchsize 32 run as 32 and 13 = 8 + 4 + 1 (bound sizes, no padding): every answer is
    the one a batch-1 run gives for the same sample."""
    answers = {}
    for batch in (32, 1):
        out = tmp_path / f"b{batch}"
        res = loadgen(["--scenario", "Offline", "--accuracy", "--count", "45", "--max-batchsize", str(batch),
                       "--output", out, *model_args(trained, demo_root)])
        assert res.returncode == 0, res.stderr
        log = json.loads((out / "mlperf_log_accuracy.json").read_text())
        answers[batch] = {e["qsl_idx"]: e["data"] for e in log}
    assert len(answers[1]) == 45 and answers[32] == answers[1]


@pytest.mark.e2e
def test_onnxruntime_backend_gives_the_same_top1(trained, demo_root, mxnet_accuracy, onnx_model, tmp_path):
    onnx = onnx_model
    out = tmp_path / "out"
    res = loadgen(["--scenario", "Offline", "--accuracy", "--backend", "onnxruntime", "--model-file", onnx, "--output",
                   out, *model_args(trained, demo_root)])
    assert res.returncode == 0, res.stderr
    s = summary(out)
    assert s["model"]["backend"] == "onnxruntime" and s["model"]["model_file"] == str(onnx)
    assert s["accuracy"] == mxnet_accuracy[0]["accuracy"]


# ------------------------------------------------------------------------------------------------ faults


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", ["Server", "Offline"])
def test_failure_in_the_model_path_completes_every_sample(trained, demo_root, tmp_path, scenario):
    """RN50_LOADGEN_FAIL_AFTER=2 raises in the backend at the third batch of the test: every sample still gets an
    answer (LoadGen would wait for ever otherwise), the test ends, the exit is 1 with one line, no crash. An
    audit.config in the working directory is reported before the run."""
    (tmp_path / "audit.config").write_text("# nothing to override\n")
    out = tmp_path / "out"
    res = loadgen(["--scenario", scenario, "--output", out, "--time", "1", "--count", "32", "--qps", "60",
                   "--max-batchsize", "4", *model_args(trained, demo_root)], env={"RN50_LOADGEN_FAIL_AFTER": "2"},
                  cwd=tmp_path, timeout=120)
    assert res.returncode == 1, res.stderr  # not a signal (negative), not 139
    [line] = error_lines(res.stderr, "loadgen.py")
    assert "injected failure (RN50_LOADGEN_FAIL_AFTER=2: after 2 batches)" in line and "mxnet backend" in line
    assert "every sample was completed" in line and "the test ended" in line
    assert f"{tmp_path / 'audit.config'} exists: LoadGen applies it" in res.stderr
    s = summary(out)
    assert (s["status"], s["loadgen"]["finished"]) == ("failed", True) and "injected failure" in s["error"]
    n = s["samples"]
    assert n["issued"] == n["answered"] + n["empty"] and n["empty"] > 0 and 1 <= n["answered"] <= 8
    assert "Found Audit Config file" in (out / "mlperf_log_detail.txt").read_text()  # LoadGen did apply it


@pytest.mark.e2e
def test_a_record_that_does_not_decode_is_one_line_and_exit_4(trained, demo_root, tmp_path):
    """A JPEG whose headers are broken passes the start-up scan (DALI's backends check signatures only) and fails
    when LoadGen has it loaded: the validation pass's line naming the record, every sample answered, exit 4."""
    from conftest import copy_set

    bad = copy_set(demo_root, tmp_path / "bad", fault="bad-header", split="val", record=5)
    out = tmp_path / "out"
    res = loadgen(["--scenario", "Offline", "--accuracy", "--count", "16", "--output", out,
                   *model_args(trained, demo_root), "--data-root", bad], timeout=120)
    assert res.returncode == 4, res.stderr
    [line] = error_lines(res.stderr, "loadgen.py")
    assert f"the validation set {bad / 'val.rec'}: record 5 (key " in line and "cannot be decoded" in line
    s = summary(out)
    assert s["status"] == "failed" and s["samples"] == {"issued": 16, "answered": 0, "empty": 16}


@pytest.mark.e2e
def test_sigterm_ends_the_test_cleanly(trained, demo_root, tmp_path):
    out = tmp_path / "out"
    code, err = run_until([PY, LOADGEN, "--scenario", "Server", "--output", out, "--time", "3", "--count", "32",
                           "--qps", "50", *model_args(trained, demo_root)], "samples in the QSL", timeout=120)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err
    assert "SIGTERM: stopped the Server test" in err
    s = summary(out)
    assert s["status"] == "interrupted" and s["samples"]["issued"] == s["samples"]["answered"] + s["samples"]["empty"]


@pytest.mark.e2e
@pytest.mark.parametrize("args,message", [
    (["--data-root", "{empty}"], "has no val.rec (make it with tools/prepare_dataset.py)"),
    (["--scenario", "Offline,Streaming"], "--scenario Offline,Streaming: unknown scenario Streaming; choose from"),
    (["--dtype", "float16"], "--dtype float16 needs a GPU"),
    (["--count", "361"], "--count 361: "),
    (["--backend", "onnxruntime", "--model-file", "{empty}/none.onnx"],
     "none.onnx: file not found (export the checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(trained, demo_root, tmp_path, args, message):
    if "float16" in args and has_gpu():
        pytest.skip("this machine has a GPU")
    argv = [a.replace("{empty}", str(tmp_path)) for a in args]
    res = loadgen([*model_args(trained, demo_root), "--output", tmp_path / "out", *argv], timeout=120)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == error_lines(res.stderr, "loadgen.py")  # that one line, nothing else
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.e2e
def test_user_conf_overrides_the_flags(tmp_path):
    """--user-conf: LoadGen's mlperf.conf (ResNet-50's 600 s) and the file over the flags; a dry run reads no data."""
    conf = tmp_path / "user.conf"
    conf.write_text("resnet50.Offline.target_qps = 1234\n")
    res = loadgen(["--scenario", "Offline", "--qps", "5", "--time", "1", "--user-conf", conf, "--data-root",
                   tmp_path / "none", "--dry-run"], timeout=120)
    assert res.returncode == 0, res.stderr
    settings = res.stdout.splitlines()[0]
    assert "offline_expected_qps=1234 " in settings and "min_duration_ms=600000 " in settings
    assert "min_query_count=24576 " in settings and "performance_sample_count_override=1024" in settings


# ------------------------------------------------------------------------------------------------ fitting the machine


def planned(scenario, *flags, total=32, loaded=32):
    """(config, model spec, TestPlan) of the flags, through LoadGen's own TestSettings."""
    import mlperf_loadgen as lg

    import loadgen
    import loadgen_plan
    from common import config_from

    args = loadgen.build_parser().parse_args([*TINY, "--data-root", "unused", *flags])
    cfg = config_from(loadgen_plan.LoadGenConfig, args)
    settings = loadgen_plan.make_settings(lg, cfg, scenario)
    return cfg, loadgen.model_spec(args, 0), loadgen_plan.plan_test(settings, scenario, cfg.accuracy, total, loaded)


def test_the_plan_follows_loadgen_settings():
    """What LoadGen generates up front: Offline one query of max(min_query_count, 1.1 x time x qps), all queued at
    once; Server time x qps arrivals; SingleStream and MultiStream twice the time's worth of expected latencies."""
    plan = planned("Offline", "--qps", "1000", "--time", "2")[2]
    assert (plan.queries, plan.per_query, plan.queued) == (1, 2200, 2200)
    assert plan.loadgen_bytes >= 316 * 2200  # measured with a SUT that answers at once
    assert planned("Offline", "--qps", "1000", "--time", "2", "--count", "5000")[2].per_query == 5000
    plan = planned("Server", "--qps", "50", "--time", "2", "--count", "32")[2]
    assert (plan.queries, plan.per_query, plan.queued) == (101, 1, 101)
    assert planned("SingleStream", "--expected-latency", "0.01", "--time", "1")[2].queries == 201
    plan = planned("MultiStream", "--samples-per-query", "4", "--expected-latency", "0.1", "--time", "1")[2]
    assert (plan.queries, plan.per_query, plan.queued) == (100, 4, 0)  # LoadGen's min_query_count 100
    plan = planned("Offline", "--accuracy", "--qps", "1e9", total=360, loaded=100)[2]
    assert (plan.queries, plan.per_query) == (4, 100)  # every sample once, a loaded set a query


@pytest.mark.parametrize("scenario,flags,head,fits", [
    ("Offline", ["--max-batchsize", "100000"], "--max-batchsize 100000: the Offline test needs about ",
     "the largest --max-batchsize that fits is about "),
    ("Offline", ["--backend", "onnxruntime", "--model-file", "x.onnx", "--max-batchsize", "4096", "--threads", "8"],
     "--max-batchsize 4096 with --threads 8: ", "the largest --max-batchsize that fits with --threads 8 is about "),
    ("Offline", ["--qps", "1e8", "--time", "10"], "--qps 1e+08: ", "the largest --qps that fits is about "),
    ("Server", ["--qps", "1e8", "--time", "10"], "--qps 1e+08: ", "the largest --qps that fits is about "),
    ("SingleStream", ["--expected-latency", "1e-9", "--time", "60"], "--expected-latency 1e-09: ",
     "the smallest --expected-latency that fits is about "),
    ("MultiStream", ["--expected-latency", "1e-9", "--time", "60"], "--expected-latency 1e-09: ",
     "the smallest --expected-latency that fits is about "),
])
def test_a_test_over_the_memory_budget_names_the_flag_and_what_fits(scenario, flags, head, fits):
    """Against a 2 GiB budget: the one line names the flag of the part to shrink and a value that fits, and that
    value does fit (the next one up, or down, does not)."""
    import loadgen_plan
    from common import UsageError

    budget = 2 << 30
    cfg, spec, plan = planned(scenario, *flags)
    need = loadgen_plan.memory_need(spec, cfg, scenario, plan.per_query)
    with pytest.raises(UsageError) as err:
        loadgen_plan.check_fits(need, plan, cfg, 32, budget, budget, "a test budget")
    line = str(err.value)
    assert line.startswith(head) and "\n" not in line and "2 GiB are available (a test budget)" in line, line
    assert fits in line, line
    value = float(re.search(re.escape(fits) + r"([0-9.e+-]+)", line)[1])
    flag = "--" + fits.split("--")[1].split()[0]
    if flag == "--max-batchsize":
        fitting, too_much = str(int(value)), str(int(value) + 1)
    elif flag == "--expected-latency":  # the smallest that fits, to 3 significant digits
        fitting, too_much = f"{value * 1.01:.6g}", f"{value * 0.95:.6g}"
    else:
        fitting, too_much = f"{value * 0.99:.6g}", f"{value * 1.05:.6g}"
    cfg, spec, plan = planned(scenario, *flags, flag, fitting)
    assert loadgen_plan.check_fits(need, plan, cfg, 32, budget, budget, "a test budget") <= budget
    cfg, spec, plan = planned(scenario, *flags, flag, too_much)
    with pytest.raises(UsageError, match=f"^{flag} "):
        loadgen_plan.check_fits(need, plan, cfg, 32, budget, budget, "a test budget")


def test_a_test_within_the_budget_passes_with_its_estimate():
    import loadgen_plan

    cfg, spec, plan = planned("Offline", "--qps", "1000", "--time", "1")
    need = loadgen_plan.memory_need(spec, cfg, "Offline", 8)
    total = loadgen_plan.check_fits(need, plan, cfg, 32, 2 << 30, 2 << 30, "a test budget")
    assert total == need.fixed + need.batches(32, 1) + 32 * 3 * 32 * 32 * 4 + plan.loadgen_bytes
    assert need.batches(32, 4) > need.batches(32, 1) and need.batches(64, 1) > need.batches(32, 1)


@pytest.mark.parametrize("scenario,flags,batch,batch_s,far,words", [
    ("Offline", ["--qps", "10000", "--time", "10"], 8, 0.1, True,
     ["one query of 110000 samples", "at 80 samples/s", "about 23 min", "minimum duration of 10 s (--time)",
      "lower --qps 10000 to about 80"]),
    ("Server", ["--qps", "10000", "--time", "1", "--count", "32"], 8, 0.1, True,
     ["10001 queries at 10000 a second", "about 2 min", "lower --qps 10000 to about 80 or less"]),
    ("MultiStream", ["--samples-per-query", "4096", "--count", "32", "--time", "1"], 32, 0.05, True,
     ["32 queries (min_query_count) of 4096 samples one after the other", "about 3 min",
      "lower --samples-per-query 4096 to about 20 (or --count)"]),
    ("SingleStream", ["--count", "300", "--time", "1"], 1, 0.2, True, ["about 60 s", "lower --count to about 5"]),
    ("SingleStream", ["--count", "32", "--time", "1"], 1, 0.01, False, []),
    ("Offline", ["--qps", "100", "--time", "10"], 8, 0.1, False, []),  # 1100 samples at 80/s: 14 s
    ("Offline", ["--accuracy", "--qps", "1"], 8, 1.0, False, []),  # an accuracy run takes what it takes
])
def test_the_expected_duration_and_its_warning(scenario, flags, batch, batch_s, far, words):
    import loadgen_plan

    plan = planned(scenario, *flags, total=360, loaded=360)[2]
    seconds = loadgen_plan.expected_seconds(plan, batch, batch_s)
    assert loadgen_plan.far_beyond(plan, seconds) == far
    line = loadgen_plan.duration_warning(plan, seconds, batch, batch_s)
    assert all(w in line for w in words), line


@pytest.mark.e2e
@pytest.mark.parametrize("args,message", [
    (["--max-batchsize", "10000000"], "--max-batchsize 10000000: the Offline test needs about "),
    (["--backend", "onnxruntime", "--model-file", "{onnx}", "--max-batchsize", "1000000", "--threads", "4"],
     "--max-batchsize 1000000 with --threads 4: the Offline test needs about "),
    (["--qps", "1e10", "--time", "10"], "--qps 1e+10: the Offline test needs about "),
    (["--scenario", "Server", "--qps", "1e10", "--time", "10"], "--qps 1e+10: the Server test needs about "),
    (["--scenario", "SingleStream", "--expected-latency", "1e-9", "--time", "600"],
     "--expected-latency 1e-09: the SingleStream test needs about "),
])
def test_a_test_that_cannot_fit_is_one_line_and_exit_2_before_any_work(trained, demo_root, onnx_model, tmp_path,
                                                                      args, message):
    """A batch (times the threads) or a plan of LoadGen's (Offline's one query, Server's arrivals, SingleStream's
    queries) that cannot fit in memory: one line with what fits, exit 2, before anything is loaded or written."""
    argv = [a.replace("{onnx}", str(onnx_model)) for a in args]
    res = loadgen(["--scenario", "Offline", *model_args(trained, demo_root), "--output", tmp_path / "out", *argv],
                  timeout=120)
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"loadgen.py: error: {message}") and re.search(r"that fits[\w -]* is about \d", line), line
    assert "are available (" in line and "of which is kept free" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("args,fix", [
    (["--scenario", "Offline", "--qps", "1e6"], "lower --qps 1e+06 to about "),
    (["--scenario", "MultiStream", "--samples-per-query", "65536", "--expected-latency", "1"],
     "lower --samples-per-query 65536 to about "),
])
def test_a_test_far_beyond_time_is_warned_of_before_it_starts(trained, demo_root, tmp_path, args, fix):
    """Offline's --qps or MultiStream's --samples-per-query far beyond the machine: one warning line with the
    expected duration and the flag to lower, before LoadGen starts (the test is then stopped)."""
    code, err = run_until([PY, LOADGEN, *model_args(trained, demo_root), "--output", tmp_path, "--time", "1",
                           "--count", "32", *args], "far beyond its minimum duration", timeout=120)
    [line] = [ln for ln in err.splitlines() if "far beyond" in ln]
    assert " WARNING " in line and "the test takes about " in line, line
    assert f"minimum duration of 1 s (--time); {fix}" in line, line
    assert code == 128 + signal.SIGTERM and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ examples


@pytest.mark.e2e
def test_gpu_examples_dry_run():
    """LOADGEN_<scenario>.sh: the performance run, then the accuracy run, FP16 as trained by RN50_FP16_*GPU.sh."""
    procs = {s: subprocess.Popen([ROOT / "examples" / f"LOADGEN_{s}.sh", "runs/x/model", "7", "--dry-run",
                                  "--assume-gpus", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for s in SCENARIOS}
    expected = {"SingleStream": "single_stream_expected_latency_ns=2000000",
                "MultiStream": "multi_stream_samples_per_query=8",
                "Server": "server_target_qps=1500 server_target_latency_ns=15000000",
                "Offline": "offline_expected_qps=2500"}
    for scenario, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        perf, perf_cmd, acc, acc_cmd = stdout.strip().splitlines()
        assert perf.startswith(f"{scenario} PerformanceOnly: mxnet float16 on gpu, ResNet-50 runs/x/model-0007")
        assert acc.startswith(f"{scenario} AccuracyOnly: ")
        assert "min_duration_ms=600000" in perf and expected[scenario] in perf
        for cmd in (perf_cmd, acc_cmd):
            assert "--dtype float16" in cmd and "--conv-layout NHWC" in cmd and "--image-shape 4,224,224" in cmd
            assert "--dry-run" not in cmd and "--assume-gpus" not in cmd
        assert f"--output runs/loadgen/{scenario}/performance" in perf_cmd and "--accuracy" not in perf_cmd
        assert acc_cmd.endswith(f"--accuracy --output runs/loadgen/{scenario}/accuracy")
    res = run([ROOT / "examples" / "LOADGEN_Offline.sh"])
    assert res.returncode == 2 and "usage: examples/LOADGEN_Offline.sh" in res.stderr


@pytest.mark.e2e
def test_cpu_example_runs_performance_then_accuracy(trained, demo_root, tmp_path):
    res = run([ROOT / "examples" / "LOADGEN_CPU.sh", "Offline", trained[0], "2", "--data-root", demo_root, *TINY,
               *SHORT], env={"OUT": str(tmp_path)}, timeout=300)
    assert res.returncode == 0, res.stderr
    perf, acc = summary(tmp_path / "performance"), summary(tmp_path / "accuracy")
    assert (perf["mode"], perf["status"], acc["mode"], acc["status"]) == \
        ("PerformanceOnly", "completed", "AccuracyOnly", "completed")
    assert perf["samples_per_second"] > 0 and acc["accuracy"]["total"] == 32
