"""Figures and ``report.md`` from a run directory's files (so ``fedloom report DIR`` can redo them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import FedloomError
from .runs import load_run, read_json, write_text

__all__ = ["render_run", "plot_curves", "plot_label_mix", "markdown_table", "new_figure", "save_figure"]


def new_figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # written whole, then renamed
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_curves(series: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Accuracy and loss per round, one line per named run (rows as in metrics.jsonl)."""
    many = len(series) > 6
    fig, (ax_acc, ax_loss) = new_figure(1, 2, figsize=(13 if many else 10, 4.5))
    cmap = __import__("matplotlib").colormaps["tab20" if len(series) > 10 else "tab10"]
    styles = ("-", "--", ":", "-.")
    for i, (label, rows) in enumerate(series.items()):
        rounds = [r["round"] for r in rows]
        # distinct colour per line; the line style changes every 10 lines so none are confused
        kw = {"color": cmap(i % cmap.N), "ls": styles[(i // 10) % len(styles)], "marker": "." if not many else None}
        ax_acc.plot(rounds, [r["accuracy"] for r in rows], label=label, **kw)
        ax_loss.plot(rounds, [r["loss"] for r in rows], label=label, **kw)
    ax_acc.set(xlabel="round", ylabel="accuracy (eval set)", ylim=(0, 1.02), title=f"{title}: accuracy")
    ax_loss.set(xlabel="round", ylabel="mean cross-entropy (eval set)", title=f"{title}: loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    if len(series) > 1:
        if many:
            ax_loss.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
        else:
            ax_acc.legend(fontsize=8)
    return save_figure(fig, path)


def plot_label_mix(counts: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Stacked bars: how many rows of each label every client holds."""
    counts_arr = np.asarray(counts)  # [clients, classes]
    clients = np.arange(counts_arr.shape[0])
    fig, ax = new_figure(figsize=(max(6, 0.35 * len(clients) + 3), 4))
    bottom = np.zeros(len(clients))
    cmap = __import__("matplotlib").colormaps["tab20" if len(classes) > 10 else "tab10"]
    for j, name in enumerate(classes):
        ax.bar(clients, counts_arr[:, j], bottom=bottom, label=name, color=cmap(j % cmap.N), width=0.85)
        bottom += counts_arr[:, j]
    ax.set(xlabel="client", ylabel="training rows", title=title)
    if len(clients) <= 40:
        ax.set_xticks(clients)
    ax.legend(title="label", fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_figure(fig, path)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub markdown table; floats in (0, 1] as 4 decimals, others with 4 significant digits."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) <= 1 else (f"{v:.2f}" if abs(v) < 1e4 else f"{v:.4g}")
        if isinstance(v, (list, dict)):
            return json.dumps(v)
        return "" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def render_run(run_dir: str | Path) -> list[Path]:
    """(Re)write the figures and report.md of a ``fedloom run`` directory; returns the figure paths."""
    d = Path(run_dir)
    summary, cfg, rows = load_run(d)  # refuses an incomplete, mixed or malformed folder
    figs = [plot_curves({cfg["name"]: rows}, d / "figures" / "accuracy.png", cfg["name"])]
    part = d / "partition.json"
    if part.is_file():
        p = read_json(part)
        if not isinstance(p.get("label_counts"), list) or not isinstance(p.get("classes"), list):
            raise FedloomError(f"{part}: expected 'classes' and 'label_counts' lists")
        title = (
            f"label mix per client ({(cfg.get('partition') or {}).get('method', '?')})"
            if not (cfg.get("data") or {}).get("clients")
            else "label mix per client (one file each)"
        )
        figs.append(plot_label_mix(p["label_counts"], p["classes"], d / "figures" / "partition.png", title))
    lines = [
        f"# fedloom run: {cfg['name']}",
        "",
        f"{cfg['type']} · {cfg['model_name']} · {cfg['no_models']} clients, k={cfg['k']} per round, "
        f"{cfg['global_epochs']} rounds × {cfg.get('local_epochs')} local epochs · seed {cfg.get('seed')}",
        "",
        markdown_table([{"metric": k, "value": v} for k, v in summary.items() if not isinstance(v, (dict, list))]),
        *[f"![{f.stem}](figures/{f.name})" for f in figs],
        "",
        "## Rounds",
        "",
        markdown_table(
            rows,
            [
                "round",
                "accuracy",
                "loss",
                "train_loss",
                "bytes_up",
                "bytes_down",
                "seconds",
                "clients",
                "failed",
            ],
        ),
    ]
    health = summary.get("health")
    if health:
        lines += ["## Client health", "", markdown_table([{"client": c, **h} for c, h in health.items()])]
    write_text(d / "report.md", "\n".join(lines))
    return figs
