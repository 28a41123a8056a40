"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else exits 1."""

from __future__ import annotations

__all__ = ["FedloomError", "ConfigError", "DataError", "user_words", "CONFIG_WORDS", "FLAG_WORDS"]


class FedloomError(Exception):
    """A user-facing error: bad usage, config or data. Its message is the whole explanation."""

    exit_code = 2


class ConfigError(FedloomError):
    """A config file or a --set override is malformed or invalid."""


class DataError(FedloomError):
    """A dataset cannot be found or read, or does not have the expected shape."""


# Python keyword arguments as a user of the config file or of the command line names them.
CONFIG_WORDS = {"allow_weak_keys=True": "secure.allow_weak_keys: true", "key_bits=": "secure.key_bits "}
FLAG_WORDS = {"allow_weak_keys=True": "--allow-weak-keys", "overwrite=True": "--overwrite", "key_bits=": "--key-bits "}


def user_words(message: str, words: dict[str, str]) -> str:
    """``message`` with Python argument spellings replaced by the config keys or flags ``words`` maps them to."""
    for python, user in words.items():
        message = message.replace(python, user)
    return message
