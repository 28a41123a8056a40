"""``fedloom server``: a SuperLink behind a Fleet-only proxy, the generated Flower app, and the run's progress.

Steps: check the config and the output directory → write the Flower app into a private work directory (with
its own ``FLWR_HOME``) → start ``flower-superlink`` on ``127.0.0.1`` and a private port (its Control and
Runtime APIs are then reachable from this machine only) → register the clients' public keys with it
(``--tls-dir`` with ``clients.json``: Flower's SuperNode authentication, each key bound to one node id) →
start the proxy (``proxy.py``) on ``--address``: Fleet API only, TLS ending there → submit the app to the
loopback SuperLink (``flwr run``) → show ``server.log`` as the ServerApp writes it, until the job's status
file says finished (exit 0) or failed (exit 2 for a user error, 1 otherwise) → stop everything.

With client authentication the SuperLink itself runs TLS on loopback with a throwaway certificate made at
each start (flwr 1.42 refuses ``--enable-supernode-auth`` without TLS); the proxy checks it. The SuperLink
keeps its state in memory: after a crash, ``--resume`` starts a fresh one and continues from the run
directory's checkpoint; clients reconnect by themselves.
"""

from __future__ import annotations

import json
import shutil
import ssl
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
from .identity import Registry
from .launch import (
    TlsFiles,
    check_bindable,
    flower_env,
    flwr_tool,
    free_port,
    parse_address,
    start_process,
    stop_process,
    superlink_command,
    terminate_as_interrupt,
    wait_port,
    write_app,
    write_connection,
)

__all__ = ["serve", "check_out_dir", "register_clients"]

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


def register_clients(port: int, ca: Path, registry: Registry) -> dict[str, int]:
    """Register every client key with the loopback SuperLink's Control API: Flower node id -> client id."""
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=E0611
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    client = ControlHttpClient.from_server_address(
        f"127.0.0.1:{port}", False, str(ca), [RuntimeVersionHttpInterceptor(component_name="flwr CLI")]
    )
    nodes: dict[str, int] = {}
    try:
        for cid, key in sorted(registry.keys.items()):
            pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            try:
                res = client.RegisterNode(RegisterNodeRequest(public_key=pem))
            except Exception as e:  # noqa: BLE001 - flwr raises httpx / its own errors
                raise FedloomError(f"clients.json client {cid}: the SuperLink did not register its key ({e})") from None
            nodes[str(res.node_id)] = cid
    finally:
        client.close()
    return nodes


class _Refusals:
    """Where the proxy reports a node it refused: a line in ``server.log`` and a JSON line the ServerApp adds
    to ``refusals`` in ``summary.json``."""

    def __init__(self, log: Path, jsonl: Path):
        self.log, self.jsonl = log, jsonl

    def __call__(self, key: str, line: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        row = {"node": None, "client": None, "key": key, "reason": line, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _start_link(work: Path, env: dict, tls: TlsFiles | None, out: Path):
    """The loopback SuperLink: (process, port, its CA or None, node id -> client id)."""
    from .certs import make_certs

    registry = Registry.load(tls.registry) if tls is not None and tls.registry is not None else None
    link_tls = None
    if registry is not None:  # flwr: SuperNode authentication needs TLS, so the loopback hop gets its own
        make_certs(work / "link", days=30)
        link_tls = TlsFiles.from_dir(work / "link", registry=False)
    port = free_port()
    link = start_process(superlink_command(port, link_tls, registry is not None), env, out / "logs" / "superlink.log")
    if not wait_port("127.0.0.1", port, _START_TIMEOUT, link):
        stop_process(link)
        raise FedloomError(f"the SuperLink did not start on 127.0.0.1:{port} (see {out}/logs/superlink.log)")
    nodes = register_clients(port, link_tls.ca, registry) if registry is not None else {}
    return link, port, link_tls, registry, nodes


def _submit(app_dir: Path, env: dict) -> None:
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


def _resolve_key_dir(cfg: Config) -> Config:
    """The ServerApp runs elsewhere: an absolute ``secure.key_dir``, checked now (it stays on this machine)."""
    if cfg.secure.method == "none":
        return cfg
    from .secure import public_key_fingerprint

    cfg = cfg.model_copy(
        update={"secure": cfg.secure.model_copy(update={"key_dir": str(Path(cfg.secure.key_dir).resolve())})}
    )
    public_key_fingerprint(cfg)  # only paillier_public.json: the server never reads a secret key
    return cfg


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
    from .proxy import FleetProxy, ProxyServer

    require_flwr()
    check_deployable(cfg)
    host, port = parse_address(address, "--address")
    cfg = _resolve_key_dir(cfg)
    out = out.resolve()
    check_out_dir(out, cfg, resume)
    check_bindable(host, port, "--address")
    terminate_as_interrupt()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fedloom-server-"))
    home = work / "flwr-home"
    status = work / "status.json"
    env = flower_env(home)
    log = out / "server.log"
    offset = log.stat().st_size if log.is_file() else 0
    link = proxy = None
    try:
        link, link_port, link_tls, registry, nodes = _start_link(work, env, tls, out)
        job = {"config": cfg.to_dict(), "out": str(out), "resume": resume, "status": str(status)}
        job |= {"startup_wait": startup_wait, "refusals_file": str(work / "refused.jsonl")}
        if registry is not None:  # who may join as which client, for the ServerApp's admission checks
            job["auth"] = {"clients": registry.texts(), "nodes": nodes}
        write_json(work / "job.json", job)
        app_dir = write_app(work / "app", cfg.name, work / "job.json")
        write_connection(home, _CONNECTION, f"127.0.0.1:{link_port}", link_tls.ca if link_tls else None)
        upstream = f"{'https' if link_tls else 'http'}://127.0.0.1:{link_port}"
        verify = ssl.create_default_context(cafile=str(link_tls.ca)) if link_tls else False
        fleet = FleetProxy(upstream, verify, registry, _Refusals(log, work / "refused.jsonl"))
        proxy = ProxyServer(fleet, host, port, tls.cert if tls else None, tls.key if tls else None)
        if not proxy.start():
            raise FedloomError(f"--address {address}: the proxy could not listen there")
        _submit(app_dir, env)
        if not quiet:
            mode = "TLS" if tls else "insecure (no TLS)"
            auth = f", {len(registry.keys)} registered client keys" if registry else ", clients not authenticated"
            print(f"fedloom server: federation {cfg.name} on {host}:{port} (Fleet API only), {mode}{auth}; out {out}")
            for name in tls.private_keys_nearby() if tls else []:
                print(f"warning: {tls.ca.parent / name} is a private key the server does not need; keep it elsewhere")
            sys.stdout.flush()
        return _follow(log, offset, status, link, quiet)
    finally:
        if proxy is not None:
            proxy.stop()
        stop_process(link)
        shutil.rmtree(work, ignore_errors=True)
