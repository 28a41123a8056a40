"""FL vs centralized training (《联邦学习实战》 §3.6).

The book's centralized baseline is the same program with ``no_models 1, k 1`` and local epochs 1, 2, 3,
for the same number of rounds. Here the centralized runs hold every training row in one party and apply
its update in full (FedAvg of one client), since the book's λ would otherwise shrink the only update:
that is plain SGD over all the data, ``local_epochs`` passes per round. The FL run is the config as given.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data import load_data
from ..report import plot_curves
from .common import one_client, run_with_progress, write_outputs

__all__ = ["run"]


def run(cfg: Config, out: Path, progress=None) -> dict:
    data = load_data(cfg)
    fl = run_with_progress(cfg, data, progress, f"FL k={cfg.k}/{cfg.no_models}")
    central_data = one_client(data)
    series = {f"FL ({cfg.no_models} clients, k={cfg.k}, local {cfg.local_epochs})": fl.rows}
    rows = [_row("federated", cfg.no_models, cfg.k, cfg.local_epochs, fl)]
    central_acc = None
    for epochs in sorted({1, 2, 3, cfg.local_epochs}):
        ccfg = cfg.model_copy(
            update={
                "no_models": 1,
                "k": 1,
                "local_epochs": epochs,
                "lambda_": None,
                "runtime": cfg.runtime.model_copy(update={"dropout": 0.0, "min_clients": 1}),
            }
        )
        res = run_with_progress(ccfg, central_data, progress, f"central, local {epochs}")
        series[f"centralized, local {epochs}"] = res.rows
        rows.append(_row("centralized", 1, 1, epochs, res))
        if epochs == cfg.local_epochs:
            central_acc = res.summary["final_accuracy"]
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(series, out / "figures" / "fl_vs_central.png", f"FL vs centralized ({cfg.type}, {cfg.model_name})")
    table = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
    summary = {
        "experiment": "fl-vs-central",
        "fl_accuracy": fl.summary["final_accuracy"],
        "central_accuracy": central_acc,
        "rounds": cfg.global_epochs,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "results": rows,
    }
    columns = [
        "setting",
        "clients",
        "k",
        "local_epochs",
        "rounds",
        "final_accuracy",
        "final_loss",
        "best_accuracy",
        "train_seconds",
    ]
    return write_outputs(
        out, summary, table, columns, f"FL vs centralized: {cfg.type}, {cfg.model_name}, seed {cfg.seed}"
    )


def _row(setting: str, clients: int, k: int, epochs: int, res) -> dict:
    s = res.summary
    return {
        "setting": setting,
        "clients": clients,
        "k": k,
        "local_epochs": epochs,
        "rounds": s["rounds"],
        "final_accuracy": s["final_accuracy"],
        "final_loss": s["final_loss"],
        "best_accuracy": s["best_accuracy"],
        "train_seconds": s["train_seconds"],
        "curve": [r["accuracy"] for r in res.rows],
    }
