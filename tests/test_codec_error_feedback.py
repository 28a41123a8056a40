"""Error feedback: the residual arithmetic by hand, the batched form, and checkpointing."""

from __future__ import annotations

import pytest
import torch

from fedloom.codecs import CodecContext, ErrorFeedback, parse_codec
from fedloom.config import build_config
from fedloom.errors import ConfigError
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


@pytest.mark.parametrize("spec", ["randk:0.1", "randk:0.01+q8", "mask:0.5", "mask:0.5+sign"])
def test_error_feedback_refuses_codecs_it_cannot_make_converge(spec: str) -> None:
    with pytest.raises(ConfigError, match="error feedback"):
        ErrorFeedback(parse_codec(spec))
    with pytest.raises(ConfigError, match=r"compression.*error feedback") as e:
        build_config({"compression": {"up": spec + "+ef"}})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="compression.error_feedback"):
        build_config({"compression": {"up": spec, "error_feedback": True}})


def test_error_feedback_refuses_the_books_mask_given_by_prop() -> None:
    with pytest.raises(ConfigError, match="fixed mask"):
        build_config({"prop": 0.5, "compression": {"error_feedback": True}})


def test_randk_with_error_feedback_would_diverge_topk_does_not() -> None:
    """Why randk+ef is refused: the residual grows geometrically (params/k − 1 > 1), topk's stays bounded."""
    layout = make_layout(200)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(200, generator=g) for _ in range(30)]
    randk, topk = parse_codec("randk:0.05"), ErrorFeedback(parse_codec("topk:0.05"))
    residual = torch.zeros(200)
    for rnd, x in enumerate(xs):  # the EF recursion by hand, as ErrorFeedback would run it
        ctx = ctx_for(layout, rnd=rnd)
        p = x + residual
        residual = p - randk.decode(randk.encode(p, ctx), ctx).values
        topk.encode(x, ctx)
    assert float(residual.norm()) > 1e6 * float(xs[0].norm())
    assert float(topk.residuals[0].norm()) < 50 * float(xs[0].norm())


def test_lossless_randk_and_mask_keep_error_feedback() -> None:
    for spec in ("randk:1", "mask:1"):
        build_config({"compression": {"up": spec + "+ef"}})
