"""Attacks on a deployed federation's network side, as an outsider or a rogue client would try them.

Each test reproduces one finding of the attack review (issue 9) against real ``fedloom server`` processes on
loopback, or against the piece that stops it, and checks that it is refused:

- a foreign ``flwr run`` (its ServerApp would run code on the server machine) and ``flwr ls`` from another
  ``FLWR_HOME`` against the public address, with and without TLS;
- an impostor node: client 1's valid registered key claiming to be client 0, and a key nobody registered.

The update-validation and key-holder attacks belong with the round and the secure stages.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower runtime needs the optional extra: pip install 'fedloom[flower]'")

import httpx  # noqa: E402

from fedloom.cli import main  # noqa: E402
from fedloom.flower.identity import (  # noqa: E402
    Registry,
    b64_public_pem,
    generate_key,
    hello_statement,
    sign,
    write_private_key,
)
from fedloom.flower.local import LocalFederation  # noqa: E402
from fedloom.flower.nodes import Admission  # noqa: E402
from fedloom.flower.proxy import FLEET_PATHS, FleetProxy  # noqa: E402

SMALL = {
    "name": "iris-attack", "model_name": "fnn", "hidden": [16], "type": "iris", "no_models": 3, "k": 3,
    "local_epochs": 1, "batch_size": 10, "lr": 0.3, "momentum": 0.5, "seed": 0, "global_epochs": 1,
    "runtime": {"round_timeout": 10, "min_clients": 1},
}  # fmt: skip


# --- the pieces, without processes -------------------------------------------------------------------
def test_proxy_allows_exactly_the_installed_fleet_routes():
    from flwr.superlink.routers.fleet.router import router

    assert FLEET_PATHS == {r.path for r in router.routes}


def _proxy_call(proxy: FleetProxy, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(proxy), base_url="http://proxy") as c:
            return await c.request(method, path, headers=headers or {}, content=b"body")

    return asyncio.run(go())


def test_proxy_refuses_control_runtime_and_unregistered_keys():
    seen = []

    async def superlink(scope, receive, send):  # stands for the SuperLink behind the proxy
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mine, stranger = generate_key(), generate_key()
    refused = []
    proxy = FleetProxy("http://link", registry=Registry({0: mine.public_key()}), on_refuse=lambda *a: refused.append(a))
    proxy.client = httpx.AsyncClient(transport=httpx.ASGITransport(superlink), base_url="http://link")
    signed = {"flwr-public-key": b64_public_pem(mine.public_key())}
    for method, path in [
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/runtime/get-nodes"),
        ("GET", "/docs"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/../control/list-runs"),
    ]:
        assert _proxy_call(proxy, method, path, signed).status_code == 404, path
    assert seen == []  # none of it reached the SuperLink
    assert _proxy_call(proxy, "POST", "/v1/fleet/pull-messages", signed).text == "ok"
    other = {"flwr-public-key": b64_public_pem(stranger.public_key())}
    for _ in range(3):
        assert _proxy_call(proxy, "POST", "/v1/fleet/activate-node", other).status_code == 401
    assert _proxy_call(proxy, "POST", "/v1/fleet/activate-node").status_code == 401  # no key at all
    assert seen == ["/v1/fleet/pull-messages"]
    assert len(refused) == 2 and "not in the server's client registry" in refused[0][1]  # one line per key


def test_admission_binds_each_client_to_its_key_and_nonce():
    keys = [generate_key() for _ in range(2)]
    adm = Admission(Registry({c: k.public_key() for c, k in enumerate(keys)}), {"11": 0, "12": 1})

    def hello(node: int, cid: int, key, nonce: bytes | None = None) -> dict:
        g = adm.greeting(node)
        msg = hello_statement(nonce or g["nonce"], g["node_id"], cid, "h")
        return {"client_id": cid, "config_hash": "h", "signature": sign(key, msg)}

    assert adm.check(11, hello(11, 0, keys[0])) == ""
    assert adm.check(12, hello(12, 1, keys[1])) == ""
    assert "registered for client 1" in adm.check(12, hello(12, 0, keys[1]))  # client 1's node claims 0
    assert "not signed with client 0's" in adm.check(11, hello(11, 0, keys[1]))  # someone else's signature
    assert "not signed" in adm.check(11, hello(11, 0, keys[0], nonce=b"an old greeting's nonce"))  # replay
    assert "not bound" in adm.check(13, hello(13, 0, keys[0]))  # a node Flower did not bind to any key
    assert Admission().check(99, {"client_id": 5}) == ""  # --insecure: no registry, nobody is checked


# --- real processes on loopback ----------------------------------------------------------------------
_FOREIGN = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "foreign-app"
version = "1.0.0"
description = "not fedloom"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "foreign.server_app:app"
clientapp = "foreign.client_app:app"
"""


def _foreign_app(root: Path, marker: Path) -> Path:
    """A minimal Flower app whose ServerApp writes ``marker`` on whatever machine runs it."""
    pkg = root / "foreign"
    pkg.mkdir(parents=True)
    (root / "pyproject.toml").write_text(_FOREIGN, encoding="utf-8")
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "server_app.py").write_text(
        "from flwr.serverapp import ServerApp\n\napp = ServerApp()\n\n\n@app.main()\ndef main(grid, context):\n"
        f"    open({str(marker)!r}, 'w').write('ran')\n",
        encoding="utf-8",
    )
    (pkg / "client_app.py").write_text("from flwr.clientapp import ClientApp\n\napp = ClientApp()\n", encoding="utf-8")
    return root


def _wait_for(proc, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in proc.output():
            return
        assert proc.alive(), proc.output()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{proc.output()[-3000:]}")


def _succeeded(proc: subprocess.CompletedProcess) -> bool:
    """``flwr ... --format json`` exits 0 even when it fails: its answer says."""
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        return False
    return proc.returncode == 0 and bool(answer.get("success", True))


def _outsider(tmp_path: Path, address: str, ca: Path | None) -> dict[str, str]:
    """An environment with its own FLWR_HOME naming the public address (what an outsider would write)."""
    home = tmp_path / "outsider-home"
    home.mkdir()
    conn = "insecure = true" if ca is None else f"root-certificates = {json.dumps(str(ca))}"
    config = f'[superlink]\ndefault = "target"\n\n[superlink.target]\naddress = "{address}"\n{conn}\n'
    (home / "config.toml").write_text(config, encoding="utf-8")
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_foreign_flwr_run_and_ls_on_the_public_address_fail(tmp_path, tls):
    tls_dir = None
    if tls:
        assert main(["certs", str(tmp_path / "tls"), "--clients", "3"]) == 0
        tls_dir = tmp_path / "tls"
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(SMALL), encoding="utf-8")
    with LocalFederation(conf, tmp_path / "fed", tls_dir=tls_dir) as fed:
        server = fed.server()
        _wait_for(server, "fedloom server: federation", 90)  # its own ServerApp was submitted (on loopback)
        env = _outsider(tmp_path, fed.address, tls_dir / "ca.pem" if tls else None)
        marker = tmp_path / "pwned"
        app = _foreign_app(tmp_path / "foreign", marker)
        flwr = str(Path(sys.executable).parent / "flwr")
        run = subprocess.run([flwr, "run", str(app), "target", "--format", "json"], env=env, capture_output=True)
        ls = subprocess.run([flwr, "ls", "target", "--format", "json"], env=env, capture_output=True)
        time.sleep(2.0)  # a submitted ServerApp starts within a second (SuperExec polls every 0.05 s)
        assert not _succeeded(run) and "404" in run.stdout.decode(), run.stdout[-2000:]
        assert not _succeeded(ls) and "404" in ls.stdout.decode(), ls.stdout[-2000:]
        assert not marker.exists()
        assert server.alive()  # and the federation itself is untouched


@pytest.mark.slow
def test_impostor_and_unregistered_nodes_are_refused_and_named(tmp_path):
    assert main(["certs", str(tmp_path / "tls"), "--clients", "3"]) == 0
    stranger = tmp_path / "stranger.key"
    write_private_key(stranger, generate_key())
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(SMALL), encoding="utf-8")
    with LocalFederation(conf, tmp_path / "fed", tls_dir=tmp_path / "tls") as fed:
        server = fed.server("--wait", "30")  # long enough for the honest client to start on a cold machine
        _wait_for(server, "fedloom server: federation", 90)  # up: the stranger's first try meets the proxy
        honest = fed.client(2)
        impostor = fed.client(0, key=tmp_path / "tls" / "clients" / "1.key", name="impostor")  # client 1's key
        outsider = fed.client(1, key=stranger, name="stranger")
        assert server.wait(150) == 0, server.output()[-3000:]
        assert honest.wait(30) == 0, honest.output()[-2000:]
        assert outsider.wait(60) == 2 and "refused this client's authentication" in outsider.output()
        rows = fed.rows()
        assert rows[0]["clients"] == [2] and rows[0]["applied"]  # the impostor trained for nobody
        log = (fed.out / "server.log").read_text(encoding="utf-8")
        assert "claims to be client 0, but its key is registered for client 1" in log
        assert "not in the server's client registry" in log
        summary = json.loads((fed.out / "summary.json").read_text(encoding="utf-8"))
        reasons = " | ".join(r["reason"] for r in summary["refusals"])
        assert "registered for client 1" in reasons and "not in the server's client registry" in reasons
        assert not summary["health"].get("0", {}).get("connected")
        assert impostor.alive()  # never admitted, never told the run is over: the fixture ends it


def test_key_holders_are_named_by_the_config_not_by_the_client(tmp_path, monkeypatch):
    """A client that says it holds the secret key is asked to decrypt only if secure.key_holders names it."""
    from flwr.app import Message
    from flwr.supercore.task_identity import TaskIdentity

    from fedloom.config import build_config
    from fedloom.errors import ConfigError
    from fedloom.flower.coordinator import Coordinator
    from fedloom.flower.protocol import pack

    for name in ("_task_id", "_run_id", "_node_id"):  # what a running ServerApp has set before making messages
        monkeypatch.setattr(TaskIdentity, name, 1)
    keys = tmp_path / "keys"
    assert main(["keygen", str(keys), "--key-bits", "1024", "--allow-weak-keys"]) == 0
    (keys / "paillier_secret.json").unlink()  # the server's copy: public key only
    secure = {"method": "paillier", "key_bits": 1024, "allow_weak_keys": True, "key_dir": str(keys), "weight_ref": 40.0}
    cfg = build_config({**SMALL, "secure": {**secure, "key_holders": [1]}})
    lines = []
    coord = Coordinator({"config": cfg.to_dict(), "out": str(tmp_path / "out")}, None, lines.append)
    for node, cid in [(10, 0), (11, 1)]:  # both say "key holder"
        coord.book.hello_pending[f"m{node}"] = (node, time.monotonic())
        fields = {
            "config_hash": coord.hash, "client_id": cid, "ok": True, "reason": "", "num_samples": 40,
            "batch_size": 10, "cpus": 1, "free_mb": 100.0, "need_mb": 1.0, "key_holder": True,
            "key_fingerprint": coord.secure.fingerprint, "signature": b"", "federation_json": "",
        }  # fmt: skip
        coord._on_hello(
            f"m{node}", Message(pack("hello", fields, reply=True), dst_node_id=node, message_type="query.hello")
        )
    assert coord.key_holders() == [(1, 11)]
    assert any("client 0 says it holds the secret key but is not in secure.key_holders" in line for line in lines)
    with pytest.raises(ConfigError, match="secure.key_holders"):
        build_config({**SMALL, "secure": {**secure, "key_holders": [3]}})  # no_models is 3: ids 0..2
