"""The book's comparisons (§3.6, §3.7) and the compression sweep: rows, seeds, honest baselines, refusals."""

import json
import math
from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.config import build_config, load_config
from fedloom.errors import ConfigError, FedloomError
from fedloom.experiments import compression, fl_vs_central, fl_vs_local, run_experiment
from fedloom.experiments.common import derive
from fedloom.experiments.seeds import mean_std, merge_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = {"global_epochs": 4, "no_models": 4, "k": 2, "local_epochs": 2}


# --- fl-vs-central ---------------------------------------------------------------------------------------------


def test_fl_vs_central_rows_and_outputs(tmp_path):
    s = run_experiment("fl-vs-central", build_config(TINY), tmp_path)
    settings = [(r["setting"], r["clients"], r["local_epochs"]) for r in s["results"]]
    assert settings == [("federated", 4, 2), ("centralized", 1, 1), ("centralized", 1, 2), ("centralized", 1, 3)]
    assert s["central_accuracy_mean"] == s["results"][2]["final_accuracy_mean"]  # central at the FL's local_epochs
    assert all(len(r["curve_mean"]) == 4 for r in s["results"])
    assert (tmp_path / "figures" / "fl_vs_central.png").is_file() and (tmp_path / "table.md").is_file()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["fl_accuracy_mean"] == s["fl_accuracy_mean"] and saved["seeds"] == [0]
    assert "samples_processed" in (tmp_path / "table.md").read_text()


def test_fl_vs_central_counts_samples_and_optimizer_steps(tmp_path):
    # iris: 150 rows, 20 % held out → 120 training rows; 4 clients of 30; batch 10
    s = run_experiment("fl-vs-central", build_config(TINY), tmp_path)
    work = [(r["samples_processed_mean"], r["optimizer_steps_mean"]) for r in s["results"]]
    fl = (4 * 2 * 30 * 2, 4 * 2 * 2 * math.ceil(30 / 10))  # rounds × k clients × rows × local epochs; steps
    central = [(4 * 120 * e, 4 * e * math.ceil(120 / 10)) for e in (1, 2, 3)]  # rounds × rows × epochs
    assert work == [fl, *central]


def test_centralized_baseline_ignores_the_fl_runs_codec(tmp_path):
    """With prop 0.5 (a fixed half mask) every centralized row of main ended at 0.667 on iris."""
    cfg = load_config(ROOT / "configs" / "iris.json", ["prop=0.5", "global_epochs=10"])
    s = fl_vs_central.run(cfg, tmp_path / "prop")
    central = [r for r in s["results"] if r["setting"] == "centralized"]
    assert all(r["final_accuracy_mean"] > 0.9 for r in central), [r["final_accuracy_mean"] for r in central]
    plain = fl_vs_central.run(load_config(ROOT / "configs" / "iris.json", ["global_epochs=10"]), tmp_path / "plain")
    assert [r["curve_mean"] for r in central] == [r["curve_mean"] for r in plain["results"][1:]]


def test_centralized_runs_are_plain_whatever_the_fl_config(monkeypatch, tmp_path):
    seen = []
    real = fl_vs_central.run_with_progress

    def spy(cfg, data, progress, label):
        seen.append((label, cfg))
        return real(cfg, data, progress, label)

    monkeypatch.setattr(fl_vs_central, "run_with_progress", spy)
    weak = {"method": "paillier", "key_bits": 1024, "allow_weak_keys": True}
    cfg = build_config({**TINY, "global_epochs": 2, "secure": weak, "lambda": 0.5, "runtime": {"dropout": 0.3}})
    fl_vs_central.run(cfg, tmp_path)
    central = [c for label, c in seen if label.startswith("central")]
    assert len(central) == 3 and seen[0][1].secure.method == "paillier"
    for c in central:
        assert (c.upload_codec, c.compression.down, c.secure.method) == ("none", "none", "none")
        assert c.aggregator.name == "mean"
        assert (c.lambda_, c.runtime.dropout, c.no_models, c.k) == (None, 0.0, 1, 1)


# --- fl-vs-local -----------------------------------------------------------------------------------------------


def test_fl_vs_local_rows_and_outputs(tmp_path):
    cfg = build_config({"global_epochs": 3, "no_models": 4, "k": 4, "local_epochs": 1})
    s = run_experiment("fl-vs-local", cfg, tmp_path)
    assert [r["client"] for r in s["results"]] == [0, 1, 2, 3] and s["fl_half_k"] == 2
    assert sum(r["samples_mean"] for r in s["results"]) == 120
    assert [r["setting"] for r in s["settings"]] == ["fl", "fl_half", "local_mean", "local_min", "local_max"]
    assert s["local_min_accuracy_mean"] <= s["local_mean_accuracy_mean"] <= s["local_max_accuracy_mean"]
    assert (tmp_path / "figures" / "fl_vs_local.png").is_file()
    assert "FL, k=2 (⌈k/2⌉)" in (tmp_path / "table.md").read_text()


def test_half_k_rounds_up(tmp_path):
    assert [fl_vs_local.half_k(k) for k in (1, 2, 3, 5, 6, 10)] == [1, 1, 2, 3, 3, 5]
    s = run_experiment("fl-vs-local", build_config({"global_epochs": 2, "no_models": 5, "k": 5}), tmp_path)
    assert s["fl_half_k"] == 3  # main rounded 2.5 to 2


def test_fl_vs_local_with_k_1_runs_one_fl_model(tmp_path):
    s = run_experiment("fl-vs-local", build_config({"global_epochs": 2, "no_models": 3, "k": 1}), tmp_path)
    assert s["fl_half_k"] is None and [r["setting"] for r in s["settings"]][:2] == ["fl", "local_mean"]


@pytest.mark.slow
def test_on_non_iid_digits_fl_beats_the_mean_single_party_model(tmp_path):
    cfg = load_config(ROOT / "configs" / "digits_noniid.yaml")
    s = run_experiment("fl-vs-local", cfg, tmp_path)
    assert s["fl_accuracy_mean"] - s["local_mean_accuracy_mean"] > 0.05  # measured: 0.956 vs 0.631


# --- seeds -----------------------------------------------------------------------------------------------------


def test_mean_and_sample_std_by_hand():
    mean, std = mean_std([0.5, 0.7, 0.9])
    # sample std (divisor N-1): sqrt((0.04 + 0 + 0.04) / 2) = 0.2; the population std would be 0.1633
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)
    assert mean_std([0.8]) == (0.8, None)  # undefined with one seed, never a fake 0
    assert mean_std([0.8, None]) == (None, None)


def test_merge_rows_keeps_keys_and_spreads_numbers():
    rows = [{"m": "q8", "acc": 0.5, "curve": [0.1, 0.3], "note": "a"}, {"m": "q8", "acc": 0.7, "curve": [0.3, 0.3]}]
    rows[1]["note"] = "a"
    out = merge_rows(rows, ("m",))
    assert out["m"] == "q8" and out["note"] == "a"
    assert out["acc_mean"] == pytest.approx(0.6) and out["acc_std"] == pytest.approx(0.2 / math.sqrt(2))
    assert out["acc_per_seed"] == [0.5, 0.7]
    assert out["curve_mean"] == pytest.approx([0.2, 0.3]) and out["curve_std"] == pytest.approx([0.1414214, 0.0])
    with pytest.raises(ValueError):
        merge_rows([{"m": "a"}, {"m": "b"}], ("m",))


def test_seeds_report_mean_std_and_the_single_seed_runs(tmp_path):
    two = run_experiment("fl-vs-central", build_config({**TINY, "seeds": 2}), tmp_path / "two")
    assert two["seeds"] == [0, 1]
    singles = [run_experiment("fl-vs-central", build_config({**TINY, "seed": s}), tmp_path / f"s{s}") for s in (0, 1)]
    for i, row in enumerate(two["results"]):
        a, b = (s["results"][i]["final_accuracy_mean"] for s in singles)
        assert row["final_accuracy_per_seed"] == [a, b]
        assert row["final_accuracy_mean"] == pytest.approx((a + b) / 2)
        assert row["final_accuracy_std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # sample std of two values
    assert two["fl_accuracy_per_seed"] == [s["fl_accuracy_mean"] for s in singles]
    assert "±" in (tmp_path / "two" / "table.md").read_text()


def test_every_experiment_lists_its_seeds(tmp_path):
    cfg = build_config({"global_epochs": 2, "no_models": 4, "k": 2, "seed": 7, "seeds": 2, "sweep": ["q8"]})
    for name in ("fl-vs-central", "fl-vs-local", "compression"):
        s = run_experiment(name, cfg, tmp_path / name)
        assert s["seeds"] == [7, 8], name
        assert all(len(v) == 2 for r in s["results"] for k, v in r.items() if k.endswith("_per_seed")), name


def test_seeds_flag_and_field(tmp_path, capsys):
    conf = ROOT / "configs" / "iris.json"
    args = ["experiment", "fl-vs-central", "-c", conf, "--set", "global_epochs=2", "-q"]
    assert main([*map(str, args), "--seeds", "2", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(SystemExit) as e:
        main([*map(str, args), "--seeds", "0", "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="seeds"):
        build_config({"seeds": 0})


def test_best_within_one_point_uses_the_means():
    rows = [
        {"method": "none", "ratio_up_mean": 1.0, "delta_points_mean": 0.0},
        # seed 0 alone (+0.5 points) would pick this one; its mean is -1.25 points
        {"method": "a", "ratio_up_mean": 10.0, "delta_points_mean": -1.25, "delta_points_per_seed": [0.5, -3.0]},
        {"method": "b", "ratio_up_mean": 5.0, "delta_points_mean": -0.5, "delta_points_per_seed": [-0.4, -0.6]},
    ]
    assert compression.best_within_1_point(rows)["method"] == "b"


def test_figures_draw_bands_over_seeds(monkeypatch, tmp_path):
    from fedloom.experiments import plots

    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figs.append(fig) or path)
    rows = lambda acc: [{"round": r, "accuracy": acc + 0.1 * r, "loss": 1 - acc} for r in (1, 2, 3)]  # noqa: E731
    plots.plot_band_curves({"a": [rows(0.1), rows(0.3)]}, tmp_path / "x.png", "t", seeds=2)
    plots.plot_band_curves({"a": [rows(0.1)]}, tmp_path / "y.png", "t", seeds=1)
    bands = [len(fig.axes[0].collections) for fig in figs]
    assert bands == [1, 0]  # a mean ± std band with two seeds, none with one


# --- derived configs are validated like a user's -------------------------------------------------------------


def test_derived_configs_are_validated():
    cfg = build_config({"no_models": 4, "k": 2})
    with pytest.raises(ConfigError, match=r"^experiment here: .*k \(5\) must be ≤ no_models"):
        derive(cfg, {"k": 5}, "here")
    assert derive(cfg, {"partition": {"alpha": 0.3}}, "here").partition.method == "iid"  # sections merge


@pytest.mark.parametrize("name", ["fl-vs-central", "fl-vs-local", "compression", "he"])
def test_every_config_an_experiment_runs_was_validated(monkeypatch, tmp_path, name):
    """main derived configs with model_copy, which skips validation; now each run's config comes from derive."""
    from fedloom.experiments import common, he

    module = {"fl-vs-central": fl_vs_central, "fl-vs-local": fl_vs_local, "compression": compression, "he": he}[name]
    derived, ran = set(), []

    def spy_derive(*args):
        cfg = common.derive(*args)
        derived.add(id(cfg))
        return cfg

    real_run = module.run_with_progress
    monkeypatch.setattr(module, "derive", spy_derive)
    monkeypatch.setattr(module, "run_with_progress", lambda cfg, *a: ran.append(id(cfg)) or real_run(cfg, *a))
    monkeypatch.setattr(he, "_has_tenseal", lambda: False)  # keep it fast
    weak = {"key_bits": 1024, "allow_weak_keys": True}
    cfg = build_config({"global_epochs": 1, "no_models": 3, "k": 2, "sweep": ["q8"], "secure": weak})
    run_experiment(name, cfg, tmp_path)
    assert ran and set(ran) <= derived


def _spy_nothing_runs(monkeypatch, module):
    def fail(*a, **k):
        raise AssertionError("a run started before the config was refused")

    monkeypatch.setattr(module, "run_with_progress", fail)


@pytest.mark.parametrize(
    "name, raw, needle",
    [
        ("compression", {"secure": {"method": "paillier"}}, "secure.method"),
        ("compression", {"compression": {"up": "q8"}}, "compression.up"),
        ("compression", {"prop": 0.5}, "prop"),
        ("compression", {"compression": {"error_feedback": True}}, "compression.error_feedback"),
        ("he", {"compression": {"up": "q8"}}, "compression.up"),
        ("he", {"rate": 0.5}, "rate"),
        ("he", {"aggregator": "median"}, "aggregator 'median'"),
    ],
)
def test_contradictions_are_refused_before_anything_runs(monkeypatch, tmp_path, name, raw, needle):
    from fedloom.experiments import he

    _spy_nothing_runs(monkeypatch, compression if name == "compression" else he)
    out = tmp_path / "new" / "out"
    with pytest.raises(ConfigError, match=f"^experiment {name}: .*{needle}") as e:
        run_experiment(name, build_config(raw), out)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "new").exists()  # the folders it created are gone again


def test_contradiction_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    conf = ROOT / "configs" / "mnist_he.yaml"  # secure.method paillier
    assert main(["experiment", "compression", "-c", str(conf), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedloom: error: experiment compression: secure.method is 'paillier'")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


# --- the output folder is checked first ----------------------------------------------------------------------


def test_out_that_holds_files_is_refused_before_running(monkeypatch, tmp_path):
    _spy_nothing_runs(monkeypatch, fl_vs_central)
    (tmp_path / "config.json").write_text("{mine}")
    with pytest.raises(FedloomError, match="fedloom did not write"):
        run_experiment("fl-vs-central", build_config(TINY), tmp_path)
    assert (tmp_path / "config.json").read_text() == "{mine}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FedloomError, match="not a (directory|folder)"):
        run_experiment("fl-vs-central", build_config(TINY), tmp_path / "file")
    with pytest.raises(FedloomError, match="cannot create|not a (directory|folder)|plain file"):
        run_experiment("fl-vs-central", build_config(TINY), tmp_path / "file" / "sub")


def test_empty_out_folder_is_used(tmp_path):
    (tmp_path / "o").mkdir()
    run_experiment("fl-vs-central", build_config({**TINY, "global_epochs": 1}), tmp_path / "o")
    assert (tmp_path / "o" / "summary.json").is_file()


def test_existing_out_on_the_command_line_exits_2_before_running(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    args = ["experiment", "compression", "-c", str(ROOT / "configs" / "mnist_compression.yaml"), "-q"]
    assert main([*args, "--out", str(tmp_path)]) == 2  # refused at once, not after the 16-codec sweep
    assert "did not write" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
