"""Model parameters as one flat float32 vector plus a Layout.

Everything that moves (global model, client updates) is a flat ``[params]`` vector; a cohort of
updates is a ``[clients, params]`` tensor. The Layout, derived from the model on both sides, tells
which slice of the vector is which tensor, for layer-aware methods and for rebuilding state dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from torch import nn

__all__ = ["Layout", "flatten", "unflatten", "load_into"]


@dataclass(frozen=True)
class Layout:
    """Ordered parameter names and shapes; ``offsets[i]:offsets[i+1]`` is tensor i in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> Layout:
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out = [0]
        for s in self.sizes:
            out.append(out[-1] + s)
        return tuple(out)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.names)

    def slices(self) -> list[slice]:
        o = self.offsets
        return [slice(o[i], o[i + 1]) for i in range(len(self.names))]

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}


def flatten(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached float32 vector ``[params]`` (a copy)."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def unflatten(vec: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Views of ``vec`` shaped as the layout's tensors, keyed by name."""
    if vec.numel() != layout.size:
        raise ValueError(f"vector has {vec.numel()} values, layout expects {layout.size}")
    return {n: vec[s].view(shape) for n, s, shape in zip(layout.names, layout.slices(), layout.shapes)}


@torch.no_grad()
def load_into(model: nn.Module, vec: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters (a copy: training must never write into ``vec``;
    ``torch.nn.utils.vector_to_parameters`` would make the parameters views of it)."""
    start = 0
    for p in model.parameters():
        p.copy_(vec[start : start + p.numel()].view_as(p))
        start += p.numel()
