"""``runtime.device: auto | cpu | cuda``: where the vectorized engine trains and the server evaluates.

What runs where (the wire stays on the CPU, because it ends in bytes):

- **On the device**: the vectorized engine's stacked parameters, gradients, momentum, batch plan and the
  training rows it gathers from (copied to the device once per dataset); the server's evaluation (a
  device copy of the model and of the eval set).
- **On the CPU**: the global vector, codecs (they serialize to bytes), secure aggregation, aggregators,
  checkpoints and saved models; the sequential reference engine. The engine hands back its cohort's diffs
  ``[clients, params]`` as one CPU tensor (one copy per cohort), so everything after it is unchanged.

``auto`` picks CUDA when ``torch.cuda.is_available()``; ``cuda`` without a CUDA device is refused with one
line. Results equal the CPU's to float rounding (tests/test_device.py; bench/gpu_check.py on a GPU).
"""

from __future__ import annotations

import copy
import weakref

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "on_device", "use_device"]

_COPIES: dict[int, dict] = {}  # id of a source tensor → {device: its copy}; dropped when the source dies


def resolve_device(setting: str) -> torch.device:
    """The torch device for ``runtime.device``; ``cuda`` without CUDA is a ConfigError naming the field."""
    if setting == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if setting == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if setting == "cuda":
        if not has_cuda:
            why = "was built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
            raise ConfigError(f"runtime.device: cuda, but this torch {torch.__version__} {why}; use auto or cpu")
        return torch.device("cuda")
    raise ConfigError(f"runtime.device: unknown '{setting}'; known: auto, cpu, cuda")


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, copied once per (tensor, device) and cached for as long as ``t`` lives."""
    if t.device == device:
        return t
    per = _COPIES.get(id(t))
    if per is None:  # keyed by id (tensors compare elementwise), forgotten with the tensor
        per = _COPIES[id(t)] = {}
        weakref.finalize(t, _COPIES.pop, id(t), None)
    if device not in per:
        per[device] = t.to(device)
    return per[device]


def use_device(device: torch.device, engine: object, server: object) -> None:
    """Point the vectorized engine (plain or inside ``auto``) and the server's evaluation at ``device``."""
    for eng in (engine, getattr(engine, "vectorized", None)):
        if eng is not None and hasattr(eng, "device"):
            eng.device = device
    if device.type == "cuda":  # TF32 (cuDNN's default for convolutions) rounds to ~1e-3: keep CPU-equal float32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if device.type != "cpu":
        server.eval_model = copy.deepcopy(server.model).to(device)
        server.x_eval, server.y_eval = server.x_eval.to(device), server.y_eval.to(device)
