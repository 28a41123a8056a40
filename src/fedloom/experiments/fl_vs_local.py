"""The FL model vs models each party trains alone (《联邦学习实战》 §3.7).

Each client trains from the same initial model on its own rows only, for as many passes over its data as
it makes in the whole FL run (``global_epochs × local_epochs``), and is evaluated on the common eval set.
The FL model is trained at the configured ``k`` and at about half of it (the book used k 3 and 6 of 10).
All single-party models train as one cohort call of the engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config
from ..data import load_data
from ..report import new_figure, save_figure
from ..simulation import Federation
from ..training import LocalSpec
from .common import run_with_progress, write_outputs

__all__ = ["run"]

_LOCAL_ROUND = 0  # rounds of FL start at 1: round 0 names the single-party runs' RNG streams


def run(cfg: Config, out: Path, progress=None) -> dict:
    data = load_data(cfg)
    half = max(1, round(cfg.k / 2))
    fl = run_with_progress(cfg, data, progress, f"FL k={cfg.k}")
    fl_half = run_with_progress(
        cfg.model_copy(
            update={
                "k": half,
                "runtime": cfg.runtime.model_copy(update={"min_clients": min(cfg.runtime.min_clients, half)}),
            }
        ),
        data,
        progress,
        f"FL k={half}",
    )

    fed = Federation.build(cfg, data)
    init = fed.server.global_vec
    spec = LocalSpec(cfg.global_epochs * cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
    task = progress.task("single-party models", 1) if progress else None
    alone = fed.engine.train(fed.model, init, data, list(range(cfg.no_models)), spec, cfg.seed, _LOCAL_ROUND)
    rows = []
    for cid, diff, n in zip(alone.clients, alone.diffs, alone.num_samples):
        acc, loss = fed.server.evaluate(init + diff)
        rows.append(
            {
                "client": cid,
                "samples": int(n),
                "local_accuracy": acc,
                "local_loss": loss,
                f"fl_k{cfg.k}_accuracy": fl.summary["final_accuracy"],
                f"fl_k{half}_accuracy": fl_half.summary["final_accuracy"],
            }
        )
    if progress:
        progress.update(task, {"accuracy": float(np.mean([r["local_accuracy"] for r in rows])), "loss": float("nan")})
    out.mkdir(parents=True, exist_ok=True)
    _plot(rows, cfg, half, out / "figures" / "fl_vs_local.png")
    local_mean = float(np.mean([r["local_accuracy"] for r in rows]))
    summary = {
        "experiment": "fl-vs-local",
        "fl_accuracy": fl.summary["final_accuracy"],
        "fl_half_k": half,
        "fl_half_accuracy": fl_half.summary["final_accuracy"],
        "local_accuracy_mean": local_mean,
        "local_accuracy_min": min(r["local_accuracy"] for r in rows),
        "local_accuracy_max": max(r["local_accuracy"] for r in rows),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "results": rows,
    }
    notes = (
        f"FL (k={cfg.k}) {fl.summary['final_accuracy']:.4f} · FL (k={half}) "
        f"{fl_half.summary['final_accuracy']:.4f} · single-party mean {local_mean:.4f}"
    )
    return write_outputs(
        out,
        summary,
        rows,
        list(rows[0]),
        f"FL model vs single-party models: {cfg.type}, "
        f"{cfg.model_name}, {cfg.partition.method} partition, seed {cfg.seed}",
        notes,
    )


def _plot(rows: list[dict], cfg: Config, half: int, path: Path) -> None:
    clients = np.arange(len(rows))
    width = 0.27
    fig, ax = new_figure(figsize=(max(7, 0.6 * len(rows) + 3), 4.2))
    bars = [
        ("trained alone", "local_accuracy", "#9e9e9e"),
        (f"FL, k={half}", f"fl_k{half}_accuracy", "#64b5f6"),
        (f"FL, k={cfg.k}", f"fl_k{cfg.k}_accuracy", "#1565c0"),
    ]
    for i, (label, key, color) in enumerate(bars):
        ax.bar(clients + (i - 1) * width, [r[key] for r in rows], width, label=label, color=color)
    ax.set_xticks(clients, [str(r["client"]) for r in rows])
    ax.set(
        xlabel="client (party)",
        ylabel="accuracy on the common eval set",
        ylim=(0, 1.05),
        title=f"FL model vs single-party models ({cfg.type}, {cfg.partition.method} partition)",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # outside: never hides a bar
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
