"""Shared pieces of the experiments: running a federation with progress, writing the outputs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..config import Config
from ..data import FedData, Partition
from ..report import markdown_table
from ..runs import write_json
from ..simulation import Federation, RunResult, run_federation

__all__ = ["run_with_progress", "one_client", "write_outputs"]


def run_with_progress(cfg: Config, data: FedData, progress, label: str) -> RunResult:
    fed = Federation.build(cfg, data)
    task = progress.task(label, cfg.global_epochs) if progress else None
    return run_federation(fed, (lambda row: progress.update(task, row)) if progress else None)


def one_client(data: FedData) -> FedData:
    """The same train/eval split with every training row held by a single party (centralized training)."""
    n = len(data.y_train)
    part = Partition(np.arange(n, dtype=np.int64), np.array([0, n], dtype=np.int64))
    return FedData(
        data.name, data.x_train, data.y_train, data.x_eval, data.y_eval, data.classes, part, data.image_shape
    )


def write_outputs(
    out: Path, summary: dict, table_rows: list[dict], columns: list[str], title: str, notes: str = ""
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{markdown_table(table_rows, columns)}"
    if notes:
        text += f"\n{notes}\n"
    (out / "table.md").write_text(text, encoding="utf-8")
    summary = {**summary, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / "summary.json", summary)
    return summary
