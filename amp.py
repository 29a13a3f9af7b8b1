"""Dynamic loss scaling for the Module path (``--amp``): MXNet's AMP loss scaler works with Gluon's ``Trainer``
only, so the toolkit has its own with the same policy (``mxnet.contrib.amp.LossScaler``'s): the scale enters the
training graph as a fixed argument (``add_loss_scaler``), and ``DynamicLossScaler`` halves it and skips the update on
inf/NaN gradients, doubles it after a window of clean iterations, within [1, 2^24].
"""
from __future__ import annotations

import logging

import mxnet as mx

log = logging.getLogger("fit")

AMP_INIT_SCALE = 2.0 ** 16  # MXNet AMP's LossScaler: initial scale, its ceiling
AMP_MAX_SCALE = 2.0 ** 24
AMP_SCALE = "amp_loss_scale"  # the runtime scale, a fixed (never updated, never saved) argument of the training graph


def add_loss_scaler(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """``sym`` (a ``SoftmaxOutput``) with the loss gradient multiplied by the value of the argument ``AMP_SCALE``.

    ``SoftmaxOutput`` ignores head gradients and fixes its ``grad_scale`` when the graph is bound, so the scale
    enters the graph just below it, on the fp32 logits ``x``: ``BlockGrad(x) + (x*s - BlockGrad(x*s))`` is ``x``
    exactly in the forward pass (the two products are one node, so their difference is 0) and has gradient ``s``
    with respect to ``x`` in the backward pass. Changing the scale is then a write into a bound array."""
    logits, label = sym.get_children()[0], sym.get_children()[1]
    scale = mx.sym.Variable(AMP_SCALE, shape=(1,), dtype="float32", init=mx.init.One())
    z = mx.sym.broadcast_mul(logits, scale, name="amp_scaled_logits")
    y = mx.sym.elemwise_add(mx.sym.BlockGrad(logits, name="amp_logits"),
                            mx.sym.elemwise_sub(z, mx.sym.BlockGrad(z, name="amp_scaled_const"), name="amp_zero"),
                            name="amp_logits_scaled_grad")
    return mx.sym.SoftmaxOutput(y, label, name=sym.name, **sym.list_attr())


class DynamicLossScaler:
    """MXNet AMP's loss-scaling policy (``mxnet.contrib.amp.LossScaler``) for a Module: after every backward pass
    all gradients on all devices are checked (``multi_all_finite``); on inf/NaN the update is skipped and the scale
    halved (not below 1), otherwise after ``window`` clean iterations in a row it is doubled (at most 2^24). The
    optimizer's ``rescale_grad`` divides the scale out again."""

    def __init__(self, mod: mx.mod.Module, scale: float, window: int, batch: int):
        self.mod, self.window, self.batch = mod, window, batch
        self.clean = 0
        self.skipped = 0
        self._flags = {}
        self.scale = None
        self.set(scale)

    def set(self, scale: float) -> None:
        self.scale = float(scale)
        for ex in self.mod._exec_group.execs:
            ex.arg_dict[AMP_SCALE][:] = self.scale
        if self.mod.optimizer_initialized:
            self.mod._optimizer.rescale_grad = 1.0 / (self.batch * self.scale)

    def grads_finite(self) -> bool:
        by_ctx = {}
        for per_device in self.mod._exec_group.grad_arrays:
            for g in per_device:
                if g is not None:
                    by_ctx.setdefault(g.context, []).append(g)
        flags = []
        for ctx, grads in by_ctx.items():
            flag = self._flags.setdefault(ctx, mx.nd.ones((1,), ctx=ctx))
            flag[:] = 1
            for i in range(0, len(grads), 200):  # multi_all_finite takes at most a few hundred arrays
                chunk = grads[i:i + 200]
                mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
            flags.append(flag)
        return all(f.asscalar() == 1 for f in flags)

    def step(self, update) -> bool:
        """After the backward pass: call ``update`` unless a gradient is inf/NaN, then adjust the scale for the
        next iteration (after the update, which divides out the scale these gradients were made with). Returns
        whether the update was applied."""
        if not self.grads_finite():
            self.skipped += 1
            self.clean = 0
            new = max(1.0, self.scale / 2)
            log.info("AMP: inf/NaN gradients, update skipped; loss scale %g -> %g", self.scale, new)
            self.set(new)
            return False
        update()
        self.clean += 1
        if self.clean == self.window:
            self.clean = 0
            new = min(AMP_MAX_SCALE, self.scale * 2)
            if new != self.scale:
                log.info("AMP: %d clean iterations; loss scale %g -> %g", self.window, self.scale, new)
                self.set(new)
        return True
