"""Secure aggregation wired into the round: the server adds what it cannot read."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedloom.aggregators import BookLambda, FedAvg
from fedloom.config import build_config
from fedloom.secure.guard import Contribution, GuardedKeyHolder
from fedloom.secure.paillier import SecretKey
from fedloom.secure.paillier_scheme import PaillierKeyHolder, paillier_server_cipher
from fedloom.secure.secagg import SecAggState, Stage, add_updates, apply_aggregate, decrypt_aggregate, encrypt_update
from fedloom.simulation import Federation, run_federation

WEAK = {"key_bits": 1024, "allow_weak_keys": True}


def _secrets_reachable(obj, seen=None, depth=0) -> list:
    """Every SecretKey (or private TenSEAL context) reachable from obj's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6 or isinstance(obj, (int, float, str, bytes, torch.Tensor, np.ndarray)):
        return []
    seen.add(id(obj))
    if isinstance(obj, SecretKey) or (callable(getattr(obj, "is_private", None)) and obj.is_private()):
        return [obj]
    children = []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    return [s for c in children for s in _secrets_reachable(c, seen, depth + 1)]


def test_the_server_object_never_holds_a_secret_key():
    fed = Federation.build(build_config({"secure": {"method": "paillier", **WEAK}}))
    assert _secrets_reachable(fed.server) == []
    assert _secrets_reachable(fed.secure.holder) != []  # the check can find one: the key holder has it
    run_federation(fed)
    assert _secrets_reachable(fed.server) == []


@pytest.mark.parametrize("lam", [None, 0.25])
def test_secure_round_matches_plaintext_aggregation(lam):
    base = {"global_epochs": 1, "no_models": 6, "k": 4, "lambda": lam}
    plain = Federation.build(build_config(base))
    plain.run_round(1)
    clip = 8.0  # covers these updates, so only quantization error remains (clipping is counted separately)
    for method, tol in (("paillier", 4 * 2 * clip / (2**16 - 1)), ("paillier-per-value", 1e-6)):
        fed = Federation.build(build_config({**base, "secure": {"method": method, "clip": clip, **WEAK}}))
        row = fed.run_round(1)
        assert row["clients"] == [c for c in plain.server.sample(1)]
        step = fed.server.global_vec - plain.server.global_vec
        # packed: each of 4 summed values is off by < one quantization step 2c/(2^16-1), scaled back by the weights
        scale = 1.0 if lam is None else lam * fed.secure.weight_ref
        assert step.abs().max() < tol * max(1.0, scale), method
        assert row["he_encrypt_seconds"] > 0 and row["bytes_up"] > 0 and row["clipped"] == 0


def test_stages_run_in_order_and_weights_travel_encrypted():
    holder = PaillierKeyHolder(512, allow_weak_keys=True, max_summands=4, clip=1.0)  # 30/20·0.4 = 0.6 fits
    cipher, server = holder.client_cipher(), paillier_server_cipher(holder.public_bytes())
    g = torch.zeros(3)
    d = {0: torch.tensor([0.3, -0.1, 0.0]), 1: torch.tensor([0.0, 0.2, -0.4])}
    n = {0: 10, 1: 30}
    guarded = GuardedKeyHolder(
        holder, server, FedAvg().weight, min_summands=2, payload_bytes=None, weight_ref=20.0, max_samples=100
    )
    state = SecAggState(1, [0, 1])
    with pytest.raises(RuntimeError, match="expected stage ADD"):
        decrypt_aggregate(state, guarded, 3, [])
    for c in (0, 1):
        encrypt_update(state, cipher, c, d[c], n[c], 20.0, np.random.default_rng(c))
    with pytest.raises(ValueError, match="not in round"):
        encrypt_update(state, cipher, 7, d[0], 1, 20.0, np.random.default_rng(0))
    add_updates(state, server)
    res = decrypt_aggregate(state, guarded, 3, [Contribution(c, state.payloads[c], n[c]) for c in (0, 1)])
    assert res.weight == 40 and state.stage is Stage.DECRYPT
    new = apply_aggregate(state, FedAvg(), g, 20.0)
    # hand: (10·d0 + 30·d1)/40 = [0.075, 0.125, -0.3]
    assert torch.allclose(new, torch.tensor([0.075, 0.125, -0.3]), atol=1e-4)
    with pytest.raises(RuntimeError):
        apply_aggregate(state, BookLambda(1.0), g, 1.0)  # already applied


def test_keygen_writes_0600_secret_and_a_run_uses_it(tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    p = subprocess.run(
        [sys.executable, "-m", "fedloom.cli", "keygen", tmp_path / "keys", "--key-bits", "1024"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 2 and "2048" in p.stderr  # weak keys need the explicit flag
    p = subprocess.run(
        [sys.executable, "-m", "fedloom.cli", "keygen", tmp_path / "keys", "--key-bits", "1024", "--allow-weak-keys"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    secret, public = tmp_path / "keys" / "paillier_secret.json", tmp_path / "keys" / "paillier_public.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    cfg = build_config(
        {"global_epochs": 2, "secure": {"method": "paillier", "key_dir": str(tmp_path / "keys"), **WEAK}}
    )
    fed = Federation.build(cfg)
    assert fed.secure.holder.holder.pk.n == int(json_n(public))
    assert run_federation(fed).summary["final_accuracy"] > 0.3


def json_n(path):
    import json

    return int(json.loads(path.read_text())["n"], 16)


def test_bad_key_dir_is_a_config_error(tmp_path):
    from fedloom.errors import ConfigError

    with pytest.raises(ConfigError, match="secure.key_dir"):
        Federation.build(build_config({"secure": {"method": "paillier", "key_dir": str(tmp_path), **WEAK}}))
