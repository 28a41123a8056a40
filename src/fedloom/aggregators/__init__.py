"""Server aggregation rules, one per file."""

from __future__ import annotations

from ..aggregator_spec import RULES, AggregatorConfig
from .base import Aggregator
from .book_lambda import BookLambda
from .bulyan import Bulyan
from .clipping import NormClip
from .fedavg import FedAvg
from .geomed import GeometricMedian
from .krum import Krum, MultiKrum
from .median import CoordinateMedian
from .robust import AggregationError, RobustAggregator
from .trimmed_mean import TrimmedMean

__all__ = [
    "Aggregator",
    "BookLambda",
    "FedAvg",
    "CoordinateMedian",
    "TrimmedMean",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "GeometricMedian",
    "NormClip",
    "RobustAggregator",
    "AggregationError",
    "make_aggregator",
    "AGGREGATORS",
]

AGGREGATORS = tuple(RULES)


def make_aggregator(lam: float | None, spec: str | AggregatorConfig = "mean", algorithm=None) -> Aggregator:
    """``mean``: the book's λ rule when ``lambda`` is configured, else FedAvg weighted by sample counts;
    the others are the robust rules named in aggregator_spec.py (``spec``: a name or the config section).
    ``algorithm`` (the config's ``algorithm`` section) puts its server step around the rule: a FedOpt server
    optimizer, FedNova's normalized average, SCAFFOLD's server (fedloom.algorithms)."""
    rule = _rule(lam, spec)
    if algorithm is None or algorithm.name in ("fedavg", "fedprox"):
        return rule
    from ..algorithms import make_server_algorithm

    return make_server_algorithm(rule, algorithm)


def _rule(lam: float | None, spec: str | AggregatorConfig) -> Aggregator:
    if isinstance(spec, str):
        spec = AggregatorConfig(name=spec)
    name = spec.name
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed_mean":
        return TrimmedMean(spec.beta)
    if name == "krum":
        return Krum(spec.f)
    if name == "multikrum":
        return MultiKrum(spec.f, spec.m)
    if name == "bulyan":
        return Bulyan(spec.f)
    if name == "geomed":
        return GeometricMedian(spec.nu, spec.tol, spec.max_iter)
    if name == "norm_clip":
        return NormClip(spec.max_norm)
    return BookLambda(lam) if lam is not None else FedAvg()
