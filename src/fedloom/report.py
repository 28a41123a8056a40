"""Figures and ``report.md`` from a run directory's files (so ``fedloom report DIR`` can redo them)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import FedloomError
from .figures import draw, integer_ticks, new_figure, plot_curves, plot_label_mix, save_figure  # noqa: F401
from .runs import MARKER, load_run, read_json, write_text

__all__ = ["render_run", "plot_curves", "plot_label_mix", "markdown_table", "new_figure", "save_figure"]
__all__ += ["render_folder", "check_folder", "integer_ticks"]


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
    jobs = [("plot_curves", {"series": {cfg["name"]: rows}, "path": d / "figures" / "accuracy.png",
                             "title": cfg["name"], "chance": chance})]  # fmt: skip
    if part is not None:
        title = f"label mix per client ({(cfg.get('partition') or {}).get('method', '?')})"
        if (cfg.get("data") or {}).get("clients"):
            title = "label mix per client (one file each)"
        elif cfg.get("type") == "synthetic":
            title = "label mix per client (synthetic: each client's own generator)"
        jobs.append(("plot_label_mix", {"counts": part["label_counts"], "classes": part["classes"],
                                        "path": d / "figures" / "partition.png", "title": title}))  # fmt: skip
    # in a figure worker when `fedloom run` started one, else here (with the functions this module holds now)
    figs = draw(jobs, {"plot_curves": plot_curves, "plot_label_mix": plot_label_mix})
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
