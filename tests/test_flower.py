"""The Flower runtime: the pieces alone (fast), then real server and client processes on loopback (slow).

Slow tests start ``fedloom server`` and ``fedloom client`` processes on 127.0.0.1 with free ports; every
process is started through :class:`fedloom.flower.local.LocalFederation`, whose ``close()`` (run by the
fixture) ends them all. Rounds cost ~3.5 s each (the flwr 1.42 SuperNode's polling floor), so the configs
are small: iris, fnn [16], 3 clients.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import signal
import socket
import stat
import time

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the Flower runtime needs the optional extra: pip install 'fedloom[flower]'")

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import fedloom.flower  # noqa: E402
from fedloom.cli import main  # noqa: E402
from fedloom.config import build_config  # noqa: E402
from fedloom.flower.fingerprint import config_diff, config_hash, federation_dict  # noqa: E402
from fedloom.flower.local import LocalFederation  # noqa: E402
from fedloom.flower.protocol import VERSION, ProtocolError, pack, unpack  # noqa: E402
from fedloom.flower.worker import ClientWorker  # noqa: E402
from fedloom.local_algorithm import straggler_plan  # noqa: E402
from fedloom.round import Task  # noqa: E402
from fedloom.simulation import Federation, run_federation  # noqa: E402

SMALL = {
    "name": "iris-deploy", "model_name": "fnn", "hidden": [16], "type": "iris", "no_models": 3, "k": 3,
    "local_epochs": 3, "batch_size": 10, "lr": 0.3, "momentum": 0.5, "seed": 0,
    "runtime": {"round_timeout": 10, "min_clients": 2},
}  # fmt: skip


def _write(path, raw: dict):
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_every_flower_module_imports():
    names = [m.name for m in pkgutil.walk_packages(fedloom.flower.__path__, "fedloom.flower.")]
    assert {"fedloom.flower.server_app", "fedloom.flower.executor", "fedloom.flower.cli"} <= set(names)
    for name in names:
        importlib.import_module(name)


# --- fingerprint ------------------------------------------------------------------------------------
def test_hash_ignores_per_process_fields_and_sees_federation_fields():
    base = build_config(SMALL)
    local = build_config({**SMALL, "runtime": {"threads": 1, "engine": "sequential", "round_timeout": 99}})
    assert config_hash(base) == config_hash(local)
    other = build_config({**SMALL, "lr": 0.1})
    assert config_hash(base) != config_hash(other)
    diff = config_diff(federation_dict(other), federation_dict(base))
    assert diff == ["lr: 0.1 here, 0.3 there"]
    assert "runtime" not in federation_dict(base)


# --- protocol ---------------------------------------------------------------------------------------
def test_protocol_round_trip_and_rejections():
    fields = {"config_hash": "abc", "round": 3, "payload": b"\x00\x01", "epochs": 2, "control": b""}
    assert unpack("train", pack("train", fields)) == {"v": VERSION, **fields}
    with pytest.raises(ProtocolError, match="missing field"):
        pack("train", {"config_hash": "abc", "round": 3})
    with pytest.raises(ProtocolError, match="'round' must be int"):
        pack("train", {**fields, "round": True})  # a bool is not an int on the wire
    with pytest.raises(ProtocolError, match="'payload' must be bytes"):
        pack("train", {**fields, "payload": "text"})
    with pytest.raises(ProtocolError, match="protocol version"):
        pack("train", {**fields, "v": 99})
    with pytest.raises(ProtocolError, match="unknown message kind"):
        pack("evaluate", fields)


# --- the server's book of nodes, the client's backoff --------------------------------------------------
def test_node_book_admits_replaces_suspects_and_forgets():
    from fedloom.flower.nodes import NodeBook

    book = NodeBook()
    assert book.to_greet({11, 12}, now=100.0, retry_after=20) == [11, 12]
    book.hello_sent.update({11: 100.0, 12: 100.0})
    assert book.admit(11, 0) is None and book.admit(12, 1) is None
    assert book.active() == {0: 11, 1: 12}
    book.suspect(12)  # let a round time out
    assert book.active() == {0: 11}
    assert book.to_greet({11, 12}, now=110.0, retry_after=20) == []  # greeted recently
    assert book.to_greet({11, 12}, now=130.0, retry_after=20) == [12]  # suspect: greet again
    assert book.admit(13, 1) == 12  # client 1 came back on a new node
    assert book.active() == {0: 11, 1: 13} and book.presence[1].connects == 2
    assert book.forget_offline({13}) == [0] and not book.presence[0].connected
    book.refuse(14, 0, "config differs")
    assert 14 not in book.to_greet({13, 14}, now=200.0, retry_after=20)
    restored = NodeBook()
    restored.load(book.state())
    assert restored.presence[1].connects == 2 and restored.refusals[0]["reason"] == "config differs"


def test_backoff_doubles_to_a_cap_and_resets_after_a_long_connection():
    from fedloom.flower.client_main import Backoff

    b = Backoff(cap=8, reset_after=60)
    assert [b.next(lasted=1) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.next(lasted=120) == 1


# --- the warm client ----------------------------------------------------------------------------------
def test_worker_trains_like_the_core_client_and_repeats_a_round_exactly():
    cfg = build_config({**SMALL, "compression": {"up": "topk:0.2+ef"}})
    fed = Federation.build(cfg)
    worker = ClientWorker(cfg, 1, log=lambda s: None)
    down, received = fed.channel.down(fed.server.global_vec, 4)
    req = {
        "v": VERSION,
        "config_hash": config_hash(cfg),
        "round": 4,
        "payload": down,
        "epochs": cfg.local_epochs,
        "control": b"",
    }
    first = worker.handle("train", req)
    assert first["ok"] and first["num_samples"] == fed.clients[1].num_samples
    # the same numbers as the core Client and Channel of the simulation
    update = fed.clients[1].local_train(fed.model, received, fed.spec, cfg.seed, 4)
    (expected,) = fed.channel.up(update.diff[None], [1], 4)
    assert first["payload"] == expected
    # a resumed server asks for round 4 again: same payload, error-feedback residual not counted twice
    again = worker.handle("train", req)
    assert again["payload"] == first["payload"]
    assert torch.equal(worker.channel.state_dict()["1"], fed.channel.state_dict()["1"])


@pytest.mark.parametrize(
    "extra",
    [
        {"compression": {"down": "randk:0.5", "up": "q8"}},
        {"compression": {"down": "q4", "up": "topk:0.3+ef"}},
        {"compression": {"down": "mask:0.5", "up": "layers:0.5"}},
        {"compression": {"down": "topk:0.5+q8", "up": "randk:0.3+q4"}},
        {"compression": {"up": "sign+ef"}},
        {"algorithm": {"name": "fedprox", "mu": 0.1}, "compression": {"down": "fp16"}},
        {"algorithm": "scaffold", "runtime": {"stragglers": 0.5, "straggler_work": "partial"}},
        {"algorithm": "fednova", "runtime": {"stragglers": 0.5, "straggler_work": "partial"}},
    ],
    ids=[
        "randk-down",
        "q4-down-topk-ef-up",
        "mask-down-layers-up",
        "topk-q8-down-randk-q4-up",
        "sign-ef-up",
        "fedprox-fp16-down",
        "scaffold-stragglers",
        "fednova-stragglers",
    ],  # fmt: skip
)
def test_a_deployed_client_answers_what_the_simulated_client_answers(extra):
    """One round's answers, client by client: the worker a deployed client runs against the simulation's cohort,
    from the same broadcast and task (payload bytes, rows, steps, control bytes; the sequential engine, which
    both train with bit for bit). A seeded down codec once made them differ (the simulation decoded the
    broadcast with an upload's context)."""
    raw = {**SMALL, **extra, "no_models": 4, "k": 4, "runtime": {**SMALL["runtime"], **extra.get("runtime", {})}}
    raw["runtime"]["engine"] = "sequential"
    cfg = build_config(raw)
    fed = Federation.build(cfg)
    rnd = 2
    cohort = fed.server.sample(rnd)
    epochs, dropped = straggler_plan(cfg, rnd, cohort)
    task = Task(epochs, fed.round._control_down())
    down = fed.channel.broadcast(fed.server.global_vec, rnd)
    replies = fed.cohort.train(rnd, [c for c in cohort if c not in dropped], down, task)
    assert len(replies.answers) >= 2 and not replies.failed
    for a in replies.answers:
        worker = ClientWorker(cfg, a.client, log=lambda s: None)
        req = {"v": VERSION, "config_hash": config_hash(cfg), "round": rnd, "payload": down,
               "epochs": task.epochs.get(a.client, cfg.local_epochs), "control": task.control}  # fmt: skip
        got = worker.handle("train", req)
        assert got["ok"], got["reason"]
        assert (got["payload"], got["num_samples"], got["steps"], got["control"]) == (
            a.payload, a.num_samples, a.steps, a.control
        ), a.client  # fmt: skip


def test_worker_refuses_a_server_with_another_config():
    from fedloom.flower.nodes import Admission

    worker = ClientWorker(build_config(SMALL), 0, log=lambda s: None)
    theirs = build_config({**SMALL, "lr": 0.1, "local_epochs": 2})
    hello = {"config_hash": config_hash(theirs), "classes": [], "nonce": b"n", "node_id": "7"}
    reply = worker.handle("hello", {**hello, "key_fingerprint": ""})
    assert not reply["ok"] and "different federation config" in worker.refused
    # the server sends no config; the refusing client sends its own, and the server's log names the fields
    note = Admission(federation=federation_dict(theirs)).config_note(reply)
    assert "lr: 0.1 here, 0.3 there" in note and "local_epochs" in note


def test_worker_with_its_own_csv_file(tmp_path):
    cfg = build_config(SMALL)
    fed = Federation.build(cfg)
    idx = fed.data.client_indices(2).numpy()
    x, y = fed.data.x_train[idx].numpy(), fed.data.y_train[idx].numpy()
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.6f}" for v in row) + f",{fed.data.classes[k]}" for row, k in zip(x, y)]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    worker = ClientWorker(cfg, 2, path, log=lambda s: None)
    greeting = {"config_hash": worker.hash, "classes": fed.data.classes, "key_fingerprint": "", "nonce": b"n"}
    greeting["node_id"] = "7"
    hello = worker.handle("hello", greeting)
    assert hello["ok"] and hello["num_samples"] == len(idx)
    assert torch.equal(worker.data.y_train, torch.from_numpy(y))  # labels numbered as the server's classes
    down, _ = fed.channel.down(fed.server.global_vec, 1)
    reply = worker.handle(
        "train", {"config_hash": worker.hash, "round": 1, "payload": down, "epochs": cfg.local_epochs, "control": b""}
    )
    assert reply["ok"] and np.isfinite(reply["train_loss"])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,label\n1,2,3,4,tulip\n", encoding="utf-8")
    w2 = ClientWorker(cfg, 2, bad, log=lambda s: None)
    refused = w2.handle("hello", greeting)
    assert not refused["ok"] and "tulip" in refused["reason"]


# --- secure aggregation: keys, worker, coordinator (no processes) ----------------------------------------
SECURE = {"method": "paillier", "key_bits": 1024, "allow_weak_keys": True, "weight_ref": 40.0}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """``holder``: both key files and the client registry (a key holder's key_dir); ``public``: the public file
    only (the server's and the other clients'); ``other``: another key pair; ``tls``: certificates and the keys
    of clients 0..2 (secure aggregation over Flower signs every contribution)."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("holder", "other"):
        assert main(["keygen", str(root / name), "--key-bits", "1024", "--allow-weak-keys"]) == 0
    (root / "public").mkdir()
    shutil.copy(root / "holder" / "paillier_public.json", root / "public")
    assert main(["certs", str(root / "tls"), "--clients", "3"]) == 0
    shutil.copy(root / "tls" / "clients.json", root / "holder")
    return root


def _secure(raw: dict, key_dir, method: str = "paillier") -> dict:
    return {**raw, "secure": {**SECURE, "method": method, "key_dir": str(key_dir)}}


def test_check_deployable_allows_paillier_secagg_and_refuses_the_rest(keys, tmp_path, capsys):
    from fedloom.errors import FedloomError

    for method in ("paillier", "paillier-per-value"):
        fedloom.flower.check_deployable(build_config(_secure(SMALL, keys / "public", method)))
    refused = {
        "needs secure.key_dir": {**SMALL, "secure": SECURE},
        "supports paillier and paillier-per-value": {**SMALL, "secure": {"method": "ckks"}},
        "runs only in `fedloom run`": {
            **SMALL, "model_name": "logreg", "momentum": 0, "lambda": 0.5,
            "secure": {**SECURE, "protocol": "encrypted-model", "key_dir": str(keys / "public")},
        },
    }  # fmt: skip
    for reason, raw in refused.items():
        with pytest.raises(FedloomError, match=reason):
            fedloom.flower.check_deployable(build_config(raw))
    conf = _write(tmp_path / "ckks.json", refused["supports paillier and paillier-per-value"])
    args = ["--address", "127.0.0.1:1", "--insecure"]
    assert main(["server", "-c", str(conf), *args, "--out", str(tmp_path / "o")]) == 2
    assert "use `fedloom run` for ckks" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    conf = _write(tmp_path / "nokey.json", _secure(SMALL, tmp_path / "empty"))
    assert main(["server", "-c", str(conf), *args, "--out", str(tmp_path / "o")]) == 2
    assert "no paillier_public.json" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["paillier", "paillier-per-value"])
def test_secure_worker_round_equals_the_simulated_secure_round(keys, method):
    """ENCRYPT on the warm clients, ADD with the server's public-only cipher, DECRYPT on the key holder."""
    from fedloom.flower.secure import load_server_side
    from fedloom.secure.base import Decrypted
    from fedloom.secure.secagg import SecAggState, Stage, add_updates, apply_aggregate

    holder_cfg = build_config(_secure(SMALL, keys / "holder", method))
    public_cfg = build_config(_secure(SMALL, keys / "public", method))
    fed = Federation.build(holder_cfg)  # the simulation, whose key holder loads the same key pair
    workers = [ClientWorker(holder_cfg if c == 0 else public_cfg, c, log=lambda s: None) for c in range(3)]
    assert [w.key_holder for w in workers] == [True, False, False]
    from fedloom.flower.identity import Registry, load_private_key

    for c, w in enumerate(workers):  # what `fedloom client --key` and the key holder's clients.json give
        w.key = load_private_key(keys / "tls" / "clients" / f"{c}.key")
    workers[0].registry = Registry.load(keys / "holder" / "clients.json")
    server = load_server_side(public_cfg, fed.num_params)
    assert {w.key_fingerprint for w in workers} == {server.fingerprint}
    w_ref, h = fed.secure.weight_ref, config_hash(holder_cfg)
    down, _ = fed.channel.down(fed.server.global_vec, 1)
    train = {"v": VERSION, "config_hash": h, "round": 1, "payload": down, "epochs": 3, "control": b""}
    replies = [w.handle("train", train) for w in workers]
    assert all(r["ok"] and len(r["payload"]) == server.payload_bytes for r in replies)
    state = SecAggState(1, [0, 1, 2], payloads={c: r["payload"] for c, r in enumerate(replies)})
    add_updates(state, server.cipher)
    req = {"v": VERSION, "config_hash": h, "round": 1, "length": fed.num_params}
    req |= {"clients": [0, 1, 2], "samples": [r["num_samples"] for r in replies]}
    req |= {"payloads": [r["payload"] for r in replies], "signatures": [r["signature"] for r in replies]}
    assert "does not hold the secret key" in workers[1].handle("decrypt", req)["reason"]
    answer = workers[0].handle("decrypt", req)
    assert answer["ok"] and len(answer["values"]) == 8 * fed.num_params
    state.stage, state.result = Stage.DECRYPT, Decrypted(np.frombuffer(answer["values"], "<f8"), answer["weight"])
    deployed = apply_aggregate(state, fed.server.aggregator, fed.server.global_vec, w_ref)
    fed.run_round(1)  # the simulation's secure round: same diffs, same seeded rounding, same sums
    assert torch.allclose(deployed, fed.server.global_vec, atol=1e-4)
    # each round once, in increasing order; never fewer than secure.min_summands distinct clients
    assert workers[0].handle("decrypt", req)["values"] == answer["values"]  # the same sum again (resumed server)
    subset = {**req, "clients": [0, 2], "samples": req["samples"][0::2]}
    subset |= {"payloads": req["payloads"][0::2], "signatures": req["signatures"][0::2]}
    again = workers[0].handle("decrypt", subset)  # another sum of round 1 would differ by one update
    assert not again["ok"] and "each round once" in again["reason"]
    one = {**req, "round": 2, "clients": [1], "samples": req["samples"][1:2]}
    one |= {"payloads": req["payloads"][1:2], "signatures": [b""]}
    refused = workers[0].handle("decrypt", one)
    assert not refused["ok"] and "single client's update" in refused["reason"]
    twice = {**req, "round": 3, "clients": [1, 1], "samples": req["samples"][1:2] * 2}
    twice |= {"payloads": req["payloads"][1:2] * 2, "signatures": [b"", b""]}
    assert "contributes twice" in workers[0].handle("decrypt", twice)["reason"]


def test_secure_worker_refuses_another_public_key_and_a_readable_secret(keys, tmp_path):
    from fedloom.errors import FedloomError

    worker = ClientWorker(build_config(_secure(SMALL, keys / "other")), 1, log=lambda s: None)
    theirs = ClientWorker(build_config(_secure(SMALL, keys / "public")), 2, log=lambda s: None).key_fingerprint
    hello = {"config_hash": worker.hash, "classes": [], "key_fingerprint": theirs, "nonce": b"n", "node_id": "7"}
    reply = worker.handle("hello", hello)
    assert not reply["ok"] and "public key" in reply["reason"] and theirs in worker.refused
    leaky = tmp_path / "leaky"
    shutil.copytree(keys / "holder", leaky)
    (leaky / "paillier_secret.json").chmod(0o644)
    with pytest.raises(FedloomError, match="chmod 600"):
        ClientWorker(build_config(_secure(SMALL, leaky)), 0, log=lambda s: None)


def _reachable_types(root) -> set[type]:
    """Types of every object reachable from ``root`` (not descending into classes, modules, functions)."""
    import gc
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, torch.Tensor)
    seen, found, stack = set(), set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        found.add(type(obj))
        stack.extend(gc.get_referents(obj))
    return found


def test_coordinator_holds_no_secret_key(keys, tmp_path, monkeypatch):
    import fedloom.secure.paillier as paillier
    import fedloom.secure.paillier_scheme as scheme
    import fedloom.simulation as simulation
    from fedloom.flower.coordinator import Coordinator

    def forbidden(*args, **kwargs):
        raise AssertionError("the server loaded or generated a secret key")

    for module, name in [(paillier, "load_secret_key"), (paillier, "secret_key_from_dict")]:
        monkeypatch.setattr(module, name, forbidden)
    for module in (paillier, scheme):
        monkeypatch.setattr(module, "generate_keypair", forbidden)
    monkeypatch.setattr(simulation, "make_keyholder", forbidden)
    cfg = build_config(_secure(SMALL, keys / "holder"))  # the secret file is right there: it must not be read
    lines = []
    coord = Coordinator({"config": cfg.to_dict(), "out": str(tmp_path / "out")}, None, lines.append)
    assert any("the server does not read it" in line for line in lines)
    assert isinstance(coord.server.cipher, scheme.PaillierServerCipher) and coord.weight_ref > 0
    found = _reachable_types(coord)
    assert paillier.PublicKey in found and scheme.PaillierServerCipher in found  # the walk reaches the keys
    assert not found & {paillier.SecretKey, scheme.PaillierKeyHolder, scheme.PaillierClientCipher}


def test_remote_key_holder_not_answering_means_no_decryption(keys, tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedloom.flower.cohort import KeyHolderUnavailable, RemoteKeyHolder
    from fedloom.flower.coordinator import Coordinator

    for name in ("_task_id", "_run_id", "_node_id"):  # what a running ServerApp has set before making messages
        monkeypatch.setattr(TaskIdentity, name, 1)

    class SilentGrid:  # takes every message, never answers
        def push_messages(self, msgs):
            return [f"m{i}" for i, _ in enumerate(msgs)]

        def pull_messages(self, ids):
            return []

        def get_nodes(self):
            return [type("Node", (), {"node_id": 7})()]

    cfg = build_config(_secure({**SMALL, "runtime": {"round_timeout": 0.3}}, keys / "public"))
    coord = Coordinator({"config": cfg.to_dict(), "out": str(tmp_path / "out")}, SilentGrid(), lambda s: None)
    with pytest.raises(KeyHolderUnavailable, match="no key holder connected"):
        RemoteKeyHolder(coord, 1).decrypt_round(1, [], coord.fed.num_params)
    coord.book.hello_sent[7] = time.monotonic()
    coord.book.admit(7, 0)
    coord.holders[0] = True
    with pytest.raises(KeyHolderUnavailable, match="no answer within runtime.round_timeout"):
        RemoteKeyHolder(coord, 1).decrypt_round(1, [], coord.fed.num_params)
    assert 7 in coord.book.suspects


# --- certificates, generated app, CLI ----------------------------------------------------------------
def test_certs_chain_and_names(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "server.key").write_text("old", encoding="utf-8")
    (tmp_path / "c" / "server.key").chmod(0o644)  # a key left readable by an older run: made private again
    (tmp_path / "c" / "ca.key").write_text("old", encoding="utf-8")
    assert main(["certs", str(tmp_path / "c"), "--host", "fl.example.org"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "fl.example.org"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    for key in ("ca/ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / "c" / key).stat().st_mode) == 0o600
    assert not (tmp_path / "c" / "ca.key").exists()  # the CA key is kept out of the server's files


def test_certs_client_keys_and_registry(tmp_path):
    from fedloom.flower.identity import Registry, load_private_key, public_key_text

    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "1.key").write_text("old", encoding="utf-8")
    (tmp_path / "clients" / "1.key").chmod(0o644)
    assert main(["certs", str(tmp_path), "--clients", "3"]) == 0
    registry = Registry.load(tmp_path / "clients.json")
    assert sorted(registry.keys) == [0, 1, 2]
    for cid in range(3):
        key = tmp_path / "clients" / f"{cid}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        pub = public_key_text(load_private_key(key).public_key())
        assert pub == (tmp_path / "clients" / f"{cid}.pub").read_text(encoding="utf-8").strip()
        assert pub == public_key_text(registry.keys[cid])
    assert main(["certs", str(tmp_path / "x"), "--clients", "-1"]) == 2


def test_children_find_flwr_tools_without_an_activated_environment(tmp_path, monkeypatch):
    """flwr's tools come from this Python's bin/, which comes first on the children's PATH (the SuperLink
    starts flower-superexec by name)."""
    import sys
    from pathlib import Path

    from fedloom.flower.launch import flower_env, flwr_tool

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    here = str(Path(sys.executable).parent)
    assert flower_env(tmp_path)["PATH"].split(os.pathsep)[0] == here
    assert flwr_tool("flower-superexec") == os.path.join(here, "flower-superexec")


def test_generated_app_passes_flowers_own_validation(tmp_path):
    import tomllib
    from flwr.common.config import validate_config  # the check `flwr run` makes before building the FAB

    from fedloom.flower.launch import write_app

    app = write_app(tmp_path / "app", "x", tmp_path / "job.json")
    conf = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
    ok, errors, _ = validate_config(conf, check_module=True, project_dir=app)
    assert ok, errors
    assert conf["tool"]["flwr"]["app"]["config"]["job"] == str(tmp_path / "job.json")


def test_cli_refusals(tmp_path, capsys):
    conf = _write(tmp_path / "c.json", SMALL)
    with pytest.raises(SystemExit) as e:  # neither --insecure nor --tls-dir
        main(["server", "-c", str(conf), "--address", "127.0.0.1:1"])
    assert e.value.code == 2
    assert main(["server", "-c", str(conf), "--address", "nowhere", "--insecure", "--out", str(tmp_path / "o")]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert main(["server", "-c", str(conf), "--address", "127.0.0.1:1", "--tls-dir", str(tmp_path)]) == 2
    assert "fedloom certs" in capsys.readouterr().err
    assert main(["certs", str(tmp_path / "nokeys")]) == 0  # TLS files but no client registry: refused
    capsys.readouterr()
    assert main(["server", "-c", str(conf), "--address", "127.0.0.1:1", "--tls-dir", str(tmp_path / "nokeys")]) == 2
    assert "--clients N" in capsys.readouterr().err
    ca = str(tmp_path / "nokeys" / "ca.pem")
    assert main(["client", "-c", str(conf), "--server", "127.0.0.1:1", "--client-id", "0", "--root-cert", ca]) == 2
    assert "--root-cert needs --key" in capsys.readouterr().err
    assert (
        main(["client", "-c", str(conf), "--server", "127.0.0.1:1", "--client-id", "0", "--insecure", "--key", ca]) == 2
    )
    assert "--key needs --root-cert" in capsys.readouterr().err
    loose = tmp_path / "loose.key"
    loose.write_text("x", encoding="utf-8")
    args = ["--client-id", "0", "--root-cert", ca, "--key", str(loose)]
    assert main(["client", "-c", str(conf), "--server", "127.0.0.1:1", *args]) == 2
    assert "chmod 600" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 1}\n', encoding="utf-8")
    (run / "config.json").write_text(json.dumps(build_config({**SMALL, "lr": 0.1}).to_dict()), encoding="utf-8")
    assert main(["server", "-c", str(conf), "--address", "127.0.0.1:1", "--insecure", "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (
        main(["server", "-c", str(conf), "--address", "127.0.0.1:1", "--insecure", "--out", str(run), "--resume"]) == 2
    )
    assert "another federation config" in capsys.readouterr().err
    assert main(["client", "-c", str(conf), "--server", "127.0.0.1:1", "--client-id", "7", "--insecure"]) == 2
    assert "0..2" in capsys.readouterr().err
    with socket.socket() as busy:  # somebody else listens on the port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert (
            main(
                [
                    "server",
                    "-c",
                    str(conf),
                    "--address",
                    f"127.0.0.1:{port}",
                    "--insecure",
                    "--out",
                    str(tmp_path / "b"),
                ]
            )
            == 2
        )
        assert "cannot listen there" in capsys.readouterr().err


# --- real processes on loopback ------------------------------------------------------------------------
@pytest.fixture
def federation(tmp_path):
    feds = []

    def make(raw: dict, **kw) -> LocalFederation:
        fed = LocalFederation(_write(tmp_path / f"conf{len(feds)}.json", raw), tmp_path / f"fed{len(feds)}", **kw)
        feds.append(fed)
        return fed

    yield make
    for fed in feds:  # every process started, whatever happened
        fed.close()


def _simulate(raw: dict):
    """The in-process run of the same config: (metrics rows, final global vector)."""
    result = run_federation(Federation.build(build_config(raw)))
    return result.rows, result.global_vec


def _same_numbers(rows: list[dict], sim: list[dict]) -> None:
    """Deployed rows equal the simulation's (up to float32 sums in another order: rel 1e-4 on the loss)."""
    for mine, ref in zip(rows, sim, strict=False):
        assert mine["round"] == ref["round"] and mine["accuracy"] == pytest.approx(ref["accuracy"])
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-4)


def _done(fed: LocalFederation, proc, timeout: float) -> None:
    try:
        code = proc.wait(timeout)
    except Exception:
        raise AssertionError(f"server did not finish in {timeout} s:\n{proc.output()[-3000:]}") from None
    assert code == 0, proc.output()[-3000:]


@pytest.mark.slow
def test_client_killed_and_restarted_rejoins_and_a_mismatched_client_is_refused(federation, tmp_path):
    raw = {**SMALL, "global_epochs": 8}
    fed = federation(raw)
    server = fed.server()
    clients = [fed.client(i) for i in range(3)]
    wrong = fed.client(0, config=_write(tmp_path / "wrong.json", {**raw, "lr": 0.1}), name="wrong")
    fed.wait_rounds(2, 180)
    clients[1].kill(signal.SIGKILL)  # the client and its SuperNode, as a crashed machine
    killed_after = len(fed.rows())
    time.sleep(1.0)
    again = fed.client(1, name="client1-again")
    _done(fed, server, 240)
    rows = fed.rows()
    assert [r["round"] for r in rows] == list(range(1, 9))
    assert any(1 not in r["clients"] for r in rows[killed_after:])  # its absence was survived ...
    assert all(len(r["clients"]) >= 2 and r["applied"] for r in rows)
    assert 1 in rows[-1]["clients"]  # ... and it came back (a restart takes ~20 s on a busy 2-core machine)
    sim, _ = _simulate(raw)
    _same_numbers(rows[:killed_after], sim)  # until the crash: the simulation's numbers
    assert rows[-1]["accuracy"] >= 0.85 and abs(rows[-1]["accuracy"] - sim[-1]["accuracy"]) <= 0.1
    summary = json.loads((fed.out / "summary.json").read_text(encoding="utf-8"))
    health = summary["health"]["1"]
    assert health["connects"] >= 2 and health["failures"] >= 1 and health["last_error"]
    assert any("different federation config" in r["reason"] for r in summary["refusals"])
    assert (fed.out / "report.md").is_file() and (fed.out / "model.pt").is_file()
    assert wrong.wait(30) == 2
    assert "different federation config" in wrong.output() and "server's log names" in wrong.output()
    assert "lr: 0.3 here, 0.1 there" in server.output()  # here = the server
    for c in (clients[0], clients[2], again):
        assert c.wait(30) == 0, c.output()[-2000:]


@pytest.mark.slow
def test_server_crash_and_resume_over_tls(federation, tmp_path):
    assert main(["certs", str(tmp_path / "tls"), "--clients", "2"]) == 0
    raw = {**SMALL, "no_models": 2, "k": 2, "global_epochs": 4, "runtime": {"round_timeout": 10, "min_clients": 1}}
    fed = federation(raw, tls_dir=tmp_path / "tls")
    server = fed.server()
    clients = [fed.client(i) for i in range(2)]
    fed.wait_rounds(2, 180)
    server.kill(signal.SIGKILL)  # the server machine crashes: SuperLink and ServerApp go too
    resumed = fed.server(resume=True)
    _done(fed, resumed, 240)
    rows = fed.rows()
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # no round lost, none applied twice
    sim, sim_global = _simulate(raw)  # every client answered every round: the simulation's numbers
    _same_numbers(rows, sim)
    summary = json.loads((fed.out / "summary.json").read_text(encoding="utf-8"))
    # [2] when the crash fell between round 2's metrics row and its checkpoint: that row was redone
    assert summary["resumed_at"] in ([2], [3]) and summary["rounds"] == 4
    final = torch.load(fed.out / "model.pt", weights_only=True)
    assert torch.allclose(torch.cat([v.reshape(-1) for v in final.values()]), sim_global, atol=1e-5)
    assert "TLS" in resumed.output()
    for c in clients:
        assert c.wait(30) == 0, c.output()[-2000:]


@pytest.mark.slow
def test_secure_aggregation_over_flower(federation, keys):
    """Packed Paillier over real processes: the server has only the public key file, client 0 is the key
    holder, a client with another public key is refused; the numbers are the simulated secure run's until
    the key holder leaves, and then no round is applied."""
    raw = _secure({**SMALL, "global_epochs": 3}, keys / "public")
    fed = federation(raw, tls_dir=keys / "tls")
    server = fed.server()
    clients = [fed.client(0, "--set", f"secure.key_dir={keys / 'holder'}"), fed.client(1), fed.client(2)]
    fed.wait_rounds(2, 180)
    clients[0].kill(signal.SIGTERM)  # the key holder leaves: round 3 cannot be decrypted
    _done(fed, server, 120)
    rows = fed.rows()
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["applied"] and sorted(r["clients"]) == [0, 1, 2] and r["keyholder"] == 0 for r in rows[:2])
    sim = run_federation(Federation.build(build_config(_secure(raw, keys / "holder")))).rows
    for mine, ref in zip(rows[:2], sim[:2], strict=True):  # equal up to a quantization step here and there
        assert mine["accuracy"] == pytest.approx(ref["accuracy"], abs=0.034)
        assert mine["loss"] == pytest.approx(ref["loss"], rel=0.02)
        assert mine["bytes_up"] == ref["bytes_up"]  # ciphertext bytes
        # contributions out and float64 sums back, plus what only the deployment sends: one ECDSA signature each
        assert 0 < mine["bytes_keyholder"] - ref["bytes_keyholder"] <= 3 * 110
    plain = {k: v for k, v in raw.items() if k != "secure"}
    assert abs(rows[1]["accuracy"] - _simulate(plain)[0][1]["accuracy"]) <= 0.05
    last = rows[2]  # clients 1 and 2 trained and encrypted; nobody could decrypt
    assert not last["applied"] and "no key holder connected" in last["secure_error"] and last["bytes_up"] > 0
    assert last["accuracy"] == rows[1]["accuracy"] and last["loss"] == rows[1]["loss"]  # global unchanged
    assert "not applied: no key holder connected" in server.output()
    summary = json.loads((fed.out / "summary.json").read_text(encoding="utf-8"))
    assert summary["secure_method"] == "paillier" and summary["key_bits"] == 1024 and summary["rounds_applied"] == 2
    assert summary["he_encrypt_seconds"] > 0 and summary["he_decrypt_seconds"] > 0
    assert "holds no secret key" in server.output()
    for c in clients[1:]:
        assert c.wait(30) == 0, c.output()[-2000:]
