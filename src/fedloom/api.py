"""fedloom as a library, for notebooks and scripts (docs/python.md).

    import fedloom
    run = fedloom.run("configs/iris.json")                      # in memory: rows, summary, model
    run = fedloom.run("configs/iris.json", out="runs/iris", global_epochs=10)   # also the run folder
    exp = fedloom.experiment("fl-vs-central", "configs/iris.json")
    again = fedloom.load_run("runs/iris")

A config is a file path, a dict of config keys or a :class:`~fedloom.config.Config`; keyword overrides
follow it (``k=3``, ``lambda_=0.1`` for the book's ``lambda``, a section as a dict ``partition={...}`` or a
dotted key ``**{"partition.alpha": 0.3}``). Mistakes raise :class:`~fedloom.errors.FedloomError` with the
one line the CLI would print.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FedloomError

__all__ = ["Run", "ExperimentResult", "run", "experiment", "load_run", "resolve_config", "experiment_dir"]
__all__ += ["experiment_folder_name"]


@dataclass
class Run:
    """One federated run: its config, metrics rows, summary and final model (and folder, when written)."""

    config: Any  # fedloom.config.Config
    rows: list[dict]
    summary: dict
    model: Any | None  # torch.nn.Module with the final weights (None for the book's 15.4 encrypted model)
    path: Path | None = None
    state_dict: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        return self.summary["final_accuracy"]

    @property
    def notes(self) -> list[str]:
        """Plain-language warnings: at chance, a flat loss, a small eval set (see fedloom.notes)."""
        return list(self.summary.get("notes") or [])

    @property
    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.png")) if self.path else []

    def __repr__(self) -> str:
        s = self.summary
        where = f", path={str(self.path)!r}" if self.path else ""
        num = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else str(v)  # noqa: E731 - None after NaN
        return (
            f"Run({self.config.name!r}: {s.get('rounds')} rounds, final_accuracy={num(s.get('final_accuracy'))}, "
            f"final_loss={num(s.get('final_loss'))}{where})"
        )

    def _repr_markdown_(self) -> str:
        from .report import markdown_table

        keys = ("final_accuracy", "best_accuracy", "final_loss", "rounds", "bytes_up", "bytes_down", "encrypted")
        table = markdown_table([{"metric": k, "value": self.summary[k]} for k in keys if k in self.summary])
        notes = "".join(f"\n> **Note:** {n}\n" for n in self.notes)
        return f"**fedloom run {self.config.name}**\n\n{table}{notes}"


@dataclass
class ExperimentResult:
    """One of the book's comparisons: its summary (``results`` rows), table.md and figures, in ``path``."""

    name: str
    summary: dict
    path: Path

    @property
    def results(self) -> list[dict]:
        return self.summary.get("results", [])

    @property
    def table(self) -> str:
        return (self.path / "table.md").read_text(encoding="utf-8")

    @property
    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.png"))

    def __repr__(self) -> str:
        return f"ExperimentResult({self.name!r}, {len(self.results)} rows, path={str(self.path)!r})"

    def _repr_markdown_(self) -> str:
        return self.table


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides as a nested dict: ``lambda_`` → ``lambda``, ``a.b=v`` → ``{a: {b: v}}``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        key = "lambda" if key == "lambda_" else key
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = _merge(node[last], value)
        else:
            node[last] = value
    return out


def _merge(base: dict, updates: dict) -> dict:
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(config, overrides: dict[str, Any] | None = None):
    """A validated Config from a path, a dict or a Config, with keyword ``overrides`` applied."""
    from .config import Config, build_config, load_config

    if config is None or isinstance(config, (str, Path)):
        base = load_config(config)
        source = str(config) if config is not None else "config"
    elif isinstance(config, (dict, Config)):
        base = load_config(config)
        source = "config"
    else:
        raise FedloomError(f"config: expected a file path, a dict or a Config, got {type(config).__name__}")
    if not overrides:
        return base
    raw = base.to_dict()
    if base.data is None:
        raw.pop("data", None)  # null would shadow a data section given as an override
    return build_config(_merge(raw, _nest(overrides)), source)


def run(
    config,
    out: str | Path | bool | None = None,
    *,
    progress: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    **overrides,
) -> Run:
    """Train a federation. ``out``: a folder to write the run folder into (``True``: ``runs/<name>-<time>``),
    or None to keep everything in memory; it must be new or empty unless ``overwrite`` (replace a fedloom run
    there) or ``resume`` (continue it). ``tensorboard=True`` logs into ``out/tb``."""
    from .console import Progress
    from .runner import execute
    from .runs import default_out_dir

    t0 = time.perf_counter()
    if "tensorboard" in overrides:
        overrides["runtime.tensorboard"] = overrides.pop("tensorboard")
    cfg = resolve_config(config, overrides)
    folder = default_out_dir(cfg.name) if out is True else (None if out in (None, False) else Path(out))
    with Progress(quiet=not progress) as bar:
        res = execute(cfg, folder, bar, t0, resume=resume, overwrite=overwrite)
    return Run(res.config, res.rows, res.summary, res.model, res.path, res.state_dict, res.health)


def experiment_folder_name(config_name: str, experiment_name: str) -> str:
    """``<name>-<experiment>``, without doubling a name the config already carries
    (``mnist-he`` + ``he`` → ``mnist-he``, not ``mnist-he-he``)."""
    taken = config_name == experiment_name or config_name.endswith(f"-{experiment_name}")
    return config_name if taken else f"{config_name}-{experiment_name}"


def experiment_dir(config_name: str, experiment_name: str, root: str | Path = "runs") -> Path:
    """The default folder of an experiment: ``runs/<name>-<experiment>-<time>`` (see experiment_folder_name)."""
    from .runs import default_out_dir

    return default_out_dir(experiment_folder_name(config_name, experiment_name), root)


def experiment(
    name: str,
    config,
    seeds: int | None = None,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **overrides,
) -> ExperimentResult:
    """Run one of the book's comparisons (``fedloom.experiments.EXPERIMENTS``) into ``out`` (default
    ``runs/<name>-<experiment>-<time>``: experiments are their files). ``seeds``: repeat over that many seeds;
    ``overwrite``: replace an experiment already in ``out``."""
    from .console import Progress
    from .experiments import EXPERIMENTS, run_experiment

    if name not in EXPERIMENTS:
        from .config import _hint

        raise FedloomError(f"unknown experiment '{name}'{_hint(name, EXPERIMENTS)}; known: " + ", ".join(EXPERIMENTS))
    if seeds is not None:
        overrides["seeds"] = seeds  # the config's `seeds` key (experiments run seed … seed+seeds−1)
    cfg = resolve_config(config, overrides)
    folder = Path(out) if out is not None else experiment_dir(cfg.name, name)
    extra = {"overwrite": overwrite} if "overwrite" in inspect.signature(run_experiment).parameters else {}
    with Progress(quiet=not progress) as bar:
        summary = run_experiment(name, cfg, folder, bar, **extra)
    return ExperimentResult(name, summary, folder)


def load_run(path: str | Path) -> Run | ExperimentResult:
    """A run folder (``fedloom run --out``) as a :class:`Run` with its final model loaded, or an experiment's
    folder as an :class:`ExperimentResult`."""
    from .report import check_folder
    from .runs import read_json

    d = check_folder(path)
    summary = read_json(d / "summary.json")
    if "experiment" in summary:
        return ExperimentResult(summary["experiment"], summary, d)
    from .config import build_config

    cfg = build_config(read_json(d / "config.json"), str(d / "config.json"))
    metrics = d / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
    state, model = _load_model(d, cfg, summary)
    return Run(cfg, rows, summary, model, d, state, summary.get("health") or {})


def _load_model(d: Path, cfg, summary: dict):
    """The saved state dict and, when the folder records the model's shape, the model rebuilt around it."""
    import torch

    if not (d / "model.pt").is_file():
        return {}, None
    state = torch.load(d / "model.pt", weights_only=True)
    if cfg.secure.protocol == "encrypted-model" or "num_features" not in summary:
        return state, None
    from .models import build_model

    shape = summary.get("image_shape")
    model = build_model(
        cfg.model_name, summary["num_features"], summary["num_classes"], cfg.hidden, tuple(shape) if shape else None
    )
    model.load_state_dict(state)
    return state, model
