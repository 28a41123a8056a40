"""fedloom: a federated-learning lab (horizontal FL, compression, homomorphic encryption).

    import fedloom
    run = fedloom.run("configs/iris.json", global_epochs=10)   # rows, summary, model (docs/python.md)

``import fedloom`` is cheap: torch, matplotlib and the rest load on first use of what needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first access, PEP 562)
_LAZY = {
    "run": "api",
    "experiment": "api",
    "load_run": "api",
    "Run": "api",
    "ExperimentResult": "api",
    "load_config": "config",
    "build_config": "config",
    "Config": "config",
    "FedloomError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "EXPERIMENTS": "experiments",
}

__all__ = [  # spelled out for linters; the same names as _LAZY
    "__version__", "run", "experiment", "load_run", "Run", "ExperimentResult", "load_config", "build_config",
    "Config", "FedloomError", "ConfigError", "DataError", "EXPERIMENTS",
]  # fmt: skip

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .api import ExperimentResult, Run, experiment, load_run, run
    from .config import Config, build_config, load_config
    from .errors import ConfigError, DataError, FedloomError
    from .experiments import EXPERIMENTS


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedloom' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
