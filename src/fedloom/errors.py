"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else exits 1."""

from __future__ import annotations

__all__ = ["FedloomError", "ConfigError", "DataError"]


class FedloomError(Exception):
    """A user-facing error: bad usage, config or data. Its message is the whole explanation."""

    exit_code = 2


class ConfigError(FedloomError):
    """A config file or a --set override is malformed or invalid."""


class DataError(FedloomError):
    """A dataset cannot be found or read, or does not have the expected shape."""
