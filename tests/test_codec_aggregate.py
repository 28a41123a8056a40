"""``aggregate_present`` and ``decode_batch`` against hand-computed cohorts."""

from __future__ import annotations

import torch

from fedloom.codecs import aggregate_present, decode_batch, parse_codec
from fedloom.params import Layout


def test_aggregate_present_two_clients_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [clients, params]
    present = torch.tensor([[True, True, False], [False, True, False]])
    weights = torch.tensor([1.0, 2.0])
    # coord 0: only client 0 -> 1; coord 1: (1*2 + 2*5) / 3 = 4; coord 2: nobody -> 0
    assert aggregate_present(values, present, weights).tolist() == [1.0, 4.0, 0.0]
    # without present: (w0 * v0 + 2 * v1) / 3
    assert aggregate_present(values, None, weights).tolist() == [3.0, 4.0, 5.0]


def test_decode_batch_feeds_the_books_layer_average() -> None:
    layout = Layout(("a", "b"), ((2,), (2,)))
    codec = parse_codec("layers:0.5")  # one tensor of two per client
    updates = torch.tensor([[3.0, 3.0, 0.0, 1.0], [0.0, 0.0, 2.0, 4.0]])  # client 0 sends a, client 1 sends b
    payloads = [codec.encode(u, ctx) for u, ctx in _ctxs(updates, layout)]
    values, present = decode_batch(codec, payloads, [0, 1], layout=layout, round=0, seed=0)
    assert present.tolist() == [[True, True, False, False], [False, False, True, True]]
    # Each tensor averaged over its one sender (the book's weight_accumulator / cnt), not halved.
    assert aggregate_present(values, present, torch.ones(2)).tolist() == [3.0, 3.0, 2.0, 4.0]


def test_decode_batch_without_present() -> None:
    layout = Layout(("a",), ((3,),))
    codec = parse_codec("fp16")
    updates = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    payloads = [codec.encode(u, ctx) for u, ctx in _ctxs(updates, layout)]
    values, present = decode_batch(codec, payloads, [0, 1], layout=layout, round=0, seed=0)
    assert present is None and torch.equal(values, updates)


def _ctxs(updates: torch.Tensor, layout: Layout):
    from fedloom.codecs import CodecContext

    return [(u, CodecContext(layout, i, 0, 0)) for i, u in enumerate(updates)]
