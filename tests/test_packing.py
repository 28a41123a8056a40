"""Tests for fedloom.secure.packing: hand-computed slots, exact sums, error bound, unbiasedness, end to end."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.secure import paillier as P
from fedloom.secure.packing import Packer


def test_derived_sizes():
    packer = Packer(key_bits=2048, bits=16, clip=1.0, max_summands=16)
    assert (packer.headroom_bits, packer.slot_bits, packer.slots) == (4, 20, 102)  # ⌊2046 / 20⌋ = 102
    assert packer.levels == 65535 and packer.step == pytest.approx(2 / 65535)
    assert Packer(2048, 16, 1.0, 17).headroom_bits == 5  # 17 summands need ⌈log2 17⌉ = 5 bits
    assert Packer(2048, 16, 1.0, 1).slot_bits == 16
    assert packer.num_plaintexts(0) == 0 and packer.num_plaintexts(102) == 1 and packer.num_plaintexts(103) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, "bits"),
        ({"bits": 33}, "bits"),
        ({"bits": True}, "int"),
        ({"clip": 0.0}, "clip"),
        ({"clip": -1.0}, "clip"),
        ({"clip": float("nan")}, "clip"),
        ({"clip": float("inf")}, "clip"),
        ({"max_summands": 0}, "max_summands"),
        ({"max_summands": 2.5}, "int"),
        ({"key_bits": 20}, "does not fit"),  # 16 + 4 = 20-bit slot > 20 - 2 usable bits
        ({"bits": 32, "max_summands": 2**33}, "does not fit"),  # 65-bit slot exceeds the uint64 arithmetic
    ],
)
def test_rejects_bad_config(kwargs, message):
    config = {"key_bits": 2048, "bits": 16, "clip": 1.0, "max_summands": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        Packer(**config)


def test_hand_computed_two_bit_slots():
    # bits = 2: L = 3 levels, clip 1.5: step Δ = 2·1.5/3 = 1, so x = -1.5, -0.5, 0.5, 1.5 are exactly q = 0..3
    # max_summands = 2: 1 headroom bit, slot width 3; key_bits 12: ⌊10 / 3⌋ = 3 slots per plaintext
    packer = Packer(key_bits=12, bits=2, clip=1.5, max_summands=2)
    assert (packer.slot_bits, packer.slots, packer.step) == (3, 3, 1.0)
    plaintexts, clipped = packer.encode(np.array([-1.5, -0.5, 0.5, 1.5]), np.random.default_rng(0))
    assert clipped == 0
    assert plaintexts == [0 + 1 * 8 + 2 * 64, 3]  # first value in the lowest slot: 136, then 3
    doubled = [2 * m for m in plaintexts]  # what adding two clients' plaintexts gives: 272, 6
    assert packer.unpack(doubled, 4).tolist() == [0, 2, 4, 6]
    assert packer.decode_sum(doubled, num_summands=2, length=4).tolist() == [-3.0, -1.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="max_summands"):
        packer.decode_sum(doubled, num_summands=3, length=4)
    with pytest.raises(ValueError, match="plaintexts"):
        packer.decode_sum(doubled, num_summands=2, length=7)
    with pytest.raises(ValueError, match="padding"):
        packer.decode_sum([272, 6 << 6], num_summands=2, length=5)  # slot 6 (index 5) lies past the length


def test_sum_of_three_clients_is_exact():
    packer = Packer(key_bits=1024, bits=12, clip=0.5, max_summands=3)
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.2, 1000) for _ in range(3)]
    quantized = [packer.quantize(u, rng)[0] for u in updates]
    packed = [packer.pack(q) for q in quantized]
    summed = [sum(column) for column in zip(*packed)]  # plaintext addition = what Paillier's product gives
    assert np.array_equal(packer.unpack(summed, 1000), quantized[0] + quantized[1] + quantized[2])
    dequantized = sum(packer.dequantize_sum(q, 1) for q in quantized)
    np.testing.assert_allclose(packer.decode_sum(summed, 3, 1000), dequantized, rtol=0, atol=1e-12)


def test_error_bound_per_value_and_sum():
    packer = Packer(key_bits=2048, bits=8, clip=1.0, max_summands=4)
    rng = np.random.default_rng(2)
    updates = [rng.uniform(-1, 1, 5000) for _ in range(4)]
    quantized = [packer.quantize(u, rng)[0] for u in updates]
    for u, q in zip(updates, quantized):
        assert np.max(np.abs(packer.dequantize_sum(q, 1) - u)) < packer.step  # |x̂ - x| < Δ = 2c/(2^b - 1)
    summed = [sum(column) for column in zip(*(packer.pack(q) for q in quantized))]
    error = packer.decode_sum(summed, 4, 5000) - sum(updates)
    assert np.max(np.abs(error)) < 4 * packer.step


def test_stochastic_rounding_is_unbiased():
    # bits = 2, clip 1: Δ = 2/3; x = 0.1234 lies between levels -1/3 and 1/3 (u = 1.6851); nearest rounding
    # would always give 1/3, a bias of 0.21; stochastic rounding's mean has std <= (Δ/2)/√N ≈ 7.5e-4
    packer = Packer(key_bits=256, bits=2, clip=1.0, max_summands=1)
    x = np.full(200_000, 0.1234)
    q, _ = packer.quantize(x, np.random.default_rng(3))
    assert set(np.unique(q).tolist()) == {1, 2}
    assert abs(packer.dequantize_sum(q, 1).mean() - 0.1234) < 4e-3


@pytest.mark.parametrize("max_summands", [5, 16])
def test_no_overflow_at_max_summands(max_summands):
    packer = Packer(key_bits=2048, bits=16, clip=2.0, max_summands=max_summands)
    rng = np.random.default_rng(4)
    for extreme in (2.0, -2.0, 1e6):  # ±clip and far beyond it (clipped to +clip): every slot at 0 or L
        plaintexts, clipped = packer.encode(np.full(300, extreme), rng)
        assert clipped == (300 if extreme == 1e6 else 0)
        summed = [m * max_summands for m in plaintexts]
        assert all(m < 2 ** (2048 - 2) for m in summed)
        expected = max_summands * min(extreme, 2.0)
        np.testing.assert_allclose(packer.decode_sum(summed, max_summands, 300), expected, rtol=0, atol=1e-9)


def test_clipping_counted_and_input_untouched():
    packer = Packer(key_bits=512, bits=8, clip=1.0, max_summands=2)
    values = np.array([-5.0, 0.0, 0.5, 2.0, 1.0, -1.0], dtype=np.float32)
    before = values.copy()
    _, clipped = packer.encode(values, np.random.default_rng(5))
    assert clipped == 2  # exactly ±clip is not clipped
    assert np.array_equal(values, before)
    with pytest.raises(ValueError, match="NaN"):
        packer.encode(np.array([0.0, np.nan]), np.random.default_rng(5))


def test_end_to_end_pack_encrypt_add_decrypt_decode():
    pk, sk = P.generate_keypair(1024, allow_weak_keys=True)
    packer = Packer(key_bits=pk.key_bits, bits=16, clip=1.0, max_summands=4)
    rng = np.random.default_rng(6)
    updates = [rng.normal(0, 0.3, 250) for _ in range(3)]
    table = P.RandomizerTable(pk)
    payloads = []
    for u in updates:  # each client: encode, encrypt with the public key only, serialize
        plaintexts, _ = packer.encode(u, rng)
        payloads.append(P.ciphertexts_to_bytes(P.encrypt_many(pk, plaintexts, table=table), pk))
    assert all(len(b) == packer.num_plaintexts(250) * 256 for b in payloads)
    aggregate = P.sum_ciphertexts(pk, [P.ciphertexts_from_bytes(b, pk) for b in payloads])
    decoded = packer.decode_sum(P.decrypt_many(sk, aggregate), num_summands=3, length=250)
    clipped_sum = sum(np.clip(u, -1.0, 1.0) for u in updates)
    assert np.max(np.abs(decoded - clipped_sum)) < 3 * packer.step
