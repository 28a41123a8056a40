"""The server: the global model, seeded sampling of k clients, aggregation, evaluation, client health.

The server never trains and never touches client data; it sees only what clients send back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .aggregators import Aggregator
from .params import Layout, load_into

__all__ = ["Server", "ClientHealth"]

_SAMPLE_TAG = 3  # stream id of the sampling RNG
_EVAL_BATCH = 4096  # rows per evaluation forward pass: bounds memory on large eval sets


@dataclass
class ClientHealth:
    """What the server knows of one client: rounds it was picked for, joined (answered) and failed."""

    picked: int = 0
    joined: int = 0
    failures: int = 0
    last_round: int = 0
    last_error: str = ""


class Server:
    def __init__(
        self,
        model: nn.Module,
        global_vec: torch.Tensor,
        aggregator: Aggregator,
        x_eval: torch.Tensor,
        y_eval: torch.Tensor,
        num_clients: int,
        k: int,
        seed: int,
    ):
        self.model = model
        self.layout = Layout.from_model(model)
        self.global_vec = global_vec.clone()
        self.aggregator = aggregator
        self.x_eval, self.y_eval = x_eval, y_eval
        self.num_clients, self.k, self.seed = num_clients, k, seed
        self.health: dict[int, ClientHealth] = {}
        self.eval_model: nn.Module | None = None  # a copy on runtime.device when it is not the CPU
        self.sampling = "fixed"  # runtime.sampling: "poisson" lets each client join with probability k/num_clients
        self._dense = _dense_layers(model)  # [(offset, out, in)] of a Linear/ReLU stack, else None

    def sample(self, round: int) -> list[int]:
        """``k`` distinct client ids for ``round`` (poisson: each client independently with probability
        ``k/num_clients``, so the cohort's size varies and may be 0); a pure function of (seed, round)."""
        rng = np.random.default_rng([self.seed, round, _SAMPLE_TAG])
        if self.sampling == "poisson":
            return [int(c) for c in np.flatnonzero(rng.random(self.num_clients) < self.k / self.num_clients)]
        return sorted(int(c) for c in rng.choice(self.num_clients, size=self.k, replace=False))

    def aggregate(self, diffs: torch.Tensor, num_samples: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Apply the cohort's updates ``[clients, params]`` (``present``: which entries each one sent)."""
        self.global_vec = self.aggregator.aggregate(self.global_vec, diffs, num_samples, present)

    @torch.no_grad()
    def evaluate(self, vec: torch.Tensor | None = None) -> tuple[float, float]:
        """(accuracy as a fraction, mean cross-entropy) of ``vec`` (default: the global model) on the eval set."""
        vec = self.global_vec if vec is None else vec
        plain = vec.dtype == self.x_eval.dtype and vec.device == self.x_eval.device and vec.is_contiguous()
        if self.eval_model is None and self._dense is not None and plain and vec.numel() == self.layout.size:
            forward = self._dense_forward(vec)  # the model's own arithmetic on views of vec: no copy into it
        else:
            forward = self.model if self.eval_model is None else self.eval_model
            load_into(forward, vec)
            forward.eval()
        correct, loss = 0, 0.0
        for start in range(0, len(self.y_eval), _EVAL_BATCH):
            x, y = self.x_eval[start : start + _EVAL_BATCH], self.y_eval[start : start + _EVAL_BATCH]
            logits = forward(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
        n = max(1, len(self.y_eval))
        return correct / n, loss / n

    def _dense_forward(self, vec: torch.Tensor):
        """``x ↦ logits`` of a Linear/ReLU stack whose weights are views of ``vec`` (F.linear and F.relu, as
        the modules call them: the same numbers as loading ``vec`` into the model)."""
        layers = [(vec[w : w + o * i].view(o, i), vec[w + o * i : w + o * i + o]) for w, o, i in self._dense]

        def forward(x: torch.Tensor) -> torch.Tensor:
            for n, (weight, bias) in enumerate(layers):
                x = F.linear(x, weight, bias)
                if n < len(layers) - 1:
                    x = F.relu(x)
            return x

        return forward

    # --- client health -------------------------------------------------------------------------------
    def _h(self, cid: int) -> ClientHealth:
        return self.health.setdefault(cid, ClientHealth())

    def record_picked(self, cid: int, round: int) -> None:
        self._h(cid).picked += 1

    def record_joined(self, cid: int, round: int) -> None:
        h = self._h(cid)
        h.joined += 1
        h.last_round = round

    def record_failure(self, cid: int, round: int, reason: str) -> None:
        h = self._h(cid)
        h.failures += 1
        h.last_error = f"round {round}: {reason}"

    def health_table(self) -> dict[str, dict]:
        return {str(c): asdict(h) for c, h in sorted(self.health.items())}

    def load_health(self, table: dict[str, dict]) -> None:
        self.health = {int(c): ClientHealth(**h) for c, h in table.items()}


def _dense_layers(model: nn.Module) -> list[tuple[int, int, int]] | None:
    """``[(offset of the weight in the flat vector, out, in)]`` when ``model`` is ``Linear (ReLU Linear)*``
    with biases and no buffers (fnn, mlp, logreg), else None."""
    from .engine_kernels import fast_stack  # late: that module imports torch.func

    stack = fast_stack(model)
    if stack is None or any(bn is not None for _, bn in stack) or next(model.buffers(), None) is not None:
        return None
    out, offset = [], 0
    for lin, _ in stack:
        out.append((offset, lin.out_features, lin.in_features))
        offset += lin.weight.numel() + lin.bias.numel()
    return out
