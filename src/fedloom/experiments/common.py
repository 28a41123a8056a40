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
from ..runs import as_written, read_json, write_json
from ..simulation import Federation, RunResult, run_federation

__all__ = [
    "finish_with_curves",
    "render_with_curves",
    "derive",
    "plain_updates",
    "refuse",
    "run_with_progress",
    "one_client",
    "work_done",
    "claim_out",
    "release_out",
    "write_outputs",
    "write_table",
    "as_written",
    "save_curves",
    "load_curves",
    "render_config",
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


def partition_label(cfg: Config) -> str:
    """How the clients' data was split, for titles: synthetic data is split by its generator."""
    if cfg.type == "synthetic":
        return f"{cfg.synthetic.generator} generator's devices"
    return f"{cfg.partition.method} partition"


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


def write_table(out: Path, table_rows: list[dict], columns: list[str], title: str, notes: str = "") -> Path:
    """``table.md``: a title, the markdown table and the notes below it (written whole, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{markdown_table(table_rows, columns)}"
    if notes:
        text += f"\n{notes}\n"
    tmp = out / "table.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "table.md")
    return out / "table.md"


def write_outputs(
    out: Path, summary: dict, table_rows: list[dict], columns: list[str], title: str, notes: str = ""
) -> dict:
    """``table.md`` then ``summary.json`` (written last, atomically: its presence says the experiment finished)."""
    write_table(out, table_rows, columns, title, notes)
    summary = {**summary, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / "summary.json", summary)
    return summary


# --- drawing again from the folder's files (``fedloom report DIR``) ---------------------------------------------

CURVES = "curves.json"
_CURVE_KEYS = ("round", "accuracy", "loss")  # all a per-round figure draws


def save_curves(out: Path, series: dict[str, list[list[dict]]]) -> dict[str, list[list[dict]]]:
    """Write the per-round curves ({setting: [rows of each seed]}) to ``curves.json``; returns them as written,
    so the experiment draws from exactly what ``fedloom report`` will read back."""
    trim = lambda rows: [{k: r.get(k) for k in _CURVE_KEYS} for r in rows]  # noqa: E731
    kept = {name: [trim(rows) for rows in runs] for name, runs in series.items()}
    write_json(out / CURVES, kept)
    return as_written(kept)


def load_curves(folder: Path) -> dict[str, list[list[dict]]]:
    """The curves :func:`save_curves` wrote, checked enough that drawing cannot fail half-way."""
    path = folder / CURVES
    if not path.is_file():
        raise FedloomError(f"{path}: not found (written by experiments since this version); run the experiment again")
    series = read_json(path)
    ok = all(
        isinstance(runs, list) and runs and all(isinstance(rows, list) and rows for rows in runs)
        and all(isinstance(r, dict) and isinstance(r.get("round"), int) for rows in runs for r in rows)
        for runs in series.values()
    )  # fmt: skip
    if not series or not ok:
        raise FedloomError(f"{path}: expected {{setting: [[{{round, accuracy, loss}}, ...] per seed]}}")
    return series


def render_config(folder: Path, summary: dict) -> Config:
    """The config an experiment folder was run with (``summary.json``'s ``config``), validated again, after
    checking that ``results`` is there: a damaged summary is one line naming the file, before anything is drawn."""
    path = folder / "summary.json"
    results = summary.get("results")
    if not isinstance(results, list) or not results or not all(isinstance(r, dict) for r in results):
        raise FedloomError(f"{path}: expected 'results', a non-empty list of rows; run the experiment again")
    if not isinstance(summary.get("config"), dict):
        raise FedloomError(f"{path}: expected 'config', the experiment's config as an object")
    if not isinstance(summary.get("seeds"), list) or not summary["seeds"]:
        raise FedloomError(f"{path}: expected 'seeds', the list of seeds run")
    return build_config(summary["config"], f"{path} (config)")


def finish_with_curves(out: Path, cfg: Config, summary: dict, curves: dict, figures, table) -> dict:
    """Write an experiment whose figures need per-round curves: ``curves.json``, the figures, ``table.md`` and
    ``summary.json``; everything is drawn from the numbers as ``summary.json`` holds them, as ``fedloom report``
    draws them (``figures(out, cfg, summary, curves)``, ``table(cfg, summary)``: the experiment's own)."""
    summary = as_written(summary)
    figures(out, cfg, summary, save_curves(out, curves))
    return write_outputs(out, summary, *table(cfg, summary))


def render_with_curves(folder: Path, summary: dict, figures, table) -> list[Path]:
    """``fedloom report`` for such an experiment: redraw its figures and rewrite ``table.md`` from the folder's
    ``summary.json`` and ``curves.json``."""
    cfg = render_config(folder, summary)
    drawn = figures(folder, cfg, summary, load_curves(folder))
    write_table(folder, *table(cfg, summary))
    return drawn
