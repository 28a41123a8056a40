"""The communication channel of a federation: the codecs of both directions and error-feedback state.

Down: the server encodes the global vector once per round and every sampled client decodes the same
payload (a lossy down codec means clients start from what they received). Up: each client encodes its
diff, through error feedback when enabled; the server decodes. Byte counts are ``len()`` of these payloads,
taken by the caller (simulation.py), never computed here.

Spec strings are those of :func:`fedloom.codecs.parse_codec`; a trailing ``+ef`` on the upload spec turns on
error feedback (the same as ``compression.error_feedback: true``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch

from .codecs import CodecContext, ErrorFeedback, decode_batch, parse_codec
from .codecs.identity import Float32Values
from .params import Layout

__all__ = ["Channel", "split_ef", "BROADCAST_ID"]

BROADCAST_ID = 0  # client id in the down codec's context: one broadcast payload for everybody
_LITTLE_ENDIAN = sys.byteorder == "little"  # float32 in memory is the wire's "<f4": payloads copy as bytes


def split_ef(spec: str) -> tuple[str, bool]:
    """``"topk:0.01+q8+ef"`` → ``("topk:0.01+q8", True)``."""
    parts = [p.strip() for p in spec.split("+")]
    ef = parts[-1].lower() == "ef"
    return ("+".join(parts[:-1]) if ef else spec.strip()) or "none", ef


class Channel:
    def __init__(self, up: str, down: str, error_feedback: bool, layout: Layout, seed: int):
        up_spec, ef = split_ef(up)
        self.up_codec = parse_codec(up_spec)
        self.down_codec = parse_codec(down)
        self.ef = ErrorFeedback(self.up_codec) if (ef or error_feedback) and self.up_codec.lossy else None
        self.layout, self.seed = layout, seed

    @property
    def name(self) -> str:
        return self.up_codec.name + ("+ef" if self.ef is not None else "")

    def broadcast(self, global_vec: torch.Tensor, round: int) -> bytes:
        """The round's broadcast payload of ``global_vec`` (clients decode it with :meth:`receive`)."""
        return self.down_codec.encode(global_vec, CodecContext(self.layout, BROADCAST_ID, round, self.seed, down=True))

    def receive(self, payload: bytes, round: int) -> torch.Tensor:
        """Client side: the global vector decoded from the round's broadcast (the broadcast's context, whose
        seeded draws, e.g. a ``randk`` index set, are the server's; raises on a malformed payload)."""
        ctx = CodecContext(self.layout, BROADCAST_ID, round, self.seed, down=True)
        return self.down_codec.decode(payload, ctx).values

    def down(self, global_vec: torch.Tensor, round: int) -> tuple[bytes, torch.Tensor]:
        """The broadcast payload and the vector every client decodes from it."""
        payload = self.broadcast(global_vec, round)
        return payload, self.receive(payload, round)

    @property
    def _raw_up(self) -> bool:
        """The upload is plain fp32 (``none``, no error feedback): its payloads are the tags and the raw values."""
        codec = self.up_codec
        return (
            _LITTLE_ENDIAN
            and self.ef is None
            and getattr(codec, "sparsifier", 1) is None
            and isinstance(codec.values, Float32Values)
        )

    def up(self, diffs: torch.Tensor, clients: Sequence[int], round: int) -> list[bytes]:
        """Client side: one payload per row of ``diffs`` ``[clients, params]``."""
        if self.ef is not None:
            return self.ef.encode_batch(diffs, list(clients), layout=self.layout, round=round, seed=self.seed)
        if self._raw_up and diffs.ndim == 2 and diffs.shape[1] == self.layout.size:
            # the bytes ChainCodec.encode writes for `none`, without its per-client call (a round of 100 clients
            # spent 0.5 ms there): tags, then the row as little-endian fp32
            rows = diffs.detach().to(device="cpu", dtype=torch.float32).numpy().astype("<f4", copy=False)
            return [self.up_codec._head + row.tobytes() for row in rows]
        return [
            self.up_codec.encode(d, CodecContext(self.layout, int(c), round, self.seed)) for d, c in zip(diffs, clients)
        ]

    def decode_up(
        self, payloads: Sequence[bytes], clients: Sequence[int], round: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Server side: ``(values [clients, params], present [clients, params] or None)``."""
        if self._raw_up and payloads and len(payloads) == len(clients):
            size, head = self.layout.size, self.up_codec._head
            if all(len(p) == 2 + 4 * size and p[:2] == head for p in payloads):  # else the codec says what is wrong
                values = torch.empty(len(payloads), size)  # native float32: "<f4" here (checked at import)
                raw = np.frombuffer(b"".join(payloads), np.uint8).reshape(len(payloads), 2 + 4 * size)
                values.numpy().view(np.uint8).reshape(len(payloads), 4 * size)[:] = raw[:, 2:]  # tags dropped
                return values, None
        return decode_batch(self.up_codec, payloads, list(clients), layout=self.layout, round=round, seed=self.seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ef.state_dict() if self.ef is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.ef is not None:
            self.ef.load_state_dict(state)
