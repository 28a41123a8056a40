"""Federated optimizers' server steps, one file each (the ``algorithm`` config section picks one).

- ``fedopt.py``: FedAvgM, FedAdam, FedYogi, FedAdagrad (Reddi et al., ICLR 2021): a server optimizer over the
  inner aggregator's step.
- ``fednova.py``: FedNova (Wang et al., NeurIPS 2020): normalized averaging by each client's local work.
- ``scaffold.py``: SCAFFOLD (Karimireddy et al., ICML 2020): control variates, option II.

FedProx (Li et al., MLSys 2020) changes only the clients' local objective (the engines' ``mu``); its server
step is FedAvg's. Each server step is an :class:`~fedloom.aggregators.base.Aggregator`, so the one round and
secure aggregation (``finish(G, s, Z)``) run them unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..algorithm_spec import ALGORITHMS, AlgorithmConfig

if TYPE_CHECKING:
    from ..aggregators.base import Aggregator

__all__ = [
    "make_server_algorithm",
    "ServerOptimizer",
    "OPTIMIZERS",
    "FedNova",
    "norm_factor",
    "normalize",
    "Scaffold",
    "client_control",
]


# Defined before this package imports anything from fedloom.aggregators, with its imports inside: importing
# fedloom.aggregators.base runs fedloom/aggregators/__init__.py, which may import make_server_algorithm from
# here while this package is still half-initialized (make_aggregator wires it in).
def make_server_algorithm(inner: Aggregator, algorithm: AlgorithmConfig) -> Aggregator:
    """The server step of ``algorithm`` around ``inner`` (the aggregator the ``aggregator`` section built):
    ``inner`` itself for fedavg and fedprox, a :class:`ServerOptimizer` over it for FedOpt, and FedNova or
    Scaffold in its place (both correct FedAvg's weighted mean, so ``inner`` must be FedAvg)."""
    from ..aggregators.fedavg import FedAvg

    name = algorithm.name
    if name in ("fedavg", "fedprox"):
        return inner
    if name in ("fednova", "scaffold"):
        if type(inner) is not FedAvg:
            raise ValueError(f"{name} replaces FedAvg's weighted mean; got aggregator {inner.name}")
        return FedNova() if name == "fednova" else Scaffold(algorithm.param("server_lr"))
    if name in OPTIMIZERS:
        params = {key: algorithm.param(key) for key in ALGORITHMS[name]}  # only those this optimizer takes
        return ServerOptimizer(inner, name, **params)
    raise ValueError(f"no server step for algorithm {name!r}")


from .fednova import FedNova, norm_factor, normalize  # noqa: E402
from .fedopt import OPTIMIZERS, ServerOptimizer  # noqa: E402
from .scaffold import Scaffold, client_control  # noqa: E402
