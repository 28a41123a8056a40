"""Datasets (bundled, no downloads) and their partition among clients."""

from .datasets import FedData, load_data
from .partition import Partition, partition

__all__ = ["FedData", "load_data", "Partition", "partition"]
