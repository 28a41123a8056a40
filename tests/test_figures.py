"""fedloom.figures: the figure worker of `fedloom run` (a second process that draws the run's figures)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedloom import cpuload, figures

LABEL_MIX = ("plot_label_mix", {"counts": [[3, 1], [0, 4]], "classes": ["a", "b"], "title": "label mix"})


@pytest.fixture
def free_core(monkeypatch):
    monkeypatch.setattr(cpuload, "others_running", lambda: 0)
    monkeypatch.setattr(cpuload, "usable_cores", lambda: 2)
    yield
    figures.stop_worker()


def _job(tmp_path, name="mix.png"):
    return LABEL_MIX[0], {**LABEL_MIX[1], "path": tmp_path / name}


def test_the_worker_draws_the_figures(free_core, tmp_path):
    worker = figures.start_worker()
    assert worker is not None
    paths = figures.draw([_job(tmp_path)])
    assert paths == [tmp_path / "mix.png"] and paths[0].stat().st_size > 0
    assert worker.proc.returncode == 0  # one batch, then it is gone
    assert figures._WORKER[0] is None  # the next draw is done in this process


def test_no_worker_without_a_free_core(monkeypatch):
    monkeypatch.setattr(cpuload, "others_running", lambda: 1)  # another process holds the other core
    monkeypatch.setattr(cpuload, "usable_cores", lambda: 2)
    assert figures.start_worker() is None
    monkeypatch.setattr(cpuload, "others_running", lambda: None)  # not Linux: cannot tell, no worker
    assert figures.start_worker() is None


def test_a_failed_worker_falls_back_to_drawing_here(free_core, tmp_path, monkeypatch):
    broken = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); print('not json')"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    figures._WORKER[0] = figures.FigureWorker(broken)
    assert figures.draw([_job(tmp_path)]) == [tmp_path / "mix.png"]
    assert (tmp_path / "mix.png").stat().st_size > 0


def test_a_worker_error_is_redrawn_here_where_it_raises(free_core, tmp_path):
    worker = figures.start_worker()
    with pytest.raises(KeyError):  # the worker answered with an error; drawing here raises the real one
        figures.draw([("no_such_figure", {"path": tmp_path / "x.png"})])
    assert worker.proc.poll() is not None


def test_an_unused_worker_is_ended(free_core):
    worker = figures.start_worker()
    figures.stop_worker()
    assert worker.proc.poll() is not None and figures._WORKER[0] is None


def test_cpuload_readings():
    assert cpuload.usable_cores() >= 1
    n = cpuload.others_running()
    assert n is None or n >= 0


def test_fedloom_run_draws_its_figures_in_the_worker(free_core, tmp_path, monkeypatch):
    from pathlib import Path

    from fedloom.cli import main

    started = []
    real_start = figures.FigureWorker.start.__func__

    def start(cls):
        started.append(real_start(cls))
        return started[-1]

    monkeypatch.setattr(figures.FigureWorker, "start", classmethod(start))
    config = Path(__file__).resolve().parents[1] / "configs" / "iris.json"
    out = tmp_path / "run"
    assert main(["run", "-c", str(config), "--out", str(out), "-q", "--set", "global_epochs=2"]) == 0
    assert started and started[0] is not None and started[0].proc.returncode == 0  # it drew, then exited
    for name in ("accuracy.png", "partition.png"):
        assert (out / "figures" / name).stat().st_size > 0
        assert f"figures/{name}" in (out / "report.md").read_text(encoding="utf-8")
