"""`fedloom report EXP_DIR` redraws an experiment folder's figures and table.md from its own files."""

import json
import shutil

import pytest

from fedloom.cli import main
from fedloom.config import build_config
from fedloom.experiments import he, privacy, run_experiment

SMALL = {"global_epochs": 2, "no_models": 4, "k": 2, "local_epochs": 1, "seeds": 2}
CONFIGS = {
    "fl-vs-central": SMALL,
    "fl-vs-local": SMALL,
    "compression": {**SMALL, "sweep": ["q8", "topk:0.1+ef"]},
    "he": {**SMALL, "global_epochs": 1, "seeds": 1, "secure": {"key_bits": 1024, "allow_weak_keys": True}},
    "privacy": SMALL,
    "robustness": {
        **SMALL,
        "no_models": 5,
        "k": 5,
        "robustness": {"aggregators": ["mean", "median"], "attacks": [{"name": "backdoor"}], "fractions": [0.2]},
    },
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each experiment run once, tiny; per-value Paillier is extrapolated (its bars are estimates)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(he, "_FULL_RUN_BUDGET", 0.0)
    mp.setattr(privacy, "NOISE", (0.0, 1.0))
    mp.setattr(privacy, "CLIPS", (1.0,))
    root = tmp_path_factory.mktemp("exp")
    try:
        return {name: _run(name, raw, root / name) for name, raw in CONFIGS.items()}
    finally:
        mp.undo()


def _run(name, raw, out):
    run_experiment(name, build_config(raw), out)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", list(CONFIGS))
def test_report_redraws_figures_and_the_same_table(folders, tmp_path, name, capsys):
    d = _copy(folders[name], tmp_path / name)
    table = (d / "table.md").read_bytes()
    figures = sorted(p.name for p in (d / "figures").iterdir())
    assert figures and all(f.endswith(".png") for f in figures)
    shutil.rmtree(d / "figures")
    (d / "table.md").unlink()
    assert main(["report", str(d)]) == 0
    assert sorted(p.name for p in (d / "figures").iterdir()) == figures
    assert all((d / "figures" / f).stat().st_size > 10_000 for f in figures)  # a drawn figure, not an empty file
    assert (d / "table.md").read_bytes() == table
    printed = capsys.readouterr().out.split()
    assert printed == [str(d / "figures" / f) for f in figures] + [str(d / "table.md")]


@pytest.mark.parametrize("damage", ["no results", "empty results", "no curves", "a row without its numbers"])
def test_a_damaged_experiment_folder_is_one_line_and_exit_2(folders, tmp_path, capsys, damage):
    d = _copy(folders["compression"], tmp_path / "c")
    summary = json.loads((d / "summary.json").read_text())
    if damage == "no results":
        del summary["results"]
    elif damage == "empty results":
        summary["results"] = []
    elif damage == "a row without its numbers":
        summary["results"][1] = {"method": "q8"}
    else:
        (d / "curves.json").unlink()
    (d / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(d / "figures")
    (d / "table.md").unlink()
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedloom: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("curves.json" if damage == "no curves" else "summary.json") in err
    if damage != "a row without its numbers":  # checked before anything is drawn: nothing half-written
        assert not (d / "figures").exists() and not (d / "table.md").exists()


def test_he_figure_marks_the_estimated_bars_themselves(folders, tmp_path, monkeypatch):
    import fedloom.experiments.he as mod

    figs = []
    monkeypatch.setattr(mod, "save_figure", lambda fig, path: figs.append(fig) or path)
    d = _copy(folders["he"], tmp_path / "he")
    summary = json.loads((d / "summary.json").read_text())
    mod.render(d, summary)
    ax_time, ax_bytes = figs[0].axes
    methods = [r["method"] for r in summary["results"] if "bytes_up_per_round_mean" in r]
    est = methods.index("paillier-per-value")
    hatched = [i for i, bar in enumerate(ax_bytes.patches) if bar.get_hatch()]
    assert hatched == [est]  # the upload bar itself, not only its tick label
    assert any("estimate" in t.get_text() for t in ax_bytes.texts)
    assert sum(bool(bar.get_hatch()) for bar in ax_time.patches) == 3  # encrypt, add, decrypt of that row
