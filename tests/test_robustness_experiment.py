"""`fedloom experiment robustness`: the grid, the outputs and the up-front refusals."""

import json

import pytest

from fedloom.config import build_config, load_config
from fedloom.errors import ConfigError
from fedloom.experiments import run_experiment
from fedloom.experiments.robustness import DEFAULT_ATTACKS, grid

SMALL = {"type": "iris", "no_models": 5, "k": 5, "global_epochs": 1, "local_epochs": 1}


def test_grid_defaults_and_the_configs_own_attack():
    aggs, settings = grid(build_config(SMALL))
    assert aggs == ["mean", "median", "trimmed_mean", "krum", "geomed", "norm_clip"]
    assert settings[0] == ("none", 0.0, None) and len(settings) == 1 + len(DEFAULT_ATTACKS)
    own = {"name": "ipm", "clients": [1], "epsilon": 0.1}
    _, settings = grid(build_config({**SMALL, "attack": own}))  # its own attackers: client 1 of 5
    assert settings[1:] == [("ipm", 0.2, {**own, "start_round": 1})]
    _, settings = grid(build_config({**SMALL, "attack": own, "robustness": {"fractions": [0.4, 0.6]}}))
    assert settings[1:] == [
        ("ipm", f, {"name": "ipm", "start_round": 1, "epsilon": 0.1, "fraction": f}) for f in (0.4, 0.6)
    ]


def test_robustness_runs_the_grid_over_seeds(tmp_path):
    raw = {
        **SMALL,
        "seeds": 2,
        "robustness": {
            "aggregators": ["mean", {"name": "trimmed_mean", "beta": 0.2}],
            "attacks": [{"name": "sign_flip", "scale": 3}, {"name": "backdoor", "poison_label": 1}],
            "fractions": [0.2, 0.4],
        },
    }
    summary = run_experiment("robustness", build_config(raw), tmp_path / "o")
    rows = summary["results"]
    assert len(rows) == 2 * (1 + 2 * 2)
    assert [r["aggregator"] for r in rows[:5]] == ["mean"] * 5 and rows[5]["aggregator"] == "trimmed_mean(beta=0.2)"
    clean = rows[0]
    assert clean["attack"] == "none" and clean["delta_points_mean"] == 0 and len(clean["accuracy_per_seed"]) == 2
    bd = [r for r in rows if r["attack"] == "backdoor"]
    assert all(0 <= v <= 1 for r in bd for v in r["backdoor_accuracy_per_seed"])
    assert all(r["attackers_last_round_per_seed"] == [round(5 * r["fraction"])] * 2 for r in rows if r["fraction"])
    assert (tmp_path / "o" / "figures" / "accuracy_heatmap.png").is_file()
    assert (tmp_path / "o" / "figures" / "backdoor_heatmap.png").is_file()
    assert "| trimmed_mean(beta=0.2) | backdoor |" in (tmp_path / "o" / "table.md").read_text()
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["experiment"] == "robustness"


def test_robustness_refuses_before_training(tmp_path):
    cases = [
        ({**SMALL, "robustness": {"aggregators": [{"name": "krum", "f": 2}]}}, "experiment robustness (krum(f=2)"),
        ({**SMALL, "robustness": {"aggregators": [{"name": "bulyan", "f": 1}]}}, "bulyan needs n ≥ 4f + 3"),
    ]
    for raw, msg in cases:
        with pytest.raises(ConfigError) as e:
            run_experiment("robustness", build_config(raw), tmp_path / "o")
        assert msg in str(e.value), str(e.value)
        assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(ConfigError, match="fractions must lie in"):
        build_config({**SMALL, "robustness": {"fractions": [0.0]}})
    with pytest.raises(ConfigError, match="no fraction/clients"):
        build_config({**SMALL, "robustness": {"attacks": [{"name": "ipm", "fraction": 0.1}]}})


def test_book_15_1_config_loads():
    cfg = load_config("configs/book_15_1.yaml")
    assert cfg.attack.name == "backdoor" and cfg.attack.gamma == cfg.k == cfg.no_models == 20


def test_robustness_digits_config_loads():
    aggs, settings = grid(load_config("configs/robustness_digits.yaml"))
    assert aggs == ["mean", "trimmed_mean", "krum", "geomed"] and settings[1][:2] == ("gaussian", 0.2)
