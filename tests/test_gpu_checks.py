"""The GPU path's checks before any work (gpu.py), simulated without a GPU: each prints one line, exit status 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import gpu
from conftest import PY, ROOT, run

DALI = Path(__import__("nvidia.dali", fromlist=["__file__"]).__file__).parent
PYPI_CU112 = "50,60,70,80,86"  # the architectures of the mxnet-cu112 1.9.1 wheel (cuobjdump)


def one_line_error(res, prog="runner"):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), res.stderr
    return lines[0]


def test_fatbin_architectures_of_a_real_cuda_library():
    """DALI's CUDA kernels library: machine code for sm_50-90, as cuobjdump lists it; libdali.so also has sm_90
    PTX. (On an H100 machine the same parser matched cuobjdump on six CUDA libraries of other packages.)"""
    assert gpu.fatbin_archs(DALI / "libdali_kernels.so") == ((50, 60, 70, 80, 90), ())
    assert gpu.fatbin_archs(DALI / "libdali.so") == ((50, 60, 70, 80, 90), (90,))
    assert "libstdc++.so.6" in gpu.needed_libs(DALI / "libdali_kernels.so")


def test_the_installed_cpu_build_has_nothing_to_check():
    build = gpu.read_build()
    assert build.lib.name == "libmxnet.so" and not build.cuda and build.archs == ()
    assert gpu.check() is None


def test_compatibility_rules():
    build = gpu.Build(None, (50, 60, 70, 80, 86), (), ())
    assert gpu.check(1, build, [gpu.Gpu(0, "A100", (8, 0))]) is None
    assert gpu.check(1, build, [gpu.Gpu(0, "V100", (7, 0))]) is None
    assert gpu.check(1, build, [gpu.Gpu(0, "L4", (8, 9))]) is None  # sm_86 code runs on sm_89 (same major)
    msg = gpu.check(1, build, [gpu.Gpu(0, "H100", (9, 0))])
    assert "sm_90" in msg and gpu.NGC_IMAGE in msg and "docker run --gpus all" in msg
    assert gpu.check(1, gpu.Build(None, (80,), (80,), ()), [gpu.Gpu(0, "H100", (9, 0))]) is None  # PTX JIT
    assert gpu.check(4, build, [gpu.Gpu(0, "A100", (8, 0))]) == "-n 4: only 1 GPU(s) visible"


@pytest.mark.e2e
def test_hopper_refusal_names_the_container(monkeypatch):
    monkeypatch.setenv("RN50_MXNET_CUDA_ARCHS", PYPI_CU112)
    monkeypatch.setenv("RN50_GPU_CAPABILITY", "9.0")
    line = one_line_error(run([ROOT / "runner", "-n", "1", "-b", "32"]))
    assert ("has compute capability 9.0 (sm_90); this MXNet build has kernels for sm_50, sm_60, sm_70, sm_80, "
            "sm_86 and no PTX, so it cannot run there. Hopper needs an NGC MXNet container: docker run") in line
    assert "nvcr.io/nvidia/mxnet:24.06-py3" in line
    # train.py started directly says the same, before it imports MXNet
    line = one_line_error(run([PY, ROOT / "train.py", "--gpus", "0"]), prog="train.py")
    assert "Hopper needs an NGC MXNet container" in line


@pytest.mark.e2e
def test_more_devices_than_gpus(monkeypatch):
    monkeypatch.setenv("RN50_MXNET_CUDA_ARCHS", PYPI_CU112)
    monkeypatch.setenv("RN50_GPU_CAPABILITY", "8.0")
    assert one_line_error(run([ROOT / "runner", "-n", "2"])) == "runner: error: -n 2: only 1 GPU(s) visible"


@pytest.mark.e2e
def test_missing_cuda_library(tmp_path, monkeypatch):
    """A GPU build whose cuDNN is not on the library path: a copy of a real shared library whose DT_NEEDED entry
    libstdc++.so.6 is renamed libcudnn.so.8 (same length), checked as if it were libmxnet.so."""
    lib = tmp_path / "libmxnet.so"
    shutil.copy(DALI / "libdali_core.so", lib)
    raw = lib.read_bytes()
    assert raw.count(b"\0libstdc++.so.6\0") == 1
    lib.write_bytes(raw.replace(b"\0libstdc++.so.6\0", b"\0libcudnn.so.8\0\0"))
    assert "libcudnn.so.8" in gpu.needed_libs(lib)
    monkeypatch.setenv("RN50_MXNET_LIB", str(lib))
    monkeypatch.setenv("RN50_MXNET_CUDA_ARCHS", PYPI_CU112)
    line = one_line_error(run([ROOT / "runner", "-n", "1"]))
    assert f"the GPU build of MXNet ({lib}) needs libcudnn.so.8, which the loader cannot find" in line
    assert "pip install nvidia-cudnn-cu11" in line and "Dockerfile" in line


@pytest.mark.e2e
def test_fp16_without_gpu_is_one_line():
    line = one_line_error(run([ROOT / "runner", "-n", "1", "--dtype", "float16"]))
    assert "--dtype float16 needs a GPU" in line


@pytest.mark.gpu
def test_this_machines_gpus_are_read():
    gpus = gpu.visible_gpus()
    assert gpus and all(g.sm >= 50 for g in gpus)


def _gpu_ready():
    """Skip unless the installed MXNet can run on this machine's GPU (a GPU build, libraries found, kernels for it)."""
    build = gpu.read_build()
    if not build.cuda:
        pytest.skip("the installed MXNet is a CPU build (make install-gpu installs mxnet-cu112)")
    problem = gpu.check(1, build)
    if problem:
        pytest.skip(problem)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.e2e
def test_gpu_training_iterations_and_scoring_on_dali_gpu(dtype, tmp_path, demo_root):
    """What a V100/A100 user runs: 2 training iterations on dali-gpu in FP16 and FP32, then scoring."""
    _gpu_ready()
    prefix, report = tmp_path / "m", tmp_path / "r.json"
    run([ROOT / "runner", "-n", "1", "-b", "16", "-e", "1", "--dtype", dtype, "--data-root", demo_root,
         "--data-backend", "dali-gpu", "--image-shape", f"{4 if dtype == 'float16' else 3},32,32",
         "--num-classes", "10", "--benchmark-iters", "2", "--model-prefix", prefix, "--report", report], check=True)
    r = json.loads(report.read_text())
    assert r["status"] == "completed" and r["device"]["type"] == "gpu" and r["dtype"] == dtype
    res = run([ROOT / "runner", "-n", "1", "-b", "16", "-e", "1", "--dtype", dtype, "--data-root", demo_root,
               "--num-classes", "10", "--image-shape", f"{4 if dtype == 'float16' else 3},32,32", "--only-inference",
               "--model-prefix", prefix, "--load-epoch", "1"], check=True)
    assert "Score[0]: top-1" in res.stderr


@pytest.mark.gpu
@pytest.mark.e2e
def test_gpu_benchmark_sweep(tmp_path):
    _gpu_ready()
    out = tmp_path / "s.json"
    run([PY, ROOT / "benchmark.py", "-n", "1", "-b", "16,32", "-i", "5", "-e", "2", "-w", "1", "--data-backend",
         "synthetic", "-o", out], check=True, timeout=900)
    s = json.loads(out.read_text())
    assert s["env"]["device"]["type"] == "gpu"
    assert all(s["metrics"]["1"][b]["train.total_ips"] > 0 for b in ("16", "32"))
