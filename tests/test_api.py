"""fedloom as a library: fedloom.run / experiment / load_run, notes, TensorBoard, the label-mix figure."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fedloom
from fedloom import api
from fedloom.config import Config, build_config, load_config
from fedloom.errors import FedloomError
from fedloom.notes import chance_note, encryption_line, eval_step_caveat, loss_note

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"global_epochs": 3, "no_models": 4, "k": 2, "local_epochs": 1}


def test_import_fedloom_is_cheap():
    code = "import sys, fedloom; print(sorted(m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(fedloom.run) and callable(fedloom.experiment) and callable(fedloom.load_run)


def test_load_config_takes_a_dict_or_a_config():
    cfg = load_config({"k": 3, "partition": {"method": "dirichlet"}})
    assert cfg.k == 3 and cfg.partition.method == "dirichlet"
    assert load_config(cfg, ["k=2"]).k == 2 and cfg.k == 3  # the caller's Config is not changed
    with pytest.raises(FedloomError, match="field 'k'"):
        load_config({"k": "three"})


def test_overrides_reach_sections_and_the_books_lambda():
    cfg = api.resolve_config(
        ROOT / "configs" / "iris.json",
        {"lambda_": 0.2, "partition.method": "dirichlet", "runtime": {"dropout": 0.1}, "k": 3},
    )
    assert cfg.lambda_ == 0.2 and cfg.partition.method == "dirichlet" and cfg.k == 3
    assert cfg.runtime.dropout == 0.1 and cfg.runtime.checkpoint is True  # a section dict merges, keeps the rest
    assert cfg.momentum == 0.5  # from the file
    with pytest.raises(FedloomError, match="unknown key 'no_model'"):
        api.resolve_config({}, {"no_model": 3})
    with pytest.raises(FedloomError, match="expected a file path, a dict or a Config"):
        api.resolve_config(42)


def test_run_in_memory_returns_rows_summary_and_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fedloom.run({"name": "mem", **SMALL})
    assert isinstance(run, fedloom.Run) and run.path is None and not (tmp_path / "runs").exists()
    assert len(run.rows) == 3 and run.summary["rounds"] == 3
    assert run.final_accuracy == run.rows[-1]["accuracy"] == run.summary["final_accuracy"]
    assert isinstance(run.model, torch.nn.Module) and isinstance(run.config, Config)
    assert run.summary["num_classes"] == 3 and "final_accuracy" in run._repr_markdown_()


def test_run_with_a_folder_and_load_run_give_the_same_model(tmp_path):
    run = fedloom.run(build_config({"name": "disk", **SMALL}), out=tmp_path / "r", k=1)
    assert run.path == tmp_path / "r" and run.config.k == 1
    assert {f.name for f in run.figures} == {"accuracy.png", "partition.png"}
    again = fedloom.load_run(tmp_path / "r")
    assert isinstance(again, fedloom.Run) and again.rows == json.loads(json.dumps(run.rows))
    x = torch.randn(5, 4)
    assert torch.equal(again.model(x), run.model(x))
    assert again.summary["final_accuracy"] == run.summary["final_accuracy"]


def test_load_run_names_a_missing_or_foreign_folder(tmp_path):
    with pytest.raises(FedloomError, match="no such folder"):
        fedloom.load_run(tmp_path / "nope")
    with pytest.raises(FedloomError, match="not a fedloom run or experiment folder"):
        fedloom.load_run(tmp_path)


def test_experiment_from_python(tmp_path):
    exp = fedloom.experiment("fl-vs-central", {"name": "x", **SMALL}, out=tmp_path / "e")
    assert isinstance(exp, fedloom.ExperimentResult) and exp.results and "| setting |" in exp.table
    assert exp.figures and isinstance(fedloom.load_run(tmp_path / "e"), fedloom.ExperimentResult)
    with pytest.raises(FedloomError, match="did you mean 'fl-vs-local'"):
        fedloom.experiment("fl-vs-locl", {})


@pytest.mark.skipif("seeds" not in Config.model_fields, reason="needs the experiments' `seeds` config key")
def test_experiment_passes_seeds_through(tmp_path):
    exp = fedloom.experiment("fl-vs-central", {"name": "x", **SMALL}, seeds=2, out=tmp_path / "e")
    assert exp.summary["config"]["seeds"] == 2


def test_experiment_folders_do_not_double_the_name():
    assert api.experiment_dir("mnist-he", "he").name.startswith("mnist-he-2")
    assert api.experiment_dir("mnist-compression", "compression").name.startswith("mnist-compression-2")
    assert api.experiment_dir("digits-noniid", "fl-vs-local").name.startswith("digits-noniid-fl-vs-local-2")
    assert api.experiment_dir("iris", "he").name.startswith("iris-he-2")


# --- notes: what a reader must not misread ---


def test_notes_chance_flat_loss_and_small_eval_set():
    assert "at or below chance (1/3 = 0.333)" in chance_note(1 / 3, 3)
    assert chance_note(0.34, 3) is None and chance_note(0.5, 2) is not None
    rows = [{"loss": 1.1748}, {"loss": 1.1730}, {"loss": 1.1710}]
    assert "moved less than 1%" in loss_note(rows) and "1.1748 → 1.1710" in loss_note(rows)
    assert loss_note([{"loss": 1.17}, {"loss": 1.0}]) is None
    assert "steps of 3.3 points" in eval_step_caveat(30) and eval_step_caveat(1000) is None


def test_the_books_ch3_config_says_it_is_at_chance():
    run = fedloom.run(ROOT / "configs" / "book_ch3.json")
    assert run.summary["final_accuracy"] <= 1 / 3 + 1e-9
    assert any("chance" in n for n in run.notes) and any("moved less than 1%" in n for n in run.notes)
    assert not any("chance" in n for n in fedloom.run(ROOT / "configs" / "iris.json").notes)


def test_encryption_line_names_the_scheme():
    assert encryption_line({"secure": {"method": "none"}}) is None
    line = encryption_line({"secure": {"method": "paillier", "protocol": "secagg", "key_bits": 2048}})
    assert "2048-bit packed Paillier" in line and "no secret key" in line
    assert "CKKS" in encryption_line({"secure": {"method": "ckks", "protocol": "secagg"}})
    assert "15.4" in encryption_line({"secure": {"method": "paillier", "protocol": "encrypted-model"}})


def test_an_encrypted_run_says_so_in_summary_and_report(tmp_path):
    pytest.importorskip("gmpy2")
    secure = {"method": "paillier", "key_bits": 1024, "allow_weak_keys": True}
    run = fedloom.run({**SMALL, "global_epochs": 2, "secure": secure}, out=tmp_path / "he")
    assert "secure aggregation with 1024-bit packed Paillier" in run.summary["encrypted"]
    assert "**Encrypted:** yes" in (tmp_path / "he" / "report.md").read_text()


# --- TensorBoard ---


def test_tensorboard_logs_rows_config_and_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = fedloom.run({"name": "tb", **SMALL}, out=tmp_path / "r", tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "r" / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"round/accuracy", "round/loss", "round/bytes_up", "round/seconds", "round/clients_count"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in acc.Scalars("round/accuracy")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("round/loss")] == pytest.approx([r["loss"] for r in run.rows])
    assert {"figures/accuracy", "figures/partition"} <= set(tags["images"])
    assert any(t.startswith("config") for t in tags["tensors"])  # text is stored as a tensor summary


def test_tensorboard_needs_a_folder():
    with pytest.raises(FedloomError, match="give an output folder"):
        fedloom.run(SMALL, tensorboard=True)


# --- figures ---


def _capture(monkeypatch):
    import fedloom.figures as figures  # where the drawing functions live (fedloom.report re-exports them)

    figs = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, tight=True: figs.append(fig) or path)
    return figs


def test_label_mix_of_10000_clients_is_one_image_not_patches(monkeypatch, tmp_path):
    from fedloom.report import plot_label_mix

    counts = np.random.default_rng(0).integers(0, 20, (10_000, 10)).tolist()
    figs = _capture(monkeypatch)
    plot_label_mix(counts, [str(i) for i in range(10)], tmp_path / "p.png", "mix")
    artists = sum(len(ax.patches) + len(ax.collections) + len(ax.lines) + len(ax.images) for ax in figs[0].axes)
    assert artists < 20  # 100 000 bar patches before
    monkeypatch.undo()
    t0 = time.perf_counter()
    plot_label_mix(counts, [str(i) for i in range(10)], tmp_path / "p.png", "mix")  # rendered and saved
    assert time.perf_counter() - t0 < 3.0  # ~0.3 s idle; generous for a shared CI machine
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_curves_start_the_loss_at_zero_and_tick_whole_rounds(monkeypatch, tmp_path):
    from matplotlib.ticker import MaxNLocator

    from fedloom.report import plot_curves

    figs = _capture(monkeypatch)
    rows = [{"round": r, "accuracy": 1 / 3, "loss": 1.1748 - 0.0002 * r} for r in range(1, 21)]
    plot_curves({"ch3": rows}, tmp_path / "c.png", "ch3", chance=1 / 3)
    ax_acc, ax_loss = figs[0].axes
    assert ax_loss.get_ylim()[0] == 0 and ax_loss.get_ylim()[1] > 1.17  # flat, not auto-zoomed
    assert isinstance(ax_acc.xaxis.get_major_locator(), MaxNLocator)
    assert all(float(t).is_integer() for t in ax_acc.get_xticks())
    assert any("chance" in line.get_label() for line in ax_acc.lines)


def test_no_machine_paths_in_new_modules():
    for name in ("api.py", "runner.py", "notes.py", "tblog.py", "extras.py", "console.py"):
        text = (ROOT / "src" / "fedloom" / name).read_text()
        assert "/work" not in text and "/tmp" not in text, name


def test_gitignore_keeps_keys_and_runs_out():
    lines = (ROOT / ".gitignore").read_text().split()
    assert "keys/" in lines and "runs/" in lines


def test_readme_mentions_the_fast_test_subset():
    assert '-m "not slow"' in (ROOT / "README.md").read_text()


def test_no_config_comment_names_an_internal_issue():
    for conf in (ROOT / "configs").iterdir():
        assert "issue" not in conf.read_text().lower(), conf.name


def test_public_names_are_lazy_and_listed():
    assert set(fedloom.__all__) - {"__version__"} == set(fedloom._LAZY)
    assert fedloom.EXPERIMENTS == (
        "fl-vs-central",
        "fl-vs-local",
        "compression",
        "he",
        "privacy",
        "robustness",
        "algorithms",
    )


def test_partition_figure_title_says_how_clients_were_split(tmp_path, monkeypatch):
    import fedloom.report as report

    titles = []
    monkeypatch.setattr(report, "plot_label_mix", lambda counts, classes, path, title: titles.append(title) or path)
    fedloom.run({**SMALL, "type": "synthetic", "synthetic": {"num_samples": 200}}, out=tmp_path / "s")
    fedloom.run({**SMALL, "partition": {"method": "dirichlet"}}, out=tmp_path / "d")
    assert titles == [
        "label mix per client (synthetic: each client's own generator)",
        "label mix per client (dirichlet)",
    ]
