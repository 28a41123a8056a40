"""The book's comparisons, each a function ``run(cfg, out, progress) -> summary`` writing
``summary.json`` (with ``results``: a list of rows), ``table.md`` and figures into ``out``.

Every experiment repeats its runs over ``cfg.seeds`` seeds and reports each number as ``<name>_mean``,
``<name>_std`` (sample standard deviation) and ``<name>_per_seed`` (see :mod:`.seeds`).
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config

__all__ = ["run_experiment", "EXPERIMENTS"]

EXPERIMENTS = ("fl-vs-central", "fl-vs-local", "compression", "he", "privacy", "robustness", "algorithms")


def run_experiment(name: str, cfg: Config, out: Path, progress=None, overwrite: bool = False) -> dict:
    """Run experiment ``name``; ``out`` is checked (and created) before anything trains.

    A folder holding files is refused unless it holds a fedloom run or experiment and ``overwrite`` is given
    (files fedloom did not write are never touched). If the experiment fails or is interrupted, the folders it
    created are removed again while still empty; otherwise the folder keeps its ``RUNNING`` marker and
    ``summary.json`` (written last) is absent.
    """
    if name == "fl-vs-central":
        from .fl_vs_central import run
    elif name == "fl-vs-local":
        from .fl_vs_local import run
    elif name == "compression":
        from .compression import run
    elif name == "he":
        from .he import run
    elif name == "privacy":
        from .privacy import run
    elif name == "robustness":
        from .robustness import run
    elif name == "algorithms":
        from .algorithms import run
    else:  # the CLI's argparse choices make this unreachable from the command line
        raise ValueError(f"unknown experiment {name!r}")
    from ..runs import prepare_run_dir
    from .common import release_out

    out = Path(out)
    created = [p for p in (out, *out.parents) if not p.exists()]
    # the folder rules of every run: new or empty, or (with overwrite) a fedloom folder whose files are replaced;
    # never a folder holding files fedloom did not write. RUNNING marks it incomplete until the run ends.
    run_dir = prepare_run_dir(out, cfg.to_dict(), overwrite, False, "experiment")
    run_dir.create(write_config=False, reset_metrics=False)
    try:
        result = run(cfg, out, progress)
    except BaseException:
        run_dir.abandon()
        release_out(created)
        raise
    run_dir.done()
    return result
