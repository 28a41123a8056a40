"""Figures of the experiments: curves with mean ± std bands over seeds, and labels that do not overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..report import new_figure, save_figure

__all__ = ["plot_band_curves", "band", "place_labels"]


def _stack(runs: list[list[dict]], key: str) -> np.ndarray:
    """[seeds, rounds] of ``key`` (missing values as NaN)."""
    return np.array([[np.nan if r.get(key) is None else r[key] for r in rows] for rows in runs], dtype=np.float64)


def band(
    ax, x, values: np.ndarray, label: str, color, ls: str = "-", marker: str | None = None, bounds=(0.0, None)
) -> None:
    """Mean line of ``values`` [seeds, points] and a shaded mean ± sample std band (no band for one seed).

    The band is clipped to ``bounds`` (accuracy lies in [0, 1], a loss is never negative)."""
    mean = np.nanmean(values, axis=0)
    ax.plot(x, mean, label=label, color=color, ls=ls, marker=marker, lw=1.4)
    if values.shape[0] > 1:
        std = np.nanstd(values, axis=0, ddof=1)
        lo, hi = bounds
        ax.fill_between(x, np.clip(mean - std, lo, hi), np.clip(mean + std, lo, hi), color=color, alpha=0.18, lw=0)


def plot_band_curves(series: dict[str, list[list[dict]]], path: Path, title: str, seeds: int) -> Path:
    """Accuracy and loss per round; one line per named setting, its rows given per seed (metrics rows)."""
    import matplotlib

    many = len(series) > 6
    fig, (ax_acc, ax_loss) = new_figure(1, 2, figsize=(14 if many else 11, 4.8))
    cmap = matplotlib.colormaps["tab20" if len(series) > 10 else "tab10"]
    styles = ("-", "--", ":", "-.")
    for i, (label, runs) in enumerate(series.items()):
        rounds = [r["round"] for r in runs[0]]
        kw = {"color": cmap(i % cmap.N), "ls": styles[(i // 10) % len(styles)], "marker": None if many else "."}
        band(ax_acc, rounds, _stack(runs, "accuracy"), label, bounds=(0.0, 1.0), **kw)
        band(ax_loss, rounds, _stack(runs, "loss"), label, **kw)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    ax_acc.set(xlabel="round", ylabel="accuracy (eval set)", ylim=(0, 1.02), title=f"accuracy ({spread})")
    ax_loss.set(xlabel="round", ylabel="mean cross-entropy (eval set)", title=f"loss ({spread})")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    if len(series) > 1:  # outside the axes: the legend never hides a curve
        ax_loss.legend(fontsize=7 if many else 8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title)
    return save_figure(fig, path)


# candidate label positions (points from the data point), nearest first; the far ones get a leader line
_OFFSETS = [(6, 4), (6, -11), (-6, 4), (-6, -11), (0, 8), (0, -16)] + [
    (dx, dy) for dy in (18, -25, 30, -37, 42, -49) for dx in (8, -8, 30, -30)
]


def _obstacles(ax, renderer, xs, ys, yerr, line) -> list:
    """Screen boxes labels must avoid: each point with its error bar, the polyline ``line``, the legend."""
    from matplotlib.transforms import Bbox

    err = np.zeros(len(xs)) if yerr is None else np.nan_to_num(np.asarray(yerr, dtype=np.float64))
    lows = ax.transData.transform(np.c_[xs, np.asarray(ys) - err])
    highs = ax.transData.transform(np.c_[xs, np.asarray(ys) + err])
    boxes = [Bbox.from_extents(lo[0] - 4, lo[1] - 4, hi[0] + 4, hi[1] + 4) for lo, hi in zip(lows, highs)]
    if line is not None and len(line[0]) > 1:
        pts = ax.transData.transform(np.c_[line[0], line[1]])  # [points, 2] in pixels
        for a, b in zip(pts[:-1], pts[1:]):
            for t in np.linspace(0, 1, max(2, int(np.hypot(*(b - a)) / 3))):  # a dot every ~3 px
                px, py = a + t * (b - a)
                boxes.append(Bbox.from_extents(px - 1, py - 1, px + 1, py + 1))
    if ax.get_legend() is not None:
        boxes.append(ax.get_legend().get_window_extent(renderer))
    return boxes


def place_labels(ax, xs, ys, labels: list[str], yerr=None, line=None, fontsize: int = 7) -> None:
    """Annotate points, trying offsets around each point until the label's box overlaps nothing placed.

    Points, their error bars, the polyline ``line`` ((xs, ys) in data units) and the legend are obstacles.
    Greedy (points in the order given); a label placed away from its point gets a thin leader line; when
    every candidate collides the first is used.
    """
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()  # a renderer, so text extents are known
    renderer = fig.canvas.get_renderer()
    placed = _obstacles(ax, renderer, xs, ys, yerr, line)
    frame = ax.get_window_extent(renderer)
    for x, y, text in zip(xs, ys, labels):
        for i, (dx, dy) in enumerate([*_OFFSETS, _OFFSETS[0]]):
            far = abs(dy) > 16 or abs(dx) > 10
            ann = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                ha="left" if dx > 0 else "right" if dx < 0 else "center", va="center" if far else "baseline",
                arrowprops={"arrowstyle": "-", "color": "#9e9e9e", "lw": 0.6, "shrinkA": 0, "shrinkB": 3}
                if far else None,
            )  # fmt: skip
            ann.update_positions(renderer)  # an annotation's text is placed at draw time
            box = Text.get_window_extent(ann, renderer).expanded(1.04, 1.1)  # the text alone, not its leader
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if i == len(_OFFSETS) or (inside and not any(box.overlaps(b) for b in placed)):
                placed.append(box)
                break
            ann.remove()
