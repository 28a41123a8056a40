"""Error feedback: the residual arithmetic by hand, the batched form, and checkpointing."""

from __future__ import annotations

import torch

from fedloom.codecs import CodecContext, ErrorFeedback, parse_codec
from fedloom.params import Layout


def make_layout(*sizes: int) -> Layout:
    return Layout(tuple(f"t{i}" for i in range(len(sizes))), tuple((s,) for s in sizes))


def ctx_for(layout: Layout, client: int = 0, rnd: int = 0, seed: int = 7) -> CodecContext:
    return CodecContext(layout, client, rnd, seed)


def test_error_feedback_residual_by_hand() -> None:
    layout = make_layout(3)
    ef = ErrorFeedback(parse_codec("topk:0.34"))  # k = round(1.02) = 1
    ctx0, ctx1 = ctx_for(layout, client=4, rnd=0), ctx_for(layout, client=4, rnd=1)
    x1, x2 = torch.tensor([1.0, 2.0, -0.5]), torch.tensor([0.5, 1.0, 0.0])
    d1 = ef.decode(ef.encode(x1, ctx0), ctx0).values  # p1 = x1 -> keep 2.0
    assert d1.tolist() == [0.0, 2.0, 0.0] and ef.residuals[4].tolist() == [1.0, 0.0, -0.5]
    d2 = ef.decode(ef.encode(x2, ctx1), ctx1).values  # p2 = [1.5, 1, -0.5] -> keep 1.5
    assert d2.tolist() == [1.5, 0.0, 0.0] and ef.residuals[4].tolist() == [0.0, 1.0, -0.5]
    assert torch.equal(d1 + d2, x1 + x2 - ef.residuals[4])
    assert list(ef.residuals) == [4]  # only clients that encoded have a residual


def test_error_feedback_batch_matches_per_client_and_checkpoints() -> None:
    layout = make_layout(40, 60)
    g = torch.Generator().manual_seed(5)
    loop, batch = ErrorFeedback(parse_codec("q2")), ErrorFeedback(parse_codec("q2"))
    for rnd in range(3):
        vecs = torch.randn(3, 100, generator=g)  # [clients, params]
        ids = [7, 2, 9] if rnd != 1 else [2, 11, 7]
        snapshot = vecs.clone()
        payloads = batch.encode_batch(vecs, ids, layout=layout, round=rnd, seed=1)
        assert torch.equal(vecs, snapshot)
        for i, c in enumerate(ids):
            assert payloads[i] == loop.encode(vecs[i], CodecContext(layout, c, rnd, 1))
    assert sorted(batch.residuals) == [2, 7, 9, 11]
    for c in batch.residuals:
        torch.testing.assert_close(batch.residuals[c], loop.residuals[c], rtol=0, atol=1e-6)
    restored = ErrorFeedback(parse_codec("q2"))
    restored.load_state_dict(batch.state_dict())
    assert all(torch.equal(restored.residuals[c], batch.residuals[c]) for c in batch.residuals)
