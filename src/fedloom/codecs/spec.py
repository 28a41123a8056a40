"""Parsing codec spec strings such as ``q8``, ``topk:0.01`` or ``topk:0.01+q8`` into a ``Codec``.

Grammar: tokens joined by ``+``, applied left to right on encode. A token is a value codec (``none``,
``fp16``, ``q1`` .. ``q8``, ``sign``) or a sparsifier (``topk:<fraction>``, ``randk:<fraction>``,
``mask:<prop>``, ``layers:<rate>``, each number in (0, 1]). A chain holds at most one sparsifier, which
must come first, and at most one value codec. Anything else raises ``ConfigError`` naming the spec and
what is allowed.
"""

from __future__ import annotations

import math
import re

from fedloom.codecs.base import Codec, Sparsifier, ValueCodec
from fedloom.codecs.chain import ChainCodec
from fedloom.codecs.fp16 import Float16Values
from fedloom.codecs.identity import Float32Values
from fedloom.codecs.layers import LayerSelect
from fedloom.codecs.quantize import StochasticQuantizer
from fedloom.codecs.randk import RandK
from fedloom.codecs.randmask import FixedMask
from fedloom.codecs.sign import ScaledSign
from fedloom.codecs.topk import TopK
from fedloom.errors import ConfigError

__all__ = ["parse_codec", "ALLOWED"]

ALLOWED = (
    "none, fp16, q1..q8, sign, topk:<fraction>, randk:<fraction>, mask:<prop>, layers:<rate> "
    "(numbers in (0, 1]), optionally chained as <sparsifier>+<value codec>"
)
_SPARSIFIERS = {"topk": TopK, "randk": RandK, "mask": FixedMask, "layers": LayerSelect}
_VALUES = {"none": Float32Values, "fp16": Float16Values, "sign": ScaledSign}


def _fraction(spec: str, token: str, arg: str | None) -> float:
    """The number after ``name:``, required to be in (0, 1]."""
    name = token.split(":")[0]
    if arg is None or arg == "":
        raise ConfigError(f"codec spec {spec!r}: {name} needs a number in (0, 1], e.g. {name}:0.1")
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"codec spec {spec!r}: {token!r} needs a number in (0, 1], got {arg!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(f"codec spec {spec!r}: {name} takes a number in (0, 1], got {arg}")
    return value


def _token(spec: str, token: str) -> Sparsifier | ValueCodec:
    name, _, arg = token.partition(":")
    if name in _SPARSIFIERS:
        return _SPARSIFIERS[name](_fraction(spec, token, arg))
    if arg:
        raise ConfigError(f"codec spec {spec!r}: {name!r} takes no argument; allowed: {ALLOWED}")
    if name in _VALUES:
        return _VALUES[name]()
    match = re.fullmatch(r"q(\d+)", name)
    if match:
        bits = int(match.group(1))
        if not 1 <= bits <= 8:
            raise ConfigError(f"codec spec {spec!r}: quantizer bits must be 1..8 (q1 .. q8), got {name}")
        return StochasticQuantizer(bits)
    raise ConfigError(f"codec spec {spec!r}: unknown codec {token!r}; allowed: {ALLOWED}")


def parse_codec(spec: str) -> Codec:
    """Build the codec a spec names; raises ``ConfigError`` for anything outside the grammar."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"codec spec {spec!r}: empty; allowed: {ALLOWED}")
    spec = spec.strip()
    parts = [_token(spec, t.strip()) for t in spec.split("+")]
    sparsifier: Sparsifier | None = None
    values: ValueCodec | None = None
    for i, part in enumerate(parts):
        if isinstance(part, Sparsifier):
            if i != 0:
                raise ConfigError(
                    f"codec spec {spec!r}: at most one sparsifier (topk, randk, mask, layers), and it must "
                    "come first, e.g. topk:0.01+q8"
                )
            sparsifier = part
        elif values is not None:
            raise ConfigError(
                f"codec spec {spec!r}: at most one value codec (none, fp16, q1..q8, sign), after the sparsifier if any"
            )
        else:
            values = part
    return ChainCodec(spec, sparsifier, values if values is not None else Float32Values())
