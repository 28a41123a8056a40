"""CKKS secure aggregation (TenSEAL): key separation, sums, chunking, weights, bytes, rejections."""

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from fedloom.secure.ckks import (  # noqa: E402
    CKKSClientCipher,
    CKKSKeyHolder,
    ckks_server_cipher,
    join_payload,
    split_payload,
)


@pytest.fixture(scope="module")
def holder():
    return CKKSKeyHolder()  # N = 8192: 4096 slots


@pytest.fixture(scope="module")
def server(holder):
    return ckks_server_cipher(holder.public_bytes())


def test_server_context_has_no_secret_key(holder, server):
    assert holder.context.is_private()
    assert not server.context.is_private() and not server.context.has_secret_key()
    payload = holder.client_cipher().encrypt(np.ones(5), 1, np.random.default_rng(0))
    vec = ts.ckks_vector_from(server.context, bytes(split_payload(payload)[0]))
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    # and neither role accepts a context that carries the secret key
    secret_bytes = holder.context.serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="secret key"):
        ckks_server_cipher(secret_bytes)
    with pytest.raises(ValueError, match="secret key"):
        CKKSClientCipher(secret_bytes)


def test_public_bytes_carry_no_secret_key_and_no_eval_keys(holder):
    ctx = ts.context_from(holder.public_bytes())
    assert not ctx.is_private() and ctx.has_public_key()
    assert not ctx.has_galois_keys() and not ctx.has_relin_keys()


def test_three_clients_sum_to_plain_sum(holder, server):
    rng = np.random.default_rng(1)
    cipher = holder.client_cipher()
    vectors = [rng.standard_normal(1000) for _ in range(3)]  # [clients, 1000], values O(1)
    payloads = [cipher.encrypt(v, n, rng) for v, n in zip(vectors, (10, 20, 30))]
    out = holder.decrypt(server.add(payloads), 3, 1000)
    expected = np.sum(vectors, axis=0)
    assert out.values.dtype == np.float64 and out.values.shape == (1000,)
    assert np.abs(out.values - expected).max() <= 1e-3 * np.abs(expected).max()
    assert np.abs(out.values - expected).max() < 1e-6  # scale 2^40: ~1e-8 measured
    assert out.weight == 60


def test_hand_case_weighted(holder, server):
    # two clients with weights 1 and 2: s = 1·[1, 2] + 2·[3, -4] = [7, -6], Z = 3
    cipher = holder.client_cipher()
    p1 = cipher.encrypt(np.array([1.0, 2.0]), 1, np.random.default_rng(0))
    p2 = cipher.encrypt(2 * np.array([3.0, -4.0]), 2, np.random.default_rng(0))
    out = holder.decrypt(server.add([p1, p2]), 2, 2)
    np.testing.assert_allclose(out.values, [7.0, -6.0], atol=1e-6)
    assert out.weight == 3


@pytest.mark.parametrize(("length", "chunks"), [(4095, 1), (4096, 2), (10_000, 3)])
def test_chunking_beyond_slot_count(holder, server, length, chunks):
    rng = np.random.default_rng(length)
    cipher = holder.client_cipher()
    vectors = [rng.uniform(-1, 1, length) for _ in range(3)]
    payloads = [cipher.encrypt(v, 1000 + i, rng) for i, v in enumerate(vectors)]
    assert all(len(split_payload(p)) == chunks for p in payloads)  # values + the weight slot, 4096 per chunk
    agg = server.add(payloads)
    assert len(split_payload(agg)) == chunks
    out = holder.decrypt(agg, 3, length)
    np.testing.assert_allclose(out.values, np.sum(vectors, axis=0), atol=1e-6)
    assert out.weight == 3003  # exact after rounding


def test_weight_sum_exact_for_large_counts(holder, server):
    cipher = holder.client_cipher()
    counts = [60_000, 12_345, 1]
    payloads = [cipher.encrypt(np.full(3, float(n)), n, np.random.default_rng(0)) for n in counts]
    out = holder.decrypt(server.add(payloads), 3, 3)
    assert out.weight == sum(counts)
    np.testing.assert_allclose(out.values, sum(counts), rtol=1e-12)


def test_bytes_are_the_serialized_ciphertexts(holder, server):
    cipher = holder.client_cipher()
    payload = cipher.encrypt(np.zeros(10_000), 1, np.random.default_rng(0))
    chunks = split_payload(payload)
    header = 8 + 4 * len(chunks)  # magic + count, one uint32 length per chunk
    assert payload[:4] == b"CKS1"  # our header, not a pickle
    assert len(payload) == header + sum(len(c) for c in chunks)
    # each chunk is exactly a TenSEAL serialization: it round-trips byte for byte
    for c in chunks:
        assert ts.ckks_vector_from(server.context, bytes(c)).serialize().__len__() == len(c)
    per_value = len(payload) / 10_000
    assert 40 < per_value < 100  # ~57 bytes per slot at N = 8192, q = 2^100 (fp32 would be 4)
    assert join_payload([bytes(c) for c in chunks]) == payload


def test_rejects_malformed_input(holder, server):
    cipher = holder.client_cipher()
    good = cipher.encrypt(np.ones(10), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not a CKKS payload"):
        split_payload(b"XXXX" + good[4:])
    with pytest.raises(ValueError, match="chunk lengths"):
        split_payload(good[:-1])
    with pytest.raises(ValueError, match="different chunk counts"):
        server.add([good, cipher.encrypt(np.ones(5000), 1, np.random.default_rng(0))])
    with pytest.raises(ValueError, match="chunks"):
        holder.decrypt(good, 1, 5000)
    with pytest.raises(ValueError, match="finite"):
        cipher.encrypt(np.array([np.nan]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds"):
        cipher.encrypt(np.array([cipher.max_abs * 2]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_summands"):
        holder.decrypt(good, 17, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 5000},
        {"poly_modulus_degree": 2048},  # 160-bit modulus > 54 bits allowed for 128-bit security
        {"coeff_mod_bit_sizes": (60,)},
        {"coeff_mod_bit_sizes": (61, 60)},
        {"scale_bits": 10},
        {"scale_bits": 58, "coeff_mod_bit_sizes": (60, 60)},
        {"max_summands": 0},
    ],
)
def test_config_rejections(kwargs):
    with pytest.raises(ValueError):
        CKKSKeyHolder(**kwargs)
