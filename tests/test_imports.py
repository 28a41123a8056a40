"""Every module imports (catches syntax errors and import cycles in modules no other test reaches)."""

import importlib
import pkgutil

import fedloom


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(fedloom.__path__, "fedloom.")]
    names = [n for n in names if not n.startswith("fedloom.flower")]  # needs the optional flwr extra
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)
