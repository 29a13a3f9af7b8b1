"""benchmark.py sweeps (numbers, weak scaling, failed cells, timeouts, plots), inference scoring and examples/."""
from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PY, ROOT, run

pytestmark = pytest.mark.e2e
TINY = ["--image-shape", "3,32,32", "--num-classes", "10"]
BENCH = ROOT / "benchmark.py"


def sweep(tmp_path, *args, executable=None):
    out = tmp_path / "sweep.json"
    argv = [PY, BENCH, *args, "-o", out, "--data-backend", "synthetic", *TINY]
    if executable:
        argv += ["--executable", executable]
    res = run(argv, timeout=900)
    summary = json.loads(out.read_text()) if out.is_file() else None
    return res, summary, out


def test_sweep_weak_scaling_and_a_killed_runner(tmp_path):
    """A runner killed for one configuration is that cell's error (null values), the rest of the sweep runs, the
    weak scaling is computed from the numbers, and the JSON keeps NVIDIA's shape."""
    wrapper = tmp_path / "flaky_runner"
    wrapper.write_text(f"#!/usr/bin/env bash\nif [[ \" $* \" == *\" -n 2 -b 16 \"* ]]; then kill -9 $$; fi\n"
                       f"exec {ROOT / 'runner'} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    res, s, out = sweep(tmp_path, "-n", "1,2", "-b", "8,16", "-i", "4", "-e", "2", "-w", "1", executable=wrapper)
    assert res.returncode == 1, res.stderr  # some cell failed
    assert (s["ngpus"], s["bs"], s["metric_keys"]) == ([1, 2], [8, 16], ["train.total_ips"])
    assert s["model"] == "resnet50" and s["schema"] == "rn50-benchmark/1" and s["mode"] == "train"
    m = s["metrics"]
    assert m["2"]["16"]["train.total_ips"] is None
    assert "killed by signal 9" in s["errors"]["default"]["2"]["16"]
    for n, bs in (("1", "8"), ("1", "16"), ("2", "8")):
        assert m[n][bs]["train.total_ips"] > 0
        report = json.loads(open(s["runs"]["default"][n][bs]["report"]).read())
        kept = report["metrics"]["train.total_ips"][1:]  # -w 1
        assert m[n][bs]["train.total_ips"] == pytest.approx(len(kept) / sum(1 / x for x in kept))
    w = s["weak_scaling"]
    assert w["1"]["8"] == 1.0 and w["2"]["8"] == pytest.approx(m["2"]["8"]["train.total_ips"] /
                                                                m["1"]["8"]["train.total_ips"])
    assert w["2"]["16"] is None
    assert s["env"]["device"]["type"] == "cpu" and s["env"]["versions"]["mxnet"] == "1.9.1"
    assert "| 2 | " in res.stdout and "error" in res.stdout and "weak scaling" in res.stdout
    assert out.with_suffix(".png").stat().st_size > 10000


def test_timeout_and_bad_flags_are_cell_errors(tmp_path):
    res, s, _ = sweep(tmp_path, "-n", "1", "-b", "4", "-i", "2", "--timeout", "0.5")
    assert res.returncode == 1 and "timed out after 0.5 s" in s["errors"]["default"]["1"]["4"]
    res, s, _ = sweep(tmp_path, "-n", "1", "-b", "4", "-i", "2", "--no-such-flag")
    assert res.returncode == 1 and "exit status 2" in s["errors"]["default"]["1"]["4"]
    assert "--no-such-flag" in s["errors"]["default"]["1"]["4"]


@pytest.mark.parametrize("args,message", [
    (["-n", "1", "-b", "4", "-e", "1", "-w", "1"], "-w 1: must be at least 0 and less than -e 1"),
    (["-n", "0", "-b", "4"], "-n 0: give positive integers"),
    (["-n", "1", "-b", "4", "--report", "x.json"], "--report is set by benchmark.py"),
])
def test_usage_errors(tmp_path, args, message):
    res = run([PY, BENCH, *args, "-o", tmp_path / "s.json"])
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_inference_sweep_latency_and_speedup_keys(tmp_path):
    res, s, _ = sweep(tmp_path, "-n", "1", "-b", "1,4", "-i", "6", "-e", "2", "-w", "1", "--only-inference",
                      "--dtype", "float32")
    assert res.returncode == 0, res.stderr
    assert s["mode"] == "inference" and s["dtypes"] == ["float32"] and s["speedup"] == {}
    for bs in ("1", "4"):
        c = s["metrics"]["1"][bs]
        assert c["val.total_ips"] > 0
        assert c["val.latency_ms_p50"] <= c["val.latency_ms_p99"] <= c["val.latency_ms_p100"]
    assert "| 1 | 4 |" in res.stdout  # the latency table


def test_examples_scripts_exist_and_are_strict():
    names = {p.name for p in (ROOT / "examples").glob("*.sh")}
    expected = {f"RN50_{p}_{n}GPU.sh" for p in ("FP16", "FP32") for n in (1, 4, 8)}
    expected |= {f"{k}_{p}.sh" for k in ("BENCHMARK", "INFER_BENCHMARK", "SCORE") for p in ("FP16", "FP32")}
    expected |= {"RN50_FP32_CPU.sh", "BENCHMARK_CPU.sh", "INFER_BENCHMARK_CPU.sh"}
    assert expected <= names
    for name in names:
        text = (ROOT / "examples" / name).read_text()
        assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text and '"$@"' in text


@pytest.mark.parametrize("n,precision,batch", [(n, p, 208 if p == "FP16" else 96) for n in (1, 4, 8)
                                                for p in ("FP16", "FP32")])
def test_gpu_training_examples_argv(n, precision, batch):
    res = run([ROOT / "examples" / f"RN50_{precision}_{n}GPU.sh", "--dry-run", "--assume-gpus", "8"], check=True)
    env, cmd = res.stdout.strip().splitlines()
    gpus = ",".join(str(i) for i in range(n))
    assert f"--batch-size {n * batch} " in cmd and f"--gpus {gpus} " in cmd and "--model-prefix model" in cmd
    assert f"--lr {0.1 * n * batch / 256:g}" in cmd or f"--lr {0.1 * n * batch / 256}" in cmd
    if precision == "FP16":
        assert "--dtype float16" in cmd and "--conv-layout NHWC" in cmd and "--image-shape 4,224,224" in cmd
    else:
        assert "--dtype float32" in cmd and "NHWC" not in cmd
    assert "MXNET_OPTIMIZER_AGGREGATION_SIZE=54" in env and "MXNET_UPDATE_ON_KVSTORE=0" in env
    # NVIDIA's form: the toolkit folder first
    res2 = run([ROOT / "examples" / f"RN50_{precision}_{n}GPU.sh", ROOT, "--dry-run", "--assume-gpus", "8"],
               check=True)
    assert res2.stdout == res.stdout


@pytest.mark.parametrize("script,ns,bss,extra", [
    ("BENCHMARK_FP16.sh", "1,4,8", "64,128,192,208", []),
    ("BENCHMARK_FP32.sh", "1,4,8", "32,64,96", ["--dtype", "float32"]),
    ("INFER_BENCHMARK_FP16.sh", "1", "1,2,4,64,128,192,208", ["--only-inference"]),
    ("INFER_BENCHMARK_FP32.sh", "1", "1,2,4,32,64,96", ["--only-inference", "--dtype", "float32"]),
])
def test_gpu_benchmark_examples_argv(script, ns, bss, extra):
    lines = run([ROOT / "examples" / script, "--dry-run"], check=True).stdout.strip().splitlines()
    cells = [(n, b) for n in ns.split(",") for b in bss.split(",")]
    assert len(lines) == len(cells)
    epochs = "3" if "INFER" in script else "2"
    for line, (n, b) in zip(lines, cells):
        assert f"runner -n {n} -b {b} -e {epochs} --benchmark-iters 100 --no-metrics" in line
        assert all(x in line.split() for x in extra)


def test_score_fp16_example_argv():
    res = run([ROOT / "examples" / "SCORE_FP16.sh", "runs/x/model", "7", "--dry-run", "--assume-gpus", "1"],
              check=True)
    cmd = res.stdout.strip().splitlines()[1]
    assert "--only-inference" in cmd and "--model-prefix runs/x/model" in cmd and "--load-epoch 7" in cmd
    assert "--batch-size 128" in cmd and "--dtype float16" in cmd
    res = run([ROOT / "examples" / "SCORE_FP16.sh"])
    assert res.returncode == 2 and "usage: examples/SCORE_FP16.sh" in res.stderr


def test_cpu_examples_run(tmp_path):
    """The CPU scripts for real, with tiny settings appended (later flags win)."""
    run([ROOT / "examples" / "BENCHMARK_CPU.sh", "-n", "1", "-b", "4", "-i", "3", "-o", tmp_path / "b.json", *TINY],
        check=True, timeout=900)
    assert json.loads((tmp_path / "b.json").read_text())["metrics"]["1"]["4"]["train.total_ips"] > 0
    run([ROOT / "examples" / "INFER_BENCHMARK_CPU.sh", "-b", "2", "-i", "4", "-o", tmp_path / "i.json", *TINY],
        check=True, timeout=900)
    assert json.loads((tmp_path / "i.json").read_text())["metrics"]["1"]["2"]["val.latency_ms_p99"] > 0
    run([ROOT / "examples" / "RN50_FP32_CPU.sh", "-e", "1", "--data-backend", "synthetic", "--benchmark-iters", "2",
         "--no-val", "--model-prefix", tmp_path / "m", *TINY], check=True, timeout=900)
    assert (tmp_path / "m-0001.params").is_file()


def test_score_fp32_reproduces_the_training_top1(tmp_path, demo_root):
    """SCORE_FP32.sh on a checkpoint trained on the digits prints the val top-1 the training report recorded."""
    prefix, report = tmp_path / "model", tmp_path / "report.json"
    run([ROOT / "runner", "-n", "1", "-b", "64", "-e", "4", "-l", "0.4", "--data-root", demo_root,
         "--model-prefix", prefix, "--report", report, "--warmup-epochs", "1", "--bn-gamma-init0",
         "--min-random-area", "0.25", "--no-random-mirror", "--seed", "0", "--num-layers", "18", *TINY], check=True,
        timeout=900)
    trained = json.loads(report.read_text())["metrics"]["val.top1"][-1]
    res = run([ROOT / "examples" / "SCORE_FP32.sh", prefix, "4", "--data-root", demo_root, "--num-layers", "18",
               *TINY], check=True, timeout=900)
    top1 = float(re.search(r"Score\[0\]: top-1 ([0-9.]+)%", res.stderr).group(1))
    assert top1 == pytest.approx(trained, abs=0.005)
    assert trained > 30  # four epochs of ResNet-18 already learn the digits well past chance (10%)


def processes_with(marker: str) -> list[int]:
    """The live processes whose command line holds ``marker`` (zombies left out)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker in (d / "cmdline").read_text() and \
                    (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(d.name))
        except OSError:
            pass
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_sweep_and_the_cell_it_runs(tmp_path, sig):
    """SIGINT (a terminal's Ctrl-C reaches benchmark.py alone: each cell runs in a session of its own) or SIGTERM to
    benchmark.py while a cell trains: the signal is passed on to that cell's runner, which stops within a batch and
    writes its report; the sweep then exits 128 + the signal with one line, nothing left running, no summary."""
    out = tmp_path / "sweep.json"
    p = subprocess.Popen([PY, BENCH, "-n", "1", "-b", "4,8", "-i", "100000", "-o", out, "--data-backend", "synthetic",
                          *TINY, "--disp-batches", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    log = tmp_path / "sweep-runs" / "default-n1-b4.log"
    deadline = time.monotonic() + 300
    try:
        while "Batch[2/" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with(str(tmp_path / "sweep-runs")), "the cell's runner is not running"
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert err.strip().splitlines()[-1] == f"benchmark.py: stopped by {name}; the processes it started have ended"
    assert "Traceback" not in err and "batch 8 per device" not in err  # the next cell never started
    assert processes_with(str(tmp_path / "sweep-runs")) == []
    assert json.loads((tmp_path / "sweep-runs" / "default-n1-b4.json").read_text())["status"] == "interrupted"
    assert not out.exists()


def test_unwritable_output_is_one_line_before_any_cell(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = run([PY, BENCH, "-n", "1", "-b", "4", "-i", "2", "-o", tmp_path / "file" / "sweep.json",
               "--data-backend", "synthetic", *TINY], timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"benchmark.py: error: -o {tmp_path / 'file' / 'sweep.json'}: cannot write there")
    assert len(res.stderr.strip().splitlines()) == 1 and "benchmark: dtype" not in res.stderr


def test_a_signal_to_a_bench_tool_ends_the_runner_it_started(tmp_path):
    """tools/bench_train.py runs the runner as a child (common.Children): SIGTERM to the tool alone is passed on to
    it; the tool exits 143 with one line once it has ended, and nothing it started is left running."""
    marker = "99991"  # the iteration count: found in the child's command line
    p = subprocess.Popen([PY, ROOT / "tools" / "bench_train.py", "-b", "8", "--image-size", "32", "-i", marker,
                          "--repeats", "1", "--no-bf16", "-o", tmp_path / "t.json"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not processes_with(f"--benchmark-iters {marker}".replace(" ", "\0")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with(f"--benchmark-iters\0{marker}"), "the runner did not start"
        time.sleep(3)  # train.py is up and training
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "bench_train.py: stopped by SIGTERM; the processes it started have ended"
    assert processes_with(f"--benchmark-iters\0{marker}") == [] and not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("tool", ["bench_data", "bench_infer", "bench_train", "bench_optim", "bench_loadgen",
                                  "bench_runtimes"])
def test_bench_tools_name_their_rounds_alike(tool):
    """Every bench tool takes --rounds (default 3); --repeats, its old name in three of them, still works, unlisted.
    Each round runs the candidates in an order rotated from the round before."""
    import importlib

    from common import rotated

    parser = importlib.import_module(f"tools.{tool}").build_parser()
    assert parser.parse_args(["--repeats", "2"]).rounds == parser.parse_args(["--rounds", "2"]).rounds == 2
    assert parser.parse_args([]).rounds == 3
    assert "--rounds ROUNDS" in parser.format_help() and "--repeats" not in parser.format_help()
    assert [rotated(("a", "b", "c"), r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                                ["a", "b", "c"]]
