"""optim.py: MLPerf LARS in a real MXNet Module (1 and 2 CPU devices, both update paths) against a numpy
implementation of its definition written here, the zero-norm convention, fp32 master weights for float16, resuming
from saved optimizer states, and the poly LR schedule."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

import optim

BATCH = 4
SHAPE = (BATCH, 2, 6, 6)
ETA, EPS, MOM, WD = 0.1, 1e-3, 0.9, 0.01  # a large eta and wd, so that a wrong ratio or decay shows
NO_LARS = ("bn0_gamma", "bn0_beta", "fc_bias")


def small_net() -> mx.sym.Symbol:
    """conv weight, batchnorm gamma/beta, fc weight and bias: every kind of parameter ResNet-50 has."""
    x = mx.sym.Convolution(mx.sym.var("data"), num_filter=4, kernel=(3, 3), pad=(1, 1), no_bias=True, name="conv0")
    x = mx.sym.BatchNorm(x, fix_gamma=False, name="bn0")
    x = mx.sym.FullyConnected(mx.sym.Activation(x, act_type="relu"), num_hidden=3, name="fc")
    return mx.sym.SoftmaxOutput(x, name="softmax")


def make_module(contexts, kvstore, path="auto", lr_scheduler=None, arg_params=None):
    mod = mx.mod.Module(small_net(), context=contexts)
    mod.bind(data_shapes=[("data", SHAPE)], label_shapes=[("softmax_label", (BATCH,))])
    mx.random.seed(3)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", magnitude=2), arg_params=arg_params,
                    aux_params=None, allow_missing=arg_params is not None, force_init=True)
    if arg_params is None:  # a gamma and beta away from 1 and 0, so that weight decay on them would show
        arg, aux = mod.get_params()
        arg["bn0_gamma"][:] = mx.nd.array([1.5, 0.7, 1.2, 0.9])
        arg["bn0_beta"][:] = mx.nd.array([0.3, -0.2, 0.1, 0.4])
        arg["fc_bias"][:] = mx.nd.array([0.5, -0.5, 0.25])
        mod.set_params(arg, aux)
    params = {"momentum": MOM, "wd": WD, "eta": ETA, "eps": EPS, "multi_precision": True, "path": path}
    params.update({"lr_scheduler": lr_scheduler} if lr_scheduler else {"learning_rate": 0.5})
    mod.init_optimizer(kvstore=kvstore, optimizer=optim.LARS_NAME, optimizer_params=params)
    return mod


def batch(seed: int) -> mx.io.DataBatch:
    rng = np.random.RandomState(seed)
    return mx.io.DataBatch([mx.nd.array(rng.normal(size=SHAPE))], [mx.nd.array(rng.randint(0, 3, BATCH))])


def names(mod):
    return mod._exec_group.param_names


def device_weights(mod) -> list[dict]:
    """Each device's copy of the parameters, float64."""
    ex = mod._exec_group
    return [{n: ex.param_arrays[i][d].asnumpy().astype(np.float64) for i, n in enumerate(names(mod))}
            for d in range(len(ex.contexts))]


def summed_grads(mod) -> dict:
    """The gradient each parameter is updated with: the sum over devices (what the kvstore reduces)."""
    ex = mod._exec_group
    return {n: sum(g.asnumpy().astype(np.float64) for g in ex.grad_arrays[i]) for i, n in enumerate(names(mod))}


def reference_step(w: dict, g: dict, mom: dict, lr: float, rescale: float) -> None:
    """One MLPerf LARS step in numpy, in place: the per-tensor ratio on the rescaled gradient, none and no weight
    decay for batchnorm gamma/beta and biases, a ratio of 1 when a norm is 0, MXNet's sgd_mom_update."""
    for n in w:
        plain = n in NO_LARS
        wd = 0.0 if plain else WD
        w_norm, g_norm = np.linalg.norm(w[n]), np.linalg.norm(rescale * g[n])
        lr_n = lr if plain or w_norm == 0 or g_norm == 0 else lr * ETA * w_norm / (g_norm + wd * w_norm + EPS)
        mom[n] = MOM * mom[n] - lr_n * (rescale * g[n] + wd * w[n])
        w[n] = w[n] + mom[n]


def check_close(got: dict, want: dict) -> None:
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=2e-5, atol=1e-7, err_msg=n)


SETUPS = {"1 cpu": ([mx.cpu(0)], None, "1"),
          "2 cpu, kvstore device (updates on the kvstore)": ([mx.cpu(0), mx.cpu(1)], "device", "1"),
          "2 cpu, kvstore local (updates on the kvstore)": ([mx.cpu(0), mx.cpu(1)], "local", "1"),
          "2 cpu, kvstore device, MXNET_UPDATE_ON_KVSTORE=0": ([mx.cpu(0), mx.cpu(1)], "device", "0")}


@pytest.mark.parametrize("path", ["host", "multi"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_two_steps_match_numpy(setup, path, monkeypatch):
    contexts, kvstore, on_kv = SETUPS[setup]
    monkeypatch.setenv("MXNET_UPDATE_ON_KVSTORE", on_kv)
    monkeypatch.setenv("MXNET_OPTIMIZER_AGGREGATION_SIZE", "1")  # the runner's CPU value: not used by LARS
    # the LR comes from the scheduler at the optimizer's num_update: 0.5 at update 1, 0.25 at update 2
    sched = mx.lr_scheduler.MultiFactorScheduler(step=[1], factor=0.5, base_lr=0.5)
    mod = make_module(contexts, kvstore, path, lr_scheduler=sched)
    opt = mod._optimizer
    assert type(opt) is optim.MLPerfLARS and opt.rescale_grad == 1.0 / BATCH
    assert opt.aggregate_num == optim.ALL_AT_ONCE
    assert mod._update_on_kvstore == (kvstore is not None and on_kv == "1")
    w = device_weights(mod)[0]
    mom = {n: np.zeros_like(v) for n, v in w.items()}
    for step, lr in ((0, 0.5), (1, 0.25)):
        mod.forward_backward(batch(step))
        g = summed_grads(mod)
        assert all(np.linalg.norm(v) > 0 for v in g.values())
        mod.update()
        reference_step(w, g, mom, lr, 1.0 / BATCH)
        for dev in device_weights(mod):
            check_close(dev, w)


def test_momentum_and_exclusions_matter():
    """The reference above would notice a missing momentum, wd on gamma, or LARS on the fc bias."""
    mod = make_module([mx.cpu(0)], None, "host")
    w0 = device_weights(mod)[0]
    mod.forward_backward(batch(0))
    g = summed_grads(mod)
    lr, rescale = 0.5, 1.0 / BATCH
    mod.update()
    new = device_weights(mod)[0]
    assert not np.allclose(new["bn0_gamma"], w0["bn0_gamma"] - lr * (rescale * g["bn0_gamma"] + WD * w0["bn0_gamma"]),
                           rtol=1e-6, atol=0)
    np.testing.assert_allclose(new["bn0_gamma"], w0["bn0_gamma"] - lr * rescale * g["bn0_gamma"], rtol=1e-5)
    np.testing.assert_allclose(new["fc_bias"], w0["fc_bias"] - lr * rescale * g["fc_bias"], rtol=1e-5)
    step = new["fc_weight"] - w0["fc_weight"]
    assert np.linalg.norm(step) < 0.5 * np.linalg.norm(lr * rescale * g["fc_weight"])  # the ratio scaled it


def updater_for(path: str, **kw):
    opt = mx.optimizer.create(optim.LARS_NAME, param_idx2name={0: "a_weight", 1: "b_weight", 2: "c_gamma"},
                              learning_rate=0.5, momentum=MOM, wd=WD, eta=ETA, eps=0.0, rescale_grad=0.5, path=path,
                              **kw)
    return mx.optimizer.get_updater(opt)


@pytest.mark.parametrize("path", ["host", "multi"])
def test_zero_norm_gives_plain_lr(path):
    """A zero weight (||w|| = 0) or a zero gradient (||g|| = 0) takes the plain LR (ratio 1), as MXNet's multi_lars
    and the TF reference do, instead of a ratio of 0 (a frozen tensor) or 0/0."""
    rng = np.random.RandomState(0)
    w = [np.zeros((3, 4)), rng.normal(size=(5,)), np.zeros((2,))]
    g = [rng.normal(size=(3, 4)), np.zeros((5,)), np.zeros((2,))]
    ws, gs = [mx.nd.array(a) for a in w], [mx.nd.array(a) for a in g]
    updater_for(path)([0, 1, 2], gs, ws)
    lr, rescale = 0.5, 0.5
    np.testing.assert_allclose(ws[0].asnumpy(), -lr * rescale * g[0], rtol=1e-6)  # wd * 0 = 0
    np.testing.assert_allclose(ws[1].asnumpy(), w[1] - lr * WD * w[1], rtol=1e-6)
    np.testing.assert_array_equal(ws[2].asnumpy(), 0)


@pytest.mark.parametrize("path", ["host", "multi"])
def test_float16_weights_use_fp32_master(path):
    """multi_precision: float16 weights and gradients, an fp32 master copy and momentum (MXNet's CPU build has the
    mixed-precision SGD kernels; it has no float16 convolution or GEMM, so this drives the Updater directly instead of
    a Module)."""
    rng = np.random.RandomState(1)
    w32 = [rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)]
    ws = [mx.nd.array(a, dtype=np.float16) for a in w32]
    master = {0: ws[0].asnumpy().astype(np.float64), 2: ws[1].asnumpy().astype(np.float64)}
    mom = {k: np.zeros_like(v) for k, v in master.items()}
    update = updater_for(path, multi_precision=True)
    for step in range(2):
        g16 = [rng.normal(size=a.shape).astype(np.float16) for a in w32]
        update([0, 2], [mx.nd.array(a, dtype=np.float16) for a in g16], ws)
        for k, gk in zip((0, 2), g16):
            gd = gk.astype(np.float64) * 0.5
            plain = k == 2  # c_gamma
            wd = 0.0 if plain else WD
            wn, gn = np.linalg.norm(master[k]), np.linalg.norm(gd)
            lr_k = 0.5 if plain else 0.5 * ETA * wn / (gn + wd * wn)
            mom[k] = MOM * mom[k] - lr_k * (gd + wd * master[k])
            master[k] = master[k] + mom[k]
    for k, wk in zip((0, 2), ws):
        state_mom, state_master = update.states[k]
        assert wk.dtype == np.float16 and state_master.dtype == np.float32 and state_mom.dtype == np.float32
        # multi: MXNet's multi_sum_sq squares float16 gradients in float16, a ~1e-4 error in the ratio
        tol = {"rtol": 1e-5, "atol": 1e-7} if path == "host" else {"rtol": 1e-4, "atol": 1e-5}
        np.testing.assert_allclose(state_master.asnumpy(), master[k], **tol)
        np.testing.assert_array_equal(wk.asnumpy(), state_master.asnumpy().astype(np.float16))


@pytest.mark.parametrize("setup", ["1 cpu", "2 cpu, kvstore device (updates on the kvstore)",
                                   "2 cpu, kvstore device, MXNET_UPDATE_ON_KVSTORE=0"])
def test_saved_states_resume_the_same_step(setup, tmp_path, monkeypatch):
    contexts, kvstore, on_kv = SETUPS[setup]
    monkeypatch.setenv("MXNET_UPDATE_ON_KVSTORE", on_kv)
    mod = make_module(contexts, kvstore)
    mod.forward_backward(batch(0))
    mod.update()
    states = tmp_path / "lars.states"
    mod.save_optimizer_states(str(states))
    arg, _ = mod.get_params()
    arg = {k: v.copy() for k, v in arg.items()}
    mod.forward_backward(batch(1))
    mod.update()
    want = device_weights(mod)

    resumed = make_module(contexts, kvstore, arg_params=arg)
    resumed.load_optimizer_states(str(states))
    resumed.forward_backward(batch(1))
    resumed.update()
    for got, exp in zip(device_weights(resumed), want):
        for n in exp:
            np.testing.assert_allclose(got[n], exp[n], rtol=1e-6, atol=1e-8, err_msg=n)

    fresh = make_module(contexts, kvstore, arg_params=arg)  # no states: momentum from zero, a different step
    fresh.forward_backward(batch(1))
    fresh.update()
    assert not np.allclose(device_weights(fresh)[0]["conv0_weight"], want[0]["conv0_weight"], rtol=1e-4)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="path 'gpu': expected one of auto, host, multi"):
        mx.optimizer.create(optim.LARS_NAME, path="gpu")
    with pytest.raises(ValueError, match="clip_gradient is not supported"):
        mx.optimizer.create(optim.LARS_NAME, clip_gradient=1.0)
    with pytest.raises(ValueError, match="eta 0 must be > 0"):
        mx.optimizer.create(optim.LARS_NAME, eta=0.0)


def test_poly_lr():
    base, end, warm, decay = 10.0, 1e-4, 4, 20
    lr = [optim.poly_lr(s, base, warm, decay) for s in range(25)]
    assert lr[:4] == pytest.approx([2.5, 5.0, 7.5, 10.0])  # linear warmup, (step + 1) / warmup_steps
    assert lr[4] == pytest.approx(base)  # the decay starts at base_lr
    assert lr[12] == pytest.approx(end + (base - end) * 0.5 ** 2)  # halfway
    assert lr[19] == pytest.approx(end + (base - end) / 16 ** 2)
    assert lr[20:] == [end] * 5  # clamped from decay_steps on
    assert optim.poly_lr(3, 1.0, 0, 4, end_lr=0.0, power=1) == pytest.approx(0.25)  # no warmup
    assert optim.poly_lr(5, 1.0, 5, 5) == 1e-4  # decay_steps at the end of the warmup: end_lr, no 0/0
    with pytest.raises(ValueError, match="step -1"):
        optim.poly_lr(-1, 1.0, 0, 4)


@pytest.mark.parametrize("path", ["host", "multi"])
def test_one_tensor_per_call_equals_all_at_once(path):
    """The Updater hands the optimizer every tensor at once (its aggregate_num); called one tensor at a time (as a
    kvstore does) it computes the same step."""
    mods = [make_module([mx.cpu(0)], None, path) for _ in range(2)]
    mods[1]._optimizer.aggregate_num = 1  # the Updater reads it at every call
    for step in range(2):
        for mod in mods:
            mod.forward_backward(batch(step))
            mod.update()
    got, want = device_weights(mods[1])[0], device_weights(mods[0])[0]
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-6, atol=1e-9, err_msg=n)
