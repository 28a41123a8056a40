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
from ..report import new_figure, plot_curves, save_figure
from .common import run_with_progress, write_outputs

__all__ = ["run", "DEFAULT_SWEEP", "pareto_front"]

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


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both axes (fewer upload bytes and higher accuracy)."""
    return [
        r
        for r in rows
        if not any(
            o["bytes_up"] <= r["bytes_up"]
            and o["accuracy"] >= r["accuracy"]
            and (o["bytes_up"] < r["bytes_up"] or o["accuracy"] > r["accuracy"])
            for o in rows
        )
    ]


def run(cfg: Config, out: Path, progress=None) -> dict:
    data = load_data(cfg)
    methods = list(dict.fromkeys([BASELINE, *(cfg.sweep or DEFAULT_SWEEP)]))  # baseline first, no repeats
    base = cfg.model_copy(update={"rate": None, "prop": None, "sweep": None})
    results, curves = [], {}
    for method in methods:
        mcfg = base.model_copy(update={"compression": base.compression.model_copy(update={"up": method})})
        res = run_with_progress(mcfg, data, progress, method)
        s = res.summary
        curves[method] = res.rows
        results.append(
            {
                "method": method,
                "accuracy": s["final_accuracy"],
                "loss": s["final_loss"],
                "bytes_up": s["bytes_up"],
                "bytes_down": s["bytes_down"],
                "train_seconds": s["train_seconds"],
            }
        )
    fp32 = results[0]["bytes_up"]
    for r in results:
        r["ratio_up"] = fp32 / r["bytes_up"] if r["bytes_up"] else float("inf")
        r["delta_points"] = 100 * (r["accuracy"] - results[0]["accuracy"])
    front = {r["method"] for r in pareto_front(results)}
    for r in results:
        r["pareto"] = r["method"] in front
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "figures" / "accuracy_per_round.png", f"compression ({cfg.type}, {cfg.model_name})")
    _plot_tradeoff(results, out / "figures" / "accuracy_vs_bytes.png", cfg)
    best = max((r for r in results if r["delta_points"] >= -1.0), key=lambda r: r["ratio_up"])
    summary = {
        "experiment": "compression",
        "baseline_accuracy": results[0]["accuracy"],
        "best_ratio_within_1_point": {
            "method": best["method"],
            "ratio_up": best["ratio_up"],
            "delta_points": best["delta_points"],
        },
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "results": results,
    }
    columns = ["method", "accuracy", "delta_points", "loss", "bytes_up", "ratio_up", "bytes_down", "pareto"]
    notes = (
        f"{cfg.no_models} clients, k={cfg.k}, {cfg.global_epochs} rounds; bytes are totals over the run. "
        f"Best upload saving within 1 point of fp32: {best['method']} ({best['ratio_up']:.1f}×, "
        f"{best['delta_points']:+.2f} points)."
    )
    return write_outputs(out, summary, results, columns, f"Update compression: {cfg.type}, {cfg.model_name}", notes)


def _plot_tradeoff(rows: list[dict], path: Path, cfg: Config) -> None:
    fig, ax = new_figure(figsize=(8, 5))
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["bytes_up"])
    ax.plot(
        [r["bytes_up"] for r in front],
        [r["accuracy"] for r in front],
        "-",
        color="#c62828",
        lw=1.2,
        label="Pareto front",
        zorder=1,
    )
    for i, r in enumerate(sorted(rows, key=lambda r: r["bytes_up"])):
        ax.scatter(r["bytes_up"], r["accuracy"], s=36, zorder=2, color="#c62828" if r["pareto"] else "#546e7a")
        # neighbours on the log axis are often close: alternate labels above and below their points
        ax.annotate(
            r["method"],
            (r["bytes_up"], r["accuracy"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 5 if i % 2 == 0 else -10),
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="total upload bytes over the run (log scale)",
        ylabel="final accuracy",
        title=f"accuracy vs upload bytes ({cfg.type}, {cfg.model_name}, {cfg.global_epochs} rounds)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)
