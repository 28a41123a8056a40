"""Accuracy against the privacy budget ε: DP-FedAvg over a grid of noise multipliers and clip norms.

Every run is the same federation (data, partition, initial model, sampling, batch order per seed); only
``privacy.noise_multiplier`` σ and ``privacy.clip`` C change. A run without privacy (ε = ∞) and runs that
clip without noise (σ = 0, ε = ∞: what clipping alone costs) are the references. ε is the accountant's after
the last round (docs/privacy.md: client-level, the neighbouring relation of ``runtime.sampling``); it does not
depend on the seed. The grid is :data:`NOISE` × :data:`CLIPS` unless the config's own ``privacy`` section
sets σ (then that σ joins the grid) and C (then the clips are C/4, C, 4C).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import Config
from ..data import load_data
from ..report import new_figure, save_figure
from .common import (
    derive,
    finish_with_curves,
    plain_updates,
    refuse,
    render_with_curves,
    run_with_progress,
)
from .plots import plot_band_curves
from .seeds import cell, merge_seeds, seed_list

__all__ = ["run", "render", "NOISE", "CLIPS", "grid"]

NOISE = (0.0, 0.3, 0.6, 1.0, 2.0)
CLIPS = (0.1, 0.5, 2.0)
_KEYS = ("setting", "private")


def grid(cfg: Config) -> list[tuple[float | None, float | None]]:
    """(σ, C) of every run; (None, None) first: no privacy."""
    p = cfg.privacy
    noise = sorted(set(NOISE) | ({p.noise_multiplier} if p.noise_multiplier is not None else set()))
    clips = CLIPS if p.clip is None else (p.clip / 4, p.clip, p.clip * 4)
    return [(None, None)] + [(s, c) for c in clips for s in noise]


def _check(cfg: Config) -> None:
    where = "privacy"
    if cfg.privacy.target_epsilon is not None:
        refuse(where, "privacy.target_epsilon would be replaced by each run's noise multiplier; remove it")
    if cfg.privacy.max_epsilon is not None:
        refuse(where, "privacy.max_epsilon would stop some runs early and bias the curve; remove it")
    if cfg.secure.method != "none":
        refuse(where, "privacy cannot be combined with secure aggregation (docs/privacy.md); set secure.method: none")


def _label(sigma, clip) -> str:
    return "no privacy" if sigma is None else f"σ={sigma:g}, C={clip:g}"


def _plans(cfg: Config) -> list[list[Config]]:
    """Every run's config, [seeds][grid], validated before anything trains."""
    keep = {k: v for k, v in plain_updates().items() if k in ("compression", "rate", "prop", "sweep")}
    out = []
    for s in seed_list(cfg):
        row = []
        for sigma, clip in grid(cfg):
            priv = {"clip": clip, "noise_multiplier": sigma, "target_epsilon": None, "max_epsilon": None}
            row.append(
                derive(cfg, {**keep, "seed": s, "seeds": 1, "privacy": priv}, f"privacy ({_label(sigma, clip)})")
            )
        out.append(row)
    return out


def _one_seed(configs: list[Config], progress, curves: dict) -> list[dict]:
    data = load_data(configs[0])
    rows = []
    for c in configs:
        label = _label(c.privacy.noise_multiplier, c.privacy.clip)
        res = run_with_progress(c, data, progress, f"{label}, seed {c.seed}")
        curves.setdefault(label, []).append(res.rows)
        s = res.summary
        eps = s.get("epsilon")
        rows.append(
            {
                "setting": label,
                "private": bool(eps is not None and math.isfinite(eps)),
                "noise_multiplier": c.privacy.noise_multiplier,
                "clip": c.privacy.clip,
                "epsilon": eps if eps is not None and math.isfinite(eps) else None,
                "accuracy": s["final_accuracy"],
                "loss": s["final_loss"],
            }
        )
    return rows


def run(cfg: Config, out: Path, progress=None) -> dict:
    _check(cfg)
    seeds = seed_list(cfg)
    plans = _plans(cfg)
    curves: dict[str, list[list[dict]]] = {}
    results = merge_seeds([_one_seed(configs, progress, curves) for configs in plans], _KEYS)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": "privacy",
        "sampling": plans[0][-1].to_dict()["runtime"]["sampling"],
        "delta": cfg.privacy.delta,
        "seed": cfg.seed,
        "seeds": seeds,
        "config": cfg.to_dict(),
        "results": results,
    }
    return finish_with_curves(out, cfg, summary, curves, _figures, _table)


def render(folder: Path, summary: dict) -> list[Path]:
    """Redraw both figures and rewrite ``table.md`` from the folder's ``summary.json`` and ``curves.json``."""
    return render_with_curves(folder, summary, _figures, _table)


def _figures(out: Path, cfg: Config, summary: dict, curves: dict) -> list[Path]:
    seeds, title = len(summary["seeds"]), f"privacy ({cfg.type}, {cfg.model_name})"
    return [
        plot_band_curves(curves, out / "figures" / "accuracy_per_round.png", title, seeds),
        _plot_curve(summary["results"], out / "figures" / "accuracy_vs_epsilon.png", cfg, seeds),
    ]


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes."""
    seeds, accounting = summary["seeds"], summary["sampling"]
    numbers = ["epsilon", "accuracy", "loss"]
    table = [
        {"setting": r["setting"], **{n: cell(r, n) or "∞" for n in numbers[:1]}, **{n: cell(r, n) for n in numbers[1:]}}
        for r in summary["results"]
    ]
    spread = f"mean ± sample std over seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    notes = (
        f"{cfg.no_models} clients, k={cfg.k}, {cfg.global_epochs} rounds, {spread}. ε: client-level, δ = "
        f"{cfg.privacy.delta:g}, after the last round, runtime.sampling {accounting} (docs/privacy.md); ∞: no noise."
    )
    return table, ["setting", *numbers], f"Accuracy against ε: {cfg.type}", notes


def _plot_curve(rows: list[dict], path: Path, cfg: Config, seeds: int) -> Path:
    fig, ax = new_figure(figsize=(8, 5))
    base = rows[0]
    ax.axhline(base["accuracy_mean"], color="#37474f", ls="--", lw=1, label="no privacy")
    for clip in sorted({r["clip_mean"] for r in rows[1:]}):
        pts = sorted(
            (r for r in rows[1:] if r["clip_mean"] == clip and r["epsilon_mean"] is not None),
            key=lambda r: r["epsilon_mean"],
        )
        if not pts:
            continue
        errs = [r["accuracy_std"] if seeds > 1 else None for r in pts]
        ax.errorbar(
            [r["epsilon_mean"] for r in pts],
            [r["accuracy_mean"] for r in pts],
            yerr=None if seeds == 1 else errs,
            fmt="o-",
            ms=4,
            capsize=3,
            lw=1.2,
            label=f"C={clip:g}",
        )
        clip_only = [r for r in rows[1:] if r["clip_mean"] == clip and r["epsilon_mean"] is None]
        if clip_only:
            ax.axhline(clip_only[0]["accuracy_mean"], lw=0.8, ls=":", color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set(
        xlabel="ε after the last round (log scale; client-level)",
        ylabel=f"final accuracy ({spread})",
        title=f"accuracy vs ε ({cfg.type}, {cfg.model_name}, {cfg.global_epochs} rounds; dotted: clip only)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
