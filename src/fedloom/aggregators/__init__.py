"""Server aggregation rules, one per file."""

from .base import Aggregator
from .book_lambda import BookLambda
from .fedavg import FedAvg
from .median import CoordinateMedian

__all__ = ["Aggregator", "BookLambda", "FedAvg", "CoordinateMedian", "make_aggregator", "AGGREGATORS"]

AGGREGATORS = ("mean", "median")


def make_aggregator(lam: float | None, name: str = "mean") -> Aggregator:
    """``mean``: the book's λ rule when ``lambda`` is configured, else FedAvg weighted by sample counts;
    ``median``: the coordinate-wise median."""
    if name == "median":
        return CoordinateMedian()
    return BookLambda(lam) if lam is not None else FedAvg()
