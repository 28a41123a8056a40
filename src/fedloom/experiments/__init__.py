"""The book's comparisons, each a function ``run(cfg, out, progress) -> summary`` writing
``summary.json`` (with ``results``: a list of rows), ``table.md`` and figures into ``out``."""

from __future__ import annotations

from pathlib import Path

from ..config import Config

__all__ = ["run_experiment", "EXPERIMENTS"]

EXPERIMENTS = ("fl-vs-central", "fl-vs-local", "compression", "he")


def run_experiment(name: str, cfg: Config, out: Path, progress=None) -> dict:
    if name == "fl-vs-central":
        from .fl_vs_central import run
    elif name == "fl-vs-local":
        from .fl_vs_local import run
    elif name == "compression":
        from .compression import run
    elif name == "he":
        from .he import run
    else:  # the CLI's argparse choices make this unreachable from the command line
        raise ValueError(f"unknown experiment {name!r}")
    return run(cfg, Path(out), progress)
