import json

import pytest

from fedloom.config import build_config
from fedloom.errors import ConfigError
from fedloom.experiments import he, run_experiment

WEAK = {"key_bits": 1024, "allow_weak_keys": True}


@pytest.mark.parametrize("budget", [1e9, 0.0])  # per-value Paillier: run fully / timed on a sample and extrapolated
def test_he_experiment_rows_and_outputs(tmp_path, monkeypatch, budget):
    monkeypatch.setattr(he, "_FULL_RUN_BUDGET", budget)
    # 515 parameters: 11 packed ciphertexts of 51 slots (20-bit) each, plus the weight
    cfg = build_config({"global_epochs": 2, "no_models": 4, "k": 3, "hidden": [64], "secure": WEAK, "seeds": 2})
    summary = he.run(cfg, tmp_path)
    rows = {r["method"]: r for r in summary["results"]}
    assert list(rows) == list(he.METHODS) and summary["seeds"] == [0, 1]
    assert rows["none"]["expansion_mean"] == 1.0 and rows["none"]["client_s_per_round_mean"] == 0
    per_value = rows["paillier-per-value"]
    assert ("estimate" in per_value["note"]) == (budget == 0.0)
    assert (per_value["accuracy_mean"] is None) == (budget == 0.0)  # every seed follows the first seed's choice
    # a 1024-bit ciphertext is 256 bytes: per-value is 64× fp32 (plus the weight ciphertext); packing is far less
    assert per_value["bytes_per_value_mean"] > 256
    assert rows["paillier"]["bytes_per_value_mean"] < per_value["bytes_per_value_mean"] / 20
    assert rows["paillier"]["accuracy_mean"] > 0.3 and rows["paillier"]["client_s_per_round_mean"] > 0
    assert len(rows["paillier"]["accuracy_per_seed"]) == 2 and rows["paillier"]["accuracy_std"] is not None
    assert (tmp_path / "figures" / "he_costs.png").is_file()
    assert ("estimate" in (tmp_path / "table.md").read_text()) == (budget == 0.0)
    assert json.loads((tmp_path / "summary.json").read_text())["experiment"] == "he"


def test_every_secure_row_runs_uncompressed_uploads(tmp_path, monkeypatch):
    """main compressed only the plaintext row when compression.up was set (its expansion was off ~5×)."""
    monkeypatch.setattr(he, "_has_tenseal", lambda: False)
    seen = []
    real = he.run_with_progress
    monkeypatch.setattr(he, "run_with_progress", lambda cfg, *a: seen.append(cfg) or real(cfg, *a))
    cfg = build_config({"global_epochs": 1, "no_models": 3, "k": 2, "secure": WEAK, "compression": {"down": "fp16"}})
    he.run(cfg, tmp_path)
    assert [c.secure.method for c in seen] == ["none", "paillier-per-value", "paillier"]
    assert all(c.upload_codec == "none" and c.compression.down == "fp16" for c in seen)  # down applies to all


def test_he_with_median_is_refused_up_front(tmp_path):
    """main ended in a traceback after the plaintext run."""
    with pytest.raises(ConfigError, match="^experiment he: aggregator 'median' is not linear"):
        run_experiment("he", build_config({"aggregator": "median"}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_he_refuses_the_books_encrypted_model_protocol(tmp_path):
    cfg = build_config(
        {"model_name": "logreg", "lambda": 0.1, "secure": {"method": "paillier", "protocol": "encrypted-model", **WEAK}}
    )
    with pytest.raises(ConfigError, match="secure.protocol 'encrypted-model'"):
        run_experiment("he", cfg, tmp_path / "o")
