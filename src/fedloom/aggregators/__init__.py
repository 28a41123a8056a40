"""Server aggregation rules, one per file."""

from .base import Aggregator
from .book_lambda import BookLambda
from .fedavg import FedAvg

__all__ = ["Aggregator", "BookLambda", "FedAvg", "make_aggregator"]


def make_aggregator(lam: float | None) -> Aggregator:
    """The book's λ rule when ``lambda`` is configured, else FedAvg weighted by sample counts."""
    return BookLambda(lam) if lam is not None else FedAvg()
