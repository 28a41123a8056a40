"""A run's output directory (the contract in docs/architecture.md):

``config.json`` (resolved), ``metrics.jsonl`` (one row per round), ``checkpoint.pt`` (each round),
``summary.json``, ``model.pt`` (final state dict), ``partition.json`` (label counts per client),
``figures/*.png`` and ``report.md``. Tensors are saved with ``torch.save`` and load with
``torch.load(weights_only=True)``: no pickled objects.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from .errors import FedloomError

__all__ = ["RunDir", "default_out_dir", "write_json", "read_json", "load_checkpoint"]


def default_out_dir(name: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _clean(obj):
    """JSON has no NaN: write null instead, so any JSON reader can load the files."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedloomError(f"{path}: not found; is this a fedloom run directory?") from None
    except json.JSONDecodeError as e:
        raise FedloomError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


class RunDir:
    """Writes one run's files. Created only after the config and data have been validated."""

    def __init__(self, path: str | Path, config: dict, overwrite_metrics: bool = True):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise FedloomError(f"--out {self.path}: exists and is not a directory")
        (self.path / "figures").mkdir(parents=True, exist_ok=True)
        write_json(self.path / "config.json", config)
        self.metrics = self.path / "metrics.jsonl"
        if overwrite_metrics:
            self.metrics.write_text("", encoding="utf-8")

    def append(self, row: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(row)) + "\n")

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """``metrics.jsonl`` holding exactly ``rows`` (written atomically)."""
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(_clean(r)) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.metrics)

    def write_checkpoint(self, state: dict) -> None:
        """``checkpoint.pt`` from a state dict of tensors and plain values (written atomically)."""
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path / "checkpoint.pt")

    def finish(self, summary: dict, state_dict: dict, extra: dict | None = None) -> None:
        torch.save({k: v.detach().clone() for k, v in state_dict.items()}, self.path / "model.pt")
        for name, obj in (extra or {}).items():
            write_json(self.path / name, obj)
        write_json(self.path / "summary.json", summary)
