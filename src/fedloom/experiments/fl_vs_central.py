"""FL vs centralized training (《联邦学习实战》 §3.6).

The book's centralized baseline is the same program with ``no_models 1, k 1`` and local epochs 1, 2, 3,
for the same number of rounds. Here the centralized runs hold every training row in one party and apply
its update in full (FedAvg of one client), since the book's λ would otherwise shrink the only update:
that is plain SGD over all the data, ``local_epochs`` passes per round, with the FL run's model, batch size,
learning rate and momentum. Centralized training is plain: none of the FL run's upload/download codecs,
``rate``/``prop``, secure aggregation, robust aggregator or simulated failures applies to it. The FL run is
the config as given.

The two do not do the same work: per round the FL run trains ``k`` clients on their shards, the centralized
run passes over all the rows. The table counts both (training samples processed, local optimizer steps
summed over clients; FL clients take theirs in parallel).
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data import load_data
from .common import (
    derive,
    finish_with_curves,
    one_client,
    plain_updates,
    render_with_curves,
    run_with_progress,
    work_done,
)
from .plots import plot_band_curves
from .seeds import cell, merge_rows, merge_seeds, seed_list

__all__ = ["run", "render"]

_KEYS = ("setting", "clients", "k", "local_epochs", "rounds")
_NUMBERS = ("final_accuracy", "final_loss", "best_accuracy", "samples_processed", "optimizer_steps", "train_seconds")


def _central_updates(cfg: Config, epochs: int, seed: int) -> dict:
    updates = plain_updates() | {"no_models": 1, "k": 1, "local_epochs": epochs, "seed": seed, "seeds": 1}
    updates["partition"] = {"method": "iid"}  # one party holds every row: nothing to partition
    if cfg.data is not None and cfg.data.clients:
        # the pooled rows are handed in (one_client); the section only has to stay valid for one party
        updates["data"] = {"clients": cfg.data.clients[:1]}
    return updates


def _plans(cfg: Config) -> list[tuple[Config, dict[int, Config]]]:
    """Every run's config, built (and validated) before anything trains."""
    epochs = sorted({1, 2, 3, cfg.local_epochs})
    return [
        (
            derive(cfg, {"seed": s, "seeds": 1}, f"fl-vs-central (seed {s})"),
            {e: derive(cfg, _central_updates(cfg, e, s), f"fl-vs-central (centralized, seed {s})") for e in epochs},
        )
        for s in seed_list(cfg)
    ]


def run(cfg: Config, out: Path, progress=None) -> dict:
    seeds = seed_list(cfg)
    per_seed, series = [], {}
    fl_label = f"FL ({cfg.no_models} clients, k={cfg.k}, local {cfg.local_epochs})"
    for fcfg, central in _plans(cfg):
        data = load_data(fcfg)
        fl = run_with_progress(fcfg, data, progress, f"FL k={cfg.k}/{cfg.no_models}, seed {fcfg.seed}")
        series.setdefault(fl_label, []).append(fl.rows)
        rows = [_row("federated", fcfg, fl, data)]
        central_data = one_client(data)
        for epochs, ccfg in central.items():
            res = run_with_progress(ccfg, central_data, progress, f"central, local {epochs}, seed {ccfg.seed}")
            series.setdefault(f"centralized, local {epochs}", []).append(res.rows)
            rows.append(_row("centralized", ccfg, res, central_data))
        per_seed.append(rows)
    results = merge_seeds(per_seed, _KEYS)
    out.mkdir(parents=True, exist_ok=True)
    fl_acc = merge_rows([{"a": rows[0]["final_accuracy"]} for rows in per_seed], ())
    central_at = next(r for r in results if r["setting"] == "centralized" and r["local_epochs"] == cfg.local_epochs)
    summary = {
        "experiment": "fl-vs-central",
        "fl_accuracy_mean": fl_acc["a_mean"],
        "fl_accuracy_std": fl_acc["a_std"],
        "fl_accuracy_per_seed": fl_acc["a_per_seed"],
        "central_accuracy_mean": central_at["final_accuracy_mean"],
        "central_accuracy_std": central_at["final_accuracy_std"],
        "central_accuracy_per_seed": central_at["final_accuracy_per_seed"],
        "rounds": cfg.global_epochs,
        "seed": cfg.seed,
        "seeds": seeds,
        "config": cfg.to_dict(),
        "results": results,
    }
    return finish_with_curves(out, cfg, summary, series, _figures, _table)


def render(folder: Path, summary: dict) -> list[Path]:
    """Redraw the figure and rewrite ``table.md`` from the folder's ``summary.json`` and ``curves.json``."""
    return render_with_curves(folder, summary, _figures, _table)


def _figures(out: Path, cfg: Config, summary: dict, series: dict) -> list[Path]:
    title = f"FL vs centralized ({cfg.type}, {cfg.model_name})"
    return [plot_band_curves(series, out / "figures" / "fl_vs_central.png", title, len(summary["seeds"]))]


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes."""
    seeds = summary["seeds"]
    table = [{**{k: r[k] for k in _KEYS}, **{n: cell(r, n) for n in _NUMBERS}} for r in summary["results"]]
    notes = (
        f"Mean ± sample std over seeds {seeds[0]}–{seeds[-1]} ({len(seeds)})."
        * (len(seeds) > 1)
        + " samples_processed: training rows passed through the model over the run (local_epochs × rows of every"
        " client that trained, summed over rounds); optimizer_steps: local SGD steps summed over those clients"
        " (FL clients take theirs in parallel). Centralized runs are plain: no codec, secure aggregation or"
        " simulated failure of the FL config applies to them."
    )
    title = f"FL vs centralized: {cfg.type}, {cfg.model_name}, " + (
        f"seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    )
    return table, [*_KEYS, *_NUMBERS], title, notes.strip()


def _row(setting: str, cfg: Config, res, data) -> dict:
    s = res.summary
    samples, steps = work_done(res, data, cfg)
    return {
        "setting": setting,
        "clients": cfg.no_models,
        "k": cfg.k,
        "local_epochs": cfg.local_epochs,
        "rounds": s["rounds"],
        "final_accuracy": s["final_accuracy"],
        "final_loss": s["final_loss"],
        "best_accuracy": s["best_accuracy"],
        "samples_processed": samples,
        "optimizer_steps": steps,
        "train_seconds": s["train_seconds"],
        "curve": [r["accuracy"] for r in res.rows],
    }
