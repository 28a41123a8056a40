"""examples/quickstart.ipynb runs offline, top to bottom (nbclient), with few rounds."""

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "examples").mkdir()
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    setup = nb.cells[1]
    assert "quick = {}" in setup.source
    setup.source = setup.source.replace("quick = {}", 'quick = {"global_epochs": 3}')
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path / "examples")}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the demo and both comparisons
    text = "".join(o.get("text", "") for o in outputs)
    assert "at or below chance" in text  # the book's ch.3 run, quick or not
    assert len(list((tmp_path / "examples" / "runs").iterdir())) == 3  # demo + two experiments, nothing else
