"""The FL model vs models each party trains alone (《联邦学习实战》 §3.7).

Each client trains from the same initial model on its own rows only, for as many passes over its data as
it makes in the whole FL run (``global_epochs × local_epochs``), and is evaluated on the common eval set.
The FL model is trained at the configured ``k`` and at half of it rounded up, ``⌈k/2⌉`` (the book used
k 3 and 6 of 10; k 5 gives 3); with ``k = 1`` there is no smaller k and only one FL run.
All single-party models train as one cohort call of the engine, with plain SGD (no codec: nothing travels).

Over several seeds the partition changes with the seed, so "client c" is the c-th party of each seed's
partition; its row's numbers are mean ± std over those parties.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import Config
from ..data import load_data
from ..errors import FedloomError
from ..simulation import Federation
from ..training import LocalSpec
from .common import (
    as_written,
    derive,
    partition_label,
    plain_updates,
    render_config,
    run_with_progress,
    write_outputs,
    write_table,
)
from .plots import band
from .seeds import cell, merge_seeds, seed_list

__all__ = ["run", "render", "half_k"]

_LOCAL_ROUND = 0  # rounds of FL start at 1: round 0 names the single-party runs' RNG streams


def half_k(k: int) -> int:
    """The smaller cohort: ``⌈k/2⌉`` (Python's round(2.5) is 2, which would make k 5 into 2)."""
    return math.ceil(k / 2)


def _plans(cfg: Config, half: int) -> list[dict[str, Config]]:
    """Every seed's configs (FL at k, FL at ⌈k/2⌉, the plain one for single-party training), validated first."""
    plans = []
    for s in seed_list(cfg):
        where = f"fl-vs-local (seed {s})"
        plan = {"fl": derive(cfg, {"seed": s, "seeds": 1}, where)}
        if half < cfg.k:
            min_clients = min(cfg.runtime.min_clients, half)
            plan["half"] = derive(
                cfg, {"seed": s, "seeds": 1, "k": half, "runtime": {"min_clients": min_clients}}, where
            )
        plan["alone"] = derive(cfg, plain_updates() | {"seed": s, "seeds": 1}, where)
        plans.append(plan)
    return plans


def run(cfg: Config, out: Path, progress=None) -> dict:
    half = half_k(cfg.k)
    seeds = seed_list(cfg)
    per_client, per_setting = [], []
    for plan in _plans(cfg, half):
        clients, settings = _one_seed(plan, half, progress)
        per_client.append(clients)
        per_setting.append(settings)
    results = merge_seeds(per_client, ("client",))
    settings = merge_seeds(per_setting, ("setting",))
    out.mkdir(parents=True, exist_ok=True)
    by = {r["setting"]: r for r in settings}
    summary = {
        "experiment": "fl-vs-local",
        "fl_half_k": half if half < cfg.k else None,
        **{f"{n}_accuracy_{stat}": by[n][f"accuracy_{stat}"] for n in by for stat in ("mean", "std", "per_seed")},
        "seed": cfg.seed,
        "seeds": seeds,
        "config": cfg.to_dict(),
        "settings": settings,
        "results": results,
    }
    summary = as_written(summary)  # drawn from the numbers as summary.json holds them, as `fedloom report` does
    _figures(out, cfg, summary)
    return write_outputs(out, summary, *_table(cfg, summary))


def render(folder: Path, summary: dict) -> list[Path]:
    """Redraw the figure and rewrite ``table.md`` from the folder's ``summary.json``."""
    cfg = render_config(folder, summary)
    if not isinstance(summary.get("settings"), list) or not summary["settings"]:
        raise FedloomError(f"{folder / 'summary.json'}: expected 'settings', the FL and single-party rows")
    figures = _figures(folder, cfg, summary)
    write_table(folder, *_table(cfg, summary))
    return figures


def _figures(out: Path, cfg: Config, summary: dict) -> list[Path]:
    path = out / "figures" / "fl_vs_local.png"
    return [_plot(summary["results"], summary["settings"], cfg, len(summary["seeds"]), path)]


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes (the per-client table)."""
    seeds, results, half = summary["seeds"], summary["results"], half_k(cfg.k)
    spread = f"mean ± sample std over seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    table1 = [
        {"setting": _LABELS[r["setting"]](cfg.k, half), "accuracy": cell(r, "accuracy")} for r in summary["settings"]
    ]
    numbers = [c for c in results[0] if c.endswith("_mean")]
    table2 = [{"client": r["client"], **{n[:-5]: cell(r, n[:-5]) for n in numbers}} for r in results]
    from ..report import markdown_table

    notes = f"## Per client ({spread})\n\n{markdown_table(table2)}"
    title = f"FL model vs single-party models: {cfg.type}, {cfg.model_name}, {partition_label(cfg)}, {spread}"
    return table1, ["setting", "accuracy"], title, notes


_LABELS = {
    "fl": lambda k, half: f"FL, k={k}",
    "fl_half": lambda k, half: f"FL, k={half} (⌈k/2⌉)",
    "local_mean": lambda k, half: "trained alone: mean over clients",
    "local_min": lambda k, half: "trained alone: worst client",
    "local_max": lambda k, half: "trained alone: best client",
}


def _one_seed(plan: dict[str, Config], half: int, progress) -> tuple[list[dict], list[dict]]:
    cfg = plan["fl"]
    data = load_data(cfg)
    fl = run_with_progress(cfg, data, progress, f"FL k={cfg.k}, seed {cfg.seed}")
    fl_half = (
        run_with_progress(plan["half"], data, progress, f"FL k={half}, seed {cfg.seed}") if "half" in plan else None
    )
    fed = Federation.build(plan["alone"], data)
    init = fed.server.global_vec
    spec = LocalSpec(cfg.global_epochs * cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
    task = progress.task(f"single-party models, seed {cfg.seed}", 1) if progress else None
    alone = fed.engine.train(fed.model, init, data, list(range(cfg.no_models)), spec, cfg.seed, _LOCAL_ROUND)
    rows = []
    for cid, diff, n in zip(alone.clients, alone.diffs, alone.num_samples):
        acc, loss = fed.server.evaluate(init + diff)
        rows.append({"client": cid, "samples": int(n), "local_accuracy": acc, "local_loss": loss})
    local = [r["local_accuracy"] for r in rows]
    if progress:
        progress.update(task, {"accuracy": float(np.mean(local)), "loss": float("nan")})
    settings = [{"setting": "fl", "accuracy": fl.summary["final_accuracy"]}]
    if fl_half is not None:
        settings.append({"setting": "fl_half", "accuracy": fl_half.summary["final_accuracy"]})
    settings += [
        {"setting": "local_mean", "accuracy": float(np.mean(local))},
        {"setting": "local_min", "accuracy": min(local)},
        {"setting": "local_max", "accuracy": max(local)},
    ]
    return rows, settings


def _plot(results: list[dict], settings: list[dict], cfg: Config, seeds: int, path: Path) -> Path:
    """Bars: each client's model trained alone (± std over seeds); lines and bands: the FL models."""
    from ..report import new_figure, save_figure

    clients = np.arange(len(results))
    fig, ax = new_figure(figsize=(max(8, 0.6 * len(results) + 4), 4.4))
    std = [r["local_accuracy_std"] or 0.0 for r in results]
    ax.bar(clients, [r["local_accuracy_mean"] for r in results], 0.6, yerr=std if seeds > 1 else None,
           capsize=3, color="#9e9e9e", label="trained alone")  # fmt: skip
    half = half_k(cfg.k)
    colors = {"fl": "#1565c0", "fl_half": "#64b5f6"}
    xs = np.array([-0.5, len(results) - 0.5])
    for r in settings:
        if r["setting"] in colors:
            vals = np.array([[v, v] for v in r["accuracy_per_seed"]])  # [seeds, 2]: a flat line per seed
            band(ax, xs, vals, _LABELS[r["setting"]](cfg.k, half), colors[r["setting"]], ls="--", bounds=(0.0, 1.0))
    ax.set_xticks(clients, [str(r["client"]) for r in results])
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set(
        xlabel="client (party)",
        ylabel="accuracy on the common eval set",
        ylim=(0, 1.05),
        xlim=(xs[0], xs[1]),
        title=f"FL model vs single-party models ({cfg.type}, {partition_label(cfg)}, {spread})",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # outside: never hides a bar
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
