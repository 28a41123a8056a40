"""Paillier speed: phe per value vs fedloom per value vs fedloom packed (BatchCrypt-style), one round.

    python bench/he_speed.py [--values 100000] [--key-bits 2048] [--clients 2] [--workers 2]

Every path runs the whole secure-aggregation round on the same random update: each of k clients encrypts its
vector, the server adds the k ciphertext vectors, the key holder decrypts the sum once. Slow per-value paths
are timed on a sample and extrapolated to N values (labelled "estimate"); the packed path runs on all N.
Bytes per value come from the real serialized payload of one client. phe (GPL) is only used here, never by
fedloom itself; install it with `pip install phe`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    from fedloom.secure import paillier as P
    from fedloom.secure.packing import Packer
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from fedloom.secure import paillier as P
    from fedloom.secure.packing import Packer

SCALE = 2**24  # per-value fixed point for our unpacked path: finer than the packed path's 16 bits


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def phe_round(updates: list[np.ndarray], key_bits: int, sk: P.SecretKey) -> dict[str, float] | None:
    """phe 1.5 on floats: k clients encrypt, the server adds EncryptedNumbers, one decrypt per value."""
    try:
        import phe
    except ImportError:
        print("phe not installed (pip install phe): skipping the phe baseline")
        return None
    pub = phe.PaillierPublicKey(int(sk.public_key.n))  # same modulus as ours, g = n + 1 in both
    priv = phe.PaillierPrivateKey(pub, int(sk.p), int(sk.q))
    [priv.decrypt(pub.encrypt(0.5) + pub.encrypt(-0.25)) for _ in range(3)]  # warm-up
    encrypted, t_enc = timed(lambda: [[pub.encrypt(float(x)) for x in u] for u in updates])
    summed, t_add = timed(lambda: [sum(col[1:], col[0]) for col in zip(*encrypted)])
    plain, t_dec = timed(lambda: [priv.decrypt(c) for c in summed])
    assert np.allclose(plain, sum(updates), atol=1e-9), "phe round trip failed"
    return {"enc": t_enc, "add": t_add, "dec": t_dec, "bytes": (2 * key_bits + 7) // 8}


def ours_per_value_round(updates: list[np.ndarray], sk: P.SecretKey, table: P.RandomizerTable) -> dict[str, float]:
    """One value per ciphertext: fixed-point 2^-24, public-key encryption with the randomizer table."""
    pk = sk.public_key
    warm = P.encrypt_many(pk, [1, 2], table=table)
    P.decrypt_many(sk, warm)

    def encrypt_all() -> list[bytes]:
        return [
            P.ciphertexts_to_bytes(
                P.encrypt_many(pk, [P.encode_signed(round(x * SCALE), pk) for x in u], table=table), pk
            )
            for u in updates
        ]

    payloads, t_enc = timed(encrypt_all)
    summed, t_add = timed(lambda: P.sum_ciphertexts(pk, [P.ciphertexts_from_bytes(b, pk) for b in payloads]))
    plain, t_dec = timed(lambda: [P.decode_signed(m, pk) / SCALE for m in P.decrypt_many(sk, summed)])
    assert np.allclose(plain, sum(updates), atol=len(updates) / SCALE), "per-value round trip failed"
    return {"enc": t_enc, "add": t_add, "dec": t_dec, "bytes": len(payloads[0]) / updates[0].size}


def packed_round(
    updates: list[np.ndarray], sk: P.SecretKey, packer: Packer, secret_encrypt: bool, workers: int
) -> dict[str, float]:
    """BatchCrypt-style: quantize + pack, encrypt (table), serialize; add; decrypt once; decode."""
    pk = sk.public_key
    key: P.PublicKey | P.SecretKey = sk if secret_encrypt else pk
    table, t_table = timed(lambda: P.RandomizerTable(key))  # once per key and client, reused every round
    rng = np.random.default_rng(7)
    warm = P.encrypt_many(key, packer.encode(updates[0][:50], rng)[0], table=table)
    P.decrypt_many(sk, warm)
    stats = {"enc": 0.0, "encode": 0.0, "clipped": 0, "table": t_table}
    payloads = []
    for u in updates:
        (plaintexts, clipped), t_encode = timed(lambda u=u: packer.encode(u, rng))
        payload, t_enc = timed(lambda p=plaintexts: P.ciphertexts_to_bytes(P.encrypt_many(key, p, table=table), pk))
        payloads.append(payload)
        stats["encode"] += t_encode
        stats["enc"] += t_encode + t_enc
        stats["clipped"] += clipped
    summed, stats["add"] = timed(lambda: P.sum_ciphertexts(pk, [P.ciphertexts_from_bytes(b, pk) for b in payloads]))
    plain, t_decrypt = timed(lambda: P.decrypt_many(sk, summed, workers=workers))
    decoded, t_decode = timed(lambda: packer.decode_sum(plain, len(updates), updates[0].size))
    stats["dec"], stats["decode"] = t_decrypt + t_decode, t_decode
    truth = sum(np.clip(u, -packer.clip, packer.clip) for u in updates)
    stats["max_err"] = float(np.max(np.abs(decoded - truth)))
    stats["bytes"] = len(payloads[0]) / updates[0].size
    stats["ciphertexts"] = len(summed)
    return stats


def total(stats: dict[str, float]) -> float:
    return stats["enc"] + stats["add"] + stats["dec"]


def print_table(rows: list[tuple[str, float, float, str]], n: int, phe_seconds: float | None) -> None:
    header = f"{'path':<58}{'seconds':>10}{'values/s':>12}{'B/value':>9}{'× phe':>9}"
    print(header)
    print("-" * len(header))
    for name, seconds, per_value_bytes, note in rows:
        ratio = f"{phe_seconds / seconds:.0f}×" if phe_seconds else "—"
        print(f"{name + note:<58}{seconds:>10.2f}{n / seconds:>12,.0f}{per_value_bytes:>9.1f}{ratio:>9}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000, help="length of each client's update")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--clients", type=int, default=2, help="k clients whose ciphertexts the server adds")
    parser.add_argument("--phe-sample", type=int, default=200, help="values timed for phe, then extrapolated")
    parser.add_argument("--sample", type=int, default=1000, help="values timed for our per-value path")
    parser.add_argument("--workers", type=int, default=2, help="processes for the packed decryption row")
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--max-summands", type=int, default=16)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    n, k = args.values, args.clients
    updates = [rng.normal(0.0, 0.01, n) for _ in range(k)]  # a model delta: small, roughly Gaussian
    (pk, sk), t_keygen = timed(lambda: P.generate_keypair(args.key_bits, allow_weak_keys=True))
    packer = Packer(pk.key_bits, bits=args.bits, clip=0.05, max_summands=args.max_summands)  # clip = 5σ
    print(f"{pk.key_bits}-bit key (keygen {t_keygen:.2f} s), r_bits={pk.r_bits}, N={n:,} values, k={k} clients")
    print(f"packing: {packer.bits}-bit values, {packer.slot_bits}-bit slots, {packer.slots} per ciphertext\n")

    phe_stats = phe_round([u[: args.phe_sample] for u in updates], pk.key_bits, sk)
    table, _ = timed(lambda: P.RandomizerTable(pk))
    per_value = ours_per_value_round([u[: args.sample] for u in updates], sk, table)
    packed_pub = packed_round(updates, sk, packer, secret_encrypt=False, workers=1)
    packed_sk = packed_round(updates, sk, packer, secret_encrypt=True, workers=1)
    packed_par = packed_round(updates, sk, packer, secret_encrypt=False, workers=args.workers)

    phe_seconds = total(phe_stats) * n / args.phe_sample if phe_stats else None
    rows = []
    if phe_stats:
        rows.append(("phe per value", phe_seconds, phe_stats["bytes"], f" (estimate from {args.phe_sample})"))
    rows += [
        (
            "ours per value, pk + table",
            total(per_value) * n / args.sample,
            per_value["bytes"],
            f" (estimate from {args.sample})",
        ),
        ("ours packed, pk encrypt, 1 process", total(packed_pub), packed_pub["bytes"], ""),
        (
            f"  same + {k} table builds (1st round)",
            total(packed_pub) + k * packed_pub["table"],
            packed_pub["bytes"],
            "",
        ),
        ("ours packed, sk (CRT) encrypt, 1 process", total(packed_sk), packed_sk["bytes"], ""),
        (f"ours packed, pk encrypt, decrypt on {args.workers} processes", total(packed_par), packed_par["bytes"], ""),
    ]
    print_table(rows, n, phe_seconds)
    print("\nwhole-path seconds for N values = k encryptions (incl. quantize+pack+serialize) + add + 1 decrypt")
    for name, s in (("pk", packed_pub), ("sk", packed_sk), (f"pk/{args.workers}p", packed_par)):
        print(
            f"packed {name:<6} encrypt {s['enc']:.2f} s (encode {s['encode']:.3f}) | add {s['add']:.2f} s | "
            f"decrypt {s['dec']:.2f} s (decode {s['decode']:.3f}) | table {s['table']:.2f} s/key | "
            f"{s['ciphertexts']} ciphertexts/client | max |error| {s['max_err']:.2e} "
            f"(bound k·Δ = {k * packer.step:.2e}) | clipped {s['clipped']}"
        )
    if phe_stats:
        per = {key: phe_stats[key] / args.phe_sample * 1e3 for key in ("enc", "add", "dec")}
        print(f"phe per value: encrypt {per['enc'] / k:.2f} ms, add {per['add']:.3f} ms, decrypt {per['dec']:.2f} ms")


if __name__ == "__main__":
    main()
