"""The book's §15.4 encrypted logistic regression: Taylor step, twin equality, key use, fixed point, bytes."""

import numpy as np
import pytest

pytest.importorskip("gmpy2")

from fedloom.secure import encrypted_lr as E  # noqa: E402
from fedloom.secure import paillier as P  # noqa: E402

HP = dict(k=2, rounds=3, local_epochs=2, batch_size=16, lr=0.15, lam=0.5, seed=7)


@pytest.fixture(scope="module")
def small():
    """4 clients of 30 rows, 5 features, labels {0, 1} from a noisy linear rule; 40 eval rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 5))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.0]) + 0.3 * rng.standard_normal(160) > 0).astype(np.int64)
    shards = [np.arange(30 * c, 30 * (c + 1)) for c in range(4)]
    return x[:120], y[:120], shards, x[120:], y[120:]


def test_labels_mapped_to_pm1():
    np.testing.assert_array_equal(E.to_pm1(np.array([0, 1, 1, 0])), [-1.0, 1.0, 1.0, -1.0])
    np.testing.assert_array_equal(E.to_pm1(np.array([-1, 1])), [-1.0, 1.0])
    with pytest.raises(ValueError, match="labels"):
        E.to_pm1(np.array([0, 1, 2]))


def test_local_step_is_the_taylor_gradient_step():
    # hand case: one row x = [1, 2, 1(bias)], y = +1, w = [0.5, -1, 0.25], lr = 0.2
    # z = y·wᵀx = 0.5 − 2 + 0.25 = −1.25;  ∇ = (z/4 − 1/2)·y·x = −0.8125·x
    x, y, w, lr = np.array([[1.0, 2.0, 1.0]]), np.array([1.0]), np.array([0.5, -1.0, 0.25]), 0.2
    ((m, q),) = E.local_steps(x, y, np.random.default_rng(0), 1, 4, lr)
    np.testing.assert_allclose(m @ w + q, w - lr * (-0.8125) * x[0])
    # and ∇ is the derivative of log 2 − z/2 + z²/8 (central differences)
    taylor = lambda v: np.log(2) - (y[0] * x[0] @ v) / 2 + (y[0] * x[0] @ v) ** 2 / 8  # noqa: E731
    num = [(taylor(w + 1e-6 * e) - taylor(w - 1e-6 * e)) / 2e-6 for e in np.eye(3)]
    np.testing.assert_allclose(num, -0.8125 * x[0], rtol=1e-6)


def test_encrypted_run_matches_plaintext_twin(small):
    rows, summary = E.run_encrypted_lr(*small, **HP, key_bits=512, allow_weak_keys=True)
    twin_rows, twin = E.run_plain_lr(*small, **HP)
    # fixed point: 32 fractional bits per step/refresh, so ~1e-9; the twin never rounds
    np.testing.assert_allclose(summary["weights"], twin["weights"], atol=1e-7)
    for r, t in zip(rows, twin_rows):
        assert r["clients"] == t["clients"] and r["accuracy"] == t["accuracy"]
        assert r["loss"] == pytest.approx(t["loss"], abs=1e-7)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert summary["key_bits"] == 512 and summary["num_params"] == 6 and summary["eval_samples"] == 40
    for key in ("he_encrypt_seconds", "he_decrypt_seconds", "he_aggregate_seconds", "seconds"):
        assert all(r[key] > 0 for r in rows)


def test_bytes_are_the_serialized_ciphertexts(small):
    rows, summary = E.run_encrypted_lr(*small, **HP, key_bits=512, allow_weak_keys=True)
    payload = 12 + 6 * 128  # header (magic, exponent, count) + d = 6 ciphertexts of 2·512/8 bytes
    assert summary["ciphertext_bytes"] == 128
    assert all(r["bytes_up"] == 2 * payload and r["bytes_down"] == 2 * payload for r in rows)
    pk, _ = P.generate_keypair(512, allow_weak_keys=True)
    v = E.EncVec(P.encrypt_many(pk, [1, 2, 3]), 40)
    data = E.vec_to_bytes(v, pk)
    assert len(data) == 12 + len(P.ciphertexts_to_bytes(v.cts, pk))
    back = E.vec_from_bytes(data, pk)
    assert back.exp == 40 and back.cts == v.cts
    with pytest.raises(ValueError, match="magic"):
        E.vec_from_bytes(b"XXXX" + data[4:], pk)


def test_server_decrypts_only_the_global_model(small, monkeypatch):
    decrypted, uploaded, inside = [], [], []
    real_decrypt, real_many, real_update = P.decrypt, P.decrypt_many, E.client_update

    def counting_decrypt(sk, c):
        if not inside:  # decrypt_many may or may not go through decrypt: count each ciphertext once
            decrypted.append(int(c))
        return real_decrypt(sk, c)

    def counting_many(sk, cs, **kw):
        cs = list(cs)
        decrypted.extend(int(c) for c in cs)
        inside.append(1)
        try:
            return real_many(sk, cs, **kw)
        finally:
            inside.pop()

    def recording_update(pk, down, steps, coef_bits):
        payload, seconds = real_update(pk, down, steps, coef_bits)
        uploaded.extend(int(c) for c in E.vec_from_bytes(payload, pk).cts)
        return payload, seconds

    monkeypatch.setattr(P, "decrypt", counting_decrypt)
    monkeypatch.setattr(P, "decrypt_many", counting_many)
    monkeypatch.setattr(E, "client_update", recording_update)
    E.run_encrypted_lr(*small, **HP, key_bits=512, allow_weak_keys=True)
    assert len(decrypted) == HP["rounds"] * 6  # one opening of the d = 6 global weights per round
    assert len(uploaded) == HP["rounds"] * HP["k"] * 6
    assert not set(decrypted) & set(uploaded)  # no client upload was ever decrypted


def test_exponents_are_tracked_and_reset():
    pk, sk = P.generate_keypair(512, allow_weak_keys=True)
    fp = E.FixedPoint(weight_bits=20, coef_bits=16, lam_bits=8)
    server = E.EncryptedLRServer(pk, sk, np.array([0.5, -0.25]), 0.5, fp)
    x, y = np.array([[1.0, 1.0], [2.0, 1.0]]), np.array([1.0, -1.0])
    steps = E.local_steps(x, y, np.random.default_rng(0), 3, 2, 0.1)
    up, _ = E.client_update(pk, server.broadcast(), steps, fp.coef_bits)
    assert E.vec_from_bytes(up, pk).exp == 20 + 3 * 16  # each step adds coef_bits
    server.aggregate([up, up])
    assert server.global_.exp == 20 + 3 * 16 + 8  # λ adds lam_bits
    w = np.array([0.5, -0.25])
    for m, q in steps:
        w = m @ w + q
    expected = np.array([0.5, -0.25]) + 0.5 * 2 * (w - [0.5, -0.25])
    np.testing.assert_allclose(server.open_global(), expected, atol=1e-4)  # 16-bit coefficients
    assert server.global_.exp == 20  # the key holder's refresh resets the scale


def test_wrapped_plaintext_is_detected():
    pk, sk = P.generate_keypair(512, allow_weak_keys=True)
    server = E.EncryptedLRServer(pk, sk, np.zeros(2), 0.5, E.FixedPoint())
    server.global_ = E.EncVec(P.encrypt_many(sk, [int(pk.n) // 2 - 5, 3]), 32)  # what a wrap modulo n looks like
    with pytest.raises(OverflowError, match="wrapped"):
        server.open_global()


def test_rejections(small):
    with pytest.raises(ValueError, match="allow_weak_keys"):
        E.run_encrypted_lr(*small, **HP, key_bits=1024)
    with pytest.raises(ValueError, match="bits"):  # 40 steps × 32 bits do not fit a 512-bit plaintext
        E.run_encrypted_lr(*small, **(HP | {"local_epochs": 40}), key_bits=512, allow_weak_keys=True)
    with pytest.raises(ValueError, match="k="):
        E.run_plain_lr(*small, **(HP | {"k": 5}))
    for bad in ({"rounds": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lam": float("nan")}):
        with pytest.raises(ValueError):
            E.run_plain_lr(*small, **(HP | bad))
    with pytest.raises(ValueError):
        E.FixedPoint(coef_bits=0)


@pytest.fixture(scope="module")
def breast():
    from fedloom.config import build_config
    from fedloom.data import load_data

    cfg = {
        "type": "breast_cancer",
        "no_models": 5,
        "k": 2,
        "partition": {"method": "contiguous"},
        "model_name": "logreg",
    }
    d = load_data(build_config(cfg))
    shards = [np.asarray(d.partition.indices(c)) for c in range(5)]
    return d.x_train.numpy(), d.y_train.numpy(), shards, d.x_eval.numpy(), d.y_eval.numpy()


BOOK = dict(k=2, rounds=30, local_epochs=2, batch_size=64, lr=0.15, lam=0.5)


def test_book_config_twin_over_seeds(breast):
    """The plaintext twin (= the encrypted run to ~1e-9) on the book's config, all 114 eval rows."""
    accs = [E.run_plain_lr(*breast, **BOOK, seed=s)[1]["final_accuracy"] for s in range(20)]
    assert np.mean(accs) >= 0.95  # measured 0.957; single seeds give 0.921–0.974 (105–111 of 114 rows)
    assert min(accs) >= 0.93


@pytest.mark.slow
def test_book_config_encrypted(breast):
    """Book §15.4 with a 1024-bit key (allow_weak_keys), 30 rounds: ~8 s on the 2-core dev machine."""
    rows, summary = E.run_encrypted_lr(*breast, **BOOK, seed=0, key_bits=1024, allow_weak_keys=True)
    _, twin = E.run_plain_lr(*breast, **BOOK, seed=0)
    np.testing.assert_allclose(summary["weights"], twin["weights"], atol=1e-6)
    assert summary["final_accuracy"] == twin["final_accuracy"] >= 0.95  # seed 0: 110/114 = 0.965
    assert summary["eval_samples"] == 114
    assert rows[-1]["bytes_up"] == 2 * (12 + 31 * 256)  # k uploads of 31 ciphertexts of 256 bytes


def test_the_books_15_4_conf_json_runs_as_written_and_momentum_is_noted():
    """The book's chapter15 conf.json sets momentum 0.0001, which its encrypted client never reads: accepted."""
    from pathlib import Path

    from fedloom.config import load_config
    from fedloom.data import load_data

    path = Path(__file__).resolve().parents[1] / "configs" / "book_15_4.json"
    cfg = load_config(path, ["global_epochs=1", "secure.key_bits=512"])
    book = {"no_models": 5, "global_epochs": 1, "local_epochs": 2, "k": 2, "batch_size": 64, "lr": 0.15,
            "momentum": 0.0001, "lambda": 0.5, "feature_num": 30}  # fmt: skip
    assert {key: cfg.to_dict()[key] for key in book} == book
    rows, summary, weights = E.run_encrypted_model(cfg, load_data(cfg))
    assert len(rows) == 1 and weights.shape == (31,)
    assert "momentum 0.0001 is unused" in summary["notes"][0]
