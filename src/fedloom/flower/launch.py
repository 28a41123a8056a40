"""Starting and stopping the Flower pieces, and the Flower app fedloom generates (the user never writes one).

flwr's tools are looked up next to the running Python first (its environment's ``bin/``), and every child
runs with that ``bin/`` first on ``PATH``: the SuperLink starts ``flower-superexec`` by name, so ``fedloom
server`` works from a virtual environment that was never activated (or a pipx install).

Every flwr process gets ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1`` (both default to
contacting Flower's servers) and a private ``FLWR_HOME``, so the user's ``~/.flwr`` is never touched. On Linux
each child is asked to receive SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a crashed ``fedloom``
process does not leave a SuperLink or SuperNode behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FedloomError

__all__ = [
    "TlsFiles",
    "check_bindable",
    "flower_env",
    "free_port",
    "parse_address",
    "start_process",
    "stop_process",
    "terminate_as_interrupt",
    "wait_port",
    "write_app",
    "write_connection",
    "superlink_command",
    "supernode_command",
    "flwr_tool",
    "bin_dir",
    "APP_PACKAGE",
]

APP_PACKAGE = "fedloom_app"
# SuperExec's task poll (default 1 s, flwr/supercore/superexec/run_superexec.py): how soon the SuperLink
# starts the ServerApp once a run is submitted.
_SUPEREXEC_POLL = "0.05"


@dataclass(frozen=True)
class TlsFiles:
    """What the server reads of ``fedloom certs DIR``: the CA certificate, its certificate and key, and the
    client registry (``registry``; None for the SuperLink's own loopback certificate)."""

    ca: Path
    cert: Path
    key: Path
    registry: Path | None = None

    @classmethod
    def from_dir(cls, d: str | Path, registry: bool = True) -> TlsFiles:
        d = Path(d)
        files = cls(d / "ca.pem", d / "server.pem", d / "server.key", d / "clients.json" if registry else None)
        missing = [p.name for p in (files.ca, files.cert, files.key) if not p.is_file()]
        if missing:
            raise FedloomError(f"--tls-dir {d}: missing {', '.join(missing)}; make them with `fedloom certs {d}`")
        if registry and not files.registry.is_file():
            raise FedloomError(
                f"--tls-dir {d}: no clients.json (the keys of the clients the server admits); make client keys "
                f"with `fedloom certs {d} --clients N`"
            )
        return files

    def private_keys_nearby(self) -> list[str]:
        """Private keys in the server's folder that the server does not need (the CA's, the clients')."""
        d = self.ca.parent
        found = [d / "ca.key", d / "ca" / "ca.key", *sorted((d / "clients").glob("*.key"))]
        return [str(p.relative_to(d)) for p in found if p.is_file()]


def bin_dir() -> Path:
    """The ``bin/`` of the environment this Python runs in: where flwr's console scripts are.

    Not resolved: a venv's ``bin/python`` is a link to the base interpreter, whose directory is not the venv's."""
    return Path(sys.executable).parent


def flower_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PATH", "")
    env["PATH"] = os.pathsep.join([str(bin_dir()), *(p for p in path.split(os.pathsep) if p)])
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_HOME=str(home),
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL=_SUPEREXEC_POLL,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port), with a clear error."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedloomError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9092 or 0.0.0.0:9092")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind to port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_bindable(host: str, port: int, flag: str) -> None:
    """Refuse early, with the reason, an address this machine cannot listen on (in use, not ours)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise FedloomError(f"{flag} {host}:{port}: cannot listen there ({e.strerror})") from None


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Whether something accepts connections on (host, port) within ``timeout`` seconds."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so ``finally`` blocks stop the Flower children
    and remove the work directory (the CLI then exits 130)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def flwr_tool(name: str) -> str:
    """The path of a flwr console script, next to this Python first (the same environment)."""
    here = bin_dir() / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FedloomError(f"'{name}' not found: install Flower with pip install 'fedloom[flower]'")
    return found


def start_process(cmd: list[str], env: dict[str, str], log_path: Path | None) -> subprocess.Popen:
    """Start ``cmd`` with its output appended to ``log_path`` (or discarded)."""
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - child owns it
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        if log_path is not None:
            out.close()


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM (flwr processes exit cleanly on it), then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def superlink_command(port: int, tls: TlsFiles | None, node_auth: bool = False) -> list[str]:
    """A SuperLink on ``127.0.0.1:port`` (behind ``proxy.py``). ``tls``: its loopback certificate, needed with
    ``node_auth`` (flwr refuses ``--enable-supernode-auth`` without TLS)."""
    cmd = [
        flwr_tool("flower-superlink"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    if tls is None:
        return [*cmd, "--insecure"]
    return [*cmd, "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]


def supernode_command(server: str, runtime_port: int, root_cert: Path | None, key: Path | None = None) -> list[str]:
    """A SuperNode whose ClientApp runs outside it, in the ``fedloom client`` process (``executor.py``)."""
    cmd = [
        flwr_tool("flower-supernode"),
        "--superlink",
        server,
        "--isolation",
        "process",
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
    ]
    if key is not None:  # Flower's SuperNode authentication: every Fleet request signed with this key
        cmd += ["--auth-supernode-private-key", str(key)]
    return [*cmd, "--insecure"] if root_cert is None else [*cmd, "--root-certificates", str(root_cert)]


_PYPROJECT = """\
# Generated by `fedloom server`: the Flower app of one fedloom federation. Do not edit.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedloom-app"
version = "1.0.0"
description = "fedloom federation {name}"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedloom"

[tool.flwr.app.components]
serverapp = "{package}.server_app:app"
clientapp = "{package}.client_app:app"

[tool.flwr.app.config]
job = {job}
"""


def write_app(app_dir: Path, name: str, job_file: Path) -> Path:
    """Write the Flower app: a pyproject and two one-line modules re-exporting fedloom's apps."""
    pkg = app_dir / APP_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(
        _PYPROJECT.format(package=APP_PACKAGE, name=name, job=json.dumps(str(job_file))), encoding="utf-8"
    )
    (pkg / "__init__.py").write_text('"""Generated by fedloom."""\n', encoding="utf-8")
    for part in ("server_app", "client_app"):  # `app = ...`: flwr checks the attribute by reading the source
        (pkg / f"{part}.py").write_text(f"from fedloom.flower import {part}\n\napp = {part}.app\n", encoding="utf-8")
    return app_dir


def write_connection(home: Path, name: str, address: str, root_cert: Path | None) -> None:
    """Name the local SuperLink in ``$FLWR_HOME/config.toml`` so ``flwr run APP NAME`` can reach it."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f"address = {json.dumps(address)}"]
    lines.append("insecure = true" if root_cert is None else f"root-certificates = {json.dumps(str(root_cert))}")
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
