"""``fedloom client``: one warm process that trains, and a SuperNode child that talks to the server.

Start: load the config and this client's data, build the model, check resources (lower the batch size or
refuse, exit 2) → start the in-process executor (``executor.py``) → start ``flower-supernode`` in process
isolation pointing at ``--server``. Then supervise: when the SuperNode exits (server restarted, network
lost, SuperLink no longer knows the node), start it again after a backoff of 1, 2, 4 … 30 s; a new node
says hello to the server again and joins the next rounds. Flower's own heartbeat (every 30 s) tells the
SuperLink the node is alive; this process logs one line per round and a "still waiting" line when the
server has been silent for a while. Exit 0 when the server says the run is finished, 2 when the server runs
a different federation config (the reason names the differing fields).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..errors import FedloomError
from . import check_deployable, require_flwr
from .launch import (
    flower_env,
    free_port,
    parse_address,
    start_process,
    stop_process,
    supernode_command,
    terminate_as_interrupt,
)

__all__ = ["join", "Backoff"]

_SILENT_NOTE = 60.0  # seconds without a message before a "still waiting" line
_SETTLE = 1.5  # seconds for the SuperNode to push our last answer (it looks for answers every 0.5 s)


class Backoff:
    """1, 2, 4 … ``cap`` seconds; back to 1 once a connection has lasted ``reset_after`` seconds."""

    def __init__(self, cap: float = 30.0, reset_after: float = 60.0):
        self.cap, self.reset_after, self.delay = cap, reset_after, 1.0

    def next(self, lasted: float) -> float:
        if lasted >= self.reset_after:
            self.delay = 1.0
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay


def _check_refused(server: str, root_cert: Path | None, public_b64: str | None) -> None:
    """Exit 2 when the server's proxy refuses this client's key: it will not change its mind, and a
    refused SuperNode only retries quietly. One request with the key as Flower sends it (no body needed:
    the proxy checks the key first)."""
    if root_cert is None:  # without TLS the server authenticates nobody
        return
    import ssl

    import httpx

    headers = {"flwr-public-key": public_b64} if public_b64 else {}
    try:
        r = httpx.post(
            f"https://{server}/v1/fleet/activate-node",
            headers=headers,
            content=b"",
            verify=ssl.create_default_context(cafile=str(root_cert)),
            timeout=10,
        )
    except httpx.HTTPError:
        return  # not reachable now: the SuperNode will say so and retry
    if r.status_code == 401 and r.text.startswith("unauthorized: this client"):
        raise FedloomError(f"the server refused this client's authentication: {r.text.strip()[14:]}")


def _logger(cid: int, quiet: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        if not quiet:
            print(f"{time.strftime('%H:%M:%S')} client {cid}: {line}", file=sys.stderr, flush=True)

    return log


def _secure_identity(worker, cfg: Config) -> None:
    """Secure aggregation needs signed contributions (``secure/guard.py``): every client signs with its key, and
    a key holder verifies them against the registry the operator gave it in ``secure.key_dir``."""
    from .identity import REGISTRY_FILE, Registry

    if worker.key is None:
        raise FedloomError(
            "secure aggregation over Flower needs --key (and --root-cert): the key holder decrypts only "
            "contributions signed by registered clients (`fedloom certs DIR --clients N` writes the keys)"
        )
    if worker.key_holder:
        path = Path(cfg.secure.key_dir) / REGISTRY_FILE
        if not path.is_file():
            raise FedloomError(
                f"key holder: no {path}; copy {REGISTRY_FILE} from `fedloom certs DIR --clients N` into "
                "secure.key_dir: a key holder decrypts only what it can verify"
            )
        worker.registry = Registry.load(path)


def join(
    cfg: Config,
    server: str,
    client_id: int,
    data: str | None,
    root_cert: Path | None,
    quiet: bool = False,
    key: Path | None = None,
) -> int:
    """Serve as client ``client_id`` of the federation at ``server`` until it finishes; returns the exit code.

    ``key``: this client's private key: Flower's SuperNode authentication signs every request with it, and
    the worker signs its hello (``identity.py``)."""
    require_flwr()
    check_deployable(cfg)
    parse_address(server, "--server")
    if root_cert is not None and not root_cert.is_file():
        raise FedloomError(f"--root-cert {root_cert}: file not found (the server's ca.pem from `fedloom certs`)")
    from .identity import b64_public_pem, load_private_key

    private = load_private_key(key) if key is not None else None
    public_b64 = b64_public_pem(private.public_key()) if private is not None else None
    from .client_app import make_client_app
    from .executor import InProcessExecutor
    from .worker import ClientWorker

    log = _logger(client_id, quiet)
    worker = ClientWorker(cfg, client_id, data, log)
    worker.key = private
    if worker.secure is not None:
        _secure_identity(worker, cfg)
    log(f"{worker.client.num_samples} rows, batch size {worker.spec.batch_size}, config hash {worker.hash}")
    if worker.secure is not None:
        role = "key holder (decrypts aggregates only)" if worker.key_holder else "public key only"
        log(f"secure aggregation {cfg.secure.method}: {role}, public key fingerprint {worker.key_fingerprint}")

    def handle(kind: str, fields: dict) -> dict:
        reply = worker.handle(kind, fields)
        if kind == "train":
            what = (
                f"loss {reply['train_loss']:.4f} ({reply['train_seconds']:.3f} s)" if reply["ok"] else reply["reason"]
            )
            log(f"round {reply['round']}: {what}")
        elif kind == "hello":
            log("joined the federation" if reply["ok"] else reply["reason"])
        return reply

    terminate_as_interrupt()
    work = Path(tempfile.mkdtemp(prefix=f"fedloom-client{client_id}-"))
    env = flower_env(work / "flwr-home")
    port = free_port()
    executor = InProcessExecutor(f"127.0.0.1:{port}", make_client_app(handle), log=log)
    executor.start()
    node = None
    backoff = Backoff()
    try:
        while True:
            _check_refused(server, root_cert, public_b64)
            node = start_process(supernode_command(server, port, root_cert, key), env, work / "supernode.log")
            started = last_note = time.monotonic()
            log(f"connecting to {server}")
            while node.poll() is None:
                if worker.finished.is_set() or worker.refused:
                    time.sleep(_SETTLE)  # let the SuperNode deliver the answer first
                    if worker.refused:
                        raise FedloomError(worker.refused)
                    log("the server finished the run")
                    return 0
                now = time.monotonic()
                if now - worker.last_message > _SILENT_NOTE and now - last_note > _SILENT_NOTE:
                    log(f"no message from the server for {now - worker.last_message:.0f} s; still waiting")
                    last_note = now
                time.sleep(0.1)
            delay = backoff.next(time.monotonic() - started)
            code = node.returncode
            log(f"lost the connection to {server} (SuperNode exited with code {code}); retrying in {delay:.0f} s")
            time.sleep(delay)
    finally:
        executor.stop()
        stop_process(node)
        shutil.rmtree(work, ignore_errors=True)
