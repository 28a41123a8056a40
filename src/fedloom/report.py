"""Figures and ``report.md`` from a run directory's files (so ``fedloom report DIR`` can redo them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import FedloomError
from .runs import MARKER, load_run, read_json, write_text

__all__ = ["render_run", "plot_curves", "plot_label_mix", "markdown_table", "new_figure", "save_figure"]
__all__ += ["render_folder", "check_folder", "integer_ticks"]


_SUBPLOT_KEYS = {"sharex", "sharey", "squeeze", "subplot_kw", "gridspec_kw", "height_ratios", "width_ratios"}


def new_figure(*args, **kwargs):
    """``(figure, axes)`` as ``matplotlib.pyplot.subplots`` takes and returns them, without pyplot: a figure
    with its own Agg canvas (files only, no display, no global figure registry to close). Importing pyplot
    and its backend machinery was ~0.2 s of every run's start (issue 12)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sub = {k: kwargs.pop(k) for k in list(kwargs) if k in _SUBPLOT_KEYS}
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*args, **sub)


def save_figure(fig, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # written whole, then renamed
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def integer_ticks(ax) -> None:
    """Rounds and clients are counted in whole numbers: never a tick at 2.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(series: dict[str, list[dict]], path: Path, title: str, chance: float | None = None) -> Path:
    """Accuracy and loss per round, one line per named run (rows as in metrics.jsonl).

    Both y axes start at 0: a loss that moves from 1.1748 to 1.1710 is drawn flat, as it is, rather than
    auto-zoomed into what looks like a learning curve. ``chance`` (1/classes) is drawn as a dotted line."""
    many = len(series) > 6
    fig, (ax_acc, ax_loss) = new_figure(1, 2, figsize=(13 if many else 10, 4.5))
    cmap = __import__("matplotlib").colormaps["tab20" if len(series) > 10 else "tab10"]
    styles = ("-", "--", ":", "-.")
    top = 0.0
    for i, (label, rows) in enumerate(series.items()):
        rounds = [r["round"] for r in rows]
        # distinct colour per line; the line style changes every 10 lines so none are confused
        kw = {"color": cmap(i % cmap.N), "ls": styles[(i // 10) % len(styles)], "marker": "." if not many else None}
        losses = [_num(r.get("loss")) for r in rows]
        ax_acc.plot(rounds, [_num(r.get("accuracy")) for r in rows], label=label, **kw)
        ax_loss.plot(rounds, losses, label=label, **kw)
        top = max([top, *(v for v in losses if np.isfinite(v))])
    if chance is not None:
        ax_acc.axhline(chance, color="0.4", ls=":", lw=1, label=f"chance (1/{round(1 / chance)})")
    ax_acc.set(xlabel="round", ylabel="accuracy (eval set)", ylim=(0, 1.02), title=f"{title}: accuracy")
    ax_loss.set(xlabel="round", ylabel="mean cross-entropy (eval set)", title=f"{title}: loss")
    ax_loss.set_ylim(0, top * 1.05 if top > 0 else 1)  # from 0: no auto-zoom that exaggerates small changes
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        integer_ticks(ax)
    if len(series) > 1:
        if many:
            ax_loss.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
        else:
            ax_acc.legend(fontsize=8)
    elif chance is not None:
        ax_acc.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


_BARS_UP_TO = 300  # clients × classes: past this, one bar patch each is slow (1.1 s at 100 × 10): a heatmap
_SORT_FROM = 200  # clients: past this, the heatmap groups them by their most common label


def plot_label_mix(counts: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """How many rows of each label every client holds: stacked bars for a few clients, a heatmap of each
    client's label shares (with its size above) for many; 10 000 clients draw as fast as 10."""
    counts_arr = np.asarray(counts, dtype=np.float64)  # [clients, classes]
    if counts_arr.size <= _BARS_UP_TO:
        return _label_bars(counts_arr, classes, path, title)
    return _label_heatmap(counts_arr, classes, path, title)


def _label_bars(counts_arr: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
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
    else:
        integer_ticks(ax)
    ax.legend(title="label", fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_figure(fig, path)


def _plot_sizes(ax, sizes: np.ndarray, bins: int = 400) -> None:
    """Rows per client as one line; past ``bins`` clients, the mean of each bin and its min–max band."""
    n, high = len(sizes), max(float(sizes.max()), 1.0)
    if n <= bins:
        ax.plot(np.arange(n), sizes, lw=1.0, color="#37474f")
        ax.set_ylim(0, high * 1.08)
        return
    starts = np.linspace(0, n, bins, endpoint=False).astype(np.int64)  # bin edges in client order
    widths = np.diff(np.append(starts, n))
    centres = starts + (widths - 1) / 2
    ax.fill_between(
        centres, np.minimum.reduceat(sizes, starts), np.maximum.reduceat(sizes, starts), color="#b0bec5", lw=0,
        label="min–max",
    )  # fmt: skip
    ax.plot(
        centres, np.add.reduceat(sizes, starts) / widths, lw=1.0, color="#37474f", label=f"mean of ~{n // bins} clients"
    )
    ax.set_ylim(0, high * 1.45)  # room for the legend above the band
    ax.legend(fontsize=7, loc="upper right", ncols=2)


def _label_heatmap(counts_arr: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    n, c = counts_arr.shape
    sizes = counts_arr.sum(axis=1)  # [clients]
    share = counts_arr / np.maximum(sizes, 1)[:, None]  # [clients, classes], rows sum to 1
    xlabel = f"client (0 … {n - 1})"
    if n > _SORT_FROM:
        # more clients than pixels: in id order neighbours blur into one mean colour; grouped by their
        # most common label (most skewed first) the skew stays visible
        top = share.argmax(axis=1)
        order = np.lexsort((-share[np.arange(n), top], top))
        share, sizes = share[order], sizes[order]
        xlabel = f"{n} clients, grouped by their most common label"
    fig, (ax_n, ax_mix) = new_figure(
        2, 1, figsize=(10, 2.2 + 0.18 * min(c, 30)), sharex=True, height_ratios=[1, 3], layout="constrained"
    )
    _plot_sizes(ax_n, sizes)
    ax_n.set(ylabel="rows", title=title)
    ax_n.grid(alpha=0.3)
    # one image for all clients: [classes, clients]; smoothed when there are more clients than pixels
    im = ax_mix.imshow(
        share.T, aspect="auto", interpolation="antialiased", cmap="viridis", vmin=0, vmax=1,
        extent=(-0.5, n - 0.5, c - 0.5, -0.5),
    )  # fmt: skip
    ax_mix.set(xlabel=xlabel, ylabel="label")
    if c <= 30:
        ax_mix.set_yticks(np.arange(c), [str(x) for x in classes], fontsize=7 if c > 10 else 8)
    integer_ticks(ax_mix)
    fig.colorbar(im, ax=ax_mix, label="share of the client's rows", fraction=0.03, pad=0.01)
    return save_figure(fig, path, tight=False)


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


def check_folder(path: str | Path) -> Path:
    """``path`` as a run or experiment folder, or a FedloomError naming the folder."""
    d = Path(path)
    if not d.exists():
        raise FedloomError(f"{d}: no such folder")
    if not d.is_dir():
        raise FedloomError(f"{d}: not a folder (give a run or experiment folder)")
    if (d / MARKER).exists() or not (d / "summary.json").is_file():
        if (d / MARKER).exists() or (d / "metrics.jsonl").is_file():
            load_run(d)  # says why: an incomplete or interrupted run
        raise FedloomError(f"{d}: not a fedloom run or experiment folder (it has no summary.json)")
    return d


def render_folder(path: str | Path) -> list[Path]:
    """Re-render a run folder (figures, report.md) or an experiment folder (its own ``render``)."""
    d = check_folder(path)
    summary = read_json(d / "summary.json")
    if "experiment" not in summary:
        return render_run(d)
    import importlib

    name = str(summary["experiment"])
    # each experiment module may offer render(folder, summary) -> figure paths, redrawing from its files
    try:
        module = importlib.import_module(f".experiments.{name.replace('-', '_')}", __package__)
    except ImportError:
        module = None
    render = getattr(module, "render", None)
    if render is None:
        raise FedloomError(f"{d}: this version cannot re-render a '{name}' experiment folder; run it again")
    try:
        return render(d, summary)
    except (KeyError, TypeError, IndexError) as e:  # rows edited or from another version: one line, no traceback
        raise FedloomError(f"{d / 'summary.json'}: malformed '{name}' results ({type(e).__name__}: {e})") from None


def render_run(run_dir: str | Path) -> list[Path]:
    """(Re)write the figures and report.md of a ``fedloom run`` directory; returns the figure paths."""
    d = Path(run_dir)
    summary, cfg, rows = load_run(d)  # refuses an incomplete, mixed or malformed folder
    part_path = d / "partition.json"
    part = read_json(part_path) if part_path.is_file() else None
    if part is not None and not (isinstance(part.get("label_counts"), list) and isinstance(part.get("classes"), list)):
        raise FedloomError(f"{part_path}: expected 'classes' and 'label_counts' lists")
    num_classes = summary.get("num_classes") or (len(part["classes"]) if part else None)
    chance = 1 / num_classes if num_classes else None
    figs = [plot_curves({cfg["name"]: rows}, d / "figures" / "accuracy.png", cfg["name"], chance=chance)]
    if part is not None:
        title = f"label mix per client ({(cfg.get('partition') or {}).get('method', '?')})"
        if (cfg.get("data") or {}).get("clients"):
            title = "label mix per client (one file each)"
        elif cfg.get("type") == "synthetic":
            title = "label mix per client (synthetic: each client's own generator)"
        figs.append(plot_label_mix(part["label_counts"], part["classes"], d / "figures" / "partition.png", title))
    lines = [
        f"# fedloom run: {cfg['name']}",
        "",
        f"{cfg['type']} · {cfg['model_name']} · {cfg['no_models']} clients, k={cfg['k']} per round, "
        f"{cfg['global_epochs']} rounds × {cfg.get('local_epochs')} local epochs · seed {cfg.get('seed')}",
        "",
        *_notes_lines(summary, rows, num_classes, cfg),
        markdown_table(_metric_rows(summary)),
        *[f"![{f.stem}](figures/{f.name})" for f in figs],
        "",
        "## Rounds",
        "",
        markdown_table(
            rows, ["round", "accuracy", "loss", "train_loss", "bytes_up", "bytes_down", "seconds", "clients", "failed"]
        ),
    ]
    health = summary.get("health")
    if health:
        lines += ["## Client health", "", markdown_table([{"client": c, **h} for c, h in health.items()])]
    write_text(d / "report.md", "\n".join(lines))
    return figs


def _notes_lines(summary: dict, rows: list[dict], num_classes: int | None, cfg: dict) -> list[str]:
    from .notes import encryption_line, run_notes

    enc = encryption_line(cfg)
    lines = [f"**Encrypted:** {enc}", ""] if enc else []
    notes = run_notes(summary, rows, num_classes)
    for note in notes:  # one blockquote each (adjacent ">" lines would merge into one paragraph)
        lines += [f"> **Note:** {note}", ""]
    return lines


def _metric_rows(summary: dict) -> list[dict]:
    """summary.json as metric/value rows; best_accuracy carries its small-eval-set caveat beside it."""
    from .notes import eval_step_caveat

    caveat = eval_step_caveat(summary.get("eval_samples"), short=True)
    out = []
    for k, v in summary.items():
        if isinstance(v, (dict, list)) or k == "encrypted":  # encrypted: the line above the table
            continue
        if k == "best_accuracy" and caveat and isinstance(v, float):
            v = f"{v:.4f} ({caveat})"
        out.append({"metric": k, "value": v})
    return out
