"""A model's state as one flat float32 vector plus a Layout.

Everything that moves (global model, client updates) is a flat ``[params]`` vector; a cohort of
updates is a ``[clients, params]`` tensor. The Layout, derived from the model on both sides, tells
which slice of the vector is which tensor, for layer-aware methods and for rebuilding state dicts.

The vector holds the model's whole float state: its parameters, then its floating-point buffers
(BatchNorm's ``running_mean`` and ``running_var``). Buffers therefore travel and are aggregated like
parameters — FedAvg of the running statistics, as Flower and FLSim average the whole state dict — and the
server evaluates with the aggregated statistics. They are not trained by the optimizer: a client's
buffer "update" is the change its forward passes made to them.

Integer buffers do not travel. The only one fedloom accepts is BatchNorm's ``num_batches_tracked``, which
with a fixed BatchNorm ``momentum`` (PyTorch's default, 0.1) only counts batches and changes no number;
:func:`load_into` resets it to 0, so every client starts from the same state whatever ran before on the
same module. A model with any other integer buffer, or a BatchNorm with ``momentum=None`` (a cumulative
average that reads ``num_batches_tracked``), is refused by :func:`check_state` with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["Layout", "flatten", "unflatten", "load_into", "state_tensors", "check_state", "norm_mask"]

_COUNTER = "num_batches_tracked"  # BatchNorm's integer batch counter: does not travel (module docstring)
_NORMS = (nn.modules.batchnorm._NormBase,)  # BatchNorm*d, SyncBatchNorm, InstanceNorm with running stats


@dataclass(frozen=True)
class Layout:
    """Ordered tensor names and shapes; ``offsets[i]:offsets[i+1]`` is tensor i in the flat vector.

    The first ``len(self) - buffers`` tensors are trainable parameters, the last ``buffers`` are float
    buffers (running statistics), in ``named_buffers()`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    buffers: int = 0

    @classmethod
    def from_model(cls, model: nn.Module) -> Layout:
        named = [(n, t) for n, t in model.named_parameters()]
        bufs = _float_buffers(model)
        return cls(tuple(n for n, _ in named + bufs), tuple(tuple(t.shape) for _, t in named + bufs), len(bufs))

    # computed once per Layout (it is frozen): every codec call of every client reads them
    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(prod(s) for s in self.shapes)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out = [0]
        for s in self.sizes:
            out.append(out[-1] + s)
        return tuple(out)

    @cached_property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def num_trainable(self) -> int:
        """Values of the vector that are parameters (the rest, at the end, are buffers)."""
        return self.offsets[len(self.names) - self.buffers]

    def __len__(self) -> int:
        return len(self.names)

    def slices(self) -> list[slice]:
        o = self.offsets
        return [slice(o[i], o[i + 1]) for i in range(len(self.names))]

    def mask(self, names: set[str] | frozenset[str]) -> torch.Tensor:
        """``[size]`` bool: True on the values of the named tensors."""
        out = torch.zeros(self.size, dtype=torch.bool)
        for n, s in zip(self.names, self.slices()):
            if n in names:
                out[s] = True
        return out

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "buffers": self.buffers}


def check_state(model: nn.Module) -> None:
    """Raise ``ConfigError`` (one line) when the model has state the flat vector cannot carry."""
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORMS) and module.track_running_stats and module.momentum is None:
            raise ConfigError(
                f"model: {type(module).__name__} '{mod_name}' has momentum=None (a cumulative average that counts "
                f"batches in {_COUNTER}), which fedloom cannot carry between rounds; give it a momentum such as 0.1"
            )
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf is None or buf.is_floating_point():
                continue
            if buf_name == _COUNTER and isinstance(module, _NORMS):
                continue
            full = f"{mod_name}.{buf_name}" if mod_name else buf_name
            raise ConfigError(
                f"model: buffer '{full}' ({buf.dtype}) cannot travel in fedloom's float32 state vector; "
                "only float buffers and BatchNorm's num_batches_tracked are supported"
            )


def _float_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    check_state(model)
    return [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The model's tensors in Layout order: parameters, then float buffers (the live tensors, not copies)."""
    return [*model.parameters(), *(b for _, b in _float_buffers(model))]


def norm_mask(model: nn.Module, layout: Layout | None = None) -> torch.Tensor:
    """``[size]`` bool: the values that belong to normalization layers (their affine parameters and running
    statistics), for FedBN (see :mod:`fedloom.engines`)."""
    layout = layout or Layout.from_model(model)
    names = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORMS):
            prefix = f"{mod_name}." if mod_name else ""
            names |= {prefix + n for n, _ in module.named_parameters(recurse=False)}
            names |= {prefix + n for n, b in module.named_buffers(recurse=False) if b.is_floating_point()}
    return layout.mask(names)


def flatten(model: nn.Module) -> torch.Tensor:
    """The model's state (parameters, then float buffers) as one detached float32 vector ``[params]`` (a copy)."""
    return torch.cat([t.detach().reshape(-1).float() for t in state_tensors(model)])


def unflatten(vec: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Views of ``vec`` shaped as the layout's tensors, keyed by name."""
    if vec.numel() != layout.size:
        raise ValueError(f"vector has {vec.numel()} values, layout expects {layout.size}")
    return {n: vec[s].view(shape) for n, s, shape in zip(layout.names, layout.slices(), layout.shapes)}


@torch.no_grad()
def load_into(model: nn.Module, vec: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters and float buffers, and reset BatchNorm's batch counters.

    A copy: training must never write into ``vec`` (``torch.nn.utils.vector_to_parameters`` would make the
    parameters views of it)."""
    tensors = state_tensors(model)
    total = sum(t.numel() for t in tensors)
    if vec.numel() != total:
        raise ValueError(f"vector has {vec.numel()} values, the model's state has {total}")
    start = 0
    for t in tensors:
        t.copy_(vec[start : start + t.numel()].view_as(t))
        start += t.numel()
    for name, buf in model.named_buffers():
        if name.rsplit(".", 1)[-1] == _COUNTER:
            buf.zero_()
