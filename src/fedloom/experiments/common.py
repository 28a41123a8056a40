"""Shared pieces of the experiments: derived configs, runs with progress, work counts, the output folder.

Every config an experiment runs is derived from the user's with :func:`derive`, which rebuilds it from a
dict through the same validation as a user's file, so an experiment never runs what ``fedloom run`` refuses.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, build_config
from ..data import FedData, Partition
from ..errors import ConfigError, FedloomError
from ..report import markdown_table
from ..runs import write_json
from ..simulation import Federation, RunResult, run_federation

__all__ = [
    "derive",
    "plain_updates",
    "refuse",
    "run_with_progress",
    "one_client",
    "work_done",
    "claim_out",
    "release_out",
    "write_outputs",
]


def _merge(base: dict, updates: dict) -> dict:
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)  # a section: change only the keys given
        else:
            out[key] = value
    return out


def derive(cfg: Config, updates: dict[str, Any], where: str) -> Config:
    """``cfg`` with ``updates`` (the config file's spelling: ``"lambda"``; section dicts merge into sections),
    validated again as a user's config is; a contradiction raises one line naming ``where`` and the field."""
    raw = _merge(json.loads(json.dumps(cfg.to_dict())), updates)
    return build_config(raw, f"experiment {where}")


def plain_updates() -> dict[str, Any]:
    """Updates that make a run plain: no upload/download codec, no secure aggregation, FedAvg, no failures."""
    return {
        "compression": {"up": "none", "down": "none", "error_feedback": False},
        "secure": {"method": "none", "protocol": "secagg"},
        "rate": None,
        "prop": None,
        "sweep": None,
        "lambda": None,
        "aggregator": "mean",
        "runtime": {"dropout": 0.0, "min_clients": 1, "client_memory_mb": None},
    }


def refuse(where: str, message: str) -> None:
    """A setting the experiment cannot honour: one line, before anything runs."""
    raise ConfigError(f"experiment {where}: {message}")


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


def work_done(res: RunResult, data: FedData, cfg: Config) -> tuple[int, int]:
    """(training samples processed, local optimizer steps) over a run, summed over the clients that trained.

    A client of ``n`` rows makes ``local_epochs`` passes of ``ceil(n / batch_size)`` mini-batches per round
    (training.py: the last batch is shorter); rounds that were not applied trained nobody.
    """
    sizes = data.partition.sizes()
    samples = steps = 0
    for row in res.rows:
        for cid in row["clients"]:
            n = int(sizes[cid])
            samples += cfg.local_epochs * n
            steps += cfg.local_epochs * math.ceil(n / cfg.batch_size)
    return samples, steps


def claim_out(out: Path, overwrite: bool = False) -> list[Path]:
    """Check ``out`` before anything runs and create it; returns the folders created (for :func:`release_out`).

    A folder that holds files is refused unless ``overwrite``: an experiment never mixes its outputs with
    another's or overwrites a user's files unasked.
    """
    if out.exists():
        if not out.is_dir():
            raise FedloomError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise FedloomError(f"--out {out}: folder exists and is not empty; choose a new folder")
        return []
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise FedloomError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    return created


def release_out(created: list[Path]) -> None:
    """Remove the folders :func:`claim_out` created when the experiment wrote nothing into them."""
    for p in created:  # innermost first
        if not p.exists():
            continue
        try:
            p.rmdir()  # only succeeds while empty
        except OSError:
            return


def write_outputs(
    out: Path, summary: dict, table_rows: list[dict], columns: list[str], title: str, notes: str = ""
) -> dict:
    """``table.md`` then ``summary.json`` (written last, atomically: its presence says the experiment finished)."""
    out.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{markdown_table(table_rows, columns)}"
    if notes:
        text += f"\n{notes}\n"
    tmp = out / "table.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "table.md")
    summary = {**summary, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / "summary.json", summary)
    return summary
