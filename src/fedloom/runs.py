"""A run's output directory (the contract in docs/architecture.md):

``config.json`` (resolved), ``metrics.jsonl`` (one row per round), ``checkpoint.pt`` (each round),
``summary.json``, ``model.pt`` (final state dict), ``partition.json`` (label counts per client),
``figures/*.png`` and ``report.md``. Tensors are saved with ``torch.save`` and load with
``torch.load(weights_only=True)``: no pickled objects.

Nothing is lost and nothing is mixed:

- ``--out`` must be empty (or absent), unless ``--overwrite`` (a fedloom folder's files are replaced; a folder
  holding anything fedloom did not write is never touched) or ``--resume`` (same config, continue);
- every file is written whole (a temporary file in the same folder, then a rename);
- a ``RUNNING`` file marks a run in progress; it goes only once ``summary.json`` is written, so an interrupted
  run leaves a folder that says it is incomplete, and ``fedloom report`` refuses it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import FedloomError

__all__ = ["RunDir", "ResumePoint", "open_run_dir", "prepare_run_dir", "default_out_dir", "load_run", "MARKER"]
__all__ += ["write_json", "write_text", "read_json", "load_checkpoint", "as_written"]

MARKER = "RUNNING"  # present while a run or experiment is writing its folder
# what fedloom writes into a run or experiment folder; anything else there is the user's
FEDLOOM_FILES = frozenset(
    {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "model.pt", "partition.json", "report.md",
     "table.md", "curves.json", "figures", "tb", MARKER}
)  # fmt: skip
_SIGNS = frozenset({"metrics.jsonl", "summary.json", "table.md", MARKER})  # one of these marks fedloom's folder


def default_out_dir(name: str, root: str | Path = "runs") -> Path:
    """``runs/<name>-<time>``, with a counter when two runs start in the same second."""
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _clean(obj):
    """JSON has no NaN: write null instead, so any JSON reader can load the files."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_text(path: Path, text: str) -> None:
    """Write atomically (temp file in the same folder + rename), so a crash never leaves half a file."""
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(_clean(obj), indent=2) + "\n")


def as_written(obj):
    """``obj`` as :func:`write_json` stores it and :func:`read_json` gives it back (tuples as lists, NaN as None)."""
    return json.loads(json.dumps(_clean(obj)))


def _save_tensors(path: Path, obj) -> None:
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_json(path: Path, want: type | None = dict):
    """A JSON file's value (``want``: the type it must have), or one line saying what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FedloomError(f"{path}: not found; is this a fedloom run directory?") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FedloomError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not text.strip():
        raise FedloomError(f"{path}: is empty (an interrupted write?)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FedloomError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise FedloomError(f"{path}: nested too deeply") from None
    if want is not None and not isinstance(value, want):
        raise FedloomError(f"{path}: expected a JSON {'object' if want is dict else want.__name__}")
    return value


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise FedloomError(f"{path}: not found") from None
    except Exception as e:  # torch raises many kinds for a damaged file
        raise FedloomError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _is_fedloom_name(name: str) -> bool:
    return name in FEDLOOM_FILES or (name.startswith(".") and name.endswith(".tmp"))


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _check_parent(path: Path, flag: str) -> None:
    """``path``'s nearest existing ancestor must be a folder fedloom may write in."""
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise FedloomError(f"{flag} {path}: {parent} is a file, not a folder")
    if parent != path and not os.access(parent, os.W_OK | os.X_OK):
        raise FedloomError(f"{flag} {path}: cannot create it (no write permission in {parent})")


@dataclass
class ResumePoint:
    """Where ``--resume`` continues: the last checkpoint and the metrics rows up to its round."""

    round: int  # last round the checkpoint holds; the run continues at round + 1
    checkpoint: dict  # what RunDir.checkpoint saved (global vector, health, and any state the lead adds)
    rows: list[dict] = field(default_factory=list)  # metrics rows 1..round


class RunDir:
    """Writes one run's (or experiment's) files. Build it with :func:`prepare_run_dir` (checks only) and call
    :meth:`create` once the config and data are validated; :func:`open_run_dir` does both."""

    def __init__(
        self,
        path: str | Path,
        config: dict,
        overwrite_metrics: bool | None = None,
        *,
        overwrite: bool = False,
        resume: ResumePoint | None = None,
    ):
        self.path = Path(path)
        self.config = config
        self.overwrite = overwrite
        self.resume = resume
        self.metrics = self.path / "metrics.jsonl"
        self._rows: list[str] | None = [json.dumps(_clean(r)) for r in resume.rows] if resume else []
        self.created, self._made = False, False
        if overwrite_metrics is not None:  # the older form (Flower coordinator): create now, rows appended to the file
            self._rows = None
            if self.path.exists() and not self.path.is_dir():
                raise FedloomError(f"--out {self.path}: exists and is not a directory")
            self.create(write_config=True, reset_metrics=overwrite_metrics)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def create(self, write_config: bool = True, reset_metrics: bool = True) -> RunDir:
        """Make the folder (replacing a fedloom folder's files when overwriting) and mark it RUNNING."""
        self._made = not self.path.exists()
        try:
            if self.overwrite and self.path.is_dir():
                self._remove_fedloom_files()
            (self.path / "figures").mkdir(parents=True, exist_ok=True)
            write_json(self.path / MARKER, {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
            if self.resume is not None:
                for stale in ("summary.json", "model.pt", "report.md"):
                    (self.path / stale).unlink(missing_ok=True)
            if write_config:
                write_json(self.path / "config.json", self.config)
            if reset_metrics:
                write_text(self.metrics, "".join(line + "\n" for line in self._rows or []))
        except OSError as e:
            raise FedloomError(f"--out {self.path}: cannot write there ({e.strerror or e})") from None
        self.created = True
        return self

    def _remove_fedloom_files(self) -> None:
        for name in _entries(self.path):
            p = self.path / name
            if not _is_fedloom_name(name):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def abandon(self) -> None:
        """Undo :meth:`create` when nothing but the marker was written (an error before the first round)."""
        if not self.created or self._rows or self.resume is not None:
            return
        ours = {MARKER, "config.json", "metrics.jsonl", "figures"}
        if set(_entries(self.path)) - ours or any((self.path / "figures").iterdir()):
            return
        if self._made:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # the folder was the user's (empty): leave it as found
            for name in ours:
                p = self.path / name
                p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)

    # --- per round ---------------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """Add a metrics row; the file is rewritten whole, so a crash never leaves half a line."""
        self.extend([row])

    def extend(self, rows: list[dict]) -> None:
        """Add metrics rows (one write)."""
        if self._rows is None:  # the file is shared with a caller that edits it (flower/coordinator.py)
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(_clean(row)) + "\n" for row in rows))
            return
        self._rows.extend(json.dumps(_clean(row)) for row in rows)
        write_text(self.metrics, "".join(line + "\n" for line in self._rows))

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """``metrics.jsonl`` holding exactly ``rows`` (written whole)."""
        if self._rows is not None:
            self._rows = [json.dumps(_clean(r)) for r in rows]
        write_text(self.metrics, "".join(json.dumps(_clean(r)) + "\n" for r in rows))

    def write_checkpoint(self, state: dict) -> None:
        """``checkpoint.pt`` from a state dict of tensors and plain values (written whole)."""
        _save_tensors(self.path / "checkpoint.pt", state)

    def finish(self, summary: dict, state_dict: dict, extra: dict | None = None) -> None:
        """Write the final model, extra files and summary.json, then drop the RUNNING marker."""
        _save_tensors(self.path / "model.pt", {k: v.detach().clone() for k, v in state_dict.items()})
        for name, obj in (extra or {}).items():
            write_json(self.path / name, obj)
        write_json(self.path / "summary.json", summary)
        (self.path / MARKER).unlink(missing_ok=True)

    def done(self) -> None:
        """Drop the RUNNING marker (experiments, whose own code writes summary.json)."""
        (self.path / MARKER).unlink(missing_ok=True)


def prepare_run_dir(
    path: str | Path, config: dict, overwrite: bool = False, resume: bool = False, kind: str = "run"
) -> RunDir:
    """Check ``--out`` before any work is done; creates nothing. See the module docstring for the rules."""
    path = Path(path)
    if overwrite and resume:
        raise FedloomError("--overwrite and --resume exclude each other: replace the run, or continue it")
    _check_parent(path, "--out")
    if not path.exists():
        if resume:
            raise FedloomError(f"--resume: {path} does not exist; there is no run to continue")
        return RunDir(path, config)
    if not path.is_dir():
        raise FedloomError(f"--out {path}: exists and is not a folder")
    try:
        names = _entries(path)
    except OSError as e:
        raise FedloomError(f"--out {path}: cannot be listed ({e.strerror or e})") from None
    if not names:
        if resume:
            raise FedloomError(f"--resume: {path} is empty: no run and no checkpoint to continue from")
        return RunDir(path, config)
    foreign = [n for n in names if not _is_fedloom_name(n)]
    if foreign or not (set(names) & _SIGNS):
        raise FedloomError(
            f"--out {path}: holds files fedloom did not write (e.g. {(foreign or names)[0]}); "
            "choose an empty or new folder"
        )
    if resume:
        return RunDir(path, config, resume=_resume_point(path, config, kind))
    if not overwrite:
        state = "an unfinished" if MARKER in names or "summary.json" not in names else "a finished"
        raise FedloomError(
            f"--out {path}: already holds {state} fedloom {kind}; pass --overwrite to replace it"
            + (" or --resume to continue it" if kind == "run" else "")
            + ", or choose another folder"
        )
    return RunDir(path, config, overwrite=True)


def _resume_point(path: Path, config: dict, kind: str) -> ResumePoint:
    if kind != "run":
        raise FedloomError(f"--resume applies to `fedloom run`, not to an {kind}")
    if MARKER not in _entries(path) and (path / "summary.json").is_file():
        raise FedloomError(f"--resume: {path} holds a finished run; nothing to continue (--overwrite reruns it)")
    saved = read_json(path / "config.json")
    differ = _diff_keys(saved, _clean(config))
    if differ:
        raise FedloomError(
            f"--resume: the config differs from {path / 'config.json'} in {', '.join(differ[:8])}"
            + (f" (and {len(differ) - 8} more)" if len(differ) > 8 else "")
        )
    ckpt_path = path / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise FedloomError(
            f"--resume: {path} has no checkpoint.pt (it stopped before its first checkpoint, written a second into "
            "the rounds, or runtime.checkpoint is false); start it again with --overwrite"
        )
    ckpt = load_checkpoint(ckpt_path)
    done = int(ckpt.get("round", 0))
    rows = [r for r in _read_metrics(path / "metrics.jsonl", strict=False) if r["round"] <= done]
    if [r["round"] for r in rows] != list(range(1, done + 1)):
        raise FedloomError(f"--resume: {path / 'metrics.jsonl'} lacks rows of rounds 1..{done} the checkpoint holds")
    return ResumePoint(done, ckpt, rows)


def open_run_dir(
    path: str | Path, config: dict, overwrite: bool = False, resume: bool = False, kind: str = "run"
) -> RunDir:
    """Check ``--out`` and create the run folder (see :func:`prepare_run_dir` and :meth:`RunDir.create`)."""
    return prepare_run_dir(path, config, overwrite, resume, kind).create()


# --- reading a finished run (fedloom report) -----------------------------------------------------------------
_CONFIG_KEYS = {"name": str, "type": str, "model_name": str, "no_models": int, "k": int, "global_epochs": int}


def _read_metrics(path: Path, strict: bool = True) -> list[dict]:
    """metrics.jsonl rows; each needs ``round`` and numeric (or null) ``accuracy`` and ``loss``."""
    if not path.is_file():
        if strict:
            raise FedloomError(f"{path}: not found; is this a fedloom run directory?")
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if not strict:
                break  # resume keeps the whole rows before a torn one
            raise FedloomError(f"{path}: line {n} is truncated or not JSON") from None
        bad = _bad_row(row)
        if bad:
            raise FedloomError(f"{path}: line {n}: {bad}")
        rows.append({**row, **{k: math.nan if row[k] is None else row[k] for k in ("accuracy", "loss")}})
    return rows


def _bad_row(row) -> str:
    if not isinstance(row, dict):
        return "expected a JSON object"
    if not isinstance(row.get("round"), int) or isinstance(row.get("round"), bool):
        return "no integer 'round'"
    for key in ("accuracy", "loss"):
        if key not in row:
            return f"no '{key}'"
        if row[key] is not None and (isinstance(row[key], bool) or not isinstance(row[key], (int, float))):
            return f"'{key}' is not a number"
    return ""


def load_run(run_dir: str | Path) -> tuple[dict, dict, list[dict]]:
    """``(summary, config, metrics rows)`` of a finished run folder; an incomplete or mixed one is refused."""
    d = Path(run_dir)
    if not d.exists():
        raise FedloomError(f"{d}: not found")
    if not d.is_dir():
        raise FedloomError(f"{d}: is a file; give the run's folder")
    if (d / MARKER).exists():
        raise FedloomError(
            f"{d}: incomplete run (interrupted or still running: {MARKER} is present); "
            "continue it with fedloom run --resume, or rerun it with --overwrite"
        )
    if not (d / "summary.json").is_file() and (d / "config.json").is_file():
        raise FedloomError(f"{d}: incomplete run (no summary.json); rerun it with --overwrite")
    summary, cfg = read_json(d / "summary.json"), read_json(d / "config.json")
    for key, kind in _CONFIG_KEYS.items():
        if not isinstance(cfg.get(key), kind):
            raise FedloomError(f"{d / 'config.json'}: no valid '{key}'; not a fedloom run's config")
    rows = _read_metrics(d / "metrics.jsonl")
    rounds = summary.get("rounds")
    if isinstance(rounds, int) and rounds != len(rows):
        raise FedloomError(
            f"{d}: mixed or partial run: summary.json counts {rounds} rounds, metrics.jsonl holds {len(rows)}"
        )
    if "seed" in summary and summary["seed"] != cfg.get("seed"):
        raise FedloomError(f"{d}: mixed run: summary.json has seed {summary['seed']}, config.json {cfg.get('seed')}")
    return summary, cfg, rows
