"""The federation's fingerprint: a hash of the resolved config minus what may differ between processes.

A client must refuse a server that runs a different federation (another model, dataset, partition, learning
rate, codec, seed, ...), or its updates would be silently wrong. What may differ between the processes of one
federation is left out of the hash: how each process executes (the whole ``runtime`` section: engine, threads,
memory limit, the server's timeouts), where a machine keeps its files (``data.path``, ``data.clients``,
``data.eval``, ``secure.key_dir``), local parallelism (``secure.workers``) and the experiment-only ``sweep``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..config import Config

__all__ = ["PER_PROCESS_FIELDS", "federation_dict", "config_hash", "config_diff"]

# dotted paths left out of the hash; a section name drops the whole section
PER_PROCESS_FIELDS = ("runtime", "data.path", "data.clients", "data.eval", "secure.key_dir", "secure.workers", "sweep")


def federation_dict(cfg: Config | dict[str, Any]) -> dict[str, Any]:
    """The resolved config (the book's spelling) without the per-process fields."""
    out = json.loads(json.dumps(cfg.to_dict() if isinstance(cfg, Config) else cfg))
    for path in PER_PROCESS_FIELDS:
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def config_hash(cfg: Config | dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of :func:`federation_dict`."""
    canon = json.dumps(federation_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(ours: dict[str, Any], theirs: dict[str, Any], limit: int = 6) -> list[str]:
    """Human-readable differences of two :func:`federation_dict` results: ``"lr: 0.1 here, 0.3 there"``."""
    a, b = _flat(ours), _flat(theirs)
    keys = sorted(set(a) | set(b))
    out = [f"{k}: {a.get(k, '(unset)')!r} here, {b.get(k, '(unset)')!r} there" for k in keys if a.get(k) != b.get(k)]
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
