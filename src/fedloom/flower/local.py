"""A whole federation on this machine: ``fedloom server`` and ``fedloom client`` processes on loopback.

For tests, ``bench/deploy.py`` and trying the deployment out before using several machines. Each process
runs in its own session (process group), so :meth:`LocalProcess.kill` takes its Flower children down with it,
as a crash of that machine would; :meth:`LocalFederation.close` ends every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .launch import free_port

__all__ = ["LocalProcess", "LocalFederation"]


class LocalProcess:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name, self.cmd, self.log = name, cmd, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the fedloom process and its Flower children)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.proc.wait()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.is_file() else ""


class LocalFederation:
    """Start a server and clients of one config on 127.0.0.1; ``close()`` (or ``with``) ends them all."""

    def __init__(self, config: str | Path, workdir: str | Path | None = None, tls_dir: str | Path | None = None):
        self.config = Path(config)
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fedloom-local-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tls_dir = Path(tls_dir) if tls_dir else None
        self.out = self.dir / "run"
        self.procs: list[LocalProcess] = []
        self.env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
        self.env["FLWR_HOME"] = str(self.dir / "flwr-home")
        # work directories of killed processes (which cannot clean up) stay in here, not in /tmp
        self.env["TMPDIR"] = str(self.dir / "tmp")
        (self.dir / "tmp").mkdir(exist_ok=True)

    def _start(self, name: str, args: list[str]) -> LocalProcess:
        log = self.dir / f"{name}.log"
        p = LocalProcess(name, [sys.executable, "-m", "fedloom.cli", *args], self.env, log)
        self.procs.append(p)
        return p

    def server(self, *extra: str, resume: bool = False) -> LocalProcess:
        mode = ["--insecure"] if self.tls_dir is None else ["--tls-dir", str(self.tls_dir)]
        args = ["server", "-c", str(self.config), "--address", self.address, "--out", str(self.out), *mode]
        return self._start("server", [*args, *(["--resume"] if resume else []), *extra])

    def client(
        self,
        cid: int,
        *extra: str,
        config: str | Path | None = None,
        name: str | None = None,
        key: str | Path | None = None,
    ) -> LocalProcess:
        """Client ``cid``; with TLS it signs with ``key`` (default: its own key, ``clients/<cid>.key``)."""
        mode = ["--insecure"]
        if self.tls_dir is not None:
            key = key or self.tls_dir / "clients" / f"{cid}.key"
            mode = ["--root-cert", str(self.tls_dir / "ca.pem"), "--key", str(key)]
        cfg = str(config or self.config)
        return self._start(
            name or f"client{cid}",
            ["client", "-c", cfg, "--server", self.address, "--client-id", str(cid), *mode, *extra],
        )

    def rows(self) -> list[dict]:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def wait_rounds(self, n: int, timeout: float) -> list[dict]:
        """Block until ``metrics.jsonl`` has ``n`` rows (or raise TimeoutError)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rows = self.rows()
            if len(rows) >= n:
                return rows
            time.sleep(0.2)
        raise TimeoutError(f"{n} rounds not done within {timeout} s (have {len(self.rows())})")

    def close(self) -> None:
        for p in self.procs:
            if p.alive():
                p.kill(signal.SIGTERM)
        end = time.monotonic() + 5
        for p in self.procs:
            try:
                p.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill(signal.SIGKILL)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
