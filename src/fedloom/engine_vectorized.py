"""Vectorized cohort engine: every client of a cohort runs its local SGD in lock step, as one batched computation.

The parameters of the cohort are stacked ``[clients, ...]`` and each local step is a handful of batched
kernels for all clients at once, instead of one small Python loop per client. The numbers are those of
the readable reference, :class:`fedloom.training.SequentialEngine` (to float rounding, ~1e-6):

- **Batch order.** Client ``c`` in round ``r`` draws one ``torch.randperm(n_c)`` per epoch from a
  generator seeded with :func:`~fedloom.training.client_seed`, exactly as the reference; its batches are
  consecutive ``batch_size`` slices of that permutation (the last one shorter).
- **Uneven shards.** Clients are sorted by number of local steps, most first, so at step ``t`` the active
  clients are a prefix ``[:active[t]]`` of the stacked tensors: a client that has finished is simply not
  touched. Short batches are padded to ``batch_size`` with weight 0, and each real row has weight
  ``1/b`` (``b`` real rows), so the loss is the mean over the real rows, as ``F.cross_entropy``.
- **Optimizer.** ``torch.optim.SGD`` with momentum m, no dampening/Nesterov/weight decay:
  ``buf ← m·buf + g`` (``buf = g`` on the first step: buffers start at 0 and every client starts at step 0),
  ``p ← p − lr·buf``.
- **Local terms** (:mod:`fedloom.training`: FedProx's ``μ·(w − w_t)``, SCAFFOLD's ``c − c_i``) are added to
  the gradients before that update as ``g + (c − c_i − μ·w_t) + μ·w``: the first bracket is one stacked
  tensor per chunk, added by one ``add_`` per step, and ``μ·w`` is SGD's weight decay, which the
  fused kernel applies in its pass. Without local terms a step runs no extra kernel.

Two ways to compute a step's gradients (:mod:`fedloom.engine_kernels`):

- **Linear/[BatchNorm1d]/ReLU stacks** (``fnn``, ``mlp``, ``mlp_bn``, ``logreg``): hand-written batched
  forward/backward with ``baddbmm``/``bmm`` and the softmax-cross-entropy gradient ``(softmax(z) − onehot(y))·w``
  (log_softmax's own backward for small logits, the softmax written out for large ones; about 2× faster than
  ``vmap(grad)`` here, measured on the lab's CPU). BatchNorm normalizes
  over each client's real rows and updates the client's stacked running statistics, which travel in the
  diff like parameters (:mod:`fedloom.params`); a trailing one-row batch is skipped, as in the reference.
- **Anything else without buffers or dropout** (``cnn``): ``torch.func.vmap(grad(loss))`` over
  ``functional_call``. Other models with buffers (``resnet18``'s BatchNorm2d) or dropout are refused here;
  ``runtime.engine: auto`` trains them with the sequential reference.

Memory is bounded by the cohort: clients' rows stay in the shared ``x_train`` and each step gathers its
batches with an index tensor; cohorts larger than a memory budget (a fraction of free RAM, or
``runtime.chunk`` clients) are trained chunk after chunk.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from torch import nn

from .data import FedData
from .device import on_device
from .engine_kernels import LinearKernel, VmapKernel, fast_stack, fusable, sgd_
from .engine_plan import Plan, plan_batches, steps_per_epoch
from .errors import ConfigError
from .params import state_tensors
from .training import CohortResult, LocalSpec, check_correction, check_local, has_batchnorm

__all__ = ["VectorizedEngine", "supports", "linear_stack"]

_MEMORY_FRACTION = 0.25  # of the RAM psutil reports available: leaves room for the data, eval, other jobs
_SMALL_BYTES = 64 * 2**20  # a cohort needing less than this is trained in one chunk without asking psutil
_F32 = 4  # bytes per float32
_SLOT_BYTES = 8 + 8 + 4 + 4  # per planned batch row: row index, label (int64), weight, log-probability
_ACT_COPIES = 3  # activations are held for backward, plus their gradients and one temporary per layer
_GATHER_BYTES = 4 * 2**20  # inputs gathered at once (a few steps of batches): bounded whatever the epochs


@dataclass(frozen=True)
class _Shape:
    """What the engine reads of a model's structure, once per model (modules are not rebuilt while they train)."""

    supported: bool  # see supports()
    batchnorm: bool  # training.has_batchnorm
    linear: bool  # a Linear/[BatchNorm1d]/ReLU stack (engine_kernels.fast_stack)
    shapes: tuple[torch.Size, ...]  # state tensors in Layout order: parameters, then float buffers
    num_params: int  # how many of them are parameters
    size: int  # values in all of them


_SHAPES: weakref.WeakKeyDictionary[nn.Module, _Shape] = weakref.WeakKeyDictionary()


def _shape(model: nn.Module) -> _Shape:
    shape = _SHAPES.get(model)
    if shape is None:
        stack = fast_stack(model)
        dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
        tensors = state_tensors(model)
        shape = _SHAPES[model] = _Shape(
            supported=not dropout and (next(model.buffers(), None) is None or stack is not None),
            batchnorm=has_batchnorm(model),
            linear=stack is not None,
            shapes=tuple(t.shape for t in tensors),
            num_params=len(list(model.parameters())),
            size=sum(t.numel() for t in tensors),
        )
    return shape


def supports(model: nn.Module) -> bool:
    """Whether the vectorized engine reproduces the reference for ``model``: no dropout (its random masks
    would differ from the reference's), and buffers (BatchNorm running statistics) only in a
    Linear/BatchNorm1d/ReLU stack, whose kernel carries them."""
    return _shape(model).supported


def linear_stack(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``Linear ([BatchNorm1d] ReLU Linear)*`` (fnn, mlp, mlp_bn, logreg), or None."""
    stack = fast_stack(model)
    return None if stack is None else [lin for lin, _ in stack]


def _segments(plan: Plan, row_bytes: int) -> list[tuple[int, int]]:
    """Consecutive step ranges whose gathered inputs stay under ``_GATHER_BYTES`` (at least one step each)."""
    out, first, size = [], 0, 0
    for t, a in enumerate(plan.active):
        if size and size + a * row_bytes > _GATHER_BYTES:
            out.append((first, t))
            first, size = t, 0
        size += a * row_bytes
    return out + [(first, len(plan.active))] if plan.active else []


# ------------------------------------------------------------------------------------------------- engine
class _Workspace:
    """The stacked ``[clients, ...]`` tensors of a chunk (state, gradients, momentum buffers), the step kernel
    and its views: built for one (model, chunk size, batch, device) and, when small, kept for the next round
    with that shape: building them costs a small cohort more than its steps.

    Client-major: row ``c`` of ``param [clients, params]`` is client c's parameters in the global vector's
    layout (its float buffers, BatchNorm's running statistics, the same in ``buffer``), and each tensor is a
    strided view of its columns, so starting from the global vector, the diffs and the SGD update over all
    parameters are one kernel each (``grad``, ``buf`` alike; each a contiguous block, as the fused SGD
    kernel needs)."""

    def __init__(self, model: nn.Module, shape: _Shape, C: int, B: int, device: torch.device):
        sizes = [s.numel() for s in shape.shapes]
        self.P = sum(sizes[: shape.num_params])  # the global vector's first P values are the parameters
        self.param = torch.empty(C, self.P, device=device)
        self.buffer = torch.empty(C, shape.size - self.P, device=device)
        self.params = self._views(self.param, shape.shapes[: shape.num_params])
        self.buffers = self._views(self.buffer, shape.shapes[shape.num_params :])
        self.grad = torch.empty(C, self.P, device=device)
        self.buf = torch.zeros(C, self.P, device=device)
        self.grads = self._views(self.grad, shape.shapes[: shape.num_params])
        if shape.linear:
            self.kernel: LinearKernel | VmapKernel = LinearKernel(model, self.params, self.grads, self.buffers, B)
        else:
            self.kernel = VmapKernel(model, self.params, self.grads)
        self.views: dict[int, tuple] = {}  # active count → (kernel views, params, grad, buf) of the first a
        self.bytes = (2 * C * shape.size + 2 * C * self.P) * _F32

    @staticmethod
    def _views(flat: torch.Tensor, shapes: tuple[torch.Size, ...]) -> list[torch.Tensor]:
        out, first = [], 0
        for s in shapes:
            out.append(flat[:, first : first + s.numel()].view(len(flat), *s))
            first += s.numel()
        return out

    def start(self, start: torch.Tensor) -> None:
        """State from ``start``: one flat vector ``[size]`` for every client, or one row per client; momentum 0."""
        self.param.copy_(start[..., : self.P])  # a vector broadcasts to every row
        if self.buffer.shape[1]:
            self.buffer.copy_(start[..., self.P :])
        self.buf.zero_()

    def diffs(self, global_vec: torch.Tensor) -> torch.Tensor:
        """``[clients, size]``: each client's state minus ``global_vec``."""
        if not self.buffer.shape[1]:
            return self.param - global_vec
        return torch.cat([self.param, self.buffer], 1) - global_vec

    def step_views(self, a: int) -> tuple:
        """``(kernel views, [param], [grad], [buf], fusable)`` of the first ``a`` clients."""
        views = self.views.get(a)
        if views is None:
            p = [self.param[:a]]
            views = self.views[a] = (self.kernel.views(a), p, [self.grad[:a]], [self.buf[:a]], fusable(p))
        return views


_KEEP_BYTES = 16 * 2**20  # a workspace up to this size is kept for the next chunk of its shape
_WORKSPACES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, _Workspace]] = weakref.WeakKeyDictionary()


def _workspace(model: nn.Module, C: int, B: int, device: torch.device) -> _Workspace:
    """A workspace for this chunk: the kept one when its shape matches, else a new one (kept when small)."""
    key = (C, B, device)
    kept = _WORKSPACES.get(model)
    if kept is not None and kept[0] == key:
        return kept[1]
    ws = _Workspace(model, _shape(model), C, B, device)
    if ws.bytes <= _KEEP_BYTES:
        _WORKSPACES[model] = (key, ws)
    else:
        _WORKSPACES.pop(model, None)
    return ws


def _shift(C: int, P: int, global_vec: torch.Tensor, mu: float, correction: torch.Tensor | None) -> torch.Tensor | None:
    """``[clients, params]``: ``correction − μ·w_t`` over the first ``P`` (parameter) values, the part of the
    local terms that does not change during training (module docstring); None when there are no local terms."""
    if not mu and correction is None:
        return None
    w_t = global_vec[:P]
    if correction is None:
        return (w_t * -mu).expand(C, P)
    return correction[:, :P].sub(w_t, alpha=mu)


def _train_chunk(
    model: nn.Module, global_vec: torch.Tensor, data: FedData, clients: list[int], spec: LocalSpec, seed: int,
    round: int, starts: torch.Tensor | None = None, device: torch.device | None = None,
    correction: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Train ``clients`` (sorted by steps, most first) in lock step from ``global_vec`` (or from the rows of
    ``starts`` ``[clients, params]``, in the same order) on ``device`` (where ``global_vec`` is), with the
    local terms of ``spec.mu`` and ``correction`` ``[clients, params]`` (same order);
    ``(diffs [clients, params] vs global_vec, loss sums)``."""
    C, B, device = len(clients), spec.batch_size, device or global_vec.device
    shape = _shape(model)
    ws = _workspace(model, C, B, device)
    ws.start(global_vec if starts is None else starts)
    shift = _shift(C, ws.P, global_vec, spec.mu, correction)  # None without local terms
    plan = plan_batches(data, clients, spec, seed, round, shape.batchnorm).to(device)  # built on the CPU (numpy)
    logp_y = torch.empty_like(plan.weight)  # [slots, batch, 1]
    x_all = on_device(data.x_train, device)  # copied once per dataset and device
    kernel = ws.kernel
    for first, last in _segments(plan, B * data.num_features * _F32):
        base = plan.offsets[first]
        rows = plan.rows[base : plan.offsets[last]]  # [slots in segment, batch]
        x_seg = x_all.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)  # [slots, batch, features]
        end = plan.offsets[last]
        y_seg, logp_seg = plan.y[base:end], logp_y[base:end]
        small, (p1, p2, p3) = kernel.segment(y_seg, plan.weight[base:end], logp_seg, plan.active[first])
        for t in range(first, last):
            a, lo, hi = plan.active[t], plan.offsets[t] - base, plan.offsets[t + 1] - base
            v, p_a, g_a, b_a, fused = ws.step_views(a)
            kernel(v, x_seg[lo:hi], small, p1[lo:hi], p2[lo:hi], p3[lo:hi])
            if shift is not None:
                g_a[0].add_(shift[:a])  # c − c_i − μ·w_t; sgd_ adds μ·w as weight decay
            sgd_(p_a, g_a, b_a, spec, fused)
        kernel.finish(small, (p1, p2, p3), y_seg, logp_seg)
    real = (plan.weight > 0).squeeze(2)  # [slots, batch]
    batch_loss = -(logp_y.squeeze(2) * real).sum(1, dtype=torch.float64)  # [slots] Σ cross-entropy of a batch
    loss_sum = torch.zeros(C, dtype=torch.float64, device=device).index_add_(0, plan.owner, batch_loss)
    diffs = ws.diffs(global_vec)  # [clients, size]
    return diffs, loss_sum


_ACTIVATIONS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _activations_per_row(model: nn.Module, features: int) -> int:
    """Values one input row produces in all layers' outputs (a probe forward pass, once per model)."""
    stack = None if model in _ACTIVATIONS else fast_stack(model)
    if stack is not None:  # the probe's count without running it: each layer's output, and the model's
        last = stack[-1][0].out_features
        hidden = sum(lin.out_features * (3 if bn is not None else 2) for lin, bn in stack[:-1])  # Linear, BN, ReLU
        _ACTIVATIONS[model] = features + hidden + last * (1 if isinstance(model, nn.Linear) else 2)
    if model not in _ACTIVATIONS:
        total = [features]

        def count(_module: nn.Module, _inputs: tuple, out: object) -> None:
            total.append(out.numel() if isinstance(out, torch.Tensor) else 0)

        hooks = [m.register_forward_hook(count) for m in model.modules()]
        training = model.training
        model.eval()  # BatchNorm: running statistics, which one row can use and this pass must not update
        try:
            with torch.no_grad():
                model(torch.zeros(1, features))
        finally:
            model.train(training)
            for h in hooks:
                h.remove()
        _ACTIVATIONS[model] = sum(total)
    return _ACTIVATIONS[model]


class VectorizedEngine:
    """Trains a cohort as one batched computation over stacked ``[clients, ...]`` parameters.

    ``chunk`` forces the number of clients trained together; by default chunks are sized so that their
    parameters, optimizer state, batch plan and activations fit in a quarter of the free memory."""

    name = "vectorized"

    def __init__(self, chunk: int | None = None):
        if chunk is not None and chunk < 1:
            raise ConfigError(f"runtime.chunk must be ≥ 1 client, got {chunk}")
        self.chunk = chunk
        self.device: torch.device | None = None  # runtime.device, set by fedloom.device.use_device; None: CPU

    def chunks(
        self, model: nn.Module, data: FedData, clients: list[int], spec: LocalSpec, terms: bool = False
    ) -> list[list[int]]:
        """Split ``clients`` (sorted by steps, most first) into consecutive chunks that fit the budget
        (``terms``: local terms hold two more model-sized vectors per client, the correction and shift)."""
        if self.chunk is not None:
            return [clients[i : i + self.chunk] for i in range(0, len(clients), self.chunk)]
        num_params = _shape(model).size
        act = _activations_per_row(model, data.num_features)
        vectors = 6 if terms else 4  # params, grad, buf, diff (and correction, shift)
        fixed = (vectors * num_params + _ACT_COPIES * spec.batch_size * act) * _F32  # and activations
        slots = spec.epochs * (data.partition.sizes()[clients] // spec.batch_size + 1)  # [clients] ≥ batches
        need = fixed + slots * spec.batch_size * _SLOT_BYTES  # [clients] bytes
        if need.sum() + _GATHER_BYTES <= _SMALL_BYTES:
            return [clients] if clients else []
        on_gpu = self.device is not None and self.device.type == "cuda"
        free = torch.cuda.mem_get_info(self.device)[0] if on_gpu else psutil.virtual_memory().available
        budget = _MEMORY_FRACTION * free - _GATHER_BYTES
        out: list[list[int]] = [[]]
        used = 0.0
        for c, bytes_c in zip(clients, need.tolist()):
            if out[-1] and used + bytes_c > budget:
                out.append([])
                used = 0.0
            out[-1].append(c)
            used += bytes_c
        return out if out[-1] else []

    def train(
        self,
        model: nn.Module,
        global_vec: torch.Tensor,
        data: FedData,
        clients: list[int],
        spec: LocalSpec,
        seed: int,
        round: int,
        starts: torch.Tensor | None = None,
        correction: torch.Tensor | None = None,
    ) -> CohortResult:
        """As :meth:`fedloom.training.SequentialEngine.train` (``starts``: per-client start vectors;
        ``correction``: per-client SCAFFOLD corrections ``[clients, params]``)."""
        if not supports(model):
            raise ConfigError(
                f"runtime.engine: vectorized cannot reproduce {type(model).__name__} (dropout, or buffers such as "
                "BatchNorm statistics outside a Linear/BatchNorm1d/ReLU stack); use engine auto or sequential"
            )
        check_local(model, spec)
        check_correction(correction, (len(clients), global_vec.numel()))
        sizes = data.partition.sizes()[clients]  # [clients] numpy: cheaper than torch for these few values
        per_epoch = steps_per_epoch(sizes, spec.batch_size, _shape(model).batchnorm)  # [clients]
        rows = np.minimum(sizes, per_epoch * spec.batch_size) * spec.epochs  # [clients] rows trained on
        order = np.argsort(-per_epoch, kind="stable")  # most steps first
        device = self.device or torch.device("cpu")
        terms = bool(spec.mu) or correction is not None
        chunks = self.chunks(model, data, [clients[i] for i in order.tolist()], spec, terms)
        one = len(chunks) == 1  # then the chunk's rows are reordered once; else each chunk's go to their places
        diffs = None if one else torch.zeros(len(clients), global_vec.numel())  # [clients, params], caller's order
        loss_sum = None if one else torch.zeros(len(clients), dtype=torch.float64)
        done = 0
        for chunk in chunks:
            pos = torch.from_numpy(order[done : done + len(chunk)])
            start = None if starts is None else starts[pos].to(device)
            corr = None if correction is None else correction[pos].to(device)
            d, loss = _train_chunk(model, global_vec.to(device), data, chunk, spec, seed, round, start, device, corr)
            d, loss = d.cpu(), loss.cpu()  # the wire is on the CPU: one copy per chunk
            if one and (order[1:] > order[:-1]).all():  # already in the caller's order (e.g. equal shards)
                diffs, loss_sum = d, loss
            elif one:
                back = torch.from_numpy(np.argsort(order, kind="stable"))
                diffs, loss_sum = d[back], loss[back]
            else:
                diffs[pos], loss_sum[pos] = d, loss
            done += len(chunk)
        if diffs is None:  # no clients
            diffs, loss_sum = torch.zeros(0, global_vec.numel()), torch.zeros(0, dtype=torch.float64)
        return CohortResult(
            clients=list(clients),
            diffs=diffs,
            num_samples=torch.from_numpy(sizes.astype(np.int64)),
            train_loss=(loss_sum / torch.from_numpy(np.maximum(rows, 1))).float(),
            steps=torch.from_numpy(per_epoch * spec.epochs),
        )
