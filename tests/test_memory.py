"""memory.py: the estimate against real measured peaks, its arithmetic and scaling, the one-line refusal, and what
the machine has available. Real MXNet throughout; the measurements (marked e2e) run tools/bench_memory.py's child
process."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import memory
import resnet
from common import UsageError
from memory import GiB, MiB, Estimate
from tools import bench_memory
from tools.bench_memory import Config

# Over the 39 runs of the calibration (ResNet-18 to -152, 32-224 px, batch 8-256, 10-10,000 classes, one and two
# devices) measured/estimated ran from 0.93 to 1.00, and from 0.93 to 1.02 on runs held out of the fit; repeated
# runs vary by about 1%. The bounds leave room for another allocator or library build; the upper one is tighter
# because an estimate below the real need is the failure that matters (the run gets OOM-killed), one above it only
# refuses a batch that would have fitted.
LOW, HIGH = 0.80, 1.10


def sym_for(num_layers=18, size=64, num_classes=1000, dtype="float32", training=True):
    fuse = resnet.bn_relu_fusion(True, "cpu") if training and dtype != "float16" else None
    extra = {"input_dtype": "float32"} if dtype == "bfloat16" else {}
    return resnet.get_symbol(num_classes=num_classes, num_layers=num_layers, image_shape=(3, size, size),
                             dtype=dtype, fuse_bn_relu=fuse, **extra)


def est_for(num_layers=18, size=64, num_classes=1000, dtype="float32", training=True, num_devices=1):
    return memory.estimate(sym_for(num_layers, size, num_classes, dtype, training), (3, size, size), dtype=dtype,
                           training=training, num_devices=num_devices)


@pytest.fixture(scope="module")
def measured():
    """Peak resident bytes of real training steps, each in a fresh process (about 20 s on 2 cores)."""
    cfgs = [Config("train", 18, 64, 8), Config("train", 50, 64, 8), Config("train", 50, 64, 32)]
    return {(c.num_layers, c.size, c.batch): bench_memory.measure(c, timeout=300)["peak_bytes"] for c in cfgs}


# ------------------------------------------------------------------------------------------- (a) follows measurement


@pytest.mark.e2e
@pytest.mark.parametrize("key", [(18, 64, 8), (50, 64, 32)])
def test_estimate_follows_measured_peak(measured, key):
    depth, size, batch = key
    est = bench_memory.estimate_for(Config("train", depth, size, batch)).total(batch)
    ratio = measured[key] / est
    assert LOW <= ratio <= HIGH, (f"ResNet-{depth} {size}px batch {batch}: measured {measured[key] / MiB:.0f} MiB, "
                                  f"estimated {est / MiB:.0f} MiB, ratio {ratio:.2f}")


@pytest.mark.e2e
def test_bench_cli_writes_table_and_json(tmp_path):
    out = tmp_path / "m.json"
    assert bench_memory.main(["--configs", "score:18:32:4", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    row = data["rows"][0]
    assert row["config"]["mode"] == "score" and row["peak_bytes"] > row["runtime_bytes"] > 0
    # the calibration bound (LOW..HIGH) is test_estimate_follows_measured_peak's; one tiny configuration's peak is
    # noisy (1.107 seen on a 2-core AMD EPYC), so the command's output is checked for consistency here
    assert row["ratio"] == pytest.approx(row["peak_bytes"] / row["estimated_bytes"]) and 0.5 < row["ratio"] < 2
    assert data["cpu"]


def test_fit_recovers_factors_from_rows():
    """The fitting routine, on rows made from the shipped factors, returns factors that reproduce them."""
    rows = []
    for cfg in (Config("train", 18, 64, 8), Config("train", 18, 128, 16), Config("train", 50, 64, 32),
                Config("score", 18, 64, 8), Config("score", 50, 64, 16), Config("score", 18, 128, 32)):
        counts = bench_memory.counts_for(cfg)
        peak = memory.combine(counts, training=cfg.training).total(cfg.batch)
        rows.append({"config": asdict(cfg), "counts": asdict(counts),
                     "peak_bytes": peak, "runtime_bytes": memory.RUNTIME_BYTES})
    factors, runtime = bench_memory.fit_factors(rows)
    assert runtime == memory.RUNTIME_BYTES
    for mode in ("train", "score"):
        c, k_state, _, k_act = factors[mode]
        c0, k_state0, _, k_act0 = memory.FACTORS[mode]
        assert abs(k_state - k_state0) < 0.01 and abs(k_act - k_act0) < 0.01 and abs(c - c0) < 2 * MiB


# ------------------------------------------------------------------------------------------------- (b) arithmetic


def test_total_and_largest_batch():
    e = Estimate(fixed_bytes=100, per_image_bytes=10)
    assert e.total(0) == 100 and e.total(5) == 150
    assert e.largest_batch(150) == 5 and e.largest_batch(159) == 5 and e.largest_batch(160) == 6
    assert e.largest_batch(110) == 1
    assert e.largest_batch(109) == 0  # the fixed part fits, one image does not
    assert e.largest_batch(50) == 0  # not even the fixed part
    big = Estimate(fixed_bytes=GiB, per_image_bytes=100 * MiB)
    assert big.largest_batch(big.total(140)) == 140 and big.largest_batch(big.total(140) - 1) == 139


def test_format():
    assert memory._fmt(610 * GiB) == "610 GiB"
    assert memory._fmt(21.83 * GiB) == "21.8 GiB"
    assert memory._fmt(1.234 * GiB) == "1.23 GiB"
    assert memory._fmt(150 * MiB) == "150 MiB"
    assert memory._fmt(5.5 * MiB) == "5.5 MiB"


# ------------------------------------------------------------------------------------------------- (c) check_batch


def test_check_batch_refuses_absurd_batch_in_one_line():
    sym = sym_for(18, 64)
    with pytest.raises(UsageError) as info:
        memory.check_batch(sym, (3, 64, 64), 10_000_000, dtype="float32", training=True, num_devices=1)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("--batch-size 10000000: ResNet-18 training at 3x64x64 float32 needs about ")
    m = re.search(r"needs about ([\d.]+) (GiB|MiB) \(about ([\d.]+) MiB per image \+ ([\d.]+) MiB for weights, "
                  r"gradients, optimizer state and the MXNet runtime\); ([\d.]+) GiB are available \((.+?)\), "
                  r"10% of which is kept free; the largest batch that fits is about (\d+)$", msg)
    assert m, msg
    est = est_for(18, 64)
    need = float(m.group(1)) * (GiB if m.group(2) == "GiB" else MiB)
    assert abs(need - est.total(10_000_000)) / est.total(10_000_000) < 0.01
    assert abs(float(m.group(3)) * MiB - est.per_image_bytes) < 0.01 * est.per_image_bytes
    assert m.group(6) == memory.available_bytes()[1]
    largest = int(m.group(7))
    avail = memory.available_bytes()[0]  # other processes move it a little between the calls
    assert est.largest_batch(int(avail * 0.5)) <= largest <= est.largest_batch(int(avail * 1.5))
    assert memory.check_batch(sym, (3, 64, 64), largest // 2, dtype="float32", training=True) == est


def test_check_batch_passes_small_batch_and_names_the_flag():
    sym = sym_for(50, 64, training=False)
    est = memory.check_batch(sym, (3, 64, 64), 8, dtype="float32", training=False, num_devices=1)
    assert est == est_for(50, 64, training=False)
    with pytest.raises(UsageError, match=r"^-b 99999999: ResNet-50 scoring on 2 CPU devices at 3x64x64 float32 "):
        memory.check_batch(sym, (3, 64, 64), 99_999_999, dtype="float32", training=False, num_devices=2, flag="-b")


@pytest.mark.e2e
def test_refusal_names_the_batch_per_device_as_the_user_gave_it():
    """./runner -n 2 -b B refused: the line names -b B (per device) beside train.py's --batch-size 2B."""
    from conftest import ROOT, run

    res = run([ROOT / "runner", "-n", "2", "-b", "100000", "--data-backend", "synthetic"], timeout=120)
    err = res.stderr
    assert res.returncode == 2, err
    assert err.startswith("train.py: error: --batch-size 200000 (the runner's -b 100000 per device x 2 devices): "
                          "ResNet-50 training on 2 CPU devices at 3x224x224 float32 needs about "), err
    assert re.search(r"the largest batch that fits is about (\d+) \((\d+) per device\)$", err.strip()), err


def test_refusal_when_nothing_fits():
    est = Estimate(fixed_bytes=2 * GiB, per_image_bytes=100 * MiB)
    kw = dict(model="the model", what="training", image_shape=(3, 224, 224), dtype="float32")
    assert memory.refusal(est, 8, GiB, "MemAvailable", GiB, **kw).endswith("not even the fixed part fits")
    line = memory.refusal(est, 8, 3 * GiB, "MemAvailable", 2 * GiB + 150 * MiB, num_devices=2, **kw)
    assert line.endswith("not even one image per device fits")
    line = memory.refusal(est, 64, 5 * GiB, "MemAvailable", 4 * GiB, num_devices=2, **kw)
    assert line.endswith("the largest batch that fits is about 20 (10 per device)")  # 20.48, to a multiple of 2
    assert "2.00 GiB" not in line and "about 8.25 GiB (about 100 MiB per image + 2 GiB for" in line


def test_model_name():
    assert memory.model_name(sym_for(18)) == "ResNet-18"
    assert memory.model_name(sym_for(50, training=False)) == "ResNet-50"
    assert memory.model_name(resnet.get_symbol(num_layers=101, image_shape=(3, 32, 32))) == "ResNet-101"
    import mxnet as mx

    other = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=3), name="softmax")
    assert memory.model_name(other) == "the model"
    assert memory.estimate(other, (1, 4, 4), dtype="float32", training=True).per_image_bytes > 0


# ------------------------------------------------------------------------------------------------ (d) available


def meminfo(key):
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_available_bytes_cpu():
    avail, source = memory.available_bytes()
    assert 0 < avail <= meminfo("MemTotal")
    assert source == "MemAvailable" or source.startswith("cgroup")


def test_cgroup_v2_limit(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    step = tmp_path / "fs" / "job" / "step"
    step.mkdir(parents=True)
    (step / "memory.max").write_text("max\n")
    (step / "memory.current").write_text(f"{3 * GiB}\n")
    job = step.parent
    (job / "memory.max").write_text(f"{4 * GiB}\n")
    (job / "memory.current").write_text(f"{3 * GiB}\n")
    (job / "memory.stat").write_text(f"anon {2 * GiB}\nfile {GiB}\ninactive_file {GiB // 2}\n")
    room, source = memory.cgroup_headroom(tmp_path / "fs", proc)
    assert room == 4 * GiB - (3 * GiB - GiB // 2)
    assert source == "cgroup v2 memory.max 4 GiB minus 2.5 GiB in use"


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("5:devices:/\n4:memory:/c1\n0::/\n")
    d = tmp_path / "fs" / "memory" / "c1"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(f"{2 * GiB}\n")
    (d / "memory.usage_in_bytes").write_text(f"{GiB}\n")
    room, source = memory.cgroup_headroom(tmp_path / "fs", proc)
    assert room == GiB and source.startswith("cgroup v1")
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # what v1 writes for "no limit"
    assert memory.cgroup_headroom(tmp_path / "fs", proc) is None


@pytest.mark.gpu
def test_available_bytes_gpu():
    import mxnet as mx

    avail, source = memory.available_bytes("gpu", 0)
    assert 0 < avail <= mx.context.gpu_memory_info(0)[1]
    assert "gpu(0)" in source


# ------------------------------------------------------------------------------------------------ (e) scaling


def test_per_image_follows_pixels():
    for depth in (18, 50):
        small, large = est_for(depth, 64), est_for(depth, 128)
        assert 3.6 < large.per_image_bytes / small.per_image_bytes < 4.4
        assert abs(large.fixed_bytes - small.fixed_bytes) < 0.02 * small.fixed_bytes


@pytest.mark.e2e
def test_per_image_follows_measured_batch_slope(measured):
    """What 24 more images cost in a real run, against the estimate's per-image bytes."""
    slope = (measured[(50, 64, 32)] - measured[(50, 64, 8)]) / 24
    ratio = slope / est_for(50, 64).per_image_bytes
    assert 0.75 <= ratio <= 1.15, f"measured {slope / MiB:.2f} MiB per image, ratio {ratio:.2f}"


def test_estimate_follows_depth_classes_devices_dtype_and_mode():
    rn18, rn50 = est_for(18, 64), est_for(50, 64)
    assert rn50.per_image_bytes > 2 * rn18.per_image_bytes and rn50.fixed_bytes > rn18.fixed_bytes
    # 9,000 more classes: 18.4 M more parameters, each 16 bytes of training state (weight, gradient, momentum,
    # host copy) times the calibrated factor
    more = est_for(50, 64, num_classes=10000).fixed_bytes - rn50.fixed_bytes
    k_state = memory.FACTORS["train"][1]
    assert more == pytest.approx(2048 * 9000 * 16 * k_state, rel=0.01)
    two = est_for(50, 64, num_devices=2)
    assert two.per_image_bytes == rn50.per_image_bytes and two.fixed_bytes > rn50.fixed_bytes + 300 * MiB
    scoring = est_for(50, 64, training=False)
    assert scoring.per_image_bytes < rn50.per_image_bytes / 3 and scoring.fixed_bytes < rn50.fixed_bytes
    # bfloat16: 2-byte activations (the estimate is not measured here), fp32 weights and optimizer state
    bf16 = est_for(50, 224, dtype="bfloat16")
    fp32 = est_for(50, 224)
    assert 0.4 < bf16.per_image_bytes / fp32.per_image_bytes < 0.7
    assert bf16.fixed_bytes > fp32.fixed_bytes  # plus the bfloat16 casts of the weights


def test_graph_counts_state():
    sym = sym_for(18, 64)
    params = resnet.count_parameters(sym, (1, 3, 64, 64))
    counts = memory.graph_counts(sym, (3, 64, 64), dtype="float32", training=True)
    assert counts.param_count == params
    aux = sum(int(np.prod(s)) for s in sym.infer_shape(data=(1, 3, 64, 64))[2]) * 4
    assert counts.state_bytes == params * 16 + 2 * aux
    scoring = memory.graph_counts(sym_for(18, 64, training=False), (3, 64, 64), dtype="float32", training=False)
    assert scoring.state_bytes == params * 8 + 2 * aux
    assert counts.input_per_image == 3 * 64 * 64 * 4
