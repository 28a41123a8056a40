"""The book's §15.4: federated logistic regression whose global model stays Paillier-encrypted.

Model (binary, labels y ∈ {−1, +1}, a bias column appended to x, d = features + 1 weights): the log loss
log(1 + e^(−z)), z = y·wᵀx, is replaced by its second-order Taylor expansion at z = 0,

    ℓ(z) ≈ log 2 − z/2 + z²/8,    ∇_w ℓ = (z/4 − 1/2)·y·x = ¼·x xᵀ w − ½·y·x     (y² = 1),

which is *linear* in w, so a gradient step on a batch (X [B, d], y [B]) is an affine map with plaintext
coefficients that a client can apply to encrypted weights:

    w ← w − lr·(¼·A·w − ½·b) = M·w + q,    A = XᵀX/B,  b = Xᵀy/B,  M = I − (lr/4)·A,  q = (lr/2)·b.

Protocol and trust (book §15.4; "the server" is also the key holder): the server generates the key pair and
keeps the global weights encrypted, E(G). Each round it sends E(G) to k sampled clients (public key only);
each client runs ``local_epochs`` steps E(w) ← M_t·E(w) + q_t (plaintext × ciphertext products and sums, on
its plaintext data), uploads E(w_T − G) re-randomized with a fresh E(0), and the server computes
E(G) ← E(G) + λ·Σ_i E(diff_i) without decrypting. The server decrypts only the global model, to evaluate it.
This protects the updates from other clients and from outsiders on the wire — **not from the server**, which
holds the secret key and could decrypt any single upload (this code never does: :class:`EncryptedLRServer`
has one decryption call, on the global model; the test counts it). With k = 1 the round's model change is
that one client's update. `fedloom.secure.secagg` is the stronger protocol where the server holds no key.

Fixed point (like python-paillier's EncodedNumber, with a binary exponent tracked per vector): a vector
``E(v)`` at exponent e encrypts the integers round(v·2^e) (negatives as n − |m|). Plaintext × ciphertext
adds exponents, so each local step raises e by ``coef_bits`` (M's entries are sent to the exponent as
round(M·2^coef_bits); q is encoded at the new exponent), λ adds ``lam_bits``, and sums first lift the
smaller exponent by multiplying with 2^Δ. In a round the exponent climbs from ``weight_bits`` to
e_max = weight_bits + T·coef_bits + lam_bits (T = local steps: local_epochs × batches per pass); the integers stay below
2^(e_max + magnitude_bits + ⌈log2(d·k)⌉ + 1), which must fit below n/2 (checked at start: 32-bit defaults and
T = 2 need ~160 of 1024 bits; 1024-bit keys allow ~28 local steps, 2048-bit ~60). Paillier cannot divide,
so only the key holder can bring the exponent down: each round the server decrypts E(G) (which it does
anyway to evaluate), rounds G to ``weight_bits`` fractional bits and re-encrypts it. That is one decryption
and one encryption per weight per round, counted in ``he_decrypt_seconds`` / ``he_encrypt_seconds``; a wrap
modulo n would decode as |G| ≫ 2^magnitude_bits and is reported as an error, never silently used.

The client's half (fixed-point vectors, the affine step, the upload) is :mod:`fedloom.secure.encrypted_vec`,
re-exported here; this module holds the server, the evaluation and the runs.

The plaintext twin :func:`run_plain_lr` runs the same sampling, batches, (M_t, q_t) and λ rule in float64;
the encrypted run matches it to ~1e-9 (fixed-point rounding). Book differences (facts from its ch.15 code):
a "local epoch" there is one batch of ``batch_size`` rows (here a full pass, as in the rest of fedloom),
accuracy over the whole eval set (the book: 64 of 114 rows), seeded sampling, and re-randomized uploads: a fresh
E(0) per coordinate, like python-paillier's obfuscate() (the book's uploads reuse the randomness of E(G) and of one
client-made E(−1) in every coordinate, which lets an eavesdropper test guesses of a client's batch).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np

from . import paillier as P
from .encrypted_vec import (  # the client's half; re-exported so callers keep one namespace
    EncVec,
    FixedPoint,
    _encode,
    _lift,
    client_update,
    local_steps,
    vec_from_bytes,
    vec_to_bytes,
)

__all__ = ["FixedPoint", "EncVec", "local_steps", "client_update", "EncryptedLRServer", "evaluate"]
__all__ += ["vec_to_bytes", "vec_from_bytes", "run_encrypted_lr", "run_plain_lr", "to_pm1", "run_encrypted_model"]

_INIT_TAG, _SAMPLE_TAG, _BATCH_TAG = 151, 152, 153  # stream ids for numpy SeedSequence([seed, ..., tag])


class EncryptedLRServer:
    """Holds the key pair and E(G); adds uploads blind; decrypts only the global model (:meth:`open_global`)."""

    def __init__(self, pk: P.PublicKey, sk: P.SecretKey, w_init: np.ndarray, lam: float, fp: FixedPoint) -> None:
        self.pk, self._sk, self.lam, self.fp = pk, sk, lam, fp
        self.seconds = {"encrypt": 0.0, "decrypt": 0.0, "aggregate": 0.0}
        self._seal(w_init)

    def _seal(self, w: np.ndarray) -> None:
        """E(round(w·2^weight_bits)): the fresh global, encrypted with the secret key (CRT, ~2.5× faster)."""
        t0 = time.perf_counter()
        ms = [P.encode_signed(_encode(v, self.fp.weight_bits), self.pk) for v in w]
        self.global_ = EncVec(P.encrypt_many(self._sk, ms), self.fp.weight_bits)
        self.seconds["encrypt"] += time.perf_counter() - t0

    def broadcast(self) -> bytes:
        return vec_to_bytes(self.global_, self.pk)

    def aggregate(self, uploads: Sequence[bytes]) -> None:
        """E(G) ← E(G) + λ·Σ_i E(diff_i), all under encryption (exponents lifted to a common one)."""
        t0 = time.perf_counter()
        diffs = [vec_from_bytes(u, self.pk) for u in uploads]
        if not diffs or any(len(v.cts) != len(self.global_.cts) for v in diffs):
            raise ValueError(f"need >= 1 upload of {len(self.global_.cts)} ciphertexts each")
        exp = max(v.exp for v in diffs)
        total = P.sum_ciphertexts(self.pk, [_lift(self.pk, v, exp) for v in diffs])
        lam = _encode(self.lam, self.fp.lam_bits)
        step = EncVec([P.mul_plain(self.pk, c, lam) for c in total], exp + self.fp.lam_bits)
        g = _lift(self.pk, self.global_, max(step.exp, self.global_.exp))
        s = _lift(self.pk, step, max(step.exp, self.global_.exp))
        self.global_ = EncVec([P.add(self.pk, a, b) for a, b in zip(g, s)], max(step.exp, self.global_.exp))
        self.seconds["aggregate"] += time.perf_counter() - t0

    def open_global(self) -> np.ndarray:
        """Decrypt G to evaluate it, then re-encrypt it at ``weight_bits`` (the only decryption here)."""
        t0 = time.perf_counter()
        ms = P.decrypt_many(self._sk, self.global_.cts)
        w = np.array([P.decode_signed(m, self.pk) / (1 << self.global_.exp) for m in ms])
        self.seconds["decrypt"] += time.perf_counter() - t0
        if not np.all(np.abs(w) < 2.0**self.fp.magnitude_bits):
            raise OverflowError(
                f"a decrypted weight has |w| >= 2^{self.fp.magnitude_bits}: the fixed-point plaintext wrapped "
                "modulo n (lower lr / local_epochs, or raise FixedPoint.magnitude_bits and key_bits)"
            )
        self._seal(w)
        return w


class _PlainServer:
    """The twin of EncryptedLRServer in float64: same λ rule, payloads are raw float64 bytes."""

    def __init__(self, w_init: np.ndarray, lam: float) -> None:
        self.global_, self.lam = np.array(w_init, dtype=np.float64), lam
        self.seconds = {"encrypt": 0.0, "decrypt": 0.0, "aggregate": 0.0}

    def broadcast(self) -> bytes:
        return self.global_.tobytes()

    def aggregate(self, uploads: Sequence[bytes]) -> None:
        self.global_ = self.global_ + self.lam * np.sum([np.frombuffer(u) for u in uploads], axis=0)

    def open_global(self) -> np.ndarray:
        return self.global_.copy()


def _plain_update(down: bytes, steps: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[bytes, float]:
    g = np.frombuffer(down)
    w = g
    for m, q in steps:
        w = m @ w + q
    return (w - g).tobytes(), 0.0


def to_pm1(y: np.ndarray) -> np.ndarray:
    """Labels {0, 1} → {−1, +1} (1 stays +1); labels already in {−1, +1} pass; anything else is an error."""
    y = np.asarray(y).reshape(-1)
    values = set(np.unique(y).tolist())
    if values <= {0, 1}:
        return np.where(y == 1, 1.0, -1.0)
    if values <= {-1, 1}:
        return y.astype(np.float64)
    raise ValueError(f"binary logistic regression needs labels in {{0, 1}} or {{-1, +1}}, got {sorted(values)}")


def _with_bias(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)  # [n, features + 1]


def evaluate(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy (predict +1 iff wᵀx > 0, i.e. sigmoid > ½), mean log loss and mean Taylor loss."""
    z = y * (x @ w)  # [n]
    return {
        "accuracy": float(np.mean(z > 0)),
        "loss": float(np.mean(np.logaddexp(0.0, -z))),
        "taylor_loss": float(np.mean(math.log(2) - z / 2 + z**2 / 8)),
    }


def _check(
    client_indices: Sequence[np.ndarray], k: int, rounds: int, local_epochs: int, batch_size: int, lr: float, lam: float
) -> None:
    if not client_indices or any(len(ix) == 0 for ix in client_indices):
        raise ValueError("client_indices must list at least one client, each with at least one row")
    for name, value, low in (
        ("k", k, 1),
        ("rounds", rounds, 1),
        ("local_epochs", local_epochs, 1),
        ("batch_size", batch_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if k > len(client_indices):
        raise ValueError(f"k={k} exceeds the {len(client_indices)} clients")
    if not (lr > 0 and math.isfinite(lr)) or not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lr and lam must be positive and finite, got lr={lr!r}, lam={lam!r}")


def _run(server, update: Callable, data: tuple, hp: dict, on_round: Callable | None) -> tuple[list[dict], dict]:
    """The round loop shared by the encrypted run and its plaintext twin (stages: send, train, add, open)."""
    x, y, shards, x_ev, y_ev = data
    seed, rows = hp["seed"], []
    for rnd in range(1, hp["rounds"] + 1):
        t0, before = time.perf_counter(), dict(server.seconds)
        cohort = sorted(
            int(c)
            for c in np.random.default_rng([seed, rnd, _SAMPLE_TAG]).choice(len(shards), size=hp["k"], replace=False)
        )
        down = server.broadcast()
        uploads, client_s, client_enc_s = [], 0.0, 0.0
        for c in cohort:
            rng = np.random.default_rng([seed, rnd, c, _BATCH_TAG])
            steps = local_steps(x[shards[c]], y[shards[c]], rng, hp["local_epochs"], hp["batch_size"], hp["lr"])
            tc = time.perf_counter()
            payload, enc_s = update(down, steps)
            client_s, client_enc_s = client_s + time.perf_counter() - tc - enc_s, client_enc_s + enc_s
            uploads.append(payload)
        server.aggregate(uploads)
        w = server.open_global()
        metrics = evaluate(w, x_ev, y_ev)
        spent = {key: server.seconds[key] - before[key] for key in before}
        row = {
            "round": rnd,
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "bytes_up": sum(len(u) for u in uploads),
            "bytes_down": len(down) * len(cohort),
            "seconds": time.perf_counter() - t0,
            "clients": cohort,
            "taylor_loss": metrics["taylor_loss"],
            "he_encrypt_seconds": spent["encrypt"] + client_enc_s,
            "he_decrypt_seconds": spent["decrypt"],
            "he_aggregate_seconds": spent["aggregate"],
            "he_client_seconds": client_s,
        }
        rows.append(row)
        if on_round is not None:
            on_round(row)
    summary = {
        key: sum(r[key] for r in rows)
        for key in (
            "bytes_up",
            "bytes_down",
            "seconds",
            "he_encrypt_seconds",
            "he_decrypt_seconds",
            "he_aggregate_seconds",
            "he_client_seconds",
        )
    }
    summary |= {
        "rounds": hp["rounds"],
        "final_accuracy": rows[-1]["accuracy"],
        "final_loss": rows[-1]["loss"],
        "eval_samples": len(y_ev),
        "num_params": x.shape[1],
        "weights": w.tolist(),
    }
    return rows, summary


def _prepare(x_train, y_train, client_indices, x_eval, y_eval, seed) -> tuple[tuple, np.ndarray]:
    x, x_ev = _with_bias(x_train), _with_bias(x_eval)
    shards = [np.asarray(ix, dtype=np.int64) for ix in client_indices]
    w_init = np.random.default_rng([seed, _INIT_TAG]).uniform(-0.5, 0.5, x.shape[1])  # the book's U(−½, ½)
    return (x, to_pm1(y_train), shards, x_ev, to_pm1(y_eval)), w_init


def run_encrypted_lr(
    x_train: np.ndarray,
    y_train: np.ndarray,
    client_indices: list[np.ndarray],
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    k: int,
    rounds: int,
    local_epochs: int,
    batch_size: int,
    lr: float,
    lam: float,
    key_bits: int = 2048,
    allow_weak_keys: bool = False,
    seed: int = 0,
    on_round: Callable[[dict], None] | None = None,
    fixed_point: FixedPoint | None = None,
) -> tuple[list[dict], dict]:
    """The book's §15.4 run; rows like metrics.jsonl plus ``he_*`` seconds; bytes from real payloads.

    ``key_bits`` below 2048 (the book used 1024) needs ``allow_weak_keys=True``. Encryption randomness comes
    from the OS RNG; everything that changes the decrypted numbers is seeded from (seed, round, client).
    """
    _check(client_indices, k, rounds, local_epochs, batch_size, lr, lam)
    fp = fixed_point or FixedPoint()
    data, w_init = _prepare(x_train, y_train, client_indices, x_eval, y_eval, seed)
    steps = local_epochs * -(-max(len(i) for i in client_indices) // batch_size)  # T: steps of the largest shard
    need = fp.bits_needed(steps, data[0].shape[1], k)
    if need > key_bits - 2:
        raise ValueError(
            f"fixed-point plaintexts would need {need} bits in a round, more than a {key_bits}-bit key holds "
            f"({key_bits - 2}) for {steps} local steps: lower local_epochs={local_epochs}, raise batch_size, lower the "
            "FixedPoint bits, or raise key_bits"
        )
    t0 = time.perf_counter()
    pk, sk = P.generate_keypair(key_bits, allow_weak_keys=allow_weak_keys)
    keygen_s = time.perf_counter() - t0
    server = EncryptedLRServer(pk, sk, w_init, lam, fp)
    setup_encrypt_s = server.seconds["encrypt"]
    hp = dict(seed=seed, rounds=rounds, k=k, local_epochs=local_epochs, batch_size=batch_size, lr=lr)
    rows, summary = _run(server, lambda down, steps: client_update(pk, down, steps, fp.coef_bits), data, hp, on_round)
    summary |= {
        "protocol": "encrypted-model",
        "key_bits": key_bits,
        "keygen_seconds": keygen_s,
        "setup_encrypt_seconds": setup_encrypt_s,
        "ciphertext_bytes": (2 * key_bits + 7) // 8,
        "public_key_bytes": len(json.dumps(P.public_key_to_dict(pk)).encode()),
        "bits_needed": need,
        "fixed_point": asdict(fp),
    }
    return rows, summary


def run_plain_lr(
    x_train: np.ndarray,
    y_train: np.ndarray,
    client_indices: list[np.ndarray],
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    k: int,
    rounds: int,
    local_epochs: int,
    batch_size: int,
    lr: float,
    lam: float,
    seed: int = 0,
    on_round: Callable[[dict], None] | None = None,
) -> tuple[list[dict], dict]:
    """The plaintext twin: the same seeds, batches, steps and λ rule in float64, no encryption."""
    _check(client_indices, k, rounds, local_epochs, batch_size, lr, lam)
    data, w_init = _prepare(x_train, y_train, client_indices, x_eval, y_eval, seed)
    hp = dict(seed=seed, rounds=rounds, k=k, local_epochs=local_epochs, batch_size=batch_size, lr=lr)
    rows, summary = _run(_PlainServer(w_init, lam), _plain_update, data, hp, on_round)
    return rows, summary | {"protocol": "plaintext-twin"}


def run_encrypted_model(
    cfg, data, on_round: Callable[[dict], None] | None = None
) -> tuple[list[dict], dict, np.ndarray]:
    """``fedloom run`` for ``secure.protocol: encrypted-model``: the book's 15.4 from a config and its data.

    ``momentum`` is accepted and unused (the book's conf.json sets 0.0001; its encrypted client takes plain
    steps ``w ← M·w + q``); the summary's ``notes`` says so.

    Returns the metrics rows, the summary (same keys as a simulation run, plus ``he_*``) and the final weights.
    """
    from ..errors import DataError

    if data.num_classes != 2:
        raise DataError(
            f"{cfg.type}: the book's encrypted logistic regression needs 2 classes, found {data.num_classes}"
        )
    if cfg.feature_num is not None and cfg.feature_num != data.num_features:
        raise DataError(f"feature_num is {cfg.feature_num} but {cfg.type} has {data.num_features} features")
    sec = cfg.secure
    clients = [data.partition.indices(c) for c in range(data.num_clients)]
    rows, summary = run_encrypted_lr(
        data.x_train.numpy(),
        data.y_train.numpy(),
        clients,
        data.x_eval.numpy(),
        data.y_eval.numpy(),
        k=cfg.k,
        rounds=cfg.global_epochs,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lam=cfg.lambda_,
        key_bits=sec.key_bits,
        allow_weak_keys=sec.allow_weak_keys,
        seed=cfg.seed,
        on_round=on_round,
    )
    weights = np.asarray(summary.pop("weights"), dtype=np.float64)  # [features + 1], bias last
    summary |= {
        "train_seconds": summary["seconds"],
        "num_clients": cfg.no_models,
        "seed": cfg.seed,
        "secure_method": "paillier",
        "aggregator": "book-lambda (encrypted)",
    }
    if cfg.momentum:
        summary["notes"] = [
            f"momentum {cfg.momentum:g} is unused: the book's 15.4 clients take plain gradient steps on encrypted "
            "weights (its conf.json sets momentum, its code never reads it)"
        ]
    return rows, summary, weights
