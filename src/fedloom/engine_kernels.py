"""Step kernels of the vectorized engine: one local SGD step's gradients for every client of a chunk at once.

Parameters are stacked ``[clients, ...]``; a kernel fills the stacked gradients (and, for BatchNorm, updates
the stacked running statistics) from a step's batches ``x [a, batch, features]``, labels ``y [a, batch, 1]``
and row weights ``w [a, batch, 1]`` (``1/b`` on the ``b`` real rows of a client's batch, 0 on padding).

- :class:`LinearKernel`: ``Linear ([BatchNorm1d] ReLU Linear)*`` (``fnn``, ``mlp``, ``mlp_bn``, ``logreg``),
  forward and backward written out with ``baddbmm``/``bmm``. BatchNorm uses the statistics of the real rows
  only (padding rows have weight 0), exactly as ``nn.BatchNorm1d`` on the unpadded batch.
- :class:`VmapKernel`: any model without buffers or dropout, via ``torch.func.vmap(grad(loss))``.
- :func:`sgd_`: ``torch.optim.SGD``'s update on the stacked tensors.

While ``runtime.threads: auto`` measures (:mod:`fedloom.threads`), ``STEP_TIMER[0]`` holds its tuner and each
kernel call is one timed step: the tuner sets the step's thread count before it and reads the clock after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .training import LocalSpec

__all__ = ["LinearKernel", "VmapKernel", "sgd_", "fusable", "fast_stack", "STEP_TIMER"]

_SOFTMAX_BY_HAND = 2048  # logits values from which the hand-written softmax beats log_softmax (measured)
# Buffers start at 0 and every client starts at step 0, so "is_first_step=False" gives buf = g on step 1.
_FUSED_SGD = getattr(torch, "_fused_sgd_", None)
STEP_TIMER: list = [None]  # a ThreadTuner with step_begin(rows)/step_end() while `threads: auto` measures


def _timed(call):
    """A kernel's ``__call__`` that reports to ``STEP_TIMER`` when one is set (a list lookup otherwise)."""

    def timed(self, views: tuple, x: torch.Tensor, *args) -> None:
        timer = STEP_TIMER[0]
        if timer is None:
            return call(self, views, x, *args)
        timer.step_begin(x.shape[0] * x.shape[1])  # rows of the step: clients × batch
        try:
            return call(self, views, x, *args)
        finally:
            timer.step_end()

    return timed


def _plain_bn(m: nn.Module) -> bool:
    """A BatchNorm1d the hand-written kernel reproduces: affine, running statistics with a fixed momentum."""
    return type(m) is nn.BatchNorm1d and m.affine and m.track_running_stats and m.momentum is not None


def fast_stack(model: nn.Module) -> list[tuple[nn.Linear, nn.BatchNorm1d | None]] | None:
    """``[(Linear, BatchNorm1d or None), ...]`` for ``Linear ([BatchNorm1d] ReLU Linear)*``, else None.

    The BatchNorm of pair i (if any) sits between Linear i and its ReLU; the last pair has none."""
    # a subclass with its own forward computes something else: not this stack
    sequential = isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward
    linear = isinstance(model, nn.Linear) and type(model).forward is nn.Linear.forward
    mods = [model] if linear else list(model) if sequential else []
    out: list[tuple[nn.Linear, nn.BatchNorm1d | None]] = []
    i = 0
    while i < len(mods):
        lin = mods[i]
        if type(lin) is not nn.Linear or lin.bias is None:
            return None
        i += 1
        if i == len(mods):
            out.append((lin, None))
            return out
        bn = mods[i] if _plain_bn(mods[i]) else None
        i += bn is not None
        if i == len(mods) or type(mods[i]) is not nn.ReLU:
            return None
        out.append((lin, bn))
        i += 1
    return None  # ended with a ReLU (or empty): not a classifier head


class LinearKernel:
    """Gradients of a Linear/[BatchNorm1d]/ReLU stack, forward and backward written out with batched matmuls.

    ``params``/``grads`` follow ``model.parameters()`` (per layer: weight ``[clients, out, in]``, bias
    ``[clients, out]``, then, after a hidden Linear with BatchNorm, its γ and β ``[clients, out]``);
    ``buffers`` follow the float buffers (per BatchNorm: running mean and variance ``[clients, out]``).
    Loss per client: ``L = Σ_rows w·ce`` with ``w = 1/b`` on real rows, so ``dL/dz = (softmax(z) − onehot(y))·w``.
    """

    def __init__(
        self, model: nn.Module, params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor],
        batch: int,
    ):  # fmt: skip
        self.params, self.grads, self.buffers, self.batch = params, grads, buffers, batch
        self.norms = [(bn.momentum, bn.eps) if bn is not None else None for _, bn in fast_stack(model)]

    def views(self, a: int) -> tuple:
        """Views for the first ``a`` clients (made once per active count, reused every step)."""
        p, g, b = [t[:a] for t in self.params], [t[:a] for t in self.grads], [t[:a] for t in self.buffers]
        layers, k, j = [], 0, 0
        for norm in self.norms:
            # weight [a, out, in], its transpose, bias [a, 1, out], and the two gradient buffers
            layer = [p[k], p[k].transpose(1, 2), p[k + 1].unsqueeze(1), g[k], g[k + 1], None]
            k += 2
            if norm is not None:  # γ, β [a, out]; their gradients; running mean, var [a, out]; momentum, eps
                layer[5] = (p[k], p[k + 1], g[k], g[k + 1], b[j], b[j + 1], *norm)
                k, j = k + 2, j + 2
            layers.append(layer)
        minus_one = torch.full((a, self.batch, 1), -1.0, device=p[0].device)  # −onehot(y), scattered into softmax
        return layers, minus_one

    def segment(self, y: torch.Tensor, w: torch.Tensor, logp_y: torch.Tensor, a: int) -> tuple:
        """``(small, per_slot)`` for a segment of slots (``y``, ``w``, ``logp_y``: its labels, row weights and
        log-probability out; ``a``: clients in its first, largest step); each step slices ``per_slot``. Small
        logits: ``(−w·onehot(y), w, log-softmax out)``, made once for the segment (:meth:`finish` reads the
        labels' log-probabilities back); else ``(y, w, logp_y)`` for the hand-written softmax."""
        classes = self.params[-1].shape[1]
        if a * y.shape[1] * classes >= _SOFTMAX_BY_HAND:
            return False, (y, w, logp_y)
        target = torch.zeros(*y.shape[:2], classes, device=y.device).scatter_(2, y, w.neg())  # [slots, batch, cls]
        return True, (target, w, torch.empty_like(target))

    @staticmethod
    def finish(small: bool, per_slot: tuple, y: torch.Tensor, logp_y: torch.Tensor) -> None:
        """``logp_y`` (the segment's ``[slots, batch, 1]``) from the log-softmax the small-logits steps kept."""
        if small:
            torch.gather(per_slot[2], 2, y, out=logp_y)

    @_timed
    def __call__(self, views: tuple, x: torch.Tensor, small: bool, y: torch.Tensor, w: torch.Tensor, out: torch.Tensor):
        """One step: ``x [a, batch, in]``; ``small``: ``y`` is −w·onehot and ``out`` the log-softmax
        ``[a, batch, classes]`` (else labels and ``logp_y``, see :meth:`segment`); ``w`` the row weights."""
        layers, minus_one = views
        hs, saved = [x], []  # input of each layer [a, batch, in]; BatchNorm's (x̂, 1/σ) per hidden layer
        for i, (_, wt, bias, _, _, bn) in enumerate(layers):
            z = torch.baddbmm(bias, hs[-1], wt)  # [a, batch, out]
            if i < len(layers) - 1:
                if bn is not None:
                    z, cache = _bn_forward(z, w, bn)
                    saved.append(cache)
                else:
                    saved.append(None)
                hs.append(z.relu_())
        if small:  # dL/dz = w·(softmax(z) − onehot(y)): log_softmax's backward of −w·onehot(y) (y here)
            g = torch._log_softmax_backward_data(y, torch.log_softmax(z, 2, out=out), 2, z.dtype)
        else:
            g = _softmax(z, y, out).scatter_add_(2, y, minus_one).mul_(w)  # dL/dz = (p − onehot)·w
        for i in reversed(range(len(layers))):
            weight, _, _, g_weight, g_bias, _ = layers[i]
            torch.bmm(g.transpose(1, 2), hs[i], out=g_weight)  # [a, out, in]
            torch.sum(g, 1, out=g_bias)  # [a, out]
            if i:  # back through Linear i, the ReLU before it, and that layer's BatchNorm
                g = torch.ops.aten.threshold_backward(torch.bmm(g, weight), hs[i], 0)
                if layers[i - 1][5] is not None:
                    g = _bn_backward(g, w, layers[i - 1][5], saved[i - 1])


def _softmax(z: torch.Tensor, y: torch.Tensor, logp_y: torch.Tensor) -> torch.Tensor:
    """Softmax p of ``z``, and log p(label) (= −cross-entropy) into ``logp_y [a, batch, 1]``, written out: CPU
    log_softmax over a short last dimension is slow (~15 ns a value here, measured); by hand it wins from ~2k
    values, and below that :class:`LinearKernel` takes log_softmax and its backward (two kernels, not eleven)."""
    top = z.amax(2, keepdim=True)  # [a, batch, 1]
    p = (z - top).exp_()
    total = p.sum(2, keepdim=True)
    torch.gather(z, 2, y, out=logp_y).sub_(top).sub_(total.log())
    return p.div_(total)


def _bn_forward(z: torch.Tensor, w: torch.Tensor, bn: tuple) -> tuple[torch.Tensor, tuple]:
    """Training-mode BatchNorm over each client's real rows (``w = 1/b`` there, 0 on padding), and the
    running-statistics update of ``nn.BatchNorm1d``: ``r ← (1 − m)·r + m·stat`` with the unbiased variance."""
    gamma, beta, _, _, run_mean, run_var, momentum, eps = bn
    mean = (z * w).sum(1, keepdim=True)  # [a, 1, out] over the real rows
    d = z - mean
    var = (d * d * w).sum(1, keepdim=True)  # [a, 1, out] biased, as the normalization uses
    inv = (var + eps).rsqrt()
    xhat = d.mul_(inv)  # [a, batch, out]
    with torch.no_grad():
        b = (w > 0).sum(1, keepdim=True).to(z.dtype)  # [a, 1, 1] real rows (≥ 2: one-row batches are skipped)
        run_mean.mul_(1 - momentum).add_(mean.squeeze(1), alpha=momentum)
        run_var.mul_(1 - momentum).add_((var * b / (b - 1)).squeeze(1), alpha=momentum)
    return torch.addcmul(beta.unsqueeze(1), xhat, gamma.unsqueeze(1)), (xhat, inv)


def _bn_backward(g: torch.Tensor, w: torch.Tensor, bn: tuple, cache: tuple) -> torch.Tensor:
    """Gradients of γ, β (into their buffers) and of BatchNorm's input:
    ``dz = (1/σ)·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`` with ``ĝ = γ·g``, means over real rows, 0 on padding rows."""
    gamma, _, g_gamma, g_beta = bn[:4]
    xhat, inv = cache
    torch.sum(g * xhat, 1, out=g_gamma)  # [a, out]; g is 0 on padding rows
    torch.sum(g, 1, out=g_beta)
    gx = g * gamma.unsqueeze(1)  # [a, batch, out]
    m1 = (gx * w).sum(1, keepdim=True)  # [a, 1, out]
    m2 = (gx * xhat * w).sum(1, keepdim=True)
    return (gx - m1 - xhat * m2).mul_(inv).mul_(w > 0)


class VmapKernel:
    """Gradients of any buffer-free model via ``vmap(grad(loss))`` over ``functional_call``."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor], grads: list[torch.Tensor]):
        self.names = [n for n, _ in model.named_parameters()]
        self.params, self.grads = params, grads

        def loss(p: dict, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
            ce = F.cross_entropy(functional_call(model, p, (x,)), y.squeeze(1), reduction="none")  # [batch]
            return (ce * w.squeeze(1)).sum(), -ce

        self.per_client = vmap(grad(loss, has_aux=True))

    def views(self, a: int) -> tuple:
        return {n: p[:a] for n, p in zip(self.names, self.params)}, [g[:a] for g in self.grads]

    @staticmethod
    def segment(y: torch.Tensor, w: torch.Tensor, logp_y: torch.Tensor, a: int) -> tuple:
        return False, (y, w, logp_y)  # as LinearKernel.segment: each step slices the labels, weights, out

    @staticmethod
    def finish(small: bool, per_slot: tuple, y: torch.Tensor, logp_y: torch.Tensor) -> None:
        pass

    @_timed
    def __call__(self, views: tuple, x: torch.Tensor, small: bool, y: torch.Tensor, w: torch.Tensor, logp_y):
        params, grads = views
        g, neg_ce = self.per_client(params, x, y, w)
        torch._foreach_copy_(grads, [g[n] for n in self.names])
        logp_y.copy_(neg_ce.unsqueeze(2))


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether :func:`sgd_` may take the fused kernel for ``params``: this torch has it, and every tensor is
    contiguous (torch 2.13's silently mis-steps a strided one, measured)."""
    return _FUSED_SGD is not None and all(t.is_contiguous() for t in params)


def sgd_(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], spec: LocalSpec,
    fused: bool | None = None,
):  # fmt: skip
    """torch.optim.SGD's update on stacked tensors, in place: ``buf ← m·buf + g; p ← p − lr·buf``, where
    ``g`` gains FedProx's ``μ·p`` (``spec.mu``, as SGD's weight decay; the caller adds ``−μ·w_t``).

    Uses the fused kernel behind ``torch.optim.SGD(fused=True)`` (one pass over memory instead of three;
    it may round the last bit differently, ~1e-8) when :func:`fusable` (``fused``: the caller's answer for
    these tensors, asked once for many steps)."""
    if fusable(params) if fused is None else fused:
        bufs = bufs if spec.momentum else []  # the fused kernel wants no buffers without momentum
        _FUSED_SGD(params, grads, bufs, weight_decay=spec.mu, momentum=spec.momentum, lr=spec.lr, dampening=0.0,
                   nesterov=False, maximize=False, is_first_step=False)  # fmt: skip
        return
    if spec.mu:
        torch._foreach_add_(grads, params, alpha=spec.mu)
    if spec.momentum:
        torch._foreach_mul_(bufs, spec.momentum)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(params, bufs, alpha=-spec.lr)
    else:
        torch._foreach_add_(params, grads, alpha=-spec.lr)
