"""The fedloom ServerApp: runs the federation of one job file and writes the run directory.

``fedloom server`` writes the job (resolved config, output directory, resume flag) to a file and names it in
the generated Flower app's run config (``job``); the SuperLink starts this ServerApp in its own process. The
outputs are those of ``fedloom run`` (config.json, metrics.jsonl, checkpoint.pt, summary.json with
``health``, model.pt, partition.json, figures, report.md), plus ``server.log`` and ``flower_state.json``.
The status of the job (running / finished / failed, with the error) goes to the job's ``status`` file,
which ``fedloom server`` watches to know when to stop and with which exit code.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import httpx
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..errors import FedloomError
from ..runs import write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

__all__ = ["app", "run_job", "JobLog"]

app = ServerApp()
# How long a resumed server waits for the ServerApp of a crashed one to let go of the run folder. That process
# notices the lost SuperLink only when flwr's HTTP retries give up: 40 s and more was seen on an idle machine.
_STALE_WAIT = 150.0


class JobLog:
    """Timestamped lines appended to ``server.log`` (``fedloom server`` shows them as they come)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def _summary(coord, health: dict) -> dict:
    from ..simulation import summarize

    out = summarize(coord.fed, coord.rows, coord._wall(), coord.cfg)
    if coord.secure is not None:
        out |= {"key_bits": coord.secure.key_bits, "key_fingerprint": coord.secure.fingerprint}
    return out | {
        "engine": "flower",
        "runtime": "flower",
        "resumed_at": coord.resumed_at,
        "refusals": coord.book.refusals,
        "health": health,
    }


def health_lines(health: dict) -> list[str]:
    """The health table as fixed-width text lines (for logs)."""
    cols = ("client", 6), ("picked", 6), ("joined", 6), ("failed", 6), ("connects", 8), ("connected", 9)
    out = [" ".join(f"{name:>{w}}" for name, w in cols) + "  last seen, last error"]
    for c, h in health.items():
        out.append(
            f"{c:>6} {h.get('picked', 0):>6} {h.get('joined', 0):>6} {h.get('failures', 0):>6} "
            f"{h.get('connects', 0):>8} {str(h.get('connected', False)):>9}  {h.get('last_seen', '')} "
            f"{h.get('last_error', '')}"
        )
    return out


def run_job(job: dict, grid: Grid, log: JobLog) -> dict:
    from ..params import load_into
    from ..report import render_run
    from .coordinator import Coordinator

    coord = Coordinator(job, grid, log)
    log(f"federation {coord.cfg.name}: config hash {coord.hash}, rounds {coord.start_round}..{coord.cfg.global_epochs}")
    health = coord.run()
    for line in health_lines(health):
        log(line)
    summary = _summary(coord, health)
    fed = coord.fed
    load_into(fed.model, fed.server.global_vec)
    partition = {"classes": fed.data.classes, "label_counts": fed.data.label_counts().tolist()}
    coord.run_dir.finish(summary, fed.model.state_dict(), {"partition.json": partition})
    render_run(coord.out)
    return summary


@contextmanager
def _own(out: Path, wait: float = _STALE_WAIT):
    """Hold ``out/.lock`` while writing the run: a ServerApp left over from a crashed server (it notices the
    lost SuperLink within seconds) must be gone before a resumed one writes the same files."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as f:
        if fcntl is not None:
            end = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > end:
                        raise FedloomError(f"another fedloom server is still writing to {out}") from None
                    time.sleep(0.2)
        yield


@app.main()
def main(grid: Grid, context: Context) -> None:
    job_file = Path(str(context.run_config["job"]))
    job = json.loads(job_file.read_text(encoding="utf-8"))
    status = Path(job["status"])
    log = JobLog(Path(job["out"]) / "server.log")
    write_json(status, {"state": "running"})
    try:
        with _own(Path(job["out"])):
            summary = run_job(job, grid, log)
        write_json(status, {"state": "finished", "final_accuracy": summary["final_accuracy"]})
    except FedloomError as e:
        log(f"error: {e}")
        write_json(status, {"state": "failed", "error": str(e), "exit_code": e.exit_code})
    except (httpx.TransportError, KeyboardInterrupt, SystemExit) as e:
        # the SuperLink is gone (its `fedloom server` crashed or was stopped): nobody reads this run's
        # log any more, and a resumed server may already be following it, so say nothing there
        write_json(status, {"state": "failed", "error": f"lost the SuperLink: {type(e).__name__}", "exit_code": 1})
        raise
    except BaseException as e:  # noqa: BLE001 - report anything to `fedloom server`, then let Flower see it
        log("internal error:\n" + traceback.format_exc())
        write_json(status, {"state": "failed", "error": f"{type(e).__name__}: {e}", "exit_code": 1})
        raise
