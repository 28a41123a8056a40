"""Reading config files (JSON, YAML, TOML) into plain values, refusing what would silently go wrong.

Every problem becomes one :class:`~fedloom.errors.ConfigError` line naming the file, and where known the key,
line and column:

- text must be UTF-8 (a byte-order mark is accepted); other encodings are named, not guessed;
- a key given twice in one mapping is refused (JSON and YAML would silently keep the last value);
- values are JSON values: YAML timestamps stay strings, TOML dates/times are refused naming the key;
- non-finite numbers (``Infinity``, ``NaN``, ``1e999``, YAML ``.inf``, TOML ``nan``) are refused naming the key;
- nesting deeper than :data:`MAX_DEPTH` is refused (no recursion error);
- relative paths (``data.path``, ``data.clients``, ``data.eval``, ``secure.key_dir``) resolve against the
  config file's folder, whatever the current folder is.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "read_config_file",
    "one_line",
    "hint",
    "decode_text",
    "check_values",
    "resolve_paths",
    "MAX_DEPTH",
    "PATH_KEYS",
]

MAX_DEPTH = 32  # a config is a few sections deep; anything past this is a mistake or an attack
PATH_KEYS = (("data", "path"), ("data", "eval"), ("data", "clients"), ("secure", "key_dir"))


def decode_text(data: bytes, path: Path | str, what: str = "file") -> str:
    """UTF-8 text (with or without a byte-order mark); anything else is one line naming the file."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: this {what} is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"save the {what} as UTF-8 (GBK, Latin-1 and binary files are not read)"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path}: holds NUL bytes, so it is binary, not a UTF-8 text {what}")
    return text


def read_bytes(path: Path, what: str) -> bytes:
    """The file's bytes, or one line saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a folder, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: permission denied (cannot read it)") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot be read ({e.strerror or e})") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, keeps timestamps as strings and reads ``1e-3`` as a number."""


# YAML 1.1 resolves 2024-01-01 to a date; here it stays the string the user typed.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1 needs a dot in a float ("1.0e-3"); JSON and TOML users write 1e-3, which would otherwise be a string.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            m = key_node.start_mark
            raise ConfigError(f"duplicate key '{key}' at line {m.line + 1} column {m.column + 1}")
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"duplicate key '{k}' (each key may appear once in an object)")
        out[k] = v
    return out


def _parse(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        where = f" at line {m.line + 1} column {m.column + 1}" if m is not None else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (a config is at most {MAX_DEPTH} levels deep)") from None


def check_values(value: Any, source: str, key: str = "", depth: int = 0) -> None:
    """Refuse values no config field takes and that would otherwise surface late or silently."""
    where = f"{source}: field '{key}'" if key else source
    if depth > MAX_DEPTH:
        raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep (at '{key}')")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{source}: key {k!r} under '{key or 'top level'}' is not a string")
            check_values(v, source, f"{key}.{k}" if key else k, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_values(v, source, f"{key}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value} is not a finite number")
    elif isinstance(value, (_dt.date, _dt.time, _dt.datetime)):
        raise ConfigError(f"{where}: a date/time ({value.isoformat()}) is not a valid value; quote it if a string")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: unsupported value {value!r}")


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of ``raw`` whose relative file paths point into ``base`` (the config file's folder)."""

    def fix(p: Any) -> Any:
        return str(base / p) if isinstance(p, str) and p and not Path(p).is_absolute() else p

    out = dict(raw)
    for section, key in PATH_KEYS:
        sec = out.get(section)
        if not isinstance(sec, dict) or key not in sec:
            continue
        sec = out[section] = dict(sec)
        sec[key] = [fix(p) for p in sec[key]] if isinstance(sec[key], list) else fix(sec[key])
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's top-level mapping, checked by :func:`check_values`, paths resolved against its folder."""
    text = decode_text(read_bytes(path, "config file"), path, "config file")
    raw = _parse(text, path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    check_values(raw, str(path))
    return resolve_paths(raw, path.parent)


def hint(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_for(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean hints)."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        if field is None:
            return None
        ann = field.annotation
        model = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return model


def one_line(err: ValidationError, root: type[BaseModel], source: str) -> str:
    """The first validation problem as one line naming the field."""
    e = err.errors()[0]
    loc = tuple(e.get("loc", ()))
    # pydantic names the branch of a union it tried (constrained-int, literal['auto'], function-after[...]):
    # the user knows the field, not the branch
    field = ".".join(str(p) for p in loc if isinstance(p, int) or str(p).isidentifier())
    if e["type"] == "extra_forbidden":
        owner = _model_for(loc, root)
        names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        return f"{source}: unknown key '{field}'{hint(str(loc[-1]), names)}"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    shown = "" if isinstance(got, dict) or e["type"] in ("value_error", "missing") else f" (got {_short(got)})"
    return f"{source}: field '{field}': {msg}{shown}" if field else f"{source}: {msg}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
