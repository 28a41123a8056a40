"""The book's §15.4 encrypted logistic regression on breast cancer: accuracy, time and bytes per round.

    python bench/encrypted_lr.py [--key-bits 1024] [--seed 0] [--rounds 30] [--twin-seeds 20]

The book's config: 5 clients (contiguous shards), k 2, 30 rounds, local_epochs 2, batch 64, lr 0.15,
λ 0.5, Paillier 1024 bits (below 2048 only because the script passes allow_weak_keys=True, as the book's
reproduction needs). Accuracy is over the whole eval set (114 rows; the book used 64). The plaintext twin
is then run over ``--twin-seeds`` seeds to show the spread that a single seed hides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    from fedloom.config import build_config
    from fedloom.data import load_data
    from fedloom.secure.encrypted_lr import run_encrypted_lr, run_plain_lr
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from fedloom.config import build_config
    from fedloom.data import load_data
    from fedloom.secure.encrypted_lr import run_encrypted_lr, run_plain_lr

BOOK = {"type": "breast_cancer", "no_models": 5, "k": 2, "partition": {"method": "contiguous"}, "model_name": "logreg"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key-bits", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--twin-seeds", type=int, default=20)
    args = ap.parse_args()
    d = load_data(build_config(BOOK))
    shards = [np.asarray(d.partition.indices(c)) for c in range(5)]
    data = (d.x_train.numpy(), d.y_train.numpy(), shards, d.x_eval.numpy(), d.y_eval.numpy())
    hp = dict(k=2, rounds=args.rounds, local_epochs=2, batch_size=64, lr=0.15, lam=0.5)

    print(f"{'round':>5}{'acc':>7}{'loss':>8}{'up B':>8}{'down B':>8}{'s':>7}{'client s':>9}{'enc s':>7}{'dec s':>7}")
    show = lambda r: print(  # noqa: E731
        f"{r['round']:>5}{r['accuracy']:>7.3f}{r['loss']:>8.4f}{r['bytes_up']:>8}{r['bytes_down']:>8}"
        f"{r['seconds']:>7.2f}{r['he_client_seconds']:>9.2f}{r['he_encrypt_seconds']:>7.3f}{r['he_decrypt_seconds']:>7.3f}"
    )
    weak = args.key_bits < 2048
    _, s = run_encrypted_lr(*data, **hp, seed=args.seed, key_bits=args.key_bits, allow_weak_keys=weak, on_round=show)
    _, twin = run_plain_lr(*data, **hp, seed=args.seed)
    gap = np.abs(np.array(s["weights"]) - np.array(twin["weights"])).max()
    r = s["rounds"]
    print(
        f"\nPaillier-{args.key_bits}, seed {args.seed}: final accuracy {s['final_accuracy']:.4f} on "
        f"{s['eval_samples']} eval rows (twin {twin['final_accuracy']:.4f}; max |w - w_twin| = {gap:.1e})"
    )
    print(
        f"total {s['seconds']:.1f} s ({s['seconds'] / r:.2f} s/round; clients' homomorphic steps "
        f"{s['he_client_seconds']:.1f} s, encryptions {s['he_encrypt_seconds']:.1f} s, decryptions "
        f"{s['he_decrypt_seconds']:.2f} s, server adds {s['he_aggregate_seconds']:.2f} s), keygen "
        f"{s['keygen_seconds']:.2f} s"
    )
    print(
        f"bytes per round: up {s['bytes_up'] / r:.0f}, down {s['bytes_down'] / r:.0f} "
        f"({s['ciphertext_bytes']} B per weight vs 8 B for float64); public key {s['public_key_bytes']} B once"
    )
    if args.twin_seeds:
        accs = np.array([run_plain_lr(*data, **hp, seed=t)[1]["final_accuracy"] for t in range(args.twin_seeds)])
        print(
            f"twin over seeds 0..{args.twin_seeds - 1}: mean {accs.mean():.4f}, min {accs.min():.4f}, "
            f"max {accs.max():.4f}, >= 0.95 in {(accs >= 0.95).sum()}/{len(accs)}"
        )


if __name__ == "__main__":
    main()
