import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from fedloom.config import build_config  # noqa: E402


@pytest.fixture
def iris_cfg():
    """A small, fast Iris federation."""
    return build_config({"global_epochs": 5, "no_models": 4, "k": 2, "local_epochs": 1})
