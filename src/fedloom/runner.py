"""One run, start to finish: the path ``fedloom run`` and ``fedloom.run`` share.

A validated config → a Federation (or the book's 15.4 encrypted model) → rounds → the run folder
(docs/architecture.md: config, metrics, checkpoint, summary, model, partition, figures, report), optional
TensorBoard logs under ``tb/``. With no folder (``out=None``) the same run happens in memory only.
Nothing is written before the config, the data and the optional extras have been checked.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .errors import FedloomError

__all__ = ["RunOutput", "execute", "finish_summary"]


@dataclass
class RunOutput:
    """What a finished run hands back (see :class:`fedloom.api.Run`, which wraps it)."""

    config: Config
    rows: list[dict]
    summary: dict
    state_dict: dict
    model: Any | None  # the final torch model (None for the 15.4 encrypted model: a weight vector)
    path: Path | None
    health: dict = field(default_factory=dict)
    partition: dict = field(default_factory=dict)  # classes and label counts per client


_SAVE_EVERY = 1.0  # seconds: metrics.jsonl and checkpoint.pt are written at most this often (and at the end)


class _Hooks:
    """Per-round side effects: metrics file, checkpoint, TensorBoard, progress.

    The metrics rows and the checkpoint are written after a round once ``_SAVE_EVERY`` seconds have passed
    since the rounds began or were last written, and after the run's last round or early stop (rows only when
    it fails or is interrupted: the state has moved on by then). Rounds of a few milliseconds would otherwise
    spend more time writing files than training, and each write slows the next round down; a crash loses at
    most the last second of rounds, which ``--resume`` runs again."""

    def __init__(self, cfg: Config, out: Path | None, progress, label: str, prepared=None):
        self.cfg, self.out, self.progress = cfg, out, progress
        self.prepared = prepared  # runs.RunDir checked by prepare_run_dir, not yet created
        self.run_dir = None
        self.tb = None
        self.unsaved: list[dict] = []  # rows not yet in metrics.jsonl (their rounds not yet checkpointed)
        self.saved_at = time.perf_counter()  # when rows were last written, or the run folder made
        self.task = progress.task(label, cfg.global_epochs) if progress is not None else None

    def open(self, resumed_rows: list[dict] | None = None) -> None:
        """Create the run folder (and the TensorBoard writer) once everything has been checked; a resumed run
        keeps its folder, with the metrics of the rounds before its checkpoint."""
        if self.prepared is None or self.run_dir is not None:
            return
        self.run_dir = self.prepared.create()  # RUNNING until summary.json is written
        self.saved_at = time.perf_counter()
        if resumed_rows is not None:
            self.run_dir.rewrite_metrics(resumed_rows)  # rows after the checkpoint are run again
        if self.cfg.runtime.tensorboard:
            from .tblog import TensorBoardLog

            self.tb = TensorBoardLog(self.out)
            self.tb.config(self.cfg.to_dict())

    def round(self, row: dict, checkpoint=None) -> None:
        """``checkpoint``: a callable giving the state after this row's round (called only when it is written)."""
        self.open()
        if self.run_dir is not None:
            self.unsaved.append(row)
            last = row["round"] >= self.cfg.global_epochs
            if last or time.perf_counter() - self.saved_at >= _SAVE_EVERY:
                self.save(checkpoint)
        if self.tb is not None:
            self.tb.row(row)
        self.progress_only(row)

    def save(self, checkpoint=None) -> None:
        """Write the unsaved rows and, when given, the checkpoint of the state after the last of them."""
        if self.run_dir is None or not self.unsaved:
            return
        self.run_dir.extend(self.unsaved)
        self.unsaved = []
        if checkpoint is not None and self.cfg.runtime.checkpoint:
            self.run_dir.write_checkpoint(checkpoint())
        self.saved_at = time.perf_counter()

    def progress_only(self, row: dict) -> None:
        if self.progress is not None:
            self.progress.update(self.task, row)


def _check_outputs(cfg: Config, out: Path | None) -> None:
    if cfg.runtime.tensorboard:
        if out is None:
            raise FedloomError("runtime.tensorboard logs into the run folder: give an output folder (--out / out=)")
        from .extras import require

        require("tensorboard")


def execute(
    cfg: Config,
    out: str | Path | None = None,
    progress=None,
    t0: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunOutput:
    """Run ``cfg``; write the run folder ``out`` unless it is None (``resume``: continue the run in ``out`` from
    its last checkpoint; ``overwrite``: replace the fedloom run in ``out``, never files fedloom did not write).
    ``progress``: see fedloom.console.Progress."""
    from .runs import prepare_run_dir

    t0 = time.perf_counter() if t0 is None else t0
    out = Path(out) if out is not None else None
    _check_outputs(cfg, out)
    if resume and out is None:
        raise FedloomError("--resume needs --out DIR: the folder of the run to continue")
    if resume and cfg.secure.protocol == "encrypted-model":
        raise FedloomError("--resume: the book's 15.4 encrypted-model run cannot be continued; use --overwrite")
    prepared = prepare_run_dir(out, cfg.to_dict(), overwrite, resume) if out is not None else None  # writes nothing
    if cfg.secure.protocol == "encrypted-model":
        hooks = _Hooks(cfg, out, progress, f"{cfg.name}: encrypted rounds", prepared)  # folder made at the first row
        run = lambda: _encrypted_model(cfg, hooks)  # noqa: E731
    else:
        hooks = _Hooks(cfg, out, progress, f"{cfg.name}: rounds", prepared)
        run = lambda: _federation(cfg, hooks, t0, resume)  # noqa: E731
    try:
        result = run()
    except BaseException as e:
        with contextlib.suppress(OSError, FedloomError):  # the original error is the one to report
            hooks.save()  # the finished rounds' rows (rows after the last checkpoint are run again on --resume)
        if isinstance(e, FedloomError) and hooks.run_dir is not None:
            hooks.run_dir.abandon()  # an error before the first round leaves no folder behind
        raise
    hooks.save()  # rows still unsaved (the 15.4 encrypted model, which has no checkpoint, stopped early)
    result.summary["wall_seconds"] = time.perf_counter() - t0
    if hooks.run_dir is not None:
        result.path = hooks.run_dir.path
        _write_folder(result, hooks)
    return result


def _federation(cfg: Config, hooks: _Hooks, t0: float, resume: bool) -> RunOutput:
    from .params import load_into
    from .simulation import Federation, resume_from, run_federation

    fed = Federation.build(cfg)  # data errors surface here, before anything is written
    start, rows = resume_from(fed, hooks.prepared.resume) if resume else (1, [])
    hooks.open(rows if resume else None)
    for row in rows:
        hooks.progress_only(row)
    res = run_federation(
        fed, lambda row: hooks.round(row, lambda: fed.state_dict(row["round"])), start, wall_start=t0, rows=rows
    )
    if res.rows:  # a run that stopped early (divergence, privacy budget): its last round's state is still current
        hooks.save(lambda: fed.state_dict(res.rows[-1]["round"]))
    load_into(fed.model, res.global_vec)
    summary = finish_summary({**res.summary, "health": res.health}, res.rows, cfg, fed.data)
    state = {k: v.detach().clone() for k, v in fed.model.state_dict().items()}
    return RunOutput(cfg, res.rows, summary, state, fed.model, None, res.health, _partition(fed.data))


def _encrypted_model(cfg: Config, hooks: _Hooks) -> RunOutput:
    """The book's 15.4 (the server holds the key and keeps the model encrypted): same outputs as a run."""
    import torch

    from .data import load_data
    from .secure.encrypted_lr import run_encrypted_model

    data = load_data(cfg)
    rows, summary, weights = run_encrypted_model(cfg, data, hooks.round)
    summary = finish_summary(summary, rows, cfg, data)
    state = {"weight": torch.from_numpy(weights)}  # [features + 1], bias last
    return RunOutput(cfg, rows, summary, state, None, None, {}, _partition(data))


def _partition(data) -> dict:
    return {"classes": data.classes, "label_counts": data.label_counts().tolist()}


def finish_summary(summary: dict, rows: list[dict], cfg: Config, data) -> dict:
    """Add what a reader needs beside the numbers: the model's shape, encryption, and notes (chance, flat loss,
    small eval set)."""
    from .notes import encryption_line, run_notes

    summary = {
        **summary,
        "num_classes": data.num_classes,
        "num_features": data.num_features,
        "image_shape": list(data.image_shape) if data.image_shape else None,
    }
    enc = encryption_line(cfg.to_dict())
    if enc:
        summary["encrypted"] = enc
    summary["notes"] = run_notes(summary, rows, data.num_classes)
    return summary


def _write_folder(result: RunOutput, hooks: _Hooks) -> None:
    from .report import render_run

    hooks.run_dir.finish(result.summary, result.state_dict, {"partition.json": result.partition})
    figures = render_run(hooks.run_dir.path)
    if hooks.tb is not None:
        hooks.tb.summary(result.summary)
        hooks.tb.figures(figures)
        hooks.tb.close()
