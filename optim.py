"""LARS for MXNet's Module, as MLPerf's closed division defines it, and the closed division's poly LR schedule.

The definition is the one MLPerf Training accepts for ResNet-50 (its compliant MXNet implementation is NVIDIA's
``SGDwFASTLARS``; the TF reference's ``MLPERF_LARSOptimizer`` computes the same): SGD with momentum in which every
weight tensor gets its own learning rate,

    lr_layer = lr * eta * ||w|| / (||g|| + wd * ||w|| + eps)        (g: the gradient times rescale_grad)
    mom = momentum * mom - lr_layer * (rescale_grad * grad + wd * w);   w += mom

(MXNet's ``sgd_mom_update``; no momentum correction when the LR changes). Batchnorm gammas and betas and every
bias (names ending in ``_gamma``, ``_beta``, ``_bias``) take the plain LR and no weight decay. When ``||w||`` or
``||g||`` is 0 the ratio is 1 (plain LR): so do MXNet's ``multi_lars`` kernel and the TF reference, and it keeps a
zero-initialized tensor from being frozen (ratio 0) and an all-zero one from a 0/0.

Created by name: ``import optim`` registers :class:`MLPerfLARS` as ``"mlperflars"`` (``LARS_NAME``; ``"lars"`` is
MXNet's own LARS, which corrects the momentum when the LR changes), so that ``Module.init_optimizer(optimizer=LARS_NAME,
optimizer_params={...})`` creates it with the parameter names.

Two ways to run one update (``path``), chosen per device type by measurement:

* ``"host"`` (CPU): the squared norms of all the tensors of one call (BLAS ``dot``) come back to the host in one
  copy, the ratios are computed there, and each tensor gets MXNet's single-tensor ``sgd_mom_update`` /
  ``mp_sgd_mom_update`` with its own LR.
* ``"multi"`` (GPU, as NVIDIA's ``SGDwFASTLARS``): ``multi_sum_sq`` + ``multi_lars`` +
  ``preloaded_multi_(mp_)sgd_mom_update``, the per-tensor LRs staying on the device, at most ``MULTI_MAX`` tensors
  per kernel call. MXNet 1.9.1 has no ``lars_multi_sgd_mom_update`` (the fused op of NVIDIA's containers). On CPU,
  ``multi_sum_sq`` squares float16 in float16 (norms off by ~1e-4, relative).

On CPU the host path wins by far (``tools/bench_optim.py``, ResNet-50, batch 32, 2 cores: 38.7 ms per update on
the host path, 222 ms on the multi path, 44.9 ms for SGD as ``fit.py`` creates it). MXNet's multi-tensor SGD
kernels get slower there the more tensors one call takes (all of ResNet-50's weights: 24 ms with ``sgd_mom_update``,
36 ms with one tensor per multi-tensor call, 56 ms with 4, 317 ms with 54), and ``multi_sum_sq`` takes about twice
as long as ``dot``.

The optimizer asks MXNet's ``Updater`` for all the tensors of a device in one call (``aggregate_num``, whatever
``MXNET_OPTIMIZER_AGGREGATION_SIZE`` says), so the host path waits for the device once per step and device. When
the kvstore updates the weights (several devices with ``MXNET_UPDATE_ON_KVSTORE`` unset or 1), MXNet calls it once
per tensor instead, and the host path waits once per LARS tensor (54 of ResNet-50's 161). Dense gradients only
(no ``row_sparse``), no gradient clipping.
"""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np

LARS_NAME = "mlperflars"
EXCLUDED_SUFFIXES = ("_gamma", "_beta", "_bias")  # plain LR and no weight decay
MULTI_MAX = 60  # tensors per call of MXNet 1.9.1's multi-tensor SGD kernels (61 aborts the process)
PATHS = ("auto", "host", "multi")
ALL_AT_ONCE = 1 << 30  # the Updater hands the optimizer every tensor of a device in one call


def poly_lr(step: int, base_lr: float, warmup_steps: int, decay_steps: int, end_lr: float = 1e-4,
            power: float = 2) -> float:
    """MLPerf's closed-division LR at training step ``step`` (from 0): ``base_lr * (step + 1) / warmup_steps``
    during the warmup, then ``end_lr + (base_lr - end_lr) * (1 - t) ** power`` with ``t`` going from 0 at the end
    of the warmup to 1 at ``decay_steps`` (counted from step 0), then ``end_lr``."""
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"poly_lr: step {step} and warmup_steps {warmup_steps} must be at least 0")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return end_lr
    t = (step - warmup_steps) / (decay_steps - warmup_steps)
    return end_lr + (base_lr - end_lr) * (1.0 - t) ** power


def excluded(name: str) -> bool:
    """Whether the parameter ``name`` takes the plain LR and no weight decay (batchnorm gamma/beta, biases)."""
    return name.endswith(EXCLUDED_SUFFIXES)


def trust_lr(lr: float, w_norm: float, g_norm: float, wd: float, eta: float, eps: float) -> float:
    """``lr`` times the LARS ratio; ``g_norm`` is the norm of the rescaled gradient. A zero norm gives ``lr``."""
    if w_norm > 0 and g_norm > 0:
        return lr * eta * w_norm / (g_norm + wd * w_norm + eps)
    return lr


def _sum_sq(x: mx.nd.NDArray) -> mx.nd.NDArray:
    """Sum of squares of ``x`` as a 1-element float32 array, not waited for: BLAS ``dot``, which reads float32 at
    memory speed on CPU (``multi_sum_sq`` takes about twice as long there). Other dtypes are cast to float32 first:
    ``dot`` has no float16 on CPU, and ``multi_sum_sq`` squares float16 in float16 (relative error ~1e-4)."""
    flat = x.reshape(-1)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    return mx.nd.dot(flat, flat)


@mx.optimizer.register
class MLPerfLARS(mx.optimizer.Optimizer):
    """SGD with momentum and per-tensor LARS learning rates (module docstring), fp32 master weights for float16
    weights with ``multi_precision=True`` as MXNet's SGD.

    Args:
        momentum: momentum (MLPerf: 0.9 below a global batch of 32k).
        eta: LARS trust coefficient.
        eps: added to the denominator of the ratio (MLPerf: 0).
        path: ``"host"``, ``"multi"``, or ``"auto"``: host on CPU devices, multi on GPUs.
        **kwargs: MXNet's ``Optimizer`` arguments (``learning_rate``, ``lr_scheduler``, ``wd``, ``rescale_grad``,
            ``multi_precision``, ``param_idx2name``, ``sym``, ...). Parameters whose names are unknown (no
            ``param_idx2name``) are treated as weights.
    """

    def __init__(self, momentum: float = 0.9, eta: float = 0.001, eps: float = 0.0, path: str = "auto", **kwargs):
        if kwargs.get("clip_gradient") is not None:
            raise ValueError("MLPerfLARS: clip_gradient is not supported (the LARS ratio is defined on the "
                             "unclipped gradient)")
        if path not in PATHS:
            raise ValueError(f"MLPerfLARS: path {path!r}: expected one of {', '.join(PATHS)}")
        if not eta > 0 or eps < 0 or not 0 <= momentum < 1:
            raise ValueError(f"MLPerfLARS: eta {eta:g} must be > 0, eps {eps:g} >= 0, momentum {momentum:g} in "
                             "[0, 1)")
        super().__init__(**kwargs)
        self.momentum, self.eta, self.eps, self.path = momentum, eta, eps, path
        # not MXNET_OPTIMIZER_AGGREGATION_SIZE: one call per device and step whatever it is (module docstring)
        self.aggregate_num = ALL_AT_ONCE

    def set_wd_mult(self, args_wd_mult):
        """No weight decay for batchnorm gammas/betas and biases (MXNet's default decays gammas); then the
        symbol's ``__wd_mult__`` attributes and ``args_wd_mult``, as MXNet's ``Optimizer``."""
        self.wd_mult = {n: 0.0 for n in self.idx2name.values() if excluded(n)}
        if self.sym_info:
            attr, arg_names = self.sym_info
            for name in arg_names:
                if name in attr and "__wd_mult__" in attr[name]:
                    self.wd_mult[name] = float(attr[name]["__wd_mult__"])
        self.wd_mult.update(args_wd_mult)

    def create_state(self, index, weight):
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype)

    def create_state_multi_precision(self, index, weight):
        """``(momentum, fp32 master copy)`` for float16 weights with ``multi_precision``, as MXNet's SGD."""
        if self.multi_precision and weight.dtype == np.float16:
            master = weight.astype(np.float32)
            return self.create_state(index, master), master
        return self.create_state(index, weight)

    def update(self, index, weight, grad, state):
        self._update(index, weight, grad, state, False)

    def update_multi_precision(self, index, weight, grad, state):
        first = weight[0] if isinstance(index, (list, tuple)) else weight
        self._update(index, weight, grad, state, self.multi_precision and first.dtype == np.float16)

    def name_of(self, index) -> str:
        """The parameter name of an update index (an int from Module's updater, the name itself from a kvstore)."""
        if isinstance(index, str):
            return index
        return self.idx2name.get(index, str(index))

    def _update(self, indices, weights, grads, states, mp: bool) -> None:
        if not isinstance(indices, (list, tuple)):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        self._update_count(indices)
        lrs, wds = self._get_lrs(indices), self._get_wds(indices)
        names = [self.name_of(i) for i in indices]
        moms, masters = ([s[0] for s in states], [s[1] for s in states]) if mp else (list(states), list(weights))
        path = self.path
        if path == "auto":
            path = "multi" if weights[0].context.device_type == "gpu" else "host"
        if path == "host":
            self._update_host(names, weights, grads, moms, masters, lrs, wds, mp)
        else:
            self._update_multi(names, weights, grads, moms, masters, lrs, wds, mp)

    def _update_host(self, names, weights, grads, moms, masters, lrs, wds, mp: bool) -> None:
        lars = [k for k, n in enumerate(names) if not excluded(n)]
        if lars:
            sq = [_sum_sq(masters[k]) for k in lars] + [_sum_sq(grads[k]) for k in lars]
            sq = mx.nd.concat(*sq, dim=0).asnumpy().astype(np.float64)  # the one wait for the device
            n = len(lars)
            for j, k in enumerate(lars):
                lrs[k] = trust_lr(lrs[k], math.sqrt(sq[j]), math.sqrt(sq[n + j]) * self.rescale_grad, wds[k],
                                  self.eta, self.eps)
        kw = {"momentum": self.momentum, "rescale_grad": self.rescale_grad}
        for k, (w, g, m) in enumerate(zip(weights, grads, moms)):
            if mp:
                mx.nd.mp_sgd_mom_update(w, g, m, masters[k], out=w, lr=lrs[k], wd=wds[k], **kw)
            else:
                mx.nd.sgd_mom_update(w, g, m, out=w, lr=lrs[k], wd=wds[k], **kw)

    def _update_multi(self, names, weights, grads, moms, masters, lrs, wds, mp: bool) -> None:
        lars = [k for k, n in enumerate(names) if not excluded(n)]
        order = lars + [k for k, n in enumerate(names) if excluded(n)]  # LARS tensors first: one slice of LRs
        ctx = weights[0].context
        lrs_nd = mx.nd.array([lrs[k] for k in order], ctx=ctx, dtype=np.float32)
        wds_nd = mx.nd.array([wds[k] for k in order], ctx=ctx, dtype=np.float32)
        n = len(lars)
        if n:
            w_sq = mx.nd.multi_sum_sq(*[masters[k] for k in lars], num_arrays=n)
            g_sq = mx.nd.multi_sum_sq(*[grads[k] for k in lars], num_arrays=n)
            mx.nd.multi_lars(lrs_nd[:n], w_sq, g_sq, wds_nd[:n], eta=self.eta, eps=self.eps,
                             rescale_grad=self.rescale_grad, out=lrs_nd[:n])
        kw = {"momentum": self.momentum, "rescale_grad": self.rescale_grad}
        for s in range(0, len(order), MULTI_MAX):
            chunk = order[s:s + MULTI_MAX]
            out = [weights[k] for k in chunk]
            per = [(weights[k], grads[k], moms[k], masters[k]) if mp else (weights[k], grads[k], moms[k])
                   for k in chunk]
            arrays = [a for t in per for a in t] + [lrs_nd[s:s + len(chunk)], wds_nd[s:s + len(chunk)]]
            op = mx.nd.preloaded_multi_mp_sgd_mom_update if mp else mx.nd.preloaded_multi_sgd_mom_update
            op(*arrays, out=out, num_weights=len(chunk), **kw)
