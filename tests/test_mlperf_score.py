"""tools/mlperf_score.py: MLPerf ResNet result sets made by hand (our layout and another submitter's), scored with
mlperf-logging's real compliance and RCP checkers and compared with its result summarizer; the rules of a valid set
(compliant logs, distinct seeds, convergence, 5 runs), each broken by one log; bad input; the driver's flags, and
its run loop with a stand-in runner (the toolkit's end-to-end run belongs to test_mlperf.py)."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from mlperf_logging.mllog import constants as C

from common import run_main
from conftest import PY, ROOT
from tools import mlperf_score

TOOL = ROOT / "tools" / "mlperf_score.py"
T0 = 1_714_000_000_000  # ms, a time in the v4.0 round


def write_log(path: Path, *, minutes=30.0, epochs=35, accuracy=0.7601, status=C.SUCCESS, division=C.CLOSED,
              batch=3264, seed=1, opt_name=C.LARS, style="ours", drop=()) -> Path:
    """A closed-division LARS ResNet log (every key ruleset 4.0.0 asks for) that reaches ``accuracy`` at its last
    evaluation, epoch ``epochs`` (evaluations every 4 epochs before it), ``minutes`` from run_start to run_stop.

    ``style="ours"``: one record a line, epoch_start/epoch_stop. ``style="other"``: as mpirun/srun leave another
    submitter's log: a rank prefix on every line, program output between them, one init_start per rank (8), block
    keys only, the submission keys after init_start. ``status=None`` leaves run_stop out; ``drop`` leaves keys out."""
    records = []

    def log(key, value=None, t=0.0, event=C.POINT_IN_TIME, **meta):
        if key not in drop:
            records.append({"namespace": "", "time_ms": round(t, 3), "event_type": event, "key": key,
                            "value": value, "metadata": {"file": "train.py", "lineno": 100 + len(records), **meta}})

    for rank in range(8 if style == "other" else 1):
        log(C.INIT_START, None, T0 + rank, C.INTERVAL_START)
    for key, value in [(C.SUBMISSION_ORG, "Example"), (C.SUBMISSION_PLATFORM, "8xEXAMPLE"),
                       (C.SUBMISSION_DIVISION, division), (C.SUBMISSION_STATUS, C.ONPREM),
                       (C.SUBMISSION_BENCHMARK, C.RESNET), (C.CACHE_CLEAR, True), (C.SEED, seed),
                       (C.GLOBAL_BATCH_SIZE, batch), (C.GRADIENT_ACCUMULATION_STEPS, 1), (C.OPT_NAME, opt_name),
                       (C.LARS_EPSILON, 0.0), (C.LARS_OPT_WEIGHT_DECAY, 5e-5), (C.LARS_OPT_MOMENTUM, 0.9),
                       (C.LARS_OPT_BASE_LEARNING_RATE, 10.5), (C.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, 2),
                       (C.LARS_OPT_LR_DECAY_STEPS, 37), (C.LARS_OPT_END_LR, 1e-4), (C.LARS_OPT_LR_DECAY_POLY_POWER, 2)]:
        log(key, value, T0 + 2_000)
    start = T0 + 240_000  # 4 minutes of initialization, off the clock
    log(C.INIT_STOP, None, start - 500, C.INTERVAL_END)
    log(C.RUN_START, None, start, C.INTERVAL_START)
    log(C.TRAIN_SAMPLES, 1281167, start + 5)
    log(C.EVAL_SAMPLES, 50000, start + 5)
    per_epoch = (minutes * 60_000 - 100) / epochs
    evals = list(range(epochs, 0, -4))[::-1]
    first = 1
    for i, e in enumerate(evals):
        t = start + 50 + per_epoch * e
        if style == "other":
            log(C.BLOCK_START, None, start + 50 + per_epoch * (first - 1), C.INTERVAL_START,
                first_epoch_num=first, epoch_count=e - first + 1)
        else:
            for ep in range(first, e + 1):
                log(C.EPOCH_START, None, start + 50 + per_epoch * (ep - 1), C.INTERVAL_START, epoch_num=ep)
                log(C.EPOCH_STOP, None, start + 40 + per_epoch * ep, C.INTERVAL_END, epoch_num=ep)
        log(C.EVAL_START, None, t - 30, C.INTERVAL_START, epoch_num=e)
        log(C.EVAL_STOP, None, t - 20, C.INTERVAL_END, epoch_num=e)
        log(C.EVAL_ACCURACY, round(accuracy - 0.02 * (len(evals) - 1 - i), 5), t - 10, epoch_num=e)
        if style == "other":
            log(C.BLOCK_STOP, None, t - 5, C.INTERVAL_END, first_epoch_num=first)
        first = e + 1
    if status is not None:
        log(C.RUN_STOP, None, start + minutes * 60_000, C.INTERVAL_END, status=status)
    lines = []
    for i, rec in enumerate(records):
        line = ":::MLLOG " + json.dumps(rec)
        if style == "other":
            line = (f"[1,0]<stdout>:{line}" if i % 2 else f"0: {line}")
            if i % 7 == 0:
                lines.append(f"[1,0]<stderr>:epoch {i}: loss 4.2 (not an MLLOG line)")
        lines.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_set(folder: Path, runs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, kw in enumerate(runs):
        write_log(folder / f"result_{i}.txt", **{"seed": i + 1, **kw})
    return folder


def score(argv) -> tuple[int, str, str]:
    """mlperf_score's main as its command line runs it (run_main), in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = run_main(mlperf_score.main, [str(a) for a in argv])
        except SystemExit as e:  # argparse's errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def summarizer_score(folder: Path):
    """mlperf-logging's own olympic score of the folder (result_summarizer)."""
    from mlperf_logging.result_summarizer import result_summarizer

    with redirect_stdout(io.StringIO()):
        return result_summarizer._compute_strong_score_standalone(C.RESNET, "example", False, str(folder),
                                                                  "training", "4.0.0")[0]


# --- scored sets, made once per module --------------------------------------------------------------------------------

FIVE = [dict(minutes=30.0), dict(minutes=31.5, style="other"), dict(minutes=29.0),
        dict(minutes=33.0, epochs=39, style="other"), dict(minutes=30.5, epochs=35)]
ONE_ABORTED = [dict(minutes=30.0), dict(minutes=31.5, style="other"), dict(minutes=41.0, epochs=37, accuracy=0.7584,
                                                                             status=C.ABORTED),
               dict(minutes=29.0), dict(minutes=30.5, style="other")]
ABORTED_OTHER = dict(minutes=41.0, epochs=37, accuracy=0.7584, status=C.ABORTED, style="other")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """name -> (folder, status, stdout, stderr, json) for the sets most tests read."""
    base = tmp_path_factory.mktemp("sets")
    sets = {
        "five": FIVE,
        "one_aborted": ONE_ABORTED,
        "two_aborted": [*FIVE[:3], dict(minutes=40.0, accuracy=0.75, status=C.ABORTED),
                        dict(minutes=41.0, epochs=39, accuracy=0.756, status=C.ABORTED, style="other")],
        "no_batch": [*FIVE[:4], dict(minutes=28.0, drop=(C.GLOBAL_BATCH_SIZE,))],
        "open": [dict(division=C.OPEN, batch=64, minutes=m) for m in (300, 310, 320, 330)]
                + [dict(division=C.OPEN, batch=64, minutes=200, accuracy=0.70, status=C.ABORTED)],
        "four": FIVE[:4],
        "bs64_36": [dict(batch=64, epochs=36, minutes=600 + i) for i in range(5)],
        "bs64_30": [dict(batch=64, epochs=30, minutes=600 + i) for i in range(5)],
        "bs3264_30": [dict(epochs=31 if i == 0 else 30, minutes=25 + i) for i in range(5)],
        "other_aborted": [dict(minutes=30.0 + i, style="other") for i in range(4)] + [ABORTED_OTHER],
        "aborted_broken": [*FIVE[:4], dict(ABORTED_OTHER, drop=(C.EVAL_SAMPLES,))],
        "success_below_target": [*FIVE[:4], dict(minutes=28.0, accuracy=0.75)],
        "no_status": [dict(minutes=30.0 + i, style="other") for i in range(5)],
        "text_batch": [*FIVE[:4], dict(minutes=28.0, batch="3264", style="other")],
        "same_seed": [*FIVE[:3], dict(FIVE[3], seed=2), FIVE[4]],
        "no_seed": [*FIVE[:2], dict(FIVE[2], drop=(C.SEED,)), *FIVE[3:]],
        "six": [*FIVE, dict(minutes=32.0)],
        "many_problems": [FIVE[0], dict(FIVE[1], seed=1), dict(FIVE[2], drop=(C.GLOBAL_BATCH_SIZE,)), ABORTED_OTHER],
    }
    out = {}
    for name, runs in sets.items():
        folder = make_set(base / name / "results" / "example" / "resnet", runs)
        if name == "no_status":  # run 1's run_stop has no status: the checker fails one record, by its index
            log = folder / "result_1.txt"
            log.write_text(log.read_text().replace(', "status": "success"', ""))
        report = base / name / "score.json"
        rc, stdout, stderr = score([folder, "--json", report])
        out[name] = (folder, rc, stdout, stderr, json.loads(report.read_text()))
    return out


def test_five_converged_olympic_mean(scored):
    folder, rc, out, err, rep = scored["five"]
    assert rc == 0, out + err
    expected = (30.0 + 30.5 + 31.5) / 3  # 29.0 (fastest) and 33.0 (slowest) dropped
    assert rep["score_minutes"] == pytest.approx(expected)
    assert rep["score_minutes"] == pytest.approx(summarizer_score(folder))
    assert f"score: {expected:.3f} min" in out and "result: valid" in out
    assert "result_2.txt (fastest)" in out and "result_3.txt (slowest)" in out
    assert [r["checker"] for r in rep["runs"]] == ["PASS"] * 5  # the other submitter's layout passes as well
    assert [r["epochs"] for r in rep["runs"]] == [35, 35, 35, 39, 35]
    assert "division closed, global batch 3264, optimizer lars, ruleset 4.0.0" in out


def test_json_contents(scored):
    _, _, _, _, rep = scored["five"]
    assert rep["schema"] == "rn50-mlperf-score/1" and rep["valid"] is True and rep["reason"] is None
    assert rep["ruleset"] == "4.0.0"
    assert rep["counted"] == ["result_0.txt", "result_4.txt", "result_1.txt"]
    run = rep["runs"][3]
    assert run == {"file": "result_3.txt", "minutes": pytest.approx(33.0), "epochs": 39, "status": "success",
                   "converged": True, "checker": "PASS", "checker_reason": None, "compliant": True,
                   "best_accuracy": 0.7601, "division": "closed", "benchmark": "resnet", "global_batch_size": 3264,
                   "opt_name": "lars", "seed": 4}
    assert rep["rcp"]["applicable"] and rep["rcp"]["verdict"] == "PASS" and rep["rcp"]["global_batch_size"] == 3264
    assert rep["rcp"]["rcp_batch_sizes"][0] == 1632 and rep["rcp"]["rcp_batch_sizes"][-1] == 67840


def test_one_not_converged_is_the_dropped_slowest(scored):
    folder, rc, out, err, rep = scored["one_aborted"]
    assert rc == 0, out + err
    aborted = rep["runs"][2]
    assert aborted["status"] == "aborted" and not aborted["converged"] and aborted["checker"] == "FAIL"
    assert aborted["checker_reason"].startswith("Failed checks for eval_accuracy")  # below 0.759: the checker says no
    assert aborted["compliant"] is True and rep["valid"] is True and "result: valid" in out
    assert "result_2.txt: compliance checker FAIL: Failed checks for eval_accuracy : v['value'] >= 0.7590 and " \
           "v['value'] < 1.0 (the quality target only, in a run that stopped aborted: not converged)" in out
    assert aborted["epochs"] == 37 and aborted["best_accuracy"] == pytest.approx(0.7584)
    expected = (30.0 + 30.5 + 31.5) / 3  # 29.0 (fastest) and the aborted run dropped
    assert rep["score_minutes"] == pytest.approx(expected) == pytest.approx(summarizer_score(folder))
    assert "result_2.txt (did not converge: the dropped slowest)" in out and "result_3.txt (fastest)" in out


def test_two_not_converged_is_invalid(scored):
    folder, rc, out, err, rep = scored["two_aborted"]
    assert rc == 1
    assert rep["score_minutes"] is None and rep["valid"] is False
    assert rep["reason"].startswith("2 runs did not converge (result_3.txt, result_4.txt)")
    assert "score: none" in out and "result: INVALID: 2 runs did not converge" in out
    assert summarizer_score(folder) is None
    assert rep["rcp"]["verdict"] == "FAIL" and rep["rcp"]["message"] == "Insufficient convergence"


def test_one_aborted_in_another_submitters_shape_is_valid(scored):
    """Rank prefixes, block keys only, 8 init_starts: the aborted run fails the checker on the target alone."""
    folder, rc, out, err, rep = scored["other_aborted"]
    assert rc == 0 and rep["valid"] is True, out + err
    assert [(r["checker"], r["compliant"]) for r in rep["runs"]] == [("PASS", True)] * 4 + [("FAIL", True)]
    assert rep["score_minutes"] == pytest.approx((31.0 + 32.0 + 33.0) / 3) == pytest.approx(summarizer_score(folder))


def test_a_log_the_checker_fails_makes_the_set_invalid(scored):
    folder, rc, out, _, rep = scored["no_batch"]
    bad = rep["runs"][4]
    assert bad["status"] == "success" and bad["checker"] == "FAIL" and not bad["converged"] and not bad["compliant"]
    assert bad["checker_reason"] == "Required EXACTLY_ONE occurrence of 'global_batch_size' but found 0"
    assert f"result_4.txt: compliance checker FAIL: {bad['checker_reason']}" in out
    assert rc == 1 and rep["valid"] is False
    assert rep["reason"] == f"result_4.txt fails the compliance checker: {bad['checker_reason']}"
    assert f"result: INVALID: {rep['reason']}" in out
    # still scored as the summarizer scores it (the failing run as the dropped slowest), and labelled invalid
    assert rep["score_minutes"] == pytest.approx((30.0 + 31.5 + 33.0) / 3) == pytest.approx(summarizer_score(folder))
    assert rep["rcp"]["applicable"] is False and "global_batch_size" in rep["rcp"]["reason"]


@pytest.mark.parametrize("name,reason", [
    # an aborted run's log that fails on more than the target: the other failure is named, not the target
    ("aborted_broken", "result_4.txt fails the compliance checker: Required EXACTLY_ONE occurrence of 'eval_samples' "
                       "but found 0"),
    # run_stop says success, yet no eval_accuracy reached 0.759
    ("success_below_target", "result_4.txt fails the compliance checker: Failed checks for eval_accuracy : "
                             "v['value'] >= 0.7590 and v['value'] < 1.0"),
    # another submitter's shape; the checker names the record it rejects (0-based among the MLLOG records)
    ("no_status", "result_1.txt fails the compliance checker: CHECK for 'run_stop' failed in line 75: failed test: "
                  "'status' in v['metadata']"),
    # a check the checker cannot evaluate (a global batch logged as text): its failing code is named
    ("text_batch", "result_4.txt fails the compliance checker: Failed executing CHECK code: v['value'] > 0"),
    ("same_seed", "result_1.txt and result_3.txt log the same seed 2 (MLPerf wants a different seed in every run)"),
    ("no_seed", "result_2.txt logs no integer seed (MLPerf wants one in every run)"),
])
def test_one_bad_log_makes_the_set_invalid(scored, name, reason):
    """Each set has 4 good runs and one log that the compliance checker or the seed rule rejects."""
    _, rc, out, err, rep = scored[name]
    assert rc == 1 and rep["valid"] is False and rep["reason"] == reason, out + err
    assert f"result: INVALID: {reason}" in out and err == ""


def test_invalid_reasons_in_the_rules_order(scored):
    """Compliance first, then seeds, convergence, run count: the first reason is the first rule that fails."""
    _, rc, out, _, rep = scored["many_problems"]
    assert rc == 1 and rep["reason"] == "; ".join([
        "result_2.txt fails the compliance checker: Required EXACTLY_ONE occurrence of 'global_batch_size' but "
        "found 0",
        "result_0.txt and result_1.txt log the same seed 1 (MLPerf wants a different seed in every run)",
        "2 runs did not converge (result_2.txt, result_3.txt); MLPerf allows at most 1",
        "not a valid MLPerf result: 4 runs (ResNet needs exactly 5)"])
    assert [r["compliant"] for r in rep["runs"]] == [True, True, False, True]


def test_six_runs_scored_but_not_valid(scored):
    _, rc, out, _, rep = scored["six"]
    assert rc == 1 and rep["valid"] is False and rep["score_minutes"] is not None
    assert rep["reason"].startswith("not a valid MLPerf result: 6 runs (ResNet needs exactly 5; the rules let you")


def test_seed_read_as_the_seed_checker_reads_it(tmp_path):
    """An integer, a whole float or a decimal string is a seed (MLPerf's seed checker takes int(value)); a fraction,
    a boolean or other text is not."""
    for value, seed in (("7", 7), (" -3 ", -3), (8.0, 8), (8.5, None), (True, None), ("x7", None)):
        assert mlperf_score.read_run(write_log(tmp_path / "result_0.txt", seed=value)).seed == seed, value


@pytest.mark.e2e
def test_command_line_invalid_set_exits_1(scored):
    folder = scored["no_status"][0]
    res = subprocess.run([PY, TOOL, folder], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr == "" and "Traceback" not in res.stdout
    assert "result: INVALID: result_1.txt fails the compliance checker: CHECK for 'run_stop' failed in line 75" \
           in res.stdout


def test_checker_crash_is_a_failure(tmp_path):
    """For a closed-division opt_name other than lars or sgd the checker itself dies (it opens a rules file named
    after the optimizer): that log fails, with the checker's last line as the reason, and the set is invalid."""
    d = make_set(tmp_path / "resnet", [dict(), dict(opt_name="adam")])
    rc, out, err = score([d, "--json", tmp_path / "s.json"])
    rep = json.loads((tmp_path / "s.json").read_text())
    run = rep["runs"][1]
    assert rep["reason"].startswith("result_1.txt fails the compliance checker: the compliance checker crashed")
    assert run["checker"] == "FAIL" and run["checker_reason"].startswith("the compliance checker crashed (exit 1): "
                                                                         "FileNotFoundError")
    assert "closed_resnet_adam.yaml" in run["checker_reason"] and "Traceback" not in out + err
    assert rc == 1 and "the runs differ in optimizer (adam, lars)" in out


def test_open_division_status_decides(scored):
    _, rc, out, _, rep = scored["open"]
    aborted = rep["runs"][4]
    assert aborted["checker"] == "PASS" and aborted["status"] == "aborted" and not aborted["converged"]
    assert rc == 0 and rep["score_minutes"] == pytest.approx((310 + 320 + 330) / 3)
    assert "RCP check: not applicable: open division" in out and rep["rcp"]["verdict"] is None


def test_four_runs_scored_but_not_valid(scored):
    _, rc, out, _, rep = scored["four"]
    assert rc == 1 and rep["valid"] is False
    assert rep["score_minutes"] == pytest.approx((30.0 + 31.5) / 2)  # the summarizer's slice of 4 sorted times
    assert "not a valid MLPerf result: 4 runs (ResNet needs exactly 5)" in out


@pytest.mark.parametrize("name,verdict,message", [
    ("five", "PASS", "RCP found"),
    ("bs3264_30", "FAIL", "RCP found"),  # 30 epochs beat what the BS 3264 RCP allows (34.31)
    ("bs64_36", "PASS", "RCP not found but slower convergence on smaller batch size"),
    ("bs64_30", "FAIL", "Missing RCP, please submit RCP with BS = 64"),
])
def test_rcp_verdicts(scored, name, verdict, message):
    _, rc, out, _, rep = scored[name]
    assert rep["rcp"]["verdict"] == verdict and rep["rcp"]["message"] == message
    assert f"RCP check: {verdict}: {message}" in out
    assert rc == 0  # the RCP verdict is reported; it does not make the score invalid
    if name.startswith("bs64"):
        assert "global batch 64 is below the smallest RCP batch (1632)" in out
        assert rep["rcp"]["rcp_mean_epochs"] == pytest.approx(35.0)


def test_rcp_scaling_reported(scored):
    _, _, out, _, rep = scored["bs64_36"]
    assert rep["rcp"]["submission_mean_epochs"] == pytest.approx(36.0)
    rep5 = scored["five"][4]["rcp"]
    assert rep5["score_factor"] == pytest.approx(35.15384615 / 35.0, rel=1e-6)
    assert "RCP scaling:" in scored["five"][2]


# --- bad input: one line, exit 2, before any checker ------------------------------------------------------------------

def _garbled(folder: Path):
    write_log(folder / "result_0.txt")
    good = (folder / "result_0.txt").read_text().splitlines()
    good[5] = good[5][:40]  # a record cut short
    (folder / "result_1.txt").write_text("\n".join(good) + "\n")


@pytest.mark.parametrize("setup,argv,match", [
    (None, ["{d}/missing"], "no such folder"),
    ("empty", ["{d}"], "no result_<i>.txt files"),
    ("garbled", ["{d}"], "result_1.txt: line 6: the :::MLLOG record is not valid JSON"),
    ("not_mllog", ["{d}"], "result_0.txt: no :::MLLOG lines"),
    ("odd_name", ["{d}"], "result_a.txt: not named result_<integer>.txt"),
    ("empty", ["{d}", "--ruleset", "4.1.0"], "invalid choice: '4.1.0'"),
    ("empty", ["{d}", "--runs", "0", "--", "-n", "1"], "--runs 0: must be at least 1"),
    ("empty", ["{d}", "--runs", "two"], "argument --runs: invalid int value: 'two'"),
    ("empty", ["{d}", "--runs", "3", "--seeds", "1,2"], "2 seeds for --runs 3"),
    ("empty", ["{d}", "--runs", "3", "--seeds", "1,2,1"], "a seed repeats"),
    ("empty", ["{d}", "--runs", "2", "--seeds", "1,x"], "expected comma-separated integers"),
    ("empty", ["{d}", "--runs", "1", "--seeds", str(2 ** 31)], "out of range"),
    ("empty", ["{d}", "--seeds", "1,2"], "--seeds: only with --runs N"),
    ("empty", ["{d}", "--", "-n", "1"], "arguments after --: only with --runs N"),
    ("empty", ["{d}", "--runs", "1", "--", "--seed", "3"], "--seed 3: the driver sets --seed and --mlperf-log"),
    ("stale", ["{d}", "--runs", "1"], "holds 1 result file(s) (result_0.txt, ...) from earlier runs"),
    ("empty", ["{d}", "--runs", "1", "--runner", "{d}/nope"], "--runner {d}/nope: no such file"),
])
def test_bad_input(tmp_path, setup, argv, match):
    d = tmp_path / "resnet"
    if setup:
        d.mkdir()
    if setup == "garbled":
        _garbled(d)
    elif setup == "not_mllog":
        (d / "result_0.txt").write_bytes(b"\x00\xff binary, no records\n")
    elif setup in ("odd_name", "stale"):
        write_log(d / ("result_a.txt" if setup == "odd_name" else "result_0.txt"))
    rc, out, err = score([a.format(d=d) for a in argv])
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match.format(d=d) in err, err


@pytest.mark.e2e
def test_command_line_bad_input_is_one_line(tmp_path):
    d = tmp_path / "resnet"
    d.mkdir()
    _garbled(d)
    res = subprocess.run([PY, TOOL, d], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(
        f"mlperf_score.py: error: {d}/result_1.txt: line 6: the :::MLLOG record is not valid JSON (")


# --- the driver, with a stand-in for the runner (the toolkit's --mlperf runs are test_mlperf.py's) -------------------

FAKE_RUNNER = textwrap.dedent("""\
    import json, shutil, signal, sys, time
    args = sys.argv[1:]
    if "--mlperf" not in args:
        sys.exit("fake runner: no --mlperf")
    plan = json.load(open(args[args.index("--plan") + 1]))
    step = plan[args[args.index("--seed") + 1]]
    print("fake run", args[args.index("--seed") + 1], flush=True)
    print("fake stderr line", file=sys.stderr, flush=True)
    if step.get("wait"):
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
        print("waiting", flush=True)
        time.sleep(60)
    if step.get("log"):
        shutil.copy(step["log"], args[args.index("--mlperf-log") + 1])
    sys.exit(step.get("exit", 0))
    """)


def fake_runner(tmp_path: Path, steps: dict[int, dict]) -> tuple[Path, Path]:
    runner = tmp_path / "fake_runner.py"
    runner.write_text(FAKE_RUNNER)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({str(seed): step for seed, step in steps.items()}))
    return runner, plan


def test_drawn_seeds_are_distinct_and_in_range():
    seeds = mlperf_score.draw_seeds(200)
    assert len(set(seeds)) == 200 and all(isinstance(s, int) and 1 <= s < 2 ** 31 for s in seeds)


def test_driver_runs_and_scores(tmp_path):
    logs = make_set(tmp_path / "made", ONE_ABORTED)
    seeds = [11, 12, 13, 14, 15]
    runner, plan = fake_runner(tmp_path, {s: {"log": str(logs / f"result_{i}.txt"), "exit": 6 if i == 2 else 0}
                                          for i, s in enumerate(seeds)})
    d = tmp_path / "results" / "example" / "resnet"
    write_log(d / "result_7.txt", minutes=1.0)  # stale: removed by --overwrite, never scored
    rc, out, err = score([d, "--runs", "5", "--seeds", ",".join(map(str, seeds)), "--runner", runner,
                          "--log-dir", tmp_path / "logs", "--overwrite", "--json", tmp_path / "s.json", "--",
                          "--plan", plan])
    assert rc == 0, out + err
    assert sorted(p.name for p in d.iterdir()) == [f"result_{i}.txt" for i in range(5)]
    assert "run 2 (3 of 5), seed 13" in err and "run 2 ran out of epochs before the target (aborted)" in err
    assert (tmp_path / "logs" / "result_1.log").read_text() == "fake run 12\nfake stderr line\n"
    rep = json.loads((tmp_path / "s.json").read_text())
    assert rep["score_minutes"] == pytest.approx((30.0 + 30.5 + 31.5) / 3)


@pytest.mark.parametrize("child_exit,status,says", [
    (2, 2, "run 0: the runner refused its arguments"),
    (3, 3, "run 0 failed with exit 3"),
    (137, 137, "run 0 was stopped by SIGKILL (exit 137)"),
])
def test_driver_stops_on_a_failed_run(tmp_path, child_exit, status, says):
    runner, plan = fake_runner(tmp_path, {1: {"exit": child_exit}, 2: {}})
    rc, out, err = score([tmp_path / "resnet", "--runs", "2", "--seeds", "1,2", "--runner", runner, "--",
                          "--plan", plan])
    assert rc == status and says in err and "(2 of 2)" not in err


@pytest.mark.e2e
def test_driver_forwards_sigterm(tmp_path):
    runner, plan = fake_runner(tmp_path, {5: {"wait": True}, 6: {}})
    p = subprocess.Popen([PY, TOOL, tmp_path / "resnet", "--runs", "2", "--seeds", "5,6", "--runner", runner,
                          "--log-dir", tmp_path / "logs", "--", "--plan", plan],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if "waiting" in line:
                break
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: stopped during run 0 (exit 143)" in err and "(2 of 2)" not in err
    # the child ended by the forwarded signal (its own handler's exit status), so nothing is left behind
    assert subprocess.run(["pgrep", "-f", str(runner)], capture_output=True).stdout == b""
