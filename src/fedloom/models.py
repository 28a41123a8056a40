"""Model registry. Every model takes flat rows ``[batch, features]`` and returns logits ``[batch, classes]``.

- ``fnn``: the seed's feed-forward net, Linear(features, h) → ReLU → … → Linear(h, classes); ``hidden``
  defaults to ``[3]``, i.e. Linear(4,3) → ReLU → Linear(3,3) on Iris.
- ``mlp``: the same shape with wider defaults (``hidden`` ``[100]``).
- ``mlp_bn``: ``mlp`` with a BatchNorm1d after every hidden Linear (Linear → BatchNorm1d → ReLU → … → Linear),
  the small model with running statistics: they travel and are averaged with the parameters
  (:mod:`fedloom.params`), or stay with each client under ``runtime.bn: fedbn`` (:mod:`fedloom.engines`).
- ``logreg``: multinomial logistic regression, one Linear(features, classes).
- ``cnn``: two 3×3 conv + 2×2 max-pool blocks (16 and 32 channels) and a linear head, for image data
  (``digits`` 8×8, ``mnist`` 28×28).
- The book's torchvision names (``resnet18`` …) build that torchvision model, adapted to the data's channels
  and classes, when torchvision is installed.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["build_model", "DEFAULT_HIDDEN"]

DEFAULT_HIDDEN = {"fnn": [3], "mlp": [100], "mlp_bn": [100]}


class FNN(nn.Sequential):
    """Linear layers with ReLU between them (and BatchNorm1d before each ReLU when ``batchnorm``):
    widths ``[features, *hidden, classes]``."""

    def __init__(self, features: int, hidden: list[int], classes: int, batchnorm: bool = False):
        widths = [features, *hidden, classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers += [nn.BatchNorm1d(b), nn.ReLU()] if batchnorm else [nn.ReLU()]
        super().__init__(*layers)


class CNN(nn.Module):
    """conv3×3(16) → ReLU → pool2 → conv3×3(32) → ReLU → pool2 → Linear(classes)."""

    def __init__(self, image_shape: tuple[int, int, int], classes: int):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = image_shape
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * (h // 4) * (w // 4), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.image_shape)  # [batch, C, H, W]
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))  # [batch, 32·H/4·W/4] → [batch, classes]


class _ImageAdapter(nn.Module):
    """Reshape flat rows to images for a torchvision model."""

    def __init__(self, net: nn.Module, image_shape: tuple[int, int, int]):
        super().__init__()
        self.net, self.image_shape = net, image_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, *self.image_shape))


def _torchvision(name: str, image_shape: tuple[int, int, int] | None, classes: int) -> nn.Module:
    try:
        import torchvision.models as tvm
    except Exception:  # ImportError, or torchvision built for another torch
        raise ConfigError(
            f"model_name '{name}' is a torchvision model and torchvision is not usable here; "
            "use fnn, mlp, mlp_bn, cnn or logreg, or install a torchvision that matches your torch"
        ) from None
    if image_shape is None:
        raise ConfigError(f"model_name '{name}' needs image data (digits, mnist); this dataset is tabular")
    net = getattr(tvm, name)(weights=None, num_classes=classes)
    if image_shape[0] != 3 and hasattr(net, "conv1"):  # ResNets: accept 1-channel images
        old = net.conv1
        net.conv1 = nn.Conv2d(image_shape[0], old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    return _ImageAdapter(net, image_shape)


def build_model(
    name: str,
    features: int,
    classes: int,
    hidden: list[int] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A freshly initialized model; the same arguments and ``seed`` give the same weights."""
    with torch.random.fork_rng(devices=[]):  # initialize from `seed` without touching the global RNG
        torch.manual_seed(seed)
        if name in DEFAULT_HIDDEN:
            return FNN(features, hidden or DEFAULT_HIDDEN[name], classes, batchnorm=name == "mlp_bn")
        if hidden is not None and name in ("logreg", "cnn"):
            raise ConfigError(f"hidden applies to fnn, mlp and mlp_bn only, not to model_name '{name}'")
        if name == "logreg":
            return nn.Linear(features, classes)
        if name == "cnn":
            if image_shape is None:
                raise ConfigError("model_name 'cnn' needs image data (digits, mnist); this dataset is tabular")
            return CNN(image_shape, classes)
        return _torchvision(name, image_shape, classes)
