"""TensorBoard logs of a run (``runtime.tensorboard: true`` or ``fedloom run --tensorboard``).

Under ``RUN/tb/``: every numeric value of every metrics row as a scalar at step = round (counts for the
``clients`` list and the ``failed`` map), the resolved config and the summary as text, and the run's figures
as images at the end. View with ``tensorboard --logdir runs/``. Needs the ``tensorboard`` extra
(``pip install 'fedloom[tensorboard]'``), which torch.utils.tensorboard writes through.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .extras import require

__all__ = ["TensorBoardLog", "scalars"]


def scalars(row: dict) -> dict[str, float]:
    """The numbers in a metrics row, by name (``round`` is the step, not a value)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "round":
            continue
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
        elif isinstance(value, (list, dict)) and key in ("clients", "failed"):
            out[f"{key}_count"] = float(len(value))
    return out


def _as_text(obj) -> str:
    # four-space indent: TensorBoard's text plugin renders markdown, and this keeps the JSON verbatim
    return "    " + json.dumps(obj, indent=2, default=str).replace("\n", "\n    ")


class TensorBoardLog:
    def __init__(self, run_path: Path):
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_path) / "tb"
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def config(self, cfg: dict) -> None:
        self.writer.add_text("config", _as_text(cfg), 0)

    def row(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"round/{key}", value, int(row["round"]))

    def summary(self, summary: dict) -> None:
        self.writer.add_text("summary", _as_text(summary), 0)

    def figures(self, paths: list[Path]) -> None:
        import matplotlib.image

        for path in paths:
            image = matplotlib.image.imread(path)  # [H, W, 4] floats in 0..1 for a PNG
            self.writer.add_image(f"figures/{path.stem}", image[..., :3], 0, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
