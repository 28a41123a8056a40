"""One round, two runtimes: a deployed run (real ``fedloom server`` and ``fedloom client`` processes on
loopback) gives the simulated run's numbers, round for round, bit for bit — plaintext, a compressed upload
with error feedback under a seeded (randk) broadcast, and packed Paillier secure aggregation. Both use the
sequential engine, the one a deployed client trains with (the vectorized engine agrees with it to ~1e-6, not
bit for bit)."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("flwr", reason="the Flower runtime needs the optional extra: pip install 'fedloom[flower]'")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from fedloom.cli import main  # noqa: E402
from fedloom.config import build_config  # noqa: E402
from fedloom.flower.local import LocalFederation  # noqa: E402
from fedloom.simulation import Federation, run_federation  # noqa: E402

BASE = {
    "name": "equiv", "model_name": "fnn", "hidden": [16], "type": "iris", "no_models": 3, "k": 3,
    "local_epochs": 2, "batch_size": 10, "lr": 0.3, "momentum": 0.5, "seed": 3, "global_epochs": 3,
    "runtime": {"round_timeout": 30, "min_clients": 3, "engine": "sequential"},
}  # fmt: skip


def _deployed(tmp_path, raw: dict, holder_dir=None, tls_dir=None) -> tuple[list[dict], torch.Tensor]:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(raw), encoding="utf-8")
    with LocalFederation(conf, tmp_path / "fed", tls_dir=tls_dir) as fed:
        server = fed.server()
        extra = [("--set", f"secure.key_dir={holder_dir}")] if holder_dir else []
        clients = [fed.client(i, *(extra[0] if i == 0 and extra else ())) for i in range(3)]
        code = server.wait(300)
        assert code == 0, server.output()[-3000:]
        for c in clients:
            assert c.wait(60) == 0, c.output()[-2000:]
        rows = fed.rows()
        model = torch.load(fed.out / "model.pt", weights_only=True)
    return rows, torch.cat([v.reshape(-1) for v in model.values()])


def _simulated(raw: dict) -> tuple[list[dict], torch.Tensor]:
    result = run_federation(Federation.build(build_config(raw)))
    return result.rows, result.global_vec


def _identical(tmp_path, raw: dict, sim_raw: dict | None = None, holder_dir=None, tls_dir=None) -> None:
    rows, vec = _deployed(tmp_path, raw, holder_dir, tls_dir)
    ref_rows, ref_vec = _simulated(sim_raw or raw)
    assert len(rows) == len(ref_rows) == raw["global_epochs"]
    for mine, ref in zip(rows, ref_rows, strict=True):
        for key in ("round", "accuracy", "loss", "bytes_up", "bytes_down", "clients", "applied", "failed"):
            assert mine[key] == ref[key], (key, mine, ref)
    assert torch.equal(vec, ref_vec)  # the global vector after the last round, bit for bit


@pytest.mark.slow
def test_plaintext_deployed_equals_simulated(tmp_path):
    _identical(tmp_path, BASE)


@pytest.mark.slow
def test_compressed_with_error_feedback_and_a_seeded_broadcast_deployed_equals_simulated(tmp_path):
    # randk's index set comes from the broadcast's seeded stream, which both runtimes must decode with
    _identical(tmp_path, {**BASE, "compression": {"up": "topk:0.01+q8+ef", "down": "randk:0.5"}})


@pytest.mark.slow
def test_packed_paillier_deployed_equals_simulated(tmp_path):
    _identical_paillier(tmp_path, BASE)


@pytest.mark.slow
def test_fednova_with_stragglers_under_paillier_deployed_equals_simulated(tmp_path):
    # FedNova's normalized updates are encrypted; the server's step reads the clients' reported steps
    _identical_paillier(tmp_path, {**BASE, "algorithm": "fednova", "runtime": {**BASE["runtime"], "stragglers": 0.34}})


@pytest.mark.slow
def test_scaffold_with_partial_stragglers_and_a_compressed_upload_deployed_equals_simulated(tmp_path):
    runtime = {**BASE["runtime"], "stragglers": 0.34, "straggler_work": "partial"}
    _identical(tmp_path, {**BASE, "algorithm": "scaffold", "runtime": runtime, "compression": {"up": "q8"}})


@pytest.mark.slow
def test_fedadam_deployed_equals_simulated(tmp_path):
    _identical(tmp_path, {**BASE, "algorithm": {"name": "fedadam", "server_lr": 0.05}})


def _identical_paillier(tmp_path, base: dict) -> None:
    keys = tmp_path / "keys"
    assert main(["keygen", str(keys / "holder"), "--key-bits", "1024", "--allow-weak-keys"]) == 0
    (keys / "public").mkdir()
    (keys / "public" / "paillier_public.json").write_bytes((keys / "holder" / "paillier_public.json").read_bytes())
    assert main(["certs", str(keys / "tls"), "--clients", "3"]) == 0  # signed contributions need client keys
    (keys / "holder" / "clients.json").write_bytes((keys / "tls" / "clients.json").read_bytes())
    secure = {"method": "paillier", "key_bits": 1024, "allow_weak_keys": True, "clip": 2.0, "weight_ref": 40.0}
    raw = {**base, "secure": {**secure, "key_dir": str(keys / "public")}}
    sim = {**base, "secure": {**secure, "key_dir": str(keys / "holder")}}
    _identical(tmp_path, raw, sim, holder_dir=keys / "holder", tls_dir=keys / "tls")
