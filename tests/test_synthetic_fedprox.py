"""synthetic.generator fedprox / fedprox_iid: FedProx's own generator scripts (Li et al., MLSys 2020; the
official repository's data/synthetic_1_1/generate_synthetic.py and data/synthetic_iid/generate_iid.py), and
the leaf generator left as it was."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedloom.config import build_config, load_config
from fedloom.data import load_data
from fedloom.data.synthetic import _fedprox_rows, fedprox_federation, fedprox_sizes, fedprox_train_rows
from fedloom.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
CAP = 2**29
FEDPROX = {"type": "synthetic", "no_models": 30, "k": 10, "model_name": "logreg", "synthetic": {"generator": "fedprox"}}


def _blocks(a: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return np.split(a, np.cumsum(sizes)[:-1])


# ------------------------------------------------------------------------------------------------- sizes
def test_sizes_are_fedprox_lognormal_plus_50_not_rescaled():
    got = fedprox_sizes(30, np.random.default_rng(5))
    want = np.random.default_rng(5).lognormal(4, 2, 30).astype(int) + 50  # generate_synthetic.py's line
    assert got.dtype == np.int64 and np.array_equal(got, want) and got.min() >= 50


def test_train_rows_are_int_of_0_9_n():
    n = np.arange(50, 5000)
    assert np.array_equal(fedprox_train_rows(n), [int(0.9 * v) for v in n])  # the scripts' int(0.9 * num_samples)


def test_load_data_sizes_follow_the_formula_from_the_config_seed():
    cfg = build_config({**FEDPROX, "seed": 11})
    d = load_data(cfg)
    sizes = np.random.default_rng([11, 1]).lognormal(4, 2, 30).astype(int) + 50  # the data stream of seed 11
    train = np.array([int(0.9 * n) for n in sizes])
    assert np.array_equal(d.partition.sizes(), train)
    assert len(d.y_eval) == sizes.sum() - train.sum()  # the eval set: every device's last 10 %, pooled
    assert np.array_equal(d.partition.order, np.arange(train.sum()))  # train rows grouped by device, in order


# ------------------------------------------------------------------------------------------------- shapes and split
def test_shapes_dtypes_and_classes():
    d = load_data(build_config(FEDPROX))
    assert d.x_train.shape[1] == 60 and d.x_eval.shape[1] == 60 and d.num_classes == 10 and d.num_clients == 30
    assert str(d.x_train.dtype) == "torch.float32" and str(d.y_train.dtype) == "torch.int64"
    assert 0 <= int(d.y_train.min()) and int(d.y_train.max()) < 10 and int(d.y_eval.max()) < 10


@pytest.mark.parametrize("iid", [False, True])
def test_each_device_trains_on_its_first_90_percent_and_tests_on_the_rest(iid):
    x_tr, y_tr, x_te, y_te, train = fedprox_federation(12, 7, 3, 1.0, 1.0, iid, np.random.default_rng(2), CAP)
    rng = np.random.default_rng(2)  # the same draws: sizes first, then the rows in device order
    sizes = fedprox_sizes(12, rng)
    x, y = _fedprox_rows(sizes, 7, 3, 1.0, 1.0, iid, rng)
    assert np.array_equal(train, (9 * sizes) // 10)
    for xk, xk_tr, xk_te in zip(_blocks(x, sizes), _blocks(x_tr, train), _blocks(x_te, sizes - train)):
        n = len(xk_tr)
        assert np.array_equal(xk[:n], xk_tr) and np.array_equal(xk[n:], xk_te) and len(xk_te) >= 5
    assert np.array_equal(np.concatenate([b[:n] for b, n in zip(_blocks(y, sizes), train)]), y_tr)
    assert np.array_equal(np.concatenate([b[n:] for b, n in zip(_blocks(y, sizes), train)]), y_te)


def test_a_devices_test_rows_share_its_input_law():
    x_tr, _, x_te, _, train = fedprox_federation(30, 60, 10, 1.0, 3.0, False, np.random.default_rng(0), CAP)
    test = fedprox_sizes(30, np.random.default_rng(0)) - train  # [devices] test rows of each device
    mu_tr = np.array([b.mean(0) for b in _blocks(x_tr, train)])  # [devices, dim] each device's input mean
    mu_te = np.array([b.mean(0) for b in _blocks(x_te, test)])
    dist = np.linalg.norm(mu_te[:, None] - mu_tr[None], axis=-1)  # [test device, train device]
    assert (dist.argmin(1) == np.arange(30)).all()  # v_k ~ N(B_k, 1), B_k ~ N(0, 3): devices far apart


# ------------------------------------------------------------------------------------------------- the two laws
def _label_mix(y: np.ndarray, sizes: np.ndarray, classes: int) -> np.ndarray:
    return np.array([np.bincount(b, minlength=classes) / len(b) for b in _blocks(y, sizes)])


def test_non_iid_devices_differ_and_iid_devices_share_one_law():
    def mixes(iid):
        _, y, _, _, train = fedprox_federation(30, 60, 10, 1.0, 1.0, iid, np.random.default_rng(4), CAP)
        p = _label_mix(y, train, 10)[train >= 200]  # devices with enough rows for a stable mix
        return 0.5 * np.abs(p[:, None] - p[None]).sum(-1)[np.triu_indices(len(p), 1)].mean()  # mean TV distance

    assert mixes(False) > 0.4 and mixes(True) < 0.15


def test_iid_has_zero_input_mean_and_the_covariance_diagonal():
    x, _, _, _, _ = fedprox_federation(200, 60, 10, 0.0, 0.0, True, np.random.default_rng(1), CAP)
    var = x.var(0)
    j = np.arange(1, 61)
    assert np.abs(x.mean(0)).max() < 0.05 and np.allclose(var, j**-1.2, rtol=0.1)  # Σ_jj = j^-1.2


def test_iid_ignores_alpha_and_beta():
    a = fedprox_federation(10, 5, 3, 0.0, 0.0, True, np.random.default_rng(8), CAP)
    b = fedprox_federation(10, 5, 3, 4.0, 2.0, True, np.random.default_rng(8), CAP)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_alpha_changes_no_label_as_in_the_papers_generator():
    """u_k ~ N(0, α) is the mean of every entry of W_k and b_k, so it adds u_k·(1 + Σ_j x_j) to every logit of a
    row alike and the argmax ignores it: with the same draws α changes no label (up to float32 rounding). The
    devices' teachers still differ, through their own N(0, 1) draws (so Synthetic(0, 0) is not IID)."""
    _, y0, _, _, _ = fedprox_federation(30, 60, 10, 0.0, 0.5, False, np.random.default_rng(6), CAP)
    _, y9, _, _, _ = fedprox_federation(30, 60, 10, 9.0, 0.5, False, np.random.default_rng(6), CAP)
    assert (y0 == y9).mean() > 0.99
    _, yb, _, _, _ = fedprox_federation(30, 60, 10, 0.0, 3.0, False, np.random.default_rng(6), CAP)
    assert (y0 == yb).mean() < 0.9  # β moves the inputs, and so the labels


# ------------------------------------------------------------------------------------------------- determinism
def test_deterministic_per_seed():
    a, b = load_data(build_config({**FEDPROX, "seed": 3})), load_data(build_config({**FEDPROX, "seed": 3}))
    c = load_data(build_config({**FEDPROX, "seed": 4}))
    for f in ("x_train", "y_train", "x_eval", "y_eval"):
        assert (getattr(a, f) == getattr(b, f)).all()
    assert np.array_equal(a.partition.offsets, b.partition.offsets)
    assert not np.array_equal(a.partition.offsets, c.partition.offsets)


def test_leaf_default_is_unchanged():
    """The leaf generator's output for a fixed config, pinned before generator fedprox was added."""
    cfg = build_config({"type": "synthetic", "no_models": 20, "k": 5, "model_name": "logreg", "seed": 7,
                        "synthetic": {"num_samples": 1000, "dim": 8, "classes": 4}})  # fmt: skip
    assert cfg.synthetic.generator == "leaf" and (cfg.synthetic.alpha, cfg.synthetic.beta) == (1.0, 1.0)
    d = load_data(cfg)
    h = hashlib.sha256()
    for t in (d.x_train, d.x_eval):
        h.update(t.numpy().tobytes())
    h.update(d.partition.offsets.tobytes())
    assert h.hexdigest()[:16] == "cfdeb71b6a8128b7"  # the leaf code before generator fedprox existed
    assert np.bincount(d.y_train.numpy()).tolist() == [412, 160, 93, 153]
    assert build_config({"type": "synthetic"}).synthetic.num_samples == 20_000


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("generator", ["leaf", "fedprox", "fedprox_iid"])
def test_the_resolved_config_loads_again(generator):
    cfg = build_config({**FEDPROX, "synthetic": {"generator": generator}})
    again = build_config(cfg.to_dict())
    assert again.synthetic == cfg.synthetic
    unset = {"leaf": [], "fedprox": ["num_samples"], "fedprox_iid": ["num_samples", "alpha", "beta"]}[generator]
    assert [k for k in ("num_samples", "alpha", "beta") if getattr(cfg.synthetic, k) is None] == unset


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"synthetic": {"generator": "fedprox", "num_samples": 5000}}, "num_samples does not apply to generator fedp"),
        ({"synthetic": {"generator": "fedprox_iid", "alpha": 0.5}}, "alpha does not apply to generator fedprox_iid"),
        ({"synthetic": {"generator": "fedprox_iid", "beta": 0}}, "beta does not apply to generator fedprox_iid"),
        ({"synthetic": {"generator": "fedprox"}, "eval_fraction": 0.3}, "eval_fraction does not apply"),
        ({"synthetic": {"generator": "FedProx"}}, "synthetic.generator"),
        ({"synthetic": {"generator": ["fedprox"]}}, "synthetic.generator"),
    ],
)
def test_bad_combinations_are_refused_in_one_line(raw, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        build_config({**FEDPROX, **raw})
    assert "\n" not in str(e.value)


def test_a_draw_over_the_value_cap_is_refused_before_allocating():
    cfg = build_config({**FEDPROX, "synthetic": {"generator": "fedprox", "dim": 10**6}})  # ≥ 30 × 50 rows × 1e6
    with pytest.raises(DataError, match="synthetic.generator fedprox: 30 devices drew .* at most 536,870,912"):
        load_data(cfg)


def test_cli_refusal_exits_2_with_one_line(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("type: synthetic\nno_models: 30\nk: 10\nsynthetic: {generator: fedprox, num_samples: 900}\n")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "fedloom.cli", "run", "-c", str(conf), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and "num_samples does not apply" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------- the configs
def test_the_fedprox_configs_are_the_papers_setup():
    cfg = load_config(ROOT / "configs" / "fedprox_synthetic.yaml")
    iid = load_config(ROOT / "configs" / "fedprox_synthetic_iid.yaml")
    for c in (cfg, iid):
        assert (c.type, c.model_name, c.no_models, c.k, c.local_epochs, c.batch_size) == (
            "synthetic", "logreg", 30, 10, 20, 10
        )  # fmt: skip
        assert (c.lr, c.global_epochs, c.momentum, c.runtime.sampling) == (0.01, 200, 0.0, "fixed")
        assert [a.label() for a in c.algorithms.compare] == ["fedavg", "fedprox(mu=0)", "fedprox(mu=1)"]
        assert c.algorithms.stragglers == [0.0, 0.5, 0.9] and c.runtime.straggler_work == "auto"
    assert (cfg.synthetic.generator, cfg.synthetic.alpha, cfg.synthetic.beta) == ("fedprox", 1.0, 1.0)
    assert iid.synthetic.generator == "fedprox_iid" and cfg.algorithm.label() == "fedprox(mu=1)"


def test_a_short_fedprox_run(tmp_path):
    import fedloom

    small = {**FEDPROX, "global_epochs": 2, "local_epochs": 1, "k": 3, "runtime": {"threads": 1}}
    run = fedloom.run(small, out=tmp_path / "r")
    assert run.summary["rounds"] == 2 and 0 <= run.final_accuracy <= 1
    assert run.config.synthetic.generator == "fedprox" and len(run.rows) == 2
