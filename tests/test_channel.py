"""Channel's plain-fp32 upload path (``none``, no error feedback) writes and reads exactly the codec's bytes."""

from __future__ import annotations

import pytest
import torch

from fedloom.channel import Channel
from fedloom.codecs import CodecContext, decode_batch
from fedloom.params import Layout

LAYOUT = Layout(("w", "b"), ((3, 4), (3,)))


def test_plain_upload_bytes_equal_the_codec_and_decode_back():
    ch = Channel("none", "none", False, LAYOUT, seed=7)
    assert ch._raw_up
    diffs = torch.randn(5, LAYOUT.size, dtype=torch.float64)  # float64 in: sent as fp32, as the codec does
    clients = [4, 0, 9, 2, 3]
    payloads = ch.up(diffs, clients, round=3)
    assert payloads == [ch.up_codec.encode(d, CodecContext(LAYOUT, c, 3, 7)) for d, c in zip(diffs, clients)]
    values, present = ch.decode_up(payloads, clients, 3)
    reference, _ = decode_batch(ch.up_codec, payloads, clients, layout=LAYOUT, round=3, seed=7)
    assert present is None and values.dtype == torch.float32 and torch.equal(values, reference)
    assert torch.equal(ch.decode_up(payloads[1:2], clients[1:2], 3)[0], reference[1:2])


def test_a_malformed_payload_still_gets_the_codecs_error():
    ch = Channel("none", "none", False, LAYOUT, seed=7)
    good = ch.up(torch.zeros(1, LAYOUT.size), [0], 1)[0]
    with pytest.raises(ValueError, match="payload bytes|fp32 values"):
        ch.decode_up([good + b"\0"], [0], 1)  # one byte too many
    with pytest.raises(ValueError, match="do not match codec"):
        ch.decode_up([b"\7\7" + good[2:]], [0], 1)
    with pytest.raises(RuntimeError):  # nothing to stack, as before
        ch.decode_up([], [], 1)


@pytest.mark.parametrize("up", ["q8", "fp16", "q8+ef", "topk:0.5"])
def test_other_uploads_take_the_codec_path(up):
    assert not Channel(up, "none", False, LAYOUT, seed=0)._raw_up
