"""MLPerf Training mode: real runs on the digits whose logs pass MLPerf's own compliance checker, the target and
the aborted run, the evaluation cadence, the clock's order, the closed-division rules and bad input."""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

import mlperf
from common import UsageError
from conftest import PY, ROOT, run
from test_config import call, train_main

NVIDIA_V20 = mlperf.Recipe(optimizer="lars", lr=10.5, lr_schedule="poly", warmup_epochs=2, decay_epochs=37,
                           wd=5e-5, mom=0.9, label_smoothing=0.1, global_batch=3264, num_classes=1000, num_epochs=37)


def mllog(path):
    """The :::MLLOG records of a log, in order."""
    return [json.loads(ln.split(":::MLLOG", 1)[1]) for ln in path.read_text().splitlines() if ":::MLLOG" in ln]


def checker(path):
    """MLPerf's compliance checker (ruleset 4.0.0) on one log: (passed, output)."""
    res = subprocess.run([PY, "-m", "mlperf_logging.compliance_checker", "--usage", "training", "--ruleset", "4.0.0",
                          "--log_output", str(path.with_suffix(".checker")), str(path)],
                         capture_output=True, text=True, timeout=120, cwd=path.parent)
    return res.returncode == 0 and "SUCCESS" in res.stdout + res.stderr, res.stdout + res.stderr


# --- in process: configs, cadence, rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("period,offset,epochs,evaluated", [
    (4, 0, 9, [0, 4, 8]), (4, 2, 12, [2, 6, 10]), (1, 0, 3, [0, 1, 2]), (3, 2, 9, [2, 5, 8])])
def test_cadence(period, offset, epochs, evaluated):
    cfg = mlperf.MLPerfConfig(mlperf=True, eval_period=period, eval_offset=offset)
    assert [e for e in range(epochs) if cfg.evaluates(e)] == evaluated


@pytest.mark.parametrize("kwargs,message", [
    ({"target_accuracy": 0.0}, "--target-accuracy 0: must be a fraction in (0, 1]"),
    ({"target_accuracy": 1.5}, "--target-accuracy 1.5: must be a fraction in (0, 1]"),
    ({"eval_offset": 4}, "--eval-offset 4: must be in [0, 4)"),
    ({"eval_offset": -1}, "--eval-offset -1: must be in [0, 4)"),
    ({"eval_period": 0}, "--eval-period 0: must be at least 1"),
    ({"submission_division": "semi"}, "--submission-division semi: choose closed or open"),
    ({"submission_status": "lab"}, "--submission-status lab: choose one of"),
    ({"submission_org": " "}, "--submission-org: must not be empty"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(UsageError, match=None) as err:
        mlperf.MLPerfConfig(mlperf=True, **kwargs)
    assert message in str(err.value)


def test_mlperf_flags_need_mlperf():
    with pytest.raises(UsageError, match="--target-accuracy is an MLPerf-mode flag: add --mlperf"):
        mlperf.MLPerfConfig(target_accuracy=0.9)
    assert mlperf.MLPerfConfig(mlperf=True).target == 0.759


def test_nvidia_recipe_is_closed_compliant():
    assert mlperf.rule_violations(mlperf.MLPerfConfig(mlperf=True, eval_offset=2), NVIDIA_V20) == []


@pytest.mark.parametrize("change,rule", [
    ({"wd": 3e-5}, "--wd 3e-05: must be 1e-4 x 2^N"),
    ({"wd": 1 / 32768}, "--wd 3.05176e-05: must be 1e-4 x 2^N"),
    ({"mom": 0.875}, "--mom 0.875: LARS momentum must be 0.9 below a global batch of 32768"),
    ({"label_smoothing": 0.2}, "--label-smoothing 0.2: must be 0 or 0.1"),
    ({"lr_schedule": "cosine"}, "--lr-schedule cosine: the closed division decays polynomially"),
    ({"num_classes": 10}, "--num-classes 10: the closed division trains on ImageNet"),
    ({"all_training_data": False}, "--num-examples: every epoch must go over all the training data"),
    ({"lars_eta": 0.002}, "--lars-eta 0.002: fixed at 0.001"),
    ({"optimizer": "sgd", "lr": 0.1234}, "SGD's base LR must be a multiple of 0.001"),
    ({"optimizer": "sgd", "warmup_epochs": 2.5}, "--warmup-epochs 2.5: SGD's warmup must be a whole number"),
    ({"optimizer": "sgd", "mom": 0.8}, "--mom 0.8: SGD momentum must be 0.9"),
])
def test_closed_rules(change, rule):
    from dataclasses import replace

    broken = mlperf.rule_violations(mlperf.MLPerfConfig(mlperf=True), replace(NVIDIA_V20, **change))
    assert len(broken) == 1 and rule in broken[0], broken


def test_big_batch_lars_may_change_momentum():
    from dataclasses import replace

    r = replace(NVIDIA_V20, global_batch=65536, mom=0.95)
    assert mlperf.rule_violations(mlperf.MLPerfConfig(mlperf=True), r) == []


def test_cadence_and_target_rules():
    broken = mlperf.rule_violations(mlperf.MLPerfConfig(mlperf=True, eval_period=1, target_accuracy=0.5), NVIDIA_V20)
    assert any("--target-accuracy 0.5: the closed division's target is 0.759" in b for b in broken)
    assert any("--eval-period 1: the closed division evaluates every 4 epochs" in b for b in broken)


def test_closed_is_an_error_open_a_warning(caplog):
    from dataclasses import replace

    r = replace(NVIDIA_V20, wd=3e-5, label_smoothing=0.3)
    with pytest.raises(UsageError) as err:
        mlperf.check_rules(mlperf.MLPerfConfig(mlperf=True), r)
    assert "--wd 3e-05" in str(err.value) and "--label-smoothing 0.3" in str(err.value)
    assert "--submission-division open" in str(err.value)
    with caplog.at_level(logging.WARNING):
        mlperf.check_rules(mlperf.MLPerfConfig(mlperf=True, submission_division="open"), r)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(w.startswith("open division: ") for w in warned)


DIGITS = ["--cpu-devices", "1", "--batch-size", "64", "--image-shape", "3,32,32", "--num-classes", "10"]


@pytest.mark.parametrize("argv,message", [
    (["--mlperf", "--target-accuracy", "0"], "--target-accuracy 0: must be a fraction in (0, 1]"),
    (["--mlperf", "--target-accuracy", "1.01"], "--target-accuracy 1.01: must be a fraction in (0, 1]"),
    (["--mlperf", "--eval-offset", "4"], "--eval-offset 4: must be in [0, 4)"),
    (["--mlperf", "--eval-period", "2", "--eval-offset", "2"], "--eval-offset 2: must be in [0, 2)"),
    (["--mlperf", "--submission-division", "semi"], "argument --submission-division: invalid choice: 'semi'"),
    (["--mlperf", "--submission-status", "lab"], "argument --submission-status: invalid choice: 'lab'"),
    (["--mlperf", "--data-backend", "synthetic"], "--mlperf needs the validation set"),
    (["--mlperf", "--data-train", "{root}/train.rec", "--submission-division", "open"],
     "--mlperf needs the validation set"),
    (["--mlperf", "--data-val", "", "--submission-division", "open"],
     "argument --data-val: expected a path, got an empty string"),
    (["--mlperf", "--no-val", "--submission-division", "open"], "--no-val cannot be used with --mlperf"),
    (["--mlperf", "--benchmark-iters", "3", "--submission-division", "open"],
     "--benchmark-iters cannot be used with --mlperf"),
    (["--mlperf", "--resume", "--model-prefix", "x", "--submission-division", "open"],
     "--resume cannot be used with --mlperf: MLPerf's clock may not be paused"),
    (["--mlperf"], "the closed division's rules are broken: --num-classes 10"),
    (["--mlperf", "--submission-division", "open", "--num-epochs", "3", "--eval-offset", "3"],
     "--num-epochs 3: no epoch is evaluated"),
    (["--target-accuracy", "0.5"], "--target-accuracy is an MLPerf-mode flag: add --mlperf"),
])
def test_bad_mlperf_input_is_one_line(argv, message, capsys, demo_root, tmp_path):
    log = tmp_path / "result_0.txt"
    argv = [a.format(root=demo_root) for a in argv]
    data = [] if "--data-train" in argv else ["--data-root", str(demo_root)]
    code = call(train_main(), [*DIGITS, *data, "--mlperf-log", str(log), *argv] if "--mlperf" in argv
                else [*DIGITS, *data, *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert list(tmp_path.iterdir()) == []  # no log, not even a temporary one


# --- real runs ----------------------------------------------------------------------------------------------------

RUN = [*DIGITS, "--num-layers", "50", "--num-examples", "256", "--mlperf", "--submission-division", "open",
       "--submission-org", "tests", "--lr", "0.1", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def success_run(demo_root, tmp_path_factory):
    """Evaluations at 0-based epochs 1 and 3 only (period 2, offset 1); a target every model reaches at once."""
    d = tmp_path_factory.mktemp("mlperf_ok")
    res = run([PY, ROOT / "train.py", *RUN, "--data-root", demo_root, "--num-epochs", "4", "--eval-period", "2",
               "--eval-offset", "1", "--target-accuracy", "0.01", "--mlperf-log", d / "result_0.txt", "--report",
               d / "report.json", "--model-prefix", d / "model"], timeout=600)
    return res, d


@pytest.fixture(scope="module")
def aborted_run(demo_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("mlperf_aborted")
    res = run([PY, ROOT / "train.py", *RUN, "--data-root", demo_root, "--num-epochs", "2", "--eval-period", "1",
               "--target-accuracy", "1.0", "--optimizer", "sgd", "--mlperf-log", d / "result_1.txt", "--report",
               d / "report.json"], timeout=600)
    return res, d


@pytest.mark.e2e
def test_run_reaching_its_target(success_run):
    res, d = success_run
    assert res.returncode == 0, res.stderr
    log = d / "result_0.txt"
    ok, out = checker(log)
    assert ok, out
    recs = mllog(log)
    keys = [r["key"] for r in recs]
    # the clock: init before run_start, the data (train_samples) after it, run_stop last
    assert keys.index("init_start") < keys.index("init_stop") < keys.index("run_start") < keys.index("train_samples")
    assert keys[-1] == "run_stop" and recs[-1]["metadata"]["status"] == "success"
    # the cadence: 0-based epoch 1 is MLPerf's epoch 2; the target stops the run there, epochs 3-4 never run
    evals = [r for r in recs if r["key"] == "eval_accuracy"]
    assert [r["metadata"]["epoch_num"] for r in evals] == [2]
    assert [r["metadata"]["epoch_num"] for r in recs if r["key"] == "epoch_start"] == [1, 2]
    blocks = [r["metadata"] for r in recs if r["key"] == "block_start"]
    assert blocks == [{"file": blocks[0]["file"], "lineno": blocks[0]["lineno"], "first_epoch_num": 1,
                       "epoch_count": 2}]
    values = {r["key"]: r["value"] for r in recs}
    assert values["opt_name"] == "lars" and values["lars_opt_end_learning_rate"] == 1e-4
    assert values["lars_opt_learning_rate_decay_poly_power"] == 2 and values["lars_epsilon"] == 0.0
    assert values["train_samples"] == 256 and values["eval_samples"] == 360 and values["global_batch_size"] == 64
    assert isinstance(values["seed"], int) and values["submission_org"] == "tests"
    report = json.loads((d / "report.json").read_text())
    assert report["status"] == "completed"
    m = report["mlperf"]
    assert m["status"] == "success" and m["target_epoch"] == 2 and m["time_to_target_s"] > 0
    assert m["run_start"] < m["run_stop"] and m["seed"] == values["seed"]
    assert report["epochs"] == [0, 1] and len(report["metrics"]["val.top1"]) == 1  # no val after epoch 0
    assert (d / "model-0002.params").exists()  # written after the clock stopped
    assert not list(d.glob(".*.tmp"))


@pytest.mark.e2e
def test_run_out_of_epochs_is_aborted(aborted_run, success_run):
    res, d = aborted_run
    assert res.returncode == mlperf_exit_aborted(), res.stderr
    err = [ln for ln in res.stderr.splitlines() if "ERROR" in ln]
    assert len(err) == 1 and "the 2 epochs ran out before an evaluation reached the target 1" in err[0]
    assert "Traceback" not in res.stderr
    log = d / "result_1.txt"
    recs = mllog(log)
    assert recs[-1]["key"] == "run_stop" and recs[-1]["metadata"]["status"] == "aborted"
    assert [r["metadata"]["epoch_num"] for r in recs if r["key"] == "eval_accuracy"] == [1, 2]
    ok, out = checker(log)  # open division: the checker asks no target of it
    assert ok, out
    values = {r["key"]: r["value"] for r in recs}
    assert values["opt_name"] == "sgd" and values["sgd_opt_end_learning_rate"] == 1e-4
    report = json.loads((d / "report.json").read_text())
    assert report["status"] == "aborted" and report["mlperf"]["status"] == "aborted"
    assert report["mlperf"]["target_epoch"] is None and "time_to_target_s" not in report["mlperf"]
    # one integer seed per run, different in every run
    other = {r["key"]: r["value"] for r in mllog(success_run[1] / "result_0.txt")}
    assert values["seed"] != other["seed"]


def mlperf_exit_aborted():
    from common import EXIT_ABORTED

    return EXIT_ABORTED


@pytest.mark.e2e
def test_closed_recipe_examples_check(tmp_path):
    """MLPERF_8GPU.sh: NVIDIA's v2.0 8xA100 recipe, as the runner would start it, breaks no closed-division rule."""
    res = run([ROOT / "examples" / "MLPERF_8GPU.sh", "--dry-run", "--assume-gpus", "8"], check=True)
    argv = res.stdout.strip().splitlines()[-1].split()[2:]
    for flag, value in (("--batch-size", "3264"), ("--lr", "10.5"), ("--num-epochs", "37"), ("--dtype", "float16"),
                        ("--data-backend", "dali-gpu"), ("--eval-offset", "2"), ("--wd", "5e-5")):
        assert argv[argv.index(flag) + 1] == value, (flag, argv)
    import fit
    import train
    from common import config_from

    args = train.build_parser().parse_args(argv)
    fcfg = config_from(fit.FitConfig, args, optimizer=args.optimizer, lr_schedule=args.lr_schedule)
    m = config_from(mlperf.MLPerfConfig, args)
    recipe = mlperf.Recipe(optimizer=fcfg.optimizer, lr=fcfg.lr, lr_schedule=fcfg.lr_schedule,
                           warmup_epochs=fcfg.warmup_epochs, decay_epochs=fcfg.decay_epochs, wd=fcfg.wd, mom=fcfg.mom,
                           label_smoothing=fcfg.label_smoothing, global_batch=fcfg.batch_size,
                           num_classes=args.num_classes, num_epochs=fcfg.num_epochs, lars_eta=fcfg.lars_eta)
    assert recipe == NVIDIA_V20
    assert mlperf.rule_violations(m, recipe) == []
    assert [e + 1 for e in range(37) if m.evaluates(e)][-1] == 35  # "targeting epoch 35"


@pytest.mark.e2e
def test_plot_draws_the_target(success_run, aborted_run, tmp_path):
    import matplotlib.pyplot as plt

    from tools import plot_report

    report = json.loads((success_run[1] / "report.json").read_text())
    fig = plot_report.figure(report)
    acc = fig.axes[1]
    lines = {ln.get_label(): ln for ln in acc.get_lines()}
    assert set(lines) >= {"MLPerf target 1%", "reached at epoch 2", "val top-1"}, set(lines)
    assert set(lines["MLPerf target 1%"].get_ydata()) == {1.0}  # a horizontal line at the target (percent)
    assert set(lines["reached at epoch 2"].get_xdata()) == {2}  # an upright one at the epoch that reached it
    plt.close(fig)
    text = plot_report.summary(report, Path("r.json"), Path("r.png"))
    assert "MLPerf: target 1% reached at epoch 2, " in text
    aborted = json.loads((aborted_run[1] / "report.json").read_text())
    assert "MLPerf: aborted, target 100% not reached (best " in plot_report.summary(aborted, Path("r"), Path("p"))
    assert plot_report.main([str(aborted_run[1] / "report.json"), "-o", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 10000
