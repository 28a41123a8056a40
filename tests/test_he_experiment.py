import json

import pytest

from fedloom.config import build_config
from fedloom.experiments import he


@pytest.mark.parametrize("budget", [1e9, 0.0])  # per-value Paillier: run fully / timed on a sample and extrapolated
def test_he_experiment_rows_and_outputs(tmp_path, monkeypatch, budget):
    monkeypatch.setattr(he, "_FULL_RUN_BUDGET", budget)
    weak = {"key_bits": 1024, "allow_weak_keys": True}
    # 515 parameters: 11 packed ciphertexts of 51 slots (20-bit) each, plus the weight
    cfg = build_config({"global_epochs": 2, "no_models": 4, "k": 3, "hidden": [64], "secure": weak})
    summary = he.run(cfg, tmp_path)
    rows = {r["method"]: r for r in summary["results"]}
    assert list(rows) == list(he.METHODS)
    assert rows["none"]["expansion"] == 1.0 and rows["none"]["client_s_per_round"] == 0
    per_value = rows["paillier-per-value"]
    assert ("estimate" in per_value["note"]) == (budget == 0.0)
    assert (per_value["accuracy"] is None) == (budget == 0.0)
    # a 1024-bit ciphertext is 256 bytes: per-value is 64× fp32 (plus the weight ciphertext); packing is far less
    assert per_value["bytes_per_value"] > 256
    assert rows["paillier"]["bytes_per_value"] < per_value["bytes_per_value"] / 20
    assert rows["paillier"]["accuracy"] > 0.3 and rows["paillier"]["client_s_per_round"] > 0
    assert (tmp_path / "figures" / "he_costs.png").is_file()
    assert ("estimate" in (tmp_path / "table.md").read_text()) == (budget == 0.0)
    assert json.loads((tmp_path / "summary.json").read_text())["experiment"] == "he"
