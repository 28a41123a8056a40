"""Tests for fedloom.secure.paillier: hand-computed cases, homomorphisms, key files and a cross-check with phe."""

from __future__ import annotations

import json
import os
import stat

import gmpy2
import pytest

from fedloom.secure import paillier as P


@pytest.fixture(scope="module")
def keys() -> tuple[P.PublicKey, P.SecretKey]:
    return P.generate_keypair(1024, allow_weak_keys=True)  # r_bits defaults to 512


@pytest.fixture(scope="module")
def tables(keys):
    pk, sk = keys
    return P.RandomizerTable(pk), P.RandomizerTable(sk)


def _toy_keys() -> tuple[P.PublicKey, P.SecretKey]:
    # p = 5, q = 7, n = 35, n² = 1225; x = 2 gives h = -4 mod 35 = 31 and hs = 31^35 mod 1225 = 901
    pk = P.PublicKey(35, 901, 3)
    return pk, P.SecretKey(pk, 5, 7)


def test_hand_computed_toy_key():
    pk, sk = _toy_keys()
    # E(4) with the classic randomizer r = 2: (1 + 4·35)·2^35 mod 1225 = 141·18 mod 1225 = 88
    assert P.decrypt(sk, 88) == 4
    assert P.decrypt(sk, P.add(pk, 88, 88)) == 8
    assert P.decrypt(sk, P.mul_plain(pk, 88, 3)) == 12
    assert P.decrypt(sk, P.add_plain(pk, 88, -5)) == 34  # 4 - 5 = -1 ≡ n - 1
    assert P.encode_signed(-1, pk) == 34 and P.decode_signed(34, pk) == -1
    assert P.decode_signed(17, pk) == 17 and P.decode_signed(18, pk) == -17  # (n-1)/2 = 17 is the boundary
    for m in range(35):
        assert P.decrypt(sk, P.encrypt(pk, m)) == m
        assert P.decrypt(sk, P.encrypt(sk, m, fast=False)) == m


def test_round_trip_boundaries_and_negatives(keys):
    pk, sk = keys
    n = int(pk.n)
    for m in (0, 1, 2, 123456789, n // 2, n - 2, n - 1):
        assert P.decrypt(sk, P.encrypt(pk, m)) == m
    half = (n - 1) // 2
    for m in (-1, -42, -half, half, 0):
        assert P.decode_signed(P.decrypt(sk, P.encrypt(pk, P.encode_signed(m, pk))), pk) == m
    assert P.encode_signed(-1, pk) == n - 1
    for bad in (-1, n, n + 5):
        with pytest.raises(ValueError, match="0 <= m < n"):
            P.encrypt(pk, bad)
    with pytest.raises(ValueError, match=r"\|m\|"):
        P.encode_signed(half + 1, pk)
    for bad_c in (0, pk.n2, -3):
        with pytest.raises(ValueError, match="out of range"):
            P.decrypt(sk, bad_c)


@pytest.mark.parametrize("use_secret", [False, True])
@pytest.mark.parametrize("mode", ["table", "fast", "classic"])
def test_every_encryption_path_decrypts(keys, tables, use_secret, mode):
    pk, sk = keys
    key, table = (sk, tables[1]) if use_secret else (pk, tables[0])
    ms = [0, 7, int(pk.n) - 1, 2**500 + 3]
    kwargs = {"table": table} if mode == "table" else {"fast": mode == "fast"}
    cs = P.encrypt_many(key, ms, **kwargs)
    assert P.decrypt_many(sk, cs) == ms


def test_fixed_base_table_equals_powmod(keys, tables):
    # any product of powers of hs would still decrypt, so check the table computes exactly hs^r
    pk, sk = keys
    r_bytes = tables[0].r_bytes
    assert r_bytes == 64  # 512-bit r for a 1024-bit key
    for e in (0, 1, 255, 256, 0x0102, 2**512 - 1, int.from_bytes(os.urandom(64), "little")):
        digits = e.to_bytes(r_bytes, "little")
        expected = gmpy2.powmod(pk.hs, e, pk.n2)
        assert tables[0].tables[0].pow(digits) == expected
        assert sk._crt(*(t.pow(digits) for t in tables[1].tables)) == expected


def test_table_must_match_key(keys, tables):
    pk, sk = keys
    with pytest.raises(ValueError, match="different key"):
        P.encrypt(sk, 1, table=tables[0])  # a public table used with the secret key
    other_pk, _ = P.generate_keypair(512, allow_weak_keys=True)
    with pytest.raises(ValueError, match="different key"):
        P.encrypt(other_pk, 1, table=tables[0])


def test_encryption_is_randomized(keys, tables):
    pk, sk = keys
    cs = {int(P.encrypt(pk, 5)), int(P.encrypt(pk, 5)), int(P.encrypt(pk, 5, table=tables[0]))}
    cs |= {int(P.encrypt(sk, 5, table=tables[1])), int(P.encrypt(pk, 5, fast=False))}
    assert len(cs) == 5


def test_homomorphic_operations(keys):
    pk, sk = keys
    n = int(pk.n)
    a, b = P.encrypt(pk, 1000), P.encrypt(pk, 234)
    assert P.decrypt(sk, P.add(pk, a, b)) == 1234
    assert P.decrypt(sk, P.add(pk, P.encrypt(pk, n - 1), P.encrypt(pk, 2))) == 1  # wraps mod n
    assert P.decrypt(sk, P.add_plain(pk, a, 66)) == 1066
    assert P.decrypt(sk, P.mul_plain(pk, b, 3)) == 702
    assert P.decode_signed(P.decrypt(sk, P.mul_plain(pk, b, -2)), pk) == -468
    assert P.decrypt(sk, P.mul_plain(pk, b, 0)) == 0
    cols = [[P.encrypt(pk, v) for v in row] for row in ([1, 2, 3], [10, 20, 30], [100, 200, n - 3])]
    assert P.decrypt_many(sk, P.sum_ciphertexts(pk, cols)) == [111, 222, 30]
    with pytest.raises(ValueError, match="same length"):
        P.sum_ciphertexts(pk, [cols[0], cols[1][:2]])
    with pytest.raises(ValueError, match="at least one"):
        P.sum_ciphertexts(pk, [])


def test_decrypt_many_with_two_workers(keys, tables):
    pk, sk = keys
    ms = list(range(1000, 1000 + 70))  # >= 64 so the process pool is really used
    cs = P.encrypt_many(pk, ms, table=tables[0])
    assert P.decrypt_many(sk, cs, workers=2) == ms


def test_ciphertext_bytes_fixed_width(keys):
    pk, sk = keys
    cs = P.encrypt_many(pk, [3, 0, 99])
    data = P.ciphertexts_to_bytes(cs + [1], pk)  # c = 1 is a valid encryption of 0 and needs padding
    assert len(data) == 4 * 256  # 2·1024 bits = 256 bytes each
    back = P.ciphertexts_from_bytes(data, pk)
    assert back[:3] == cs and back[3] == 1
    assert P.decrypt_many(sk, back) == [3, 0, 99, 0]
    with pytest.raises(ValueError, match="multiple of 256"):
        P.ciphertexts_from_bytes(data[:-1], pk)
    with pytest.raises(ValueError, match="outside"):
        P.ciphertexts_from_bytes(b"\xff" * 256, pk)  # 2^2048 - 1 >= n²
    with pytest.raises(ValueError, match="out of range"):
        P.ciphertexts_to_bytes([pk.n2], pk)


def test_keygen_2048_and_weak_keys_rejected():
    pk, sk = P.generate_keypair()
    assert pk.key_bits == 2048 and pk.n.bit_length() == 2048 and pk.r_bits == 1024
    assert sk.p.bit_length() == 1024 and sk.q.bit_length() == 1024
    assert gmpy2.is_prime(sk.p, 40) and gmpy2.is_prime(sk.q, 40)
    assert gmpy2.powmod(pk.hs, sk.p - 1, sk.p2) == 1  # hs is an n-th residue
    with pytest.raises(ValueError, match="allow_weak_keys"):
        P.generate_keypair(1024)
    with pytest.raises(ValueError, match="r_bits"):
        P.generate_keypair(2048, r_bits=128)
    with pytest.raises(ValueError, match="unusable"):
        P.generate_keypair(128, allow_weak_keys=True)
    weak_pk, _ = P.generate_keypair(512, allow_weak_keys=True)
    assert weak_pk.n.bit_length() == 512
    with pytest.raises(ValueError, match="allow_weak_keys"):
        P.public_key_from_dict(P.public_key_to_dict(weak_pk))


def test_secret_key_validation_and_repr(keys):
    pk, sk = keys
    with pytest.raises(ValueError, match="p·q = n"):
        P.SecretKey(pk, sk.p, sk.q + 2)
    with pytest.raises(ValueError, match="n-th residue"):
        P.SecretKey(P.PublicKey(pk.n, 2, pk.r_bits), sk.p, sk.q)
    assert str(int(sk.p)) not in repr(sk) and hex(sk.p)[2:] not in repr(sk)


def test_key_files_modes_and_contents(tmp_path, keys):
    pk, sk = keys
    old_umask = os.umask(0)  # a permissive umask must not widen the secret file
    try:
        public_path, secret_path = P.save_keypair(pk, sk, tmp_path / "keys")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    public_json = json.loads(public_path.read_text())
    assert set(public_json) == {"scheme", "kind", "n", "hs", "r_bits"}  # nothing secret
    loaded_pk = P.load_public_key(public_path, allow_weak_keys=True)
    assert loaded_pk == pk and not hasattr(loaded_pk, "p")
    loaded_sk = P.load_secret_key(secret_path, allow_weak_keys=True)
    assert loaded_sk == sk and P.decrypt(loaded_sk, P.encrypt(loaded_pk, 77)) == 77
    with pytest.raises(FileExistsError):
        P.save_keypair(pk, sk, tmp_path / "keys")
    P.save_keypair(pk, sk, tmp_path / "keys", overwrite=True)
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600


def test_malformed_key_files(tmp_path, keys):
    pk, sk = keys
    public_path, secret_path = P.save_keypair(pk, sk, tmp_path)
    with pytest.raises(ValueError, match="kind"):
        P.load_public_key(secret_path, allow_weak_keys=True)  # a secret file is not a public key
    cases = {
        "garbage.json": "{not json",
        "missing.json": json.dumps({k: v for k, v in P.public_key_to_dict(pk).items() if k != "hs"}),
        "nothex.json": json.dumps({**P.public_key_to_dict(pk), "n": "zz"}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name):  # the message names the file
            P.load_public_key(tmp_path / name, allow_weak_keys=True)
    wrong = {**P.secret_key_to_dict(sk), "q": hex(sk.q + 2)}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="p·q = n"):
        P.load_secret_key(tmp_path / "wrong.json", allow_weak_keys=True)


def test_cross_check_with_phe(keys):
    phe = pytest.importorskip("phe")
    pk, sk = keys
    phe_pk = phe.PaillierPublicKey(int(pk.n))  # phe also uses g = n + 1
    phe_sk = phe.PaillierPrivateKey(phe_pk, int(sk.p), int(sk.q))
    ms = [0, 1, 31337, int(pk.n) - 1]
    ours = P.encrypt_many(pk, ms)
    assert [phe_sk.raw_decrypt(int(c)) for c in ours] == ms
    theirs = [phe_pk.raw_encrypt(m) for m in ms]
    assert P.decrypt_many(sk, theirs) == ms
    # sums: phe adds our ciphertexts, we add phe's, both decrypt to the same plaintext sum
    e1, e2 = (phe.EncryptedNumber(phe_pk, int(c)) for c in P.encrypt_many(pk, [1200, 34]))
    assert P.decrypt(sk, (e1 + e2).ciphertext(be_secure=False)) == 1234
    mixed = P.add(pk, theirs[2], ours[1])
    assert phe_sk.raw_decrypt(int(mixed)) == 31338 == P.decrypt(sk, mixed)
