"""The plain wire format for vectors: a typed header and raw little-endian values. Never pickle.

    b"FLM1" | u32 header length | header (UTF-8 JSON: kind, dtype, length, extras) | raw values

This is what a model or an fp32 update weighs on the network, so byte counts are ``len()`` of it.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch

__all__ = ["pack_vector", "unpack_vector", "WireError"]

MAGIC = b"FLM1"
_DTYPES = {"float32": np.float32, "float16": np.float16}


class WireError(ValueError):
    """A payload that does not follow the format (truncated, wrong magic, inconsistent header)."""


def pack_vector(vec: torch.Tensor, kind: str, dtype: str = "float32", **extras: object) -> bytes:
    """Serialize a 1-D tensor with a header naming what it is (``kind``) and any small ``extras``."""
    values = vec.detach().cpu().numpy().astype(_DTYPES[dtype]).astype(f"<{np.dtype(_DTYPES[dtype]).str[1:]}")
    header = json.dumps({"kind": kind, "dtype": dtype, "length": int(values.size), **extras}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + values.tobytes()


def unpack_vector(payload: bytes) -> tuple[torch.Tensor, dict]:
    """The float32 vector and the header of a :func:`pack_vector` payload; raises WireError if malformed."""
    if len(payload) < 8 or payload[:4] != MAGIC:
        raise WireError("not a fedloom vector payload (bad magic)")
    (hlen,) = struct.unpack_from("<I", payload, 4)
    try:
        header = json.loads(payload[8 : 8 + hlen])
        dtype = np.dtype(_DTYPES[header["dtype"]]).newbyteorder("<")
        length = int(header["length"])
    except (ValueError, KeyError, TypeError) as e:
        raise WireError(f"malformed payload header: {e}") from None
    body = payload[8 + hlen :]
    if len(body) != length * dtype.itemsize:
        raise WireError(f"payload body has {len(body)} bytes, header says {length} × {dtype.itemsize}")
    return torch.from_numpy(np.frombuffer(body, dtype=dtype).astype(np.float32)), header
