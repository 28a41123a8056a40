"""Attacks against aggregators: final main-task accuracy (and a backdoor's success) for each aggregator ×
attack × attacker fraction, with the clean run of each aggregator alongside (issue 16; the book's 15.1).

The grid is the config's ``robustness`` section (aggregators, attacks, fractions; defaults in
attack_spec.py). Every run is the user's config with only ``aggregator``, ``attack`` and ``seed`` changed,
validated as a user's file is before anything trains, so a rule that cannot run on the config's ``k``
(Krum's n ≥ 2f + 3, Bulyan's n ≥ 4f + 3) is refused up front. The attackers are simulated (fedloom.attacks).
Outputs: ``table.md``, ``summary.json``, ``figures/accuracy_heatmap.png`` and, with a backdoor,
``figures/backdoor_heatmap.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..attack_spec import RobustnessConfig
from ..config import Config
from ..data import load_data
from ..report import new_figure, save_figure
from .common import as_written, derive, refuse, render_config, run_with_progress, write_outputs, write_table
from .seeds import cell, merge_seeds, seed_list

__all__ = ["run", "render", "DEFAULT_ATTACKS", "grid"]

DEFAULT_ATTACKS = (
    {"name": "gaussian", "std": 10.0},
    {"name": "sign_flip"},
    {"name": "alie"},
    {"name": "backdoor"},
)
CLEAN = "none"


def _label(agg: str | dict) -> str:
    if isinstance(agg, str):
        return agg
    extra = ",".join(f"{k}={v}" for k, v in agg.items() if k != "name")
    return f"{agg.get('name', 'mean')}({extra})" if extra else agg.get("name", "mean")


def grid(cfg: Config) -> tuple[list, list[tuple[str, float, dict | None]]]:
    """(aggregators, settings): settings are (attack name, fraction, attack section or None), clean first.

    Without ``robustness.attacks`` the config's own ``attack`` is used, with its own ``clients`` or
    ``fraction`` unless ``robustness.fractions`` is given; without either, :data:`DEFAULT_ATTACKS`."""
    rb = cfg.robustness or RobustnessConfig()
    fractions = rb.fractions or [0.2]
    settings: list[tuple[str, float, dict | None]] = [(CLEAN, 0.0, None)]
    if rb.attacks is None and cfg.attack is not None:
        own = cfg.attack.model_dump(exclude_none=True)
        if rb.fractions is None:  # the config's own attackers, as `fedloom run` would attack
            share = own["fraction"] if "fraction" in own else len(own["clients"]) / cfg.no_models
            return list(rb.aggregators), settings + [(own["name"], share, own)]
        attacks = [{k: v for k, v in own.items() if k not in ("fraction", "clients")}]
    else:
        attacks = rb.attacks if rb.attacks is not None else [dict(a) for a in DEFAULT_ATTACKS]
    settings += [(a["name"], f, {**a, "fraction": f}) for a in attacks for f in fractions]
    return list(rb.aggregators), settings


def _plans(cfg: Config) -> tuple[list[str], list[list[tuple[str, str, float, Config]]]]:
    if cfg.secure.method != "none":
        refuse("robustness", "the robust aggregators need each update in the clear; set secure.method: none")
    aggs, settings = grid(cfg)
    base = derive(cfg, {"attack": None, "robustness": None, "aggregator": "mean", "seeds": 1}, "robustness")
    plans = []
    for s in seed_list(cfg):
        runs = []
        for agg in aggs:
            for name, frac, attack in settings:
                where = f"robustness ({_label(agg)}, {name} {frac:g}, seed {s})"
                runs.append(
                    (_label(agg), name, frac, derive(base, {"seed": s, "aggregator": agg, "attack": attack}, where))
                )
        plans.append(runs)
    return [_label(a) for a in aggs], plans


def _one_seed(runs, progress) -> list[dict]:
    data = load_data(runs[0][3])
    rows = []
    for agg, attack, frac, rcfg in runs:
        res = run_with_progress(rcfg, data, progress, f"{agg} vs {attack} {frac:g}, seed {rcfg.seed}")
        last = res.rows[-1] if res.rows else {}
        rows.append(
            {
                "aggregator": agg,
                "attack": attack,
                "fraction": frac,
                "accuracy": res.summary["final_accuracy"],
                "backdoor_accuracy": last.get("backdoor_accuracy"),
                "attackers_last_round": last.get("attackers", 0),
            }
        )
    clean = {r["aggregator"]: r["accuracy"] for r in rows if r["attack"] == CLEAN}
    for r in rows:  # paired with this seed's clean run of the same aggregator
        r["delta_points"] = 100 * (r["accuracy"] - clean[r["aggregator"]])
    return rows


def run(cfg: Config, out: Path, progress=None) -> dict:
    aggs, plans = _plans(cfg)
    seeds = seed_list(cfg)
    results = merge_seeds([_one_seed(runs, progress) for runs in plans], ("aggregator", "attack", "fraction"))
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": "robustness",
        "seed": cfg.seed,
        "seeds": seeds,
        "config": cfg.to_dict(),
        "results": results,
    }
    summary = as_written(summary)  # drawn from the numbers as summary.json holds them, as `fedloom report` does
    _figures(out, cfg, summary, aggs)
    return write_outputs(out, summary, *_table(cfg, summary))


def render(folder: Path, summary: dict) -> list[Path]:
    """Redraw the heatmaps and rewrite ``table.md`` from the folder's ``summary.json``."""
    cfg = render_config(folder, summary)
    aggs = list(dict.fromkeys(r["aggregator"] for r in summary["results"]))  # in the order they ran
    figures = _figures(folder, cfg, summary, aggs)
    write_table(folder, *_table(cfg, summary))
    return figures


def _figures(out: Path, cfg: Config, summary: dict, aggs: list[str]) -> list[Path]:
    results, seeds = summary["results"], len(summary["seeds"])
    figures = [_heatmap(results, aggs, "accuracy", out / "figures" / "accuracy_heatmap.png", cfg, seeds)]
    if any(r["attack"] == "backdoor" for r in results):
        bd = [r for r in results if r["attack"] in ("backdoor", CLEAN)]
        figures.append(_heatmap(bd, aggs, "backdoor_accuracy", out / "figures" / "backdoor_heatmap.png", cfg, seeds))
    return figures


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes."""
    seeds = summary["seeds"]
    numbers = ["accuracy", "delta_points", "backdoor_accuracy"]
    table = [
        {
            "aggregator": r["aggregator"],
            "attack": r["attack"],
            "fraction": r["fraction"],
            **{n: cell(r, n) for n in numbers},
        }
        for r in summary["results"]
    ]
    spread = f"mean ± sample std over seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    notes = (
        f"{cfg.no_models} clients, k={cfg.k}, {cfg.global_epochs} rounds, {spread}. accuracy: final main-task "
        "accuracy; delta_points: against the same aggregator's clean run of the same seed; backdoor_accuracy: "
        "triggered eval rows whose true label is not the target that the final model puts in the target class."
    )
    title = f"Robustness: {cfg.type}, {cfg.model_name}"
    return table, ["aggregator", "attack", "fraction", *numbers], title, notes


def _heatmap(rows: list[dict], aggs: list[str], key: str, path: Path, cfg: Config, seeds: int) -> Path:
    cols = list(dict.fromkeys((r["attack"], r["fraction"]) for r in rows))
    grid_ = np.full((len(aggs), len(cols)), np.nan)
    for r in rows:
        v = r.get(f"{key}_mean")
        if v is not None:
            grid_[aggs.index(r["aggregator"]), cols.index((r["attack"], r["fraction"]))] = v
    fig, ax = new_figure(figsize=(max(6.0, 1.6 + 1.3 * len(cols)), 1.6 + 0.5 * len(aggs)))
    im = ax.imshow(grid_, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(aggs)):
        for j in range(len(cols)):
            if not np.isnan(grid_[i, j]):
                ax.text(j, i, f"{grid_[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid_[i, j] < 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(cols)), [a if a == CLEAN else f"{a} {f:g}" for a, f in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(aggs)), aggs)
    what = "main-task accuracy" if key == "accuracy" else "backdoor accuracy"
    over = f"mean of {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set_title(f"{what}\n({cfg.type}, {cfg.global_epochs} rounds, {over})", fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)
