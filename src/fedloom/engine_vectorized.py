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
  tensor per chunk, added by one ``_foreach_add_`` per step, and ``μ·w`` is SGD's weight decay, which the
  fused kernel applies in its pass. Without local terms a step runs no extra kernel.

Two ways to compute a step's gradients (:mod:`fedloom.engine_kernels`):

- **Linear/[BatchNorm1d]/ReLU stacks** (``fnn``, ``mlp``, ``mlp_bn``, ``logreg``): hand-written batched
  forward/backward with ``baddbmm``/``bmm`` and the softmax-cross-entropy gradient ``(softmax(z) − onehot(y))·w``
  written out (about 2× faster than ``vmap(grad)`` here, measured on the lab's CPU). BatchNorm normalizes
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
from .engine_kernels import LinearKernel, VmapKernel, fast_stack, sgd_
from .errors import ConfigError
from .params import state_tensors
from .seeds import client_seeds
from .training import _SHUFFLE_TAG, CohortResult, LocalSpec, check_correction, check_local, has_batchnorm

__all__ = ["VectorizedEngine", "supports", "linear_stack"]

_MEMORY_FRACTION = 0.25  # of the RAM psutil reports available: leaves room for the data, eval, other jobs
_SMALL_BYTES = 64 * 2**20  # a cohort needing less than this is trained in one chunk without asking psutil
_F32 = 4  # bytes per float32
_SLOT_BYTES = 8 + 8 + 4 + 4  # per planned batch row: row index, label (int64), weight, log-probability
_ACT_COPIES = 3  # activations are held for backward, plus their gradients and one temporary per layer
_GATHER_BYTES = 4 * 2**20  # inputs gathered at once (a few steps of batches): bounded whatever the epochs


def supports(model: nn.Module) -> bool:
    """Whether the vectorized engine reproduces the reference for ``model``: no dropout (its random masks
    would differ from the reference's), and buffers (BatchNorm running statistics) only in a
    Linear/BatchNorm1d/ReLU stack, whose kernel carries them."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        return False
    return next(model.buffers(), None) is None or fast_stack(model) is not None


def linear_stack(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``Linear ([BatchNorm1d] ReLU Linear)*`` (fnn, mlp, mlp_bn, logreg), or None."""
    stack = fast_stack(model)
    return None if stack is None else [lin for lin, _ in stack]


# ---------------------------------------------------------------------------------------------- batch plan
@dataclass
class _Plan:
    """Step-major batch plan of one chunk (clients sorted by number of steps, most first).

    At step ``t`` the first ``active[t]`` clients train; their batches are slots
    ``offsets[t]:offsets[t + 1]`` (one slot = one client's batch of one step, padded to ``batch`` rows)."""

    rows: torch.Tensor  # [slots, batch] int64 rows of x_train (0 on padding)
    y: torch.Tensor  # [slots, batch, 1] int64 labels
    weight: torch.Tensor  # [slots, batch, 1] float32 1/b on the b real rows of the batch, 0 on padding
    owner: torch.Tensor  # [slots] int64 position of the slot's client in the chunk
    active: list[int]  # [steps]
    offsets: list[int]  # [steps + 1]

    def to(self, device: torch.device) -> _Plan:
        t = [x.to(device) for x in (self.rows, self.y, self.weight, self.owner)]
        return _Plan(*t, self.active, self.offsets)


def steps_per_epoch(n: np.ndarray, batch: int, skip_single: bool) -> np.ndarray:
    """``[clients]`` local steps per epoch for shards of ``n`` rows: ⌈n/B⌉, less a trailing one-row batch
    when ``skip_single`` (BatchNorm; see :mod:`fedloom.training`)."""
    return n // batch + (n % batch > (1 if skip_single else 0))


def _plan(
    data: FedData, clients: list[int], spec: LocalSpec, seed: int, round: int, skip_single: bool = False
) -> _Plan:
    """The reference's batches of every client (same generator, one randperm per epoch), padded to full
    batches and laid out step-major. ``clients`` must be sorted by number of steps, most first.
    Index arithmetic is numpy: for these small arrays its per-call cost is a fraction of torch's."""
    B, E, C = spec.batch_size, spec.epochs, len(clients)
    part = data.partition
    first, n = part.offsets[clients], part.offsets[np.add(clients, 1)] - part.offsets[clients]  # [clients]
    perms = []  # the reference's draws: per client a generator from client_seed, one randperm per epoch
    for s, n_c in zip(client_seeds(seed, round, clients, _SHUFFLE_TAG).tolist(), n.tolist()):  # = client_seed
        gen = torch.Generator().manual_seed(s)
        perms += [torch.randperm(n_c, generator=gen) for _ in range(E)]
    local = torch.cat(perms).numpy() if perms else np.zeros(0, np.int64)  # [Σ_c E·n_c] positions in shards
    per_epoch = steps_per_epoch(n, B, skip_single)  # [clients]
    steps = E * per_epoch  # [clients], non-increasing
    active = (steps[None, :] > np.arange(steps.max() if C else 0)[:, None]).sum(1)  # [steps]
    offsets = np.concatenate([[0], np.cumsum(active)])  # [steps + 1]
    # Drawn position j of epoch e of client r goes to slot offsets[e·per_epoch[r] + j // B] + r, column j % B.
    block_len = np.repeat(n, E)  # [clients·epochs] one block per (client, epoch)
    block = np.repeat(np.arange(C * E), block_len)  # [Σ] block of each drawn position
    j = np.arange(len(local)) - (np.cumsum(block_len) - block_len)[block]  # [Σ] position within its epoch
    r, e = block // E, block % E
    kept = j // B < per_epoch[r]  # [Σ] False only on a skipped trailing one-row batch
    local, j, r, e = local[kept], j[kept], r[kept], e[kept]
    rows = np.full((offsets[-1], B), -1, dtype=np.int64)  # [slots, batch] rows of x_train
    rows[offsets[e * per_epoch[r] + j // B] + r, j % B] = part.order[first[r] + local]
    real = rows >= 0
    weight = (real / real.sum(1, keepdims=True)).astype(np.float32)[:, :, None]  # [slots, batch, 1]
    rows[~real] = 0  # padding gathers row 0, with weight 0
    owner = np.arange(len(rows)) - np.repeat(offsets[:-1], active)  # [slots] the slot's client
    rows_t = torch.from_numpy(rows)
    return _Plan(
        rows_t, data.y_train[rows_t].unsqueeze(2), torch.from_numpy(weight), torch.from_numpy(owner),
        active.tolist(), offsets.tolist(),
    )  # fmt: skip


def _segments(plan: _Plan, row_bytes: int) -> list[tuple[int, int]]:
    """Consecutive step ranges whose gathered inputs stay under ``_GATHER_BYTES`` (at least one step each)."""
    out, first, size = [], 0, 0
    for t, a in enumerate(plan.active):
        if size and size + a * row_bytes > _GATHER_BYTES:
            out.append((first, t))
            first, size = t, 0
        size += a * row_bytes
    return out + [(first, len(plan.active))] if plan.active else []


# ------------------------------------------------------------------------------------------------- engine
def _stack(model: nn.Module, start: torch.Tensor, C: int) -> list[torch.Tensor]:
    """``[clients, *shape]`` copies (never views) of the model's tensors in Layout order (params, then float
    buffers), from ``start``: one flat vector ``[params]`` for every client, or one row per client."""
    state, first = [], 0
    for t in state_tensors(model):
        if start.dim() == 1:
            state.append(start[first : first + t.numel()].view(t.shape).expand(C, *t.shape).clone())
        else:
            state.append(start[:, first : first + t.numel()].reshape(C, *t.shape).clone())
        first += t.numel()
    return state


def _shifts(
    params: list[torch.Tensor], global_vec: torch.Tensor, mu: float, correction: torch.Tensor | None
) -> list[torch.Tensor] | None:
    """Per parameter ``[clients, *shape]``: ``correction − μ·w_t``, the part of the local terms that does not
    change during training (module docstring); None when there are no local terms."""
    if not mu and correction is None:
        return None
    out, first = [], 0
    for p in params:  # p: [clients, *shape]
        size, shape = p[0].numel(), p.shape
        w_t = global_vec[first : first + size].view(shape[1:]).expand(shape)
        if correction is None:
            out.append(w_t * -mu)
        else:
            out.append(correction[:, first : first + size].reshape(shape).sub(w_t, alpha=mu))
        first += size
    return out


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
    state = _stack(model, global_vec if starts is None else starts, C)
    num_params = len(list(model.parameters()))
    params, buffers = state[:num_params], state[num_params:]  # buffers: BatchNorm running statistics
    shifts = _shifts(params, global_vec, spec.mu, correction)  # None without local terms
    grads = [torch.empty_like(p) for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    if fast_stack(model) is not None:
        kernel: LinearKernel | VmapKernel = LinearKernel(model, params, grads, buffers, B)
    else:
        kernel = VmapKernel(model, params, grads)
    plan = _plan(data, clients, spec, seed, round, has_batchnorm(model)).to(device)  # built on the CPU (numpy)
    logp_y = torch.empty_like(plan.weight)  # [slots, batch, 1]
    views: dict[int, tuple] = {}  # active count → (kernel views, params, grads, bufs) of the first a clients
    x_all = on_device(data.x_train, device)  # copied once per dataset and device
    for first, last in _segments(plan, B * data.num_features * _F32):
        base = plan.offsets[first]
        rows = plan.rows[base : plan.offsets[last]]  # [slots in segment, batch]
        x_seg = x_all.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)  # [slots, batch, features]
        for t in range(first, last):
            a, lo, hi = plan.active[t], plan.offsets[t], plan.offsets[t + 1]
            if a not in views:
                s_a = None if shifts is None else [s[:a] for s in shifts]
                views[a] = (kernel.views(a), *([t[:a] for t in ts] for ts in (params, grads, bufs)), s_a)
            v, p_a, g_a, b_a, s_a = views[a]
            kernel(v, x_seg[lo - base : hi - base], plan.y[lo:hi], plan.weight[lo:hi], logp_y[lo:hi])
            if s_a is not None:
                torch._foreach_add_(g_a, s_a)  # c − c_i − μ·w_t; sgd_ adds μ·w as weight decay
            sgd_(p_a, g_a, b_a, spec)
    real = (plan.weight > 0).squeeze(2)  # [slots, batch]
    batch_loss = -(logp_y.squeeze(2) * real).sum(1, dtype=torch.float64)  # [slots] Σ cross-entropy of a batch
    loss_sum = torch.zeros(C, dtype=torch.float64, device=device).index_add_(0, plan.owner, batch_loss)
    diffs = torch.cat([t.reshape(C, -1) for t in state], 1) - global_vec  # [clients, params]
    return diffs, loss_sum


_ACTIVATIONS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _activations_per_row(model: nn.Module, features: int) -> int:
    """Values one input row produces in all layers' outputs (a probe forward pass, once per model)."""
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
        num_params = sum(t.numel() for t in state_tensors(model))
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
        sizes = data.partition.sizes()[clients]
        per_epoch = torch.from_numpy(steps_per_epoch(sizes, spec.batch_size, has_batchnorm(model)))  # [clients]
        n = torch.from_numpy(sizes).long()  # [clients]
        rows = torch.minimum(n, per_epoch * spec.batch_size) * spec.epochs  # [clients] rows trained on
        order = torch.argsort(per_epoch, descending=True, stable=True).tolist()  # most steps first
        diffs = torch.zeros(len(clients), global_vec.numel())  # [clients, params] in the caller's order
        loss_sum = torch.zeros(len(clients), dtype=torch.float64)
        done, device = 0, self.device or torch.device("cpu")
        terms = bool(spec.mu) or correction is not None
        for chunk in self.chunks(model, data, [clients[i] for i in order], spec, terms):
            pos = torch.tensor(order[done : done + len(chunk)], dtype=torch.int64)
            start = None if starts is None else starts[pos].to(device)
            corr = None if correction is None else correction[pos].to(device)
            d, loss = _train_chunk(model, global_vec.to(device), data, chunk, spec, seed, round, start, device, corr)
            diffs[pos], loss_sum[pos] = d.cpu(), loss.cpu()  # the wire is on the CPU: one copy per chunk
            done += len(chunk)
        return CohortResult(
            clients=list(clients),
            diffs=diffs,
            num_samples=n,
            train_loss=(loss_sum / rows.clamp_min(1)).float(),
            steps=per_epoch * spec.epochs,
        )
