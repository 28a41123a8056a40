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
- **Optimizer.** ``torch.optim.SGD`` with momentum μ, no dampening/Nesterov/weight decay:
  ``buf ← μ·buf + g`` (``buf = g`` on the first step: buffers start at 0 and every client starts at step 0),
  ``p ← p − lr·buf``.

Two ways to compute a step's gradients:

- **Linear/ReLU stacks** (``fnn``, ``mlp``, ``logreg``): hand-written batched forward/backward with
  ``baddbmm``/``bmm`` and the softmax-cross-entropy gradient ``(softmax(z) − onehot(y))·w`` written out
  (about 2× faster than ``vmap(grad)`` here; see /work/shared/ENGINE_NOTES.md).
- **Anything else without buffers or dropout** (``cnn``): ``torch.func.vmap(grad(loss))`` over
  ``functional_call``.

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
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .data import FedData
from .device import on_device
from .errors import ConfigError
from .training import CohortResult, LocalSpec, SequentialEngine, client_seed

__all__ = ["VectorizedEngine", "AutoEngine", "supports", "linear_stack"]

_MEMORY_FRACTION = 0.25  # of the RAM psutil reports available: leaves room for the data, eval, other jobs
_SOFTMAX_BY_HAND = 2048  # logits values from which the hand-written softmax beats log_softmax (measured)
_SMALL_BYTES = 64 * 2**20  # a cohort needing less than this is trained in one chunk without asking psutil
_F32 = 4  # bytes per float32
_SLOT_BYTES = 8 + 8 + 4 + 4  # per planned batch row: row index, label (int64), weight, log-probability
_ACT_COPIES = 3  # activations are held for backward, plus their gradients and one temporary per layer
_GATHER_BYTES = 4 * 2**20  # inputs gathered at once (a few steps of batches): bounded whatever the epochs
# Buffers start at 0 and every client starts at step 0, so "is_first_step=False" gives buf = g on step 1.
_FUSED_SGD = getattr(torch, "_fused_sgd_", None)
_UNSUPPORTED = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)  # randomness / running stats


def supports(model: nn.Module) -> bool:
    """Whether the vectorized engine reproduces the reference for ``model``: no buffers (BatchNorm running
    statistics) and no dropout (its random masks would differ from the reference's)."""
    return next(model.buffers(), None) is None and not any(isinstance(m, _UNSUPPORTED) for m in model.modules())


def linear_stack(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``Linear (ReLU Linear)*`` (fnn, mlp, logreg), or None for other models."""
    mods = [model] if isinstance(model, nn.Linear) else list(model) if isinstance(model, nn.Sequential) else []
    if not mods or len(mods) % 2 == 0:
        return None
    linears = mods[0::2]
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if not all(type(m) is nn.ReLU for m in mods[1::2]):
        return None
    return linears


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


def _plan(data: FedData, clients: list[int], spec: LocalSpec, seed: int, round: int) -> _Plan:
    """The reference's batches of every client (same generator, one randperm per epoch), padded to full
    batches and laid out step-major. ``clients`` must be sorted by number of steps, most first.
    Index arithmetic is numpy: for these small arrays its per-call cost is a fraction of torch's."""
    B, E, C = spec.batch_size, spec.epochs, len(clients)
    part = data.partition
    first, n = part.offsets[clients], part.offsets[np.add(clients, 1)] - part.offsets[clients]  # [clients]
    perms = []  # the reference's draws: per client a generator from client_seed, one randperm per epoch
    for c, n_c in zip(clients, n.tolist()):
        gen = torch.Generator().manual_seed(client_seed(seed, round, c))
        perms += [torch.randperm(n_c, generator=gen) for _ in range(E)]
    local = torch.cat(perms).numpy() if perms else np.zeros(0, np.int64)  # [Σ_c E·n_c] positions in shards
    per_epoch = -(-n // B)  # [clients] steps per epoch
    steps = E * per_epoch  # [clients], non-increasing
    active = (steps[None, :] > np.arange(steps.max() if C else 0)[:, None]).sum(1)  # [steps]
    offsets = np.concatenate([[0], np.cumsum(active)])  # [steps + 1]
    # Drawn position j of epoch e of client r goes to slot offsets[e·per_epoch[r] + j // B] + r, column j % B.
    block_len = np.repeat(n, E)  # [clients·epochs] one block per (client, epoch)
    block = np.repeat(np.arange(C * E), block_len)  # [Σ] block of each drawn position
    j = np.arange(len(local)) - (np.cumsum(block_len) - block_len)[block]  # [Σ] position within its epoch
    r, e = block // E, block % E
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


# ------------------------------------------------------------------------------------------- step kernels
class _LinearKernel:
    """Gradients of a Linear/ReLU stack, forward and backward written out with batched matmuls.

    ``params``/``grads`` alternate weight ``[clients, out, in]`` and bias ``[clients, out]``. Loss per client:
    ``L = Σ_rows w·ce`` with ``w = 1/b`` on real rows, so ``dL/dz = (softmax(z) − onehot(y))·w``."""

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor], batch: int):
        self.params, self.grads, self.batch = params, grads, batch

    def views(self, a: int) -> tuple:
        """Views for the first ``a`` clients (made once per active count, reused every step)."""
        p, g = [t[:a] for t in self.params], [t[:a] for t in self.grads]
        # per layer: weight [a, out, in], its transpose, bias [a, 1, out], and the two gradient buffers
        layers = [(p[i], p[i].transpose(1, 2), p[i + 1].unsqueeze(1), g[i], g[i + 1]) for i in range(0, len(p), 2)]
        minus_one = torch.full((a, self.batch, 1), -1.0, device=p[0].device)  # −onehot(y), scattered into softmax
        return layers, minus_one

    def __call__(self, views: tuple, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, logp_y: torch.Tensor):
        layers, minus_one = views
        hs = [x]  # input of each layer, [a, batch, in]
        for i, (_, wt, bias, _, _) in enumerate(layers):
            z = torch.baddbmm(bias, hs[-1], wt)  # [a, batch, out]
            if i < len(layers) - 1:
                hs.append(z.relu_())
        # softmax p and log p(label) (= −cross-entropy) into logp_y [a, batch, 1]. CPU log_softmax over a short
        # last dimension is slow (~15 ns a value here, measured); by hand wins from ~2k values, not below.
        if z.numel() < _SOFTMAX_BY_HAND:
            logp = z.log_softmax(2)  # [a, batch, classes]
            torch.gather(logp, 2, y, out=logp_y)
            p = logp.exp_()
        else:
            top = z.amax(2, keepdim=True)  # [a, batch, 1]
            p = (z - top).exp_()
            total = p.sum(2, keepdim=True)
            torch.gather(z, 2, y, out=logp_y).sub_(top).sub_(total.log())
            p.div_(total)
        g = p.scatter_add_(2, y, minus_one).mul_(w)  # dL/dz = (p − onehot)·w, [a, batch, classes]
        for i in reversed(range(len(layers))):
            weight, _, _, g_weight, g_bias = layers[i]
            torch.bmm(g.transpose(1, 2), hs[i], out=g_weight)  # [a, out, in]
            torch.sum(g, 1, out=g_bias)  # [a, out]
            if i:  # back through Linear i and the ReLU before it
                g = torch.ops.aten.threshold_backward(torch.bmm(g, weight), hs[i], 0)


class _VmapKernel:
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

    def __call__(self, views: tuple, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, logp_y: torch.Tensor):
        params, grads = views
        g, neg_ce = self.per_client(params, x, y, w)
        torch._foreach_copy_(grads, [g[n] for n in self.names])
        logp_y.copy_(neg_ce.unsqueeze(2))


def _sgd_(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], spec: LocalSpec):
    """torch.optim.SGD's update on stacked tensors, in place: ``buf ← μ·buf + g; p ← p − lr·buf``.

    Uses the fused kernel behind ``torch.optim.SGD(fused=True)`` (one pass over memory instead of three;
    it may round the last bit differently, ~1e-8) when this torch has it."""
    if _FUSED_SGD is not None:
        bufs = bufs if spec.momentum else []  # the fused kernel wants no buffers without momentum
        _FUSED_SGD(params, grads, bufs, weight_decay=0.0, momentum=spec.momentum, lr=spec.lr, dampening=0.0,
                   nesterov=False, maximize=False, is_first_step=False)  # fmt: skip
    elif spec.momentum:
        torch._foreach_mul_(bufs, spec.momentum)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(params, bufs, alpha=-spec.lr)
    else:
        torch._foreach_add_(params, grads, alpha=-spec.lr)


# ------------------------------------------------------------------------------------------------- engine
def _train_chunk(
    model: nn.Module, global_vec: torch.Tensor, data: FedData, clients: list[int], spec: LocalSpec, seed: int,
    round: int, device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Train ``clients`` (sorted by steps, most first) in lock step on ``device`` (where ``global_vec`` is);
    ``(diffs [clients, params], loss sums)``."""
    C, B, device = len(clients), spec.batch_size, device or global_vec.device
    params, start = [], 0
    for p in model.parameters():  # [clients, *shape] copies of the global model, never views of global_vec
        params.append(global_vec[start : start + p.numel()].view(p.shape).expand(C, *p.shape).clone())
        start += p.numel()
    grads = [torch.empty_like(p) for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    if linear_stack(model) is not None:
        kernel: _LinearKernel | _VmapKernel = _LinearKernel(params, grads, B)
    else:
        kernel = _VmapKernel(model, params, grads)
    plan = _plan(data, clients, spec, seed, round).to(device)  # built on the CPU (numpy), used on the device
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
                views[a] = (kernel.views(a), [p[:a] for p in params], [g[:a] for g in grads], [b[:a] for b in bufs])
            v, p_a, g_a, b_a = views[a]
            kernel(v, x_seg[lo - base : hi - base], plan.y[lo:hi], plan.weight[lo:hi], logp_y[lo:hi])
            _sgd_(p_a, g_a, b_a, spec)
    real = (plan.weight > 0).squeeze(2)  # [slots, batch]
    batch_loss = -(logp_y.squeeze(2) * real).sum(1, dtype=torch.float64)  # [slots] Σ cross-entropy of a batch
    loss_sum = torch.zeros(C, dtype=torch.float64, device=device).index_add_(0, plan.owner, batch_loss)
    diffs = torch.cat([p.reshape(C, -1) for p in params], 1) - global_vec  # [clients, params]
    return diffs, loss_sum


_ACTIVATIONS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _activations_per_row(model: nn.Module, features: int) -> int:
    """Values one input row produces in all layers' outputs (a probe forward pass, once per model)."""
    if model not in _ACTIVATIONS:
        total = [features]

        def count(_module: nn.Module, _inputs: tuple, out: object) -> None:
            total.append(out.numel() if isinstance(out, torch.Tensor) else 0)

        hooks = [m.register_forward_hook(count) for m in model.modules()]
        try:
            with torch.no_grad():
                model(torch.zeros(1, features))
        finally:
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

    def chunks(self, model: nn.Module, data: FedData, clients: list[int], spec: LocalSpec) -> list[list[int]]:
        """Split ``clients`` (sorted by steps, most first) into consecutive chunks that fit the budget."""
        if self.chunk is not None:
            return [clients[i : i + self.chunk] for i in range(0, len(clients), self.chunk)]
        num_params = sum(p.numel() for p in model.parameters())
        act = _activations_per_row(model, data.num_features)
        fixed = (4 * num_params + _ACT_COPIES * spec.batch_size * act) * _F32  # params, grad, buf, diff; acts
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
    ) -> CohortResult:
        if not supports(model):
            raise ConfigError(
                f"runtime.engine: vectorized cannot reproduce {type(model).__name__} (it has buffers such as "
                "BatchNorm statistics, or dropout); use engine auto or sequential"
            )
        n = torch.from_numpy(data.partition.sizes()[clients]).long()  # [clients]
        per_epoch = (n + spec.batch_size - 1) // spec.batch_size
        order = torch.argsort(per_epoch, descending=True, stable=True).tolist()  # most steps first
        diffs = torch.zeros(len(clients), global_vec.numel())  # [clients, params] in the caller's order
        loss_sum = torch.zeros(len(clients), dtype=torch.float64)
        done, device = 0, self.device or torch.device("cpu")
        for chunk in self.chunks(model, data, [clients[i] for i in order], spec):
            pos = torch.tensor(order[done : done + len(chunk)], dtype=torch.int64)
            d, loss = _train_chunk(model, global_vec.to(device), data, chunk, spec, seed, round, device)
            diffs[pos], loss_sum[pos] = d.cpu(), loss.cpu()  # the wire is on the CPU: one copy per chunk
            done += len(chunk)
        return CohortResult(
            clients=list(clients),
            diffs=diffs,
            num_samples=n,
            train_loss=(loss_sum / (n * spec.epochs).clamp_min(1)).float(),
        )


class AutoEngine:
    """``runtime.engine: auto``: the vectorized engine when :func:`supports` the model, else the sequential
    reference. ``name`` tells which one ran last (``auto`` before any training)."""

    def __init__(self, chunk: int | None = None):
        self.vectorized, self.sequential = VectorizedEngine(chunk), SequentialEngine()
        self.name = "auto"

    def train(self, model: nn.Module, *args, **kwargs) -> CohortResult:
        engine = self.vectorized if supports(model) else self.sequential
        self.name = engine.name
        return engine.train(model, *args, **kwargs)
