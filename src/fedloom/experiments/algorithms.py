"""Federated optimizers side by side: each algorithm × each straggler fraction on the same partition and seeds.

The grid is the config's ``algorithms`` section (algorithm_spec.AlgorithmsGrid): ``compare`` (default: all eight
algorithms with their default parameters), ``stragglers`` (default: the config's own ``runtime.stragglers``)
and ``target`` (an accuracy; its first round is reported). Every run is the user's config with only
``algorithm``, ``runtime.stragglers`` and ``seed`` changed, validated as a user's file is before anything
trains, so a combination ``fedloom run`` refuses (``lambda`` with a FedOpt algorithm, SCAFFOLD under secure
aggregation, ...) is one line naming the algorithm and the field. Per seed, every run shares the data and its
partition; which clients straggle in a round depends on (seed, round) only, not on the algorithm (issue 15).

Outputs: ``table.md`` (final accuracy, rounds to the target, bytes each way per run; mean ± sample std over
seeds), ``summary.json``, ``curves.json`` and one figure of accuracy and loss curves with ± std bands per
straggler fraction (``figures/accuracy_stragglers_<fraction>.png``).
"""

from __future__ import annotations

from pathlib import Path

from ..algorithm_spec import AlgorithmConfig, AlgorithmsGrid, keeps_partial_work
from ..config import Config
from ..data import load_data
from ..errors import FedloomError
from .common import CURVES, derive, finish_with_curves, partition_label, refuse, render_with_curves, run_with_progress
from .plots import plot_band_curves
from .seeds import cell, mean_std, merge_seeds, seed_list

__all__ = ["run", "render", "grid", "plans", "rounds_to_target", "curve_key", "figure_name"]

_KEYS = ("algorithm", "stragglers")  # a row's identity across seeds


def grid(cfg: Config) -> tuple[list[AlgorithmConfig], list[float]]:
    """(algorithms compared, straggler fractions tried), duplicates refused: each names a row and a curve."""
    g = cfg.algorithms or AlgorithmsGrid()
    fractions = list(g.stragglers) if g.stragglers is not None else [cfg.runtime.stragglers]
    labels = [a.label() for a in g.compare]
    for what, items in (("algorithms.compare", labels), ("algorithms.stragglers", [f"{f:g}" for f in fractions])):
        twice = next((x for i, x in enumerate(items) if x in items[:i]), None)
        if twice is not None:
            refuse("algorithms", f"{what} lists {twice} twice; each entry is one row of the table")
    return list(g.compare), fractions


def plans(cfg: Config) -> list[list[tuple[str, float, Config]]]:
    """Every run, [seeds][(label, fraction, config)], fractions outer and algorithms inner; all validated first.

    The whole ``algorithm`` section is replaced (every parameter given, unset ones as null): a merge would
    carry the user's ``mu`` into, say, ``scaffold``, which refuses it."""
    algos, fractions = grid(cfg)
    combos = []
    for f in fractions:
        for a in algos:
            where = f"algorithms ({a.label()}, stragglers {f:g})"
            updates = {"algorithm": a.model_dump(mode="json"), "runtime": {"stragglers": f}, "algorithms": None}
            combos.append((a.label(), f, derive(cfg, {**updates, "seeds": 1}, where)))
    out = []
    for s in seed_list(cfg):
        where = "algorithms ({}, stragglers {:g}, seed {})"
        out.append([(label, f, derive(c, {"seed": s}, where.format(label, f, s))) for label, f, c in combos])
    return out


def rounds_to_target(rows: list[dict], target: float | None) -> int | None:
    """The first round whose eval accuracy is at least ``target`` (None: not reached, or no target)."""
    if target is None:
        return None
    return next((r["round"] for r in rows if r.get("accuracy") is not None and r["accuracy"] >= target), None)


def curve_key(label: str, fraction: float) -> str:
    """The name of one (algorithm, straggler fraction) in ``curves.json``."""
    return f"{label} | stragglers {fraction:g}"


def figure_name(fraction: float) -> str:
    return f"accuracy_stragglers_{fraction:g}.png"


def _padded(rows: list[dict], rounds: int) -> list[dict]:
    """A run that diverged stops early (simulation.py): its missing rounds are blank, so seeds stack."""
    return [*rows, *({"round": r, "accuracy": None, "loss": None} for r in range(len(rows) + 1, rounds + 1))]


def _one_seed(runs: list[tuple[str, float, Config]], target: float | None, progress, curves: dict) -> list[dict]:
    data = load_data(runs[0][2])  # one partition for every algorithm and fraction of this seed
    rows = []
    for label, f, c in runs:
        res = run_with_progress(c, data, progress, f"{label}, stragglers {f:g}, seed {c.seed}")
        curves.setdefault(curve_key(label, f), []).append(_padded(res.rows, c.global_epochs))
        s = res.summary
        kept = keeps_partial_work(c.algorithm.name, c.runtime.straggler_work)
        rows.append(
            {
                "algorithm": label,
                "stragglers": f,
                "straggler_work": "partial" if kept else "dropped",
                "accuracy": s["final_accuracy"],
                "loss": s["final_loss"],
                "target_round": rounds_to_target(res.rows, target),
                "bytes_up": s["bytes_up"],
                "bytes_down": s["bytes_down"],
                "diverged_at_round": s.get("diverged_at_round"),
            }
        )
    return rows


def _reached(row: dict) -> dict:
    """Rounds to the target: mean ± std over the seeds that reached it, and how many did (merge_rows gives
    None as soon as one seed missed it)."""
    hit = [v for v in row["target_round_per_seed"] if v is not None]
    mean, std = mean_std(hit) if hit else (None, None)
    return {**row, "target_round_mean": mean, "target_round_std": std, "target_reached": len(hit)}


def run(cfg: Config, out: Path, progress=None) -> dict:
    every = plans(cfg)  # every config validated before the first run
    target = (cfg.algorithms or AlgorithmsGrid()).target
    curves: dict[str, list[list[dict]]] = {}
    per_seed = [_one_seed(runs, target, progress, curves) for runs in every]
    results = [_reached(r) for r in merge_seeds(per_seed, _KEYS)]
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": "algorithms",
        "algorithms": list(dict.fromkeys(r["algorithm"] for r in results)),
        "stragglers": list(dict.fromkeys(r["stragglers"] for r in results)),
        "target": target,
        "seed": cfg.seed,
        "seeds": seed_list(cfg),
        "config": cfg.to_dict(),
        "results": results,
    }
    return finish_with_curves(out, cfg, summary, curves, _figures, _table)


def render(folder: Path, summary: dict) -> list[Path]:
    """Redraw the figures and rewrite ``table.md`` from the folder's ``summary.json`` and ``curves.json``."""
    return render_with_curves(folder, summary, _figures, _table)


def _figures(out: Path, cfg: Config, summary: dict, curves: dict) -> list[Path]:
    """One figure per straggler fraction: every algorithm's accuracy and loss per round, ± std over seeds."""
    drawn = []
    for f in dict.fromkeys(r["stragglers"] for r in summary["results"]):
        labels = [r["algorithm"] for r in summary["results"] if r["stragglers"] == f]
        missing = [curve_key(a, f) for a in labels if curve_key(a, f) not in curves]
        if missing:
            raise FedloomError(f"{out / CURVES}: no curves for '{missing[0]}'; run the experiment again")
        series = {a: curves[curve_key(a, f)] for a in labels}
        title = f"federated optimizers: {cfg.type}, {cfg.model_name}, stragglers {f:g}"
        drawn.append(plot_band_curves(series, out / "figures" / figure_name(f), title, len(summary["seeds"])))
    return drawn


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes."""
    seeds, target, results = summary["seeds"], summary.get("target"), summary["results"]
    straggling = any(r["stragglers"] > 0 for r in results)
    columns = ["algorithm", "stragglers", *(["straggler work"] if straggling else []), "accuracy"]
    columns += [f"rounds to {target:g}"] if target is not None else []
    columns += ["bytes up", "bytes down"]
    table = []
    for r in results:
        work = r["straggler_work"] if r["stragglers"] > 0 else "—"  # no straggler, nothing to drop or keep
        row = {"algorithm": r["algorithm"], "stragglers": f"{r['stragglers']:g}", "straggler work": work}
        row |= {"accuracy": cell(r, "accuracy"), "bytes up": cell(r, "bytes_up"), "bytes down": cell(r, "bytes_down")}
        if target is not None:
            reached = f"{r['target_reached']}/{len(seeds)} seeds"
            row[f"rounds to {target:g}"] = f"{cell(r, 'target_round')} ({reached})" if r["target_reached"] else "—"
        table.append({c: row[c] for c in columns})
    spread = f"mean ± sample std over seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    notes = [
        f"{cfg.no_models} clients, k={cfg.k}, {cfg.local_epochs} local epochs, {cfg.global_epochs} rounds, {spread}. "
        "accuracy: final eval accuracy; bytes: per run, both directions as sent (SCAFFOLD's control variates "
        "included)."
    ]
    if target is not None:
        notes.append(f"rounds to {target:g}: the first round at or above it, averaged over the seeds that reached it.")
    if straggling:
        notes.append(
            "stragglers: the share of each cohort that cannot finish its local epochs (the same clients whatever "
            "the algorithm); dropped: their work is discarded, partial: they send 1 to E−1 epochs of work."
        )
    for r in results:
        stops = [v for v in r.get("diverged_at_round_per_seed", []) if v is not None]
        if stops:
            rounds = ", ".join(str(v) for v in stops)
            notes.append(f"{r['algorithm']} at stragglers {r['stragglers']:g} diverged in {len(stops)} of "
                         f"{len(seeds)} seeds (round {rounds}); its curve stops there.")  # fmt: skip
    title = f"Federated optimizers: {cfg.type}, {cfg.model_name}, {partition_label(cfg)}"
    return table, columns, title, "\n\n".join(notes)
