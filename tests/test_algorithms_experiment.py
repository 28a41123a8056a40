"""`fedloom experiment algorithms`: the grid, the derived configs, the up-front refusals, the outputs and their
re-render. Nothing here depends on what the algorithms compute, only on which runs are made and what is written."""

import json
import shutil

import pytest

from fedloom.algorithm_spec import ALGORITHMS
from fedloom.cli import main
from fedloom.config import build_config
from fedloom.errors import ConfigError
from fedloom.experiments import algorithms as exp
from fedloom.experiments import run_experiment
from fedloom.experiments.seeds import merge_seeds

SMALL = {"type": "iris", "no_models": 6, "k": 4, "global_epochs": 3, "local_epochs": 2, "batch_size": 10}
GRID = {
    "compare": ["fedavg", {"name": "fedprox", "mu": 1}, {"name": "fedadam", "server_lr": 0.05}],
    "stragglers": [0, 0.5],
    "target": 0.01,  # reached in round 1 by any model on iris (a third of each class): independent of numerics
}
LABELS = ["fedavg", "fedprox(mu=1)", "fedadam(server_lr=0.05)"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The grid above over two seeds, run once."""
    out = tmp_path_factory.mktemp("algos") / "o"
    summary = run_experiment("algorithms", build_config({**SMALL, "seeds": 2, "algorithms": GRID}), out)
    return out, summary


# --- the grid and the derived configs -------------------------------------------------------------------------


def test_grid_defaults_to_all_eight_at_the_configs_own_straggler_fraction():
    algos, fractions = exp.grid(build_config(SMALL))
    assert [a.label() for a in algos] == list(ALGORITHMS) and len(algos) == 8
    assert fractions == [0.0]
    _, fractions = exp.grid(build_config({**SMALL, "runtime": {"stragglers": 0.3}}))
    assert fractions == [0.3]
    algos, fractions = exp.grid(build_config({**SMALL, "algorithms": GRID}))
    assert [a.label() for a in algos] == LABELS and fractions == [0, 0.5]


def _diff(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k in set(a) | set(b):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            keys |= _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            keys.add(prefix + k)
    return keys


def test_every_run_is_the_users_config_with_algorithm_stragglers_and_seed_changed():
    user = build_config(
        {**SMALL, "seed": 5, "seeds": 2, "algorithm": {"name": "fedprox", "mu": 0.5}, "algorithms": GRID}
    )
    plans = exp.plans(user)
    assert len(plans) == 2 and all(len(runs) == 6 for runs in plans)
    for s, runs in zip((5, 6), plans):
        # fractions outer, algorithms inner: the table's and the figures' order
        assert [(label, f) for label, f, _ in runs] == [(a, f) for f in (0, 0.5) for a in LABELS]
        for label, f, c in runs:
            assert c.seed == s and c.seeds == 1 and c.runtime.stragglers == f and c.algorithm.label() == label
            assert c.algorithms is None
            changed = _diff(user.to_dict(), c.to_dict())
            assert changed <= {"seed", "seeds", "algorithms", "runtime.stragglers"} | {
                f"algorithm.{k}" for k in ("name", "mu", "server_lr")
            }, changed
    # the user's mu does not leak into another algorithm's section (a merge of the sections would carry it)
    adam = plans[0][2][2].algorithm
    assert adam.name == "fedadam" and adam.mu is None and adam.param("server_lr") == 0.05


def test_every_run_trains_the_planned_config_on_one_partition_per_seed(monkeypatch, tmp_path):
    trained, loads = [], []
    real_run, real_load = exp.run_with_progress, exp.load_data
    monkeypatch.setattr(exp, "run_with_progress", lambda c, *a: trained.append(c) or real_run(c, *a))
    monkeypatch.setattr(exp, "load_data", lambda c: loads.append(c.seed) or real_load(c))
    cfg = build_config({**SMALL, "seeds": 2, "algorithms": {**GRID, "stragglers": [0.25]}})
    run_experiment("algorithms", cfg, tmp_path / "o")
    planned = [c.to_dict() for runs in exp.plans(cfg) for _, _, c in runs]
    assert [c.to_dict() for c in trained] == planned
    assert loads == [0, 1]  # the data (and its partition) loaded once per seed, shared by every algorithm


# --- refusals: one line, before anything trains ----------------------------------------------------------------


def _nothing_trains(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a run started before the config was refused")

    monkeypatch.setattr(exp, "run_with_progress", fail)


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"lambda": 0.5, "algorithms": {"compare": ["fedavg", "fedadam"]}}, r"\(fedadam, stragglers 0\): .*lambda"),
        (
            {"secure": {"method": "paillier"}, "algorithms": {"compare": ["fedavg", "scaffold"]}},
            r"\(scaffold, stragglers 0\): .*secure aggregation",
        ),
        ({"algorithms": {"compare": ["fedavg", "fedavg"]}}, "algorithms.compare lists fedavg twice"),
        ({"algorithms": {"stragglers": [0.5, 0.5]}}, "algorithms.stragglers lists 0.5 twice"),
    ],
)
def test_a_refused_combination_is_one_line_before_anything_trains(monkeypatch, tmp_path, raw, needle):
    _nothing_trains(monkeypatch)
    with pytest.raises(ConfigError, match=f"^experiment algorithms.*{needle}") as e:
        run_experiment("algorithms", build_config({**SMALL, **raw}), tmp_path / "new" / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "new").exists()  # nothing half-written


def test_a_refused_combination_on_the_command_line_exits_2(monkeypatch, tmp_path, capsys):
    _nothing_trains(monkeypatch)
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({**SMALL, "lambda": 0.5}))
    out = tmp_path / "o"
    assert main(["experiment", "algorithms", "-c", str(conf), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedloom: error: experiment algorithms (scaffold, stragglers 0): algorithm: lambda")
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_help_lists_the_experiment(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    assert "algorithms" in capsys.readouterr().out


# --- outputs ---------------------------------------------------------------------------------------------------


def test_summary_rows_over_two_seeds(folder):
    out, summary = folder
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "algorithms" and on_disk["results"] == summary["results"]
    assert {"algorithms", "stragglers", "target", "seed", "seeds", "config", "results"} <= set(on_disk)
    assert on_disk["algorithms"] == LABELS and on_disk["stragglers"] == [0, 0.5] and on_disk["seeds"] == [0, 1]
    rows = on_disk["results"]
    assert [(r["algorithm"], r["stragglers"]) for r in rows] == [(a, f) for f in (0, 0.5) for a in LABELS]
    for r in rows:
        for name in ("accuracy", "loss", "bytes_up", "bytes_down", "target_round"):
            assert len(r[f"{name}_per_seed"]) == 2 and r[f"{name}_mean"] is not None, name
            assert r[f"{name}_std"] is not None, name  # two seeds: a sample std
        assert r["target_round_per_seed"] == [1, 1] and r["target_reached"] == 2
        assert r["bytes_up_mean"] > 0 and r["bytes_down_mean"] > 0
    work = {(r["algorithm"], r["stragglers"]): r["straggler_work"] for r in rows}
    assert work[("fedprox(mu=1)", 0.5)] == "partial" and work[("fedavg", 0.5)] == "dropped"


def test_table_columns_and_mean_std_cells(folder):
    out, _ = folder
    lines = (out / "table.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| algorithm"))
    assert header == ("| algorithm | stragglers | straggler work | accuracy | rounds to 0.01 | bytes up | bytes down |")
    body = [line for line in lines if line.startswith("| fed")]
    assert len(body) == 6 and all(" ± " in line for line in body)
    assert body[0].startswith("| fedavg | 0 | — | ") and "(2/2 seeds)" in body[0]
    assert body[4].startswith("| fedprox(mu=1) | 0.5 | partial | ")
    assert "mean ± sample std over seeds 0–1" in "\n".join(lines)


def test_one_figure_per_straggler_fraction(folder):
    out, _ = folder
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["accuracy_stragglers_0.5.png", "accuracy_stragglers_0.png"]
    assert all((out / "figures" / f).stat().st_size > 10_000 for f in figures)
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves) == {exp.curve_key(a, f) for a in LABELS for f in (0, 0.5)}
    assert all(len(runs) == 2 and len(runs[0]) == 3 for runs in curves.values())  # 2 seeds × 3 rounds


def test_without_a_target_the_column_is_left_out_and_one_seed_has_no_std(monkeypatch, tmp_path):
    grid = {"compare": ["fedavg", "fedavgm"]}
    summary = run_experiment("algorithms", build_config({**SMALL, "algorithms": grid}), tmp_path / "o")
    header = next(x for x in (tmp_path / "o" / "table.md").read_text().splitlines() if x.startswith("| algorithm"))
    assert header == "| algorithm | stragglers | accuracy | bytes up | bytes down |"  # no stragglers: no work column
    assert summary["target"] is None and all(r["target_round_mean"] is None for r in summary["results"])
    assert all(r["accuracy_std"] is None and len(r["accuracy_per_seed"]) == 1 for r in summary["results"])
    assert " ± " not in (tmp_path / "o" / "table.md").read_text()


def test_seeds_flag_gives_mean_and_std(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({**SMALL, "algorithms": {"compare": ["fedavg", "fednova"]}}))
    out = tmp_path / "o"
    assert main(["experiment", "algorithms", "-c", str(conf), "--seeds", "2", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and all(len(r["accuracy_per_seed"]) == 2 for r in summary["results"])
    assert all(r["accuracy_std"] is not None for r in summary["results"])


# --- rounds to the target, runs that stop early --------------------------------------------------------------


def test_rounds_to_target_is_the_first_round_at_or_above_it():
    rows = [{"round": 1, "accuracy": 0.4}, {"round": 2, "accuracy": 0.7}, {"round": 3, "accuracy": 0.9}]
    assert exp.rounds_to_target(rows, 0.7) == 2
    assert exp.rounds_to_target(rows, 0.95) is None and exp.rounds_to_target(rows, None) is None


def test_rounds_to_target_averages_over_the_seeds_that_reached_it():
    per_seed = [[{"algorithm": "a", "stragglers": 0, "target_round": v}] for v in (4, None, 8)]
    row = exp._reached(merge_seeds(per_seed, ("algorithm", "stragglers"))[0])
    assert row["target_reached"] == 2 and row["target_round_mean"] == 6
    assert row["target_round_std"] == pytest.approx(2**0.5 * 2)  # sample std of (4, 8)
    none = exp._reached(merge_seeds(per_seed[1:2], ("algorithm", "stragglers"))[0])
    assert none["target_reached"] == 0 and none["target_round_mean"] is None


def test_a_run_that_stopped_early_is_padded_so_seeds_stack():
    rows = [{"round": 1, "accuracy": 0.5, "loss": 1.0}]
    assert exp._padded(rows, 3)[1:] == [{"round": r, "accuracy": None, "loss": None} for r in (2, 3)]


# --- fedloom report EXP_DIR --------------------------------------------------------------------------------------


def test_report_redraws_the_figures_and_the_same_table(folder, tmp_path, capsys):
    d = shutil.copytree(folder[0], tmp_path / "copy")
    table = (d / "table.md").read_bytes()
    figures = sorted(p.name for p in (d / "figures").iterdir())
    shutil.rmtree(d / "figures")
    (d / "table.md").unlink()
    assert main(["report", str(d)]) == 0
    assert sorted(p.name for p in (d / "figures").iterdir()) == figures
    assert (d / "table.md").read_bytes() == table
    drawn = [str(d / "figures" / exp.figure_name(f)) for f in (0, 0.5)]  # in the order of the fractions
    assert capsys.readouterr().out.split() == [*drawn, str(d / "table.md")]


def test_report_with_a_curve_missing_is_one_line_and_exit_2(folder, tmp_path, capsys):
    d = shutil.copytree(folder[0], tmp_path / "copy")
    curves = json.loads((d / "curves.json").read_text())
    del curves[exp.curve_key("fedadam(server_lr=0.05)", 0.5)]
    (d / "curves.json").write_text(json.dumps(curves))
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert "curves.json: no curves for 'fedadam(server_lr=0.05) | stragglers 0.5'" in err
    assert len(err.strip().splitlines()) == 1


def test_the_table_notes_a_run_that_diverged():
    cfg = build_config(SMALL)
    row = {"algorithm": "fedadam", "stragglers": 0, "straggler_work": "dropped", "target_reached": 0}
    row |= {f"{n}_mean": 0.5 for n in ("accuracy", "bytes_up", "bytes_down")}
    summary = {"seeds": [0, 1], "target": None, "results": [{**row, "diverged_at_round_per_seed": [None, 2]}]}
    _, _, _, notes = exp._table(cfg, summary)
    assert "fedadam at stragglers 0 diverged in 1 of 2 seeds (round 2); its curve stops there." in notes
    _, _, _, notes = exp._table(cfg, {**summary, "results": [{**row, "diverged_at_round_per_seed": [None, None]}]})
    assert "diverged" not in notes
