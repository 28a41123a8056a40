"""The book's comparisons, each a function ``run(cfg, out, progress) -> summary`` writing
``summary.json`` (with ``results``: a list of rows), ``table.md`` and figures into ``out``.

Every experiment repeats its runs over ``cfg.seeds`` seeds and reports each number as ``<name>_mean``,
``<name>_std`` (sample standard deviation) and ``<name>_per_seed`` (see :mod:`.seeds`).
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config

__all__ = ["run_experiment", "EXPERIMENTS"]

EXPERIMENTS = ("fl-vs-central", "fl-vs-local", "compression", "he", "robustness")


def run_experiment(name: str, cfg: Config, out: Path, progress=None, overwrite: bool = False) -> dict:
    """Run experiment ``name``; ``out`` is checked (and created) before anything trains.

    A folder holding files is refused unless ``overwrite``. If the experiment fails or is interrupted, the
    folders it created are removed again while still empty, and ``summary.json`` (written last) is absent.
    """
    if name == "fl-vs-central":
        from .fl_vs_central import run
    elif name == "fl-vs-local":
        from .fl_vs_local import run
    elif name == "compression":
        from .compression import run
    elif name == "he":
        from .he import run
    elif name == "robustness":
        from .robustness import run
    else:  # the CLI's argparse choices make this unreachable from the command line
        raise ValueError(f"unknown experiment {name!r}")
    from .common import claim_out, release_out

    created = claim_out(Path(out), overwrite)
    try:
        return run(cfg, Path(out), progress)
    finally:
        release_out(created)
