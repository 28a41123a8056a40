"""Figures of a run: accuracy and loss curves, and each client's label mix (drawn for ``report.md``).

Drawn with matplotlib's object API (a ``Figure`` with its own Agg canvas, no pyplot). This module imports
neither torch nor fedloom's run machinery, so that :class:`FigureWorker` can draw in a second process:
``fedloom run`` starts one while it imports torch and trains (matplotlib's import, ~0.3 s, then runs on
the other core instead of after the training), and hands it the finished run's figures. Without a free
core (:func:`fedloom.cpuload.others_running`), or when the worker fails in any way, the figures are
drawn in this process, as ``fedloom report`` always does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["new_figure", "save_figure", "integer_ticks", "plot_curves", "plot_label_mix", "draw", "FigureWorker"]
__all__ += ["start_worker", "stop_worker"]

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


# ------------------------------------------------------------------------------------------ drawing elsewhere
_DRAWERS = {"plot_curves": plot_curves, "plot_label_mix": plot_label_mix}
_WORKER_TIMEOUT = 300.0  # seconds a worker may take for a run's figures before they are drawn here instead
_WORKER: list[FigureWorker | None] = [None]  # the worker `fedloom run` started, until its figures are drawn


def draw(jobs: list[tuple[str, dict]], drawers: dict | None = None) -> list[Path]:
    """Draw ``jobs`` (name of a drawing function, its keyword arguments): in the worker started by
    :func:`start_worker` (one batch, then it is gone), else, or if it fails, in this process with ``drawers``
    (name → function; default this module's)."""
    worker, _WORKER[0] = _WORKER[0], None
    paths = worker.draw(jobs) if worker is not None else None
    if paths is None:
        paths = [(drawers or _DRAWERS)[name](**kwargs) for name, kwargs in jobs]
    return paths


def start_worker() -> FigureWorker | None:
    """Start a figure worker for this process's next :func:`draw`, when a core is free for it."""
    stop_worker()
    _WORKER[0] = FigureWorker.start()
    return _WORKER[0]


def stop_worker() -> None:
    """End an unused worker (a run that failed before its figures)."""
    worker, _WORKER[0] = _WORKER[0], None
    if worker is not None:
        worker.close()


class FigureWorker:
    """A second Python process that imports matplotlib at once, then draws one batch of jobs sent on its stdin
    (JSON) and answers with the figures' paths (or an error) on its stdout."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    @classmethod
    def start(cls) -> FigureWorker | None:
        """None when no core is free for it (its work would then only add to this process's) or it cannot
        start."""
        from .cpuload import others_running, usable_cores

        others = others_running()
        if others is None or others + 2 > usable_cores():  # this process, the worker, and the others
            return None
        root = str(Path(__file__).resolve().parents[1])  # the folder fedloom is imported from, for the child
        code = f"import sys; sys.path.insert(0, {root!r}); from fedloom.figures import serve; serve()"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, encoding="utf-8",
            )  # fmt: skip
        except OSError:
            return None
        return cls(proc)

    def draw(self, jobs: list[tuple[str, dict]]) -> list[Path] | None:
        """The figures' paths, or None when the worker failed (the caller draws them itself)."""
        request = json.dumps([[name, {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}]
                              for name, kw in jobs])  # fmt: skip
        try:
            out, _ = self.proc.communicate(request, timeout=_WORKER_TIMEOUT)
            reply = json.loads(out.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            self.close()
            return None
        return [Path(p) for p in reply["paths"]] if isinstance(reply, dict) and "paths" in reply else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def serve() -> None:
    """The worker's side: import what drawing needs, then draw the one batch of jobs read from stdin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - the point: imported early
    from matplotlib.figure import Figure  # noqa: F401
    from matplotlib.ticker import MaxNLocator  # noqa: F401

    try:
        jobs = json.loads(sys.stdin.read())
        paths = [str(_DRAWERS[name](**{**kw, "path": Path(kw["path"])})) for name, kw in jobs]
        reply: dict = {"paths": paths}
    except Exception as e:  # noqa: BLE001 - reported to the parent, which then draws (and fails) itself
        reply = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(reply), flush=True)
