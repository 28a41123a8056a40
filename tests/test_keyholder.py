"""The key holder is no decryption oracle (issue: an active server tried to make it reveal one client's update).

Three clients encrypt real-looking updates with packed Paillier and sign them (Ed25519, as deployed clients do);
a server that deviates from the protocol tries each attack on :class:`GuardedKeyHolder`, and each is refused.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gmpy2")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from fedloom.aggregators.fedavg import FedAvg  # noqa: E402
from fedloom.secure.guard import Contribution, GuardedKeyHolder, KeyHolderRefusal, contribution_message  # noqa: E402
from fedloom.secure.paillier import ciphertexts_from_bytes, ciphertexts_to_bytes, encrypt_many  # noqa: E402
from fedloom.secure.paillier_scheme import PaillierKeyHolder, paillier_server_cipher  # noqa: E402
from fedloom.secure.secagg import SecAggState, encrypt_update  # noqa: E402

LENGTH, W_REF, HASH = 40, 20.0, "cafe0123"
KEYS = {c: Ed25519PrivateKey.generate() for c in range(3)}
PUBLIC = {c: k.public_key() for c, k in KEYS.items()}


def _verify(client: int, message: bytes, signature: bytes) -> bool:
    try:
        PUBLIC[client].verify(signature, message)
        return True
    except Exception:  # noqa: BLE001 - unknown client or bad signature alike
        return False


@pytest.fixture(scope="module")
def setup():
    holder = PaillierKeyHolder(512, allow_weak_keys=True, max_summands=3, clip=1.0)
    return holder, holder.client_cipher(), paillier_server_cipher(holder.public_bytes())


def _guard(setup, **kw) -> GuardedKeyHolder:
    holder, _, server = setup
    args = {"min_summands": 2, "payload_bytes": None, "weight_ref": W_REF, "max_samples": 1000}
    args |= {"config_hash": HASH, "verify": _verify, **kw}
    return GuardedKeyHolder(holder, server, FedAvg().weight, **args)


def _contribution(setup, rnd: int, client: int, values, n: int = 20, w_ref: float = W_REF, key=None):
    _, cipher, _ = setup
    state = SecAggState(rnd, [client])
    payload = encrypt_update(state, cipher, client, _tensor(values), n, w_ref, np.random.default_rng([rnd, client]))
    signature = (key or KEYS[client]).sign(contribution_message(HASH, rnd, client, n, w_ref, payload))
    return Contribution(client, payload, n, signature)


def _tensor(values):
    import torch

    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def _update(client: int) -> np.ndarray:
    return np.random.default_rng(client).uniform(-0.2, 0.2, LENGTH)


def test_an_honest_round_decrypts_to_the_weighted_sum(setup):
    cs = [_contribution(setup, 1, c, _update(c)) for c in range(3)]
    out = _guard(setup).decrypt_round(1, cs, LENGTH)
    assert out.weight == 60
    assert np.allclose(out.values, sum(_update(c) for c in range(3)), atol=3 * 2 / (2**16 - 1) + 1e-6)


def test_a_single_update_labelled_an_aggregate_is_refused(setup):
    victim = _contribution(setup, 1, 0, _update(0))
    with pytest.raises(KeyHolderRefusal, match="fewer than secure.min_summands"):
        _guard(setup).decrypt_round(1, [victim], LENGTH)
    with pytest.raises(KeyHolderRefusal, match="contributes twice"):
        _guard(setup).decrypt_round(1, [victim, victim], LENGTH)


def test_the_servers_own_ciphertext_beside_the_victims_is_refused(setup):
    """Victim × the server's encryption of a known vector: its 'client 1' cannot sign as client 1."""
    victim = _contribution(setup, 1, 0, _update(0))
    forged = _contribution(setup, 1, 1, np.zeros(LENGTH), key=Ed25519PrivateKey.generate())
    with pytest.raises(KeyHolderRefusal, match="client 1's signature does not verify"):
        _guard(setup).decrypt_round(1, [victim, forged], LENGTH)
    # and a ciphertext re-labelled with another round, client or count no longer matches its signature
    moved = Contribution(2, victim.payload, victim.num_samples, victim.signature)
    with pytest.raises(KeyHolderRefusal, match="client 2's signature"):
        _guard(setup).decrypt_round(1, [_contribution(setup, 1, 1, _update(1)), moved], LENGTH)


def test_a_fresh_round_id_or_a_replay_is_refused(setup):
    guard = _guard(setup)
    cs = [_contribution(setup, 5, c, _update(c)) for c in range(3)]
    first = guard.decrypt_round(5, cs, LENGTH)
    assert guard.decrypt_round(5, cs, LENGTH) is first  # the very same sum again (a resumed server): no news
    with pytest.raises(KeyHolderRefusal, match="each round once"):
        guard.decrypt_round(5, cs[:2], LENGTH)  # the same round again, a subset: the difference is one update
    with pytest.raises(KeyHolderRefusal, match="each round once"):
        guard.decrypt_round(4, cs, LENGTH)
    with pytest.raises(KeyHolderRefusal, match="signature does not verify"):
        guard.decrypt_round(6, cs, LENGTH)  # old ciphertexts under a fresh round id


def test_others_told_another_weight_ref_are_refused(setup):
    """The server sends the other clients w_ref = 1e12 (their updates vanish, the sum is the victim's):
    their signed w_ref is not the key holder's, so their signatures do not verify."""
    victim = _contribution(setup, 1, 0, _update(0))
    others = [_contribution(setup, 1, c, _update(c), w_ref=1e12) for c in (1, 2)]
    with pytest.raises(KeyHolderRefusal, match="signature does not verify"):
        _guard(setup).decrypt_round(1, [victim, *others], LENGTH)


def test_an_encrypted_weight_other_than_the_declared_count_is_refused(setup):
    """A client encrypts weight 10^6 (or a 'negative' one) while declaring 20 samples."""
    holder, cipher, _ = setup
    honest = _contribution(setup, 1, 1, _update(1))
    for bad_weight in (10**6, -5):
        state = SecAggState(1, [0])
        good = encrypt_update(state, cipher, 0, _tensor(_update(0)), 20, W_REF, np.random.default_rng(0))
        cts = ciphertexts_from_bytes(good, holder.pk)
        cts[-1] = encrypt_many(holder.pk, [bad_weight % holder.pk.n])[0]  # the weight is the last ciphertext
        payload = ciphertexts_to_bytes(cts, holder.pk)
        signed = KEYS[0].sign(contribution_message(HASH, 1, 0, 20, W_REF, payload))
        with pytest.raises(KeyHolderRefusal, match="weight"):
            _guard(setup).decrypt_round(1, [Contribution(0, payload, 20, signed), honest], LENGTH)


def test_an_oversized_packed_value_makes_the_sum_refused_not_wrapped(setup):
    """A client packs a plaintext past the packed width (its slots overflow): the key holder refuses the
    sum instead of returning carried-over garbage (it cannot tell whose plaintext it was: no range proofs)."""
    holder, cipher, _ = setup
    honest = _contribution(setup, 1, 1, _update(1))
    good = _contribution(setup, 1, 0, _update(0))
    cts = ciphertexts_from_bytes(good.payload, holder.pk)
    cts[0] = encrypt_many(holder.pk, [1 << (holder.packer.slots * holder.packer.slot_bits)])[0]
    payload = ciphertexts_to_bytes(cts, holder.pk)
    signed = KEYS[0].sign(contribution_message(HASH, 1, 0, 20, W_REF, payload))
    with pytest.raises(KeyHolderRefusal, match="does not decode"):
        _guard(setup).decrypt_round(1, [Contribution(0, payload, 20, signed), honest], LENGTH)


def test_sizes_and_counts_are_checked_before_any_decryption(setup, monkeypatch):
    holder, _, _ = setup
    monkeypatch.setattr(holder, "decrypt", lambda *a: pytest.fail("decrypted before checking"))
    cs = [_contribution(setup, 1, c, _update(c)) for c in range(2)]
    with pytest.raises(KeyHolderRefusal, match="bytes, expected"):
        _guard(setup, payload_bytes=len(cs[0].payload) - 1).decrypt_round(1, cs, LENGTH)
    big = Contribution(0, cs[0].payload, 10**9, cs[0].signature)
    with pytest.raises(KeyHolderRefusal, match="declares 1000000000 samples"):
        _guard(setup).decrypt_round(1, [big, cs[1]], LENGTH)
