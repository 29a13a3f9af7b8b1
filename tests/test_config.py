"""Flags and configs (in process): every bad value is one line naming the flag, before any work; the runner passes
only the flags a user gave; help shows each default once; train.py trains in process and imports without side
effects."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import data
import fit
import resnet
from common import UsageError, config_from, run_main
from conftest import PY, ROOT


def train_main():
    import train

    return train.main


def call(main, argv) -> int:
    """Exit status of an entry point's ``main`` run the way its command line runs it (``run_main``)."""
    try:
        return run_main(main, argv)
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


@pytest.mark.parametrize("argv,message", [
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--lr", "inf"], "argument --lr: expected a finite number, got 'inf'"),
    (["--lr", "0"], "--lr 0: must be positive"),
    (["--num-classes", "0"], "--num-classes 0: must be at least 1"),
    (["--seed", "-1"], "--seed -1: must be at least 0"),
    (["--lr-step-epochs", "60,30"], "--lr-step-epochs 60,30: must be increasing epochs"),
    (["--lr-step-epochs", "30,30"], "--lr-step-epochs 30,30: must be increasing epochs"),
    (["--warmup-epochs", "-1"], "--warmup-epochs -1: must be at least 0"),
    (["--num-epochs", "0"], "--num-epochs 0: must be at least 1"),
    (["--mom", "1.5"], "--mom 1.5: must be in [0, 1)"),
    (["--wd=-1e-4"], "--wd -0.0001: must be at least 0"),
    (["--save-keep", "0", "--model-prefix", "x"], "--save-keep 0: must be at least 1"),
    (["--save-keep", "2"], "--save-keep needs --model-prefix"),
    (["--resume"], "--resume needs --model-prefix"),
    (["--resume", "--load-epoch", "1", "--model-prefix", "x"], "--resume and --load-epoch: give one"),
    (["--benchmark-iters", "0"], "--benchmark-iters 0: must be at least 1"),
    (["--batchnorm-eps", "0"], "--batchnorm-eps 0.0: must be in (0, 1)"),
    (["--image-shape", "3,32"], "--image-shape 3,32: expected C,H,W with C 3 or 4"),
    (["--num-examples", "0"], "--num-examples 0: must be at least 1"),
    (["--dali-threads", "0", "--data-backend", "dali-cpu", "--data-root", "{root}", "--image-shape", "3,32,32"],
     "--dali-threads 0: must be at least 1"),
    (["--batch-size", "100000"], "--batch-size 100000 (the runner's -b 100000 per device): ResNet-50 training at "
                                 "3x224x224 float32 needs about"),
    (["--cpu-devices", "0"], "--cpu-devices 0: this machine has"),
    (["--model-prefix", "runs/"], "argument --model-prefix: 'runs/' ends in '/', a folder; give the folder and a "
                                  "name, e.g. runs/model"),
])
def test_bad_flags_are_one_line_before_any_work(argv, message, capsys, demo_root):
    argv = [a.format(root=demo_root) for a in argv]
    code = call(train_main(), ["--data-backend", "synthetic", *argv] if "--data-backend" not in argv else argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_runner_refuses_a_prefix_ending_in_a_slash(capsys):
    assert call(runner_module().main, ["-n", "1", "-b", "8", "--model-prefix", "runs/", "--dry-run"]) == 2
    assert "runner: error: argument --model-prefix: 'runs/' ends in '/'" in capsys.readouterr().err


def test_data_train_without_data_val_says_that_nothing_is_validated(demo_root, caplog):
    argv = ["--data-train", str(demo_root / "train.rec"), "--data-backend", "mxnet", "--image-shape", "3,32,32",
            "--num-classes", "10", "--num-layers", "18", "--batch-size", "8", "--num-epochs", "1",
            "--benchmark-iters", "1"]
    with caplog.at_level("WARNING", logger="train"):
        assert call(train_main(), argv) == 0
    assert "--data-train without --data-val (or --data-root with val.rec): this run validates nothing" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="train"):
        assert call(train_main(), [*argv, "--no-val"]) == 0
    assert "validates nothing" not in caplog.text


def test_data_cli_refuses_a_zero_batch(capsys):
    assert call(data.main, ["-b", "0", "--data-backend", "synthetic"]) == 2
    assert capsys.readouterr().err.strip().endswith(": error: -b 0: must be at least 1")
    assert call(data.main, ["-b", "100000000", "--data-backend", "synthetic"]) == 2
    assert ": error: -b 100000000: 4 batches of 3x224x224 float32 images in flight need about" in \
        capsys.readouterr().err


def runner_module():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("runner_module", str(ROOT / "runner"))
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("runner_module", loader))
    loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("given,expect", [
    ([], ["--data-root", "/data/imagenet/train-val-recordio-passthrough"]),
    (["--data-root", "d"], ["--data-root", "d"]),
    (["--data-train", "t.rec", "--data-val", "v.rec"], None),
    (["--data-train=t.rec"], None),
    (["--data-backend", "synthetic"], None),
])
def test_runner_adds_its_default_data_root_only_when_no_files_are_named(given, expect):
    """`./runner --data-train X` used to add NVIDIA's default --data-root too, and the error then named a flag the
    user never gave."""
    r = runner_module()
    args, extra = r.build_parser().parse_known_args(["-n", "1", "-b", "8", *given])
    argv, _ = r.build_command(args, extra, gpus=0, cores=2)
    if expect is None:
        assert "--data-root" not in argv
    else:
        i = argv.index("--data-root")
        assert argv[i:i + 2] == expect


@pytest.mark.parametrize("flags,message", [(["-l", "nan"], "argument -l/--lr: expected a finite number, got 'nan'"),
                                           (["-e", "0"], "-e 0: must be at least 1"),
                                           (["-l", "-0.1"], "-l -0.1: the learning rate must be positive"),
                                           (["--global-lr", "0"], "--global-lr 0: the learning rate must be positive")])
def test_runner_flag_errors(flags, message, capsys):
    r = runner_module()
    with pytest.raises((SystemExit, UsageError)) as info:
        args, extra = r.build_parser().parse_known_args(["-n", "1", "-b", "8", *flags])
        r.build_command(args, extra, gpus=0, cores=2)
    text = str(info.value) if isinstance(info.value, UsageError) else capsys.readouterr().err
    assert message in text


@pytest.mark.parametrize("flags,lr", [(["-n", "2", "-b", "64"], 0.05),  # -l 0.1 per 256 images, 128 images
                                      (["-n", "2", "-b", "64", "-l", "0.4"], 0.2),
                                      (["-n", "2", "-b", "64", "-l", "0.4", "--global-lr", "10.5"], 10.5)])
def test_runner_lr_scaled_or_given_for_the_global_batch(flags, lr):
    r = runner_module()
    args, extra = r.build_parser().parse_known_args(flags)
    argv, _ = r.build_command(args, extra, gpus=0, cores=2)
    assert float(argv[argv.index("--lr") + 1]) == pytest.approx(lr) and argv.count("--lr") == 1


def test_help_shows_each_default_once():
    import train

    parser = train.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        shown = formatter._get_help_string(action)
        assert shown.count("default") <= 1, (action.option_strings, shown)
    text = " ".join(parser.format_help().split())
    assert "(default: 90)" in text and "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 30,60,80)" in text and "(default: as --dali-threads)" in text


def test_configs_are_checked_when_made():
    with pytest.raises(UsageError, match="--lr-step-epochs 80,30: must be increasing"):
        fit.FitConfig(lr_step_epochs=(80.0, 30.0))
    with pytest.raises(UsageError, match="--batchnorm-mom 1: must be in"):
        resnet.ModelConfig(batchnorm_mom=1)
    with pytest.raises(UsageError, match="--rgb-std: every value must be positive"):
        data.resolve(data.DataConfig(data_backend="synthetic", rgb_std=(1.0, 0.0, 1.0)))
    cfg = data.resolve(data.DataConfig(data_backend="synthetic", image_shape=(3, 64, 64)))
    assert cfg.data_val_resize == 73 and cfg.dtype == "float32"


def test_config_from_takes_only_its_own_fields():
    import train

    args = train.build_parser().parse_args(["--num-layers", "18", "--lr", "0.5", "--data-backend", "synthetic"])
    assert config_from(resnet.ModelConfig, args).num_layers == 18
    assert config_from(fit.FitConfig, args).lr == 0.5
    assert config_from(data.DataConfig, args, batch_size=4).data_backend == "synthetic"


def test_train_runs_in_process_on_synthetic_data(tmp_path):
    rep = tmp_path / "r.json"
    code = train_main()(["--cpu-devices", "1", "--batch-size", "4", "--num-epochs", "1", "--num-layers", "18",
                         "--data-backend", "synthetic", "--num-examples", "8", "--num-val-examples", "4",
                         "--image-shape", "3,32,32", "--num-classes", "10", "--report", str(rep),
                         "--model-prefix", str(tmp_path / "m")])
    r = json.loads(rep.read_text())
    assert code == 0 and r["status"] == "completed" and r["metrics"]["train.iters"] == [2]
    assert r["metrics"]["val.iters"] == [1] and r["checkpoints"] == [{"prefix": str(tmp_path / "m"), "epoch": 1,
                                                                      "partial": False}]


def test_importing_train_has_no_side_effects():
    code = ("import os, sys; sys.path.insert(0, %r); "
            "import mxnet, checkpoint, dali, data, fit, memory, resnet, report, gpu; "  # what train.py imports
            "before = dict(os.environ); import train; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
            "assert train._STOP is None; import signal; "
            "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL; print('ok')" % str(ROOT))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DNNL_MAX_CPU_ISA")}
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.stdout.strip() == "ok", res.stderr


def test_modules_below_train_never_see_a_namespace():
    """Imports point one way and configs are typed: no module below train.py reads parsed flags (``args.x``)
    outside its own command line (``main``), dali.py takes its types from datatypes.py rather than data.py, and
    nothing in the toolkit imports tools/."""
    import ast

    for name in ("fit.py", "resnet.py", "dali.py", "checkpoint.py", "recfile.py", "datatypes.py", "report.py",
                 "data.py", "common.py"):
        tree = ast.parse((ROOT / name).read_text())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name != "main"):
            reads = [n for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                     and n.value.id == "args"]
            assert not reads, f"{name}: {fn.name} reads args.{reads[0].attr}"
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(i.split(".")[0] == "tools" for i in imports), name
        if name == "dali.py":
            assert "data" not in imports
    for name in ("train.py", "benchmark.py", "gpu.py", "loadgen.py", "loadgen_plan.py", "loadgen_logs.py",
                 "runtimes.py", "runtime_mxnet.py", "runtime_onnxruntime.py", "dist.py", "launcher.py", "mlperf.py"):
        text = (ROOT / name).read_text()
        assert "from tools" not in text and "import tools" not in text, name
    # the launcher is the runner's: what a worker does (dist.py, the loop) knows nothing of it
    users = [p.name for p in ROOT.glob("*.py") if "import launcher" in p.read_text()]
    assert users == [] and "import launcher" in (ROOT / "runner").read_text(), users
