"""Update codecs: compact byte payloads for federated updates (fedloom's compression).

``parse_codec(spec)`` turns a spec such as ``"q8"``, ``"topk:0.01"`` or ``"topk:0.01+q8"`` into a
``Codec`` with ``encode(vec, ctx) -> bytes`` and ``decode(bytes, ctx) -> Decoded``; ``ErrorFeedback``
wraps any codec with per-client residuals; ``aggregate_present`` averages a decoded cohort over the
clients that sent each coordinate. See ``spec.py`` for the grammar and ``chain.py`` for the wire format.
"""

from fedloom.codecs.aggregate import aggregate_present, decode_batch
from fedloom.codecs.base import Codec, CodecContext, Decoded, Sparsifier, ValueCodec
from fedloom.codecs.chain import ChainCodec
from fedloom.codecs.error_feedback import ErrorFeedback, check_error_feedback
from fedloom.codecs.spec import ALLOWED, parse_codec

__all__ = [
    "ALLOWED",
    "ChainCodec",
    "Codec",
    "CodecContext",
    "Decoded",
    "ErrorFeedback",
    "Sparsifier",
    "ValueCodec",
    "aggregate_present",
    "check_error_feedback",
    "decode_batch",
    "parse_codec",
]
