"""scikit-learn's seeded train/test split and bundled toy datasets, without importing scikit-learn.

Importing ``sklearn.model_selection`` or ``sklearn.datasets`` costs about a second (it pulls in scipy),
which is most of a small run's start-up (issue 12). The two functions here give exactly what
scikit-learn gives (tests/test_split.py compares them element by element):

- :func:`train_test_split` follows ``sklearn.model_selection.train_test_split`` with ``shuffle=True`` and an
  integer ``random_state``: ``ShuffleSplit`` (one permutation) or, with ``stratify``,
  ``StratifiedShuffleSplit`` (per-class counts by ``_approximate_mode``, ties broken at random; one
  permutation per class; the two index lists permuted), all drawn from one ``np.random.RandomState``.
- :func:`load_bundled` reads the CSV files that ship inside the scikit-learn wheel
  (``sklearn/datasets/data``), as ``load_iris``/``load_wine``/``load_breast_cancer``/``load_digits`` do.
"""

from __future__ import annotations

import csv
import importlib.util
from math import ceil
from pathlib import Path

import numpy as np

__all__ = ["train_test_split", "load_bundled", "BUNDLED"]

# name → (file in sklearn/datasets/data, has the "n_samples,n_features,class names…" header row)
BUNDLED = {
    "iris": ("iris.csv", True),
    "wine": ("wine_data.csv", True),
    "breast_cancer": ("breast_cancer.csv", True),
    "digits": ("digits.csv.gz", False),
}


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class draws closest to proportional; leftover draws go to the largest remainders, ties at random
    (scikit-learn's ``utils.extmath._approximate_mode``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def _stratified(y: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState) -> tuple[np.ndarray, ...]:
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError("stratify: the least populated class has only 1 member")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, members in enumerate(class_indices):
        perm = members.take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def train_test_split(
    x: np.ndarray, y: np.ndarray, test_size: float, random_state: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)``, identical to scikit-learn's for a float ``test_size``."""
    n = len(x)
    n_test = ceil(test_size * n)
    n_train = n - n_test
    if not 0 < test_size < 1 or n_train <= 0:
        raise ValueError(f"test_size {test_size} leaves no training rows out of {n}")
    rng = np.random.RandomState(random_state)
    if stratify is None:
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test : n_test + n_train]
    else:
        train, test = _stratified(np.asarray(stratify), n_train, n_test, rng)
    return x[train], x[test], y[train], y[test]


def _sklearn_data_dir() -> Path:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-learn is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(features float64 [n, f], labels int64 [n], class names)`` of a dataset bundled with scikit-learn."""
    file, header = BUNDLED[name]
    path = _sklearn_data_dir() / file
    if not header:  # digits: 64 pixel columns and the label, no header
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64), [str(i) for i in range(10)]
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        first = next(reader)
        n, features, names = int(first[0]), int(first[1]), first[2:]
        rows = [r for r in reader if r]
    table = np.asarray(rows, dtype=np.float64)  # [n, features + label]
    if table.shape != (n, features + 1):
        raise ValueError(f"{path}: expected {n} rows of {features} features and a label, got {table.shape}")
    return table[:, :-1], table[:, -1].astype(np.int64), names
