"""CKKS path vs raw TenSEAL: one secure-aggregation round on the same vectors, median of several runs.

    python bench/he_ckks_speed.py [--values 100000] [--clients 3] [--repeats 3]

Both sides do the same work: each of k clients encrypts its vector chunk by chunk (4096 slots per ciphertext)
and serializes it; the server deserializes, adds in place and serializes the sum; the key holder deserializes
and decrypts. "fedloom" goes through `CKKSKeyHolder` / `CKKSClientCipher` / `ckks_server_cipher` (header,
weight slot, checks); "raw" calls ts.ckks_vector / ckks_vector_from / += / serialize / decrypt directly with
the same context parameters. One warm-up round each, then the median of ``--repeats`` timed rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tenseal as ts

try:
    from fedloom.secure.ckks import CKKSKeyHolder, ckks_server_cipher
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from fedloom.secure.ckks import CKKSKeyHolder, ckks_server_cipher


def fedloom_round(holder: CKKSKeyHolder, vectors: list[np.ndarray]) -> dict[str, float]:
    t0 = time.perf_counter()
    cipher = holder.client_cipher()
    payloads = [cipher.encrypt(v, 1, np.random.default_rng(i)) for i, v in enumerate(vectors)]
    t1 = time.perf_counter()
    server = ckks_server_cipher(holder.public_bytes())
    agg = server.add(payloads)
    t2 = time.perf_counter()
    out = holder.decrypt(agg, len(vectors), len(vectors[0]))
    t3 = time.perf_counter()
    assert out.weight == len(vectors)
    return {"encrypt": t1 - t0, "add": t2 - t1, "decrypt": t3 - t2, "total": t3 - t0, "bytes": len(payloads[0])}


def raw_round(holder: CKKSKeyHolder, vectors: list[np.ndarray]) -> dict[str, float]:
    step = holder.slots
    t0 = time.perf_counter()
    client_ctx = ts.context_from(holder.public_bytes())
    uploads = [
        [ts.ckks_vector(client_ctx, v[i : i + step]).serialize() for i in range(0, len(v), step)] for v in vectors
    ]
    t1 = time.perf_counter()
    server_ctx = ts.context_from(holder.public_bytes())
    acc = [ts.ckks_vector_from(server_ctx, c) for c in uploads[0]]
    for upload in uploads[1:]:
        for a, c in zip(acc, upload):
            a += ts.ckks_vector_from(server_ctx, c)
    agg = [a.serialize() for a in acc]
    t2 = time.perf_counter()
    values = np.concatenate([np.asarray(ts.ckks_vector_from(holder.context, c).decrypt()) for c in agg])
    t3 = time.perf_counter()
    assert values.shape == vectors[0].shape
    return {
        "encrypt": t1 - t0,
        "add": t2 - t1,
        "decrypt": t3 - t2,
        "total": t3 - t0,
        "bytes": sum(len(c) for c in uploads[0]),
    }


def median_of(fn, holder, vectors, repeats: int) -> dict[str, float]:
    fn(holder, vectors)  # warm-up: first-touch allocations, NTT tables
    runs = [fn(holder, vectors) for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(args.values) for _ in range(args.clients)]  # [clients, values]
    holder = CKKSKeyHolder()
    # interleave the two paths so a busy neighbour on the shared machine slows both alike
    ours, raw = {}, {}
    for _ in range(2):
        ours = median_of(fedloom_round, holder, vectors, args.repeats)
        raw = median_of(raw_round, holder, vectors, args.repeats)
    print(f"CKKS N=8192, {args.clients} clients x {args.values} values, median of {args.repeats} (after warm-up)")
    print(f"{'stage':<10}{'fedloom s':>12}{'raw TenSEAL s':>15}{'ratio':>8}")
    for key in ("encrypt", "add", "decrypt", "total"):
        print(f"{key:<10}{ours[key]:>12.3f}{raw[key]:>15.3f}{ours[key] / raw[key]:>8.2f}")
    print(
        f"bytes per value (one client's upload): fedloom {ours['bytes'] / args.values:.1f}, "
        f"raw {raw['bytes'] / args.values:.1f} (fp32: 4)"
    )
    print(f"ratio fedloom / raw TenSEAL (whole round): {ours['total'] / raw['total']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
