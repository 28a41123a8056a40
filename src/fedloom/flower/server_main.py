"""``fedloom server``: a SuperLink, the generated Flower app, and the run's progress on the terminal.

Steps: check the config and the output directory → write the job file and the Flower app into a private
work directory (with its own ``FLWR_HOME``) → start ``flower-superlink`` on ``--address`` → ``flwr run`` the
app → show ``server.log`` as the ServerApp writes it, until the job's status file says finished (exit 0) or
failed (exit 2 for a user error, 1 otherwise) → stop the SuperLink. The SuperLink keeps its state in
memory: after a crash, ``--resume`` starts a fresh one and continues from the run directory's checkpoint;
clients reconnect by themselves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..config import Config
from ..errors import FedloomError
from ..runs import read_json, write_json
from . import check_deployable, require_flwr
from .fingerprint import config_hash
from .launch import (
    TlsFiles,
    check_bindable,
    flower_env,
    flwr_tool,
    parse_address,
    start_process,
    stop_process,
    superlink_command,
    terminate_as_interrupt,
    wait_port,
    write_app,
    write_connection,
)

__all__ = ["serve", "check_out_dir"]

_CONNECTION = "fedloom"
_START_TIMEOUT = 60.0  # seconds for the SuperLink to listen and for the ServerApp to report in


def check_out_dir(out: Path, cfg: Config, resume: bool) -> None:
    """A fresh run must not overwrite one; a resumed run must continue one of the same federation."""
    metrics = out / "metrics.jsonl"
    has_run = metrics.is_file() and metrics.stat().st_size > 0
    if resume:
        if (out / "config.json").is_file():
            theirs = config_hash(read_json(out / "config.json"))
            if theirs != config_hash(cfg):
                raise FedloomError(
                    f"--resume: {out} holds a run of another federation config (hash {theirs}, this one "
                    f"{config_hash(cfg)}); use the config it was started with"
                )
    elif has_run:
        raise FedloomError(f"--out {out} already holds a run; add --resume to continue it, or choose another --out")


def _follow(log: Path, offset: int, status: Path, link: subprocess.Popen, quiet: bool) -> int:
    """Print new ``server.log`` lines until the job's status is final; returns the exit code."""
    started = time.monotonic()
    while True:
        if log.is_file():
            with open(log, encoding="utf-8") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            if chunk and not quiet:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        state = json.loads(status.read_text(encoding="utf-8")) if status.is_file() else None
        if state and state["state"] == "finished":
            return 0
        if state and state["state"] == "failed":
            print(f"fedloom: error: {state['error']}", file=sys.stderr)
            return int(state.get("exit_code", 1))
        if link.poll() is not None:
            print(f"fedloom: error: the SuperLink exited with code {link.returncode}", file=sys.stderr)
            return 1
        if state is None and time.monotonic() - started > _START_TIMEOUT:
            print("fedloom: error: the ServerApp did not start; see logs/superlink.log", file=sys.stderr)
            return 1
        time.sleep(0.2)


def serve(
    cfg: Config,
    address: str,
    out: Path,
    tls: TlsFiles | None,
    resume: bool,
    quiet: bool = False,
    startup_wait: float = 120.0,
) -> int:
    """Run the federation ``cfg`` as a Flower server on ``address``; returns the exit code."""
    require_flwr()
    check_deployable(cfg)
    host, port = parse_address(address, "--address")
    if cfg.secure.method != "none":  # the ServerApp runs elsewhere: an absolute key_dir, checked now
        from .secure import public_key_fingerprint

        cfg = cfg.model_copy(
            update={"secure": cfg.secure.model_copy(update={"key_dir": str(Path(cfg.secure.key_dir).resolve())})}
        )
        public_key_fingerprint(cfg)  # only paillier_public.json: the server never reads a secret key
    out = out.resolve()
    check_out_dir(out, cfg, resume)
    check_bindable(host, port, "--address")
    terminate_as_interrupt()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fedloom-server-"))
    home = work / "flwr-home"
    status = work / "status.json"
    job = {
        "config": cfg.to_dict(),
        "out": str(out),
        "resume": resume,
        "status": str(status),
        "startup_wait": startup_wait,
    }
    write_json(work / "job.json", job)
    app_dir = write_app(work / "app", cfg.name, work / "job.json")
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    write_connection(
        home, _CONNECTION, f"[{local}]:{port}" if ":" in local else f"{local}:{port}", tls.ca if tls else None
    )
    env = flower_env(home)
    log = out / "server.log"
    offset = log.stat().st_size if log.is_file() else 0
    link = start_process(superlink_command(host, port, tls), env, out / "logs" / "superlink.log")
    try:
        if not wait_port(host, port, _START_TIMEOUT, link):
            raise FedloomError(
                f"--address {address}: the SuperLink could not listen there (see {out}/logs/superlink.log)"
            )
        submit = subprocess.run(
            [flwr_tool("flwr"), "run", str(app_dir), _CONNECTION, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT,
        )
        try:
            answer = json.loads(submit.stdout)
        except json.JSONDecodeError:
            answer = {"success": False, "error-message": (submit.stderr or submit.stdout).strip()[-500:]}
        if submit.returncode != 0 or not answer.get("success"):
            raise FedloomError(f"flwr run failed: {answer.get('error-message', '').strip()}")
        if not quiet:
            mode = "TLS" if tls else "insecure (no TLS)"
            print(f"fedloom server: federation {cfg.name} on {host}:{port}, {mode}; output {out}", flush=True)
        return _follow(log, offset, status, link, quiet)
    finally:
        stop_process(link)
        shutil.rmtree(work, ignore_errors=True)
