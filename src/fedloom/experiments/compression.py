"""What compressing the uploads does to accuracy, and how many bytes it saves (the seed's 2nd experiment).

Every method runs the same federation (same data, partition, initial model, sampling, batch order), only
the upload codec differs. Bytes are the lengths of the real payloads; ``ratio_up`` is fp32's upload bytes
over the method's. The book compares its 15.3 layer selection (``layers:<rate>``) and 15.5 fixed mask
(``mask:<prop>``) without counting bytes; they are in the default sweep with their real sizes.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data import load_data
from ..report import new_figure, save_figure
from .common import (
    derive,
    finish_with_curves,
    refuse,
    render_with_curves,
    run_with_progress,
)
from .plots import place_labels, plot_band_curves
from .seeds import cell, merge_seeds, seed_list

__all__ = ["run", "render", "DEFAULT_SWEEP", "pareto_front", "best_within_1_point"]

DEFAULT_SWEEP = (
    "none",
    "fp16",
    "q8",
    "q4",
    "q2",
    "sign+ef",
    "topk:0.1",
    "topk:0.1+ef",
    "topk:0.01",
    "topk:0.01+ef",
    "topk:0.001",
    "topk:0.001+ef",
    "topk:0.01+q8+ef",
    "topk:0.01+q4+ef",
    "mask:0.5",
    "layers:0.9",
)
BASELINE = "none"


def pareto_front(rows: list[dict], acc: str = "accuracy", size: str = "bytes_up") -> list[dict]:
    """Rows no other row beats on both axes (fewer upload bytes and higher accuracy)."""
    return [
        r
        for r in rows
        if not any(o[size] <= r[size] and o[acc] >= r[acc] and (o[size] < r[size] or o[acc] > r[acc]) for o in rows)
    ]


def best_within_1_point(rows: list[dict]) -> dict:
    """The largest mean upload saving whose mean accuracy is at most 1 point below fp32's (the baseline
    always qualifies); means, not one seed: between seeds the differences move by several points."""
    return max((r for r in rows if r["delta_points_mean"] >= -1.0), key=lambda r: r["ratio_up_mean"])


def _check(cfg: Config) -> list[str]:
    """The methods to compare; settings the sweep would silently override are refused up front."""
    where = "compression"
    if cfg.sweep is not None and not cfg.sweep:
        refuse(where, "sweep is empty; list upload codecs (e.g. [q8, topk:0.01+ef]) or remove sweep for the default")
    if cfg.secure.method != "none":
        refuse(
            where,
            f"secure.method is '{cfg.secure.method}', but secure aggregation cannot be combined with an upload "
            "codec; set secure.method: none (`experiment he` compares the secure methods)",
        )
    if cfg.upload_codec != "none":
        key = "rate" if cfg.rate is not None else "prop" if cfg.prop is not None else "compression.up"
        refuse(where, f"{key} sets the upload codec '{cfg.upload_codec}', which each run of the sweep replaces; "
               f"remove {key} and list '{cfg.upload_codec}' in sweep")  # fmt: skip
    if cfg.compression.error_feedback:
        refuse(where, "compression.error_feedback would add error feedback to every codec of the sweep; "
               "remove it and write +ef on the sweep's codecs instead")  # fmt: skip
    return list(dict.fromkeys([BASELINE, *(cfg.sweep or DEFAULT_SWEEP)]))  # baseline first, no repeats


def _plans(cfg: Config, methods: list[str]) -> list[list[Config]]:
    """Every run's config, [seeds][methods], validated before anything trains."""
    return [
        [
            derive(
                cfg, {"seed": s, "seeds": 1, "sweep": None, "compression": {"up": m}}, f"compression ({m}, seed {s})"
            )
            for m in methods
        ]
        for s in seed_list(cfg)
    ]


def _one_seed(configs: list[Config], progress, curves: dict) -> list[dict]:
    data = load_data(configs[0])
    rows = []
    for mcfg in configs:
        method = mcfg.compression.up
        res = run_with_progress(mcfg, data, progress, f"{method}, seed {mcfg.seed}")
        curves.setdefault(method, []).append(res.rows)
        s = res.summary
        rows.append(
            {
                "method": method,
                "accuracy": s["final_accuracy"],
                "loss": s["final_loss"],
                "bytes_up": s["bytes_up"],
                "bytes_down": s["bytes_down"],
                "train_seconds": s["train_seconds"],
            }
        )
    for r in rows:  # against this seed's fp32 run: paired differences
        r["ratio_up"] = rows[0]["bytes_up"] / r["bytes_up"] if r["bytes_up"] else float("inf")
        r["delta_points"] = 100 * (r["accuracy"] - rows[0]["accuracy"])
    return rows


def run(cfg: Config, out: Path, progress=None) -> dict:
    methods = _check(cfg)
    seeds = seed_list(cfg)
    plans = _plans(cfg, methods)
    curves: dict[str, list[list[dict]]] = {}
    results = merge_seeds([_one_seed(configs, progress, curves) for configs in plans], ("method",))
    front = {r["method"] for r in pareto_front(results, "accuracy_mean", "bytes_up_mean")}
    for r in results:
        r["pareto"] = r["method"] in front
    out.mkdir(parents=True, exist_ok=True)
    best = best_within_1_point(results)
    summary = {
        "experiment": "compression",
        "baseline_accuracy_mean": results[0]["accuracy_mean"],
        "baseline_accuracy_std": results[0]["accuracy_std"],
        "baseline_accuracy_per_seed": results[0]["accuracy_per_seed"],
        "best_ratio_within_1_point": {
            "method": best["method"],
            "ratio_up_mean": best["ratio_up_mean"],
            "delta_points_mean": best["delta_points_mean"],
            "delta_points_std": best["delta_points_std"],
        },
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
    seeds, title = len(summary["seeds"]), f"compression ({cfg.type}, {cfg.model_name})"
    return [
        plot_band_curves(curves, out / "figures" / "accuracy_per_round.png", title, seeds),
        _plot_tradeoff(summary["results"], out / "figures" / "accuracy_vs_bytes.png", cfg, seeds),
    ]


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes."""
    seeds, results = summary["seeds"], summary["results"]
    best = best_within_1_point(results)
    numbers = ["accuracy", "delta_points", "loss", "bytes_up", "ratio_up", "bytes_down"]
    table = [{"method": r["method"], **{n: cell(r, n) for n in numbers}, "pareto": r["pareto"]} for r in results]
    spread = f"mean ± sample std over seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    std = f" ± {best['delta_points_std']:.2f}" if best["delta_points_std"] is not None else ""
    notes = (
        f"{cfg.no_models} clients, k={cfg.k}, {cfg.global_epochs} rounds, {spread}; bytes are totals over the run; "
        "delta_points is each seed's difference from its own fp32 run. "
        f"Best upload saving within 1 point of fp32 (by the mean): {best['method']} "
        f"({best['ratio_up_mean']:.1f}×, {best['delta_points_mean']:+.2f}{std} points)."
    )
    title = f"Update compression: {cfg.type}, {cfg.model_name}"
    return table, ["method", *numbers, "pareto"], title, notes


def _plot_tradeoff(rows: list[dict], path: Path, cfg: Config, seeds: int) -> Path:
    fig, ax = new_figure(figsize=(9, 5.5))
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["bytes_up_mean"])
    x = lambda r: r["bytes_up_mean"]  # noqa: E731
    y = lambda r: r["accuracy_mean"]  # noqa: E731
    ax.plot([x(r) for r in front], [y(r) for r in front], "-", color="#c62828", lw=1.2, label="Pareto front (means)")
    for r in rows:
        color = "#c62828" if r["pareto"] else "#546e7a"
        ax.errorbar(x(r), y(r), yerr=r["accuracy_std"] if seeds > 1 else None, fmt="o", ms=5, color=color,
                    capsize=3, lw=1, zorder=2)  # fmt: skip
    ax.set_xscale("log")
    lo, hi = min(x(r) for r in rows), max(x(r) for r in rows)
    ax.set_xlim(lo / 3, hi * 3)  # room for labels left and right of the extreme points
    errs = [(r["accuracy_std"] or 0.0) if seeds > 1 else 0.0 for r in rows]
    lo_y, hi_y = min(y(r) - e for r, e in zip(rows, errs)), max(y(r) + e for r, e in zip(rows, errs))
    pad = max(0.02, (hi_y - lo_y) * 0.12)
    ax.set_ylim(max(0.0, lo_y - pad), min(1.05, hi_y + pad))
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set(
        xlabel="total upload bytes over the run (log scale)",
        ylabel=f"final accuracy ({spread})",
        title=f"accuracy vs upload bytes ({cfg.type}, {cfg.model_name}, {cfg.global_epochs} rounds)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()  # final layout first: labels are placed in screen space
    order = sorted(range(len(rows)), key=lambda i: -y(rows[i]))
    place_labels(
        ax, [x(rows[i]) for i in order], [y(rows[i]) for i in order], [rows[i]["method"] for i in order],
        yerr=[errs[i] for i in order], line=([x(r) for r in front], [y(r) for r in front]),
    )  # fmt: skip
    return save_figure(fig, path)
