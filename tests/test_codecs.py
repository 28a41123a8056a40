"""Codecs: round-trip error bounds, the statistics each method promises, and the bytes on the wire.

Byte counts are checked against ``len(payload)`` with the format written out in the test (the codecs never
report sizes themselves). Layout: 2 tag bytes, then the sparsifier's side bytes, then the value codec's.
"""

from __future__ import annotations

import importlib
import math
import pkgutil

import numpy as np
import pytest
import torch

import fedloom.codecs as codecs_pkg
from fedloom.codecs import CodecContext, ErrorFeedback, parse_codec
from fedloom.codecs.topk import BITMASK, GAPS
from fedloom.errors import ConfigError
from fedloom.params import Layout

TAGS = 2  # sparsifier tag byte + value codec tag byte
TOPK_HEAD = 5  # uint32 k + index-format byte


def make_layout(*sizes: int) -> Layout:
    return Layout(tuple(f"t{i}" for i in range(len(sizes))), tuple((s,) for s in sizes))


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ctx_for(layout: Layout, client: int = 0, rnd: int = 0, seed: int = 7) -> CodecContext:
    return CodecContext(layout, client, rnd, seed)


def roundtrip(spec: str, x: torch.Tensor, ctx: CodecContext):
    codec = parse_codec(spec)
    payload = codec.encode(x, ctx)
    return payload, codec.decode(payload, ctx)


def naive_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


ALL_SPECS = [
    "none", "fp16", "q1", "q4", "q8", "sign", "topk:0.05", "randk:0.05", "mask:0.5", "layers:0.5",
    "topk:0.05+q8", "topk:0.05+sign", "randk:0.1+fp16", "mask:0.5+q4", "layers:0.5+q2",
]  # fmt: skip


def test_every_codec_module_imports_and_exports() -> None:
    for info in pkgutil.iter_modules(codecs_pkg.__path__):
        module = importlib.import_module(f"fedloom.codecs.{info.name}")
        assert hasattr(module, "__all__"), info.name
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.{name}"


# ---------------------------------------------------------------- value codecs, dense


def test_none_is_exact_and_4_bytes_per_value() -> None:
    layout = make_layout(10, 7)
    x = randn(17, seed=1)
    payload, dec = roundtrip("none", x, ctx_for(layout))
    assert torch.equal(dec.values, x) and dec.present is None
    assert len(payload) == TAGS + 4 * 17
    assert not parse_codec("none").lossy


def test_fp16_relative_error_and_clipping() -> None:
    layout = make_layout(1000)
    x = randn(1000, seed=2) * torch.logspace(-3, 3, 1000)  # normal fp16 range
    payload, dec = roundtrip("fp16", x, ctx_for(layout))
    assert len(payload) == TAGS + 2 * 1000
    # round to nearest: half an ulp, 2**-11 relative; below 2**-14 (subnormal) 2**-25 absolute
    assert bool(((dec.values - x).abs() <= 2.0**-11 * x.abs() + 2.0**-25).all())
    assert float(((dec.values - x).abs() / x.abs()).max()) > 2.0**-13  # it does round
    big = torch.tensor([1e6, -1e6, 1.0])
    _, dec = roundtrip("fp16", big, ctx_for(make_layout(3)))
    assert dec.values.tolist() == [65504.0, -65504.0, 1.0]  # clipped, not inf


@pytest.mark.parametrize("bits", range(1, 9))
def test_quantizer_error_bound_is_per_tensor(bits: int) -> None:
    # Ranges 1e-3 apart: a single global scale would break the small tensor's bound.
    layout = make_layout(500, 300)
    g = torch.Generator().manual_seed(bits)
    x = torch.cat([torch.randn(500, generator=g) * 1e-3, torch.randn(300, generator=g) * 1.0])
    payload, dec = roundtrip(f"q{bits}", x, ctx_for(layout))
    assert len(payload) == TAGS + 8 * 2 + math.ceil(800 * bits / 8)
    levels = 2**bits - 1
    for sl in layout.slices():
        lo, hi = float(x[sl].min()), float(x[sl].max())
        step = (hi - lo) / levels
        err = (dec.values[sl].double() - x[sl].double()).abs()
        assert float(err.max()) <= step * (1 + 1e-5) + 1e-12
        grid = (dec.values[sl].double() - lo) / step  # decoded values sit on lo + j * step
        assert float((grid - grid.round()).abs().max()) < 1e-3
        assert float(grid.min()) > -1e-3 and float(grid.max()) < levels + 1e-3


def test_quantizer_is_unbiased() -> None:
    layout = make_layout(30, 10)
    x = torch.linspace(-1.0, 1.0, 40) ** 3  # values between grid points
    codec, draws = parse_codec("q2"), 3000
    mean = torch.zeros(40, dtype=torch.float64)
    for r in range(draws):
        mean += codec.decode(codec.encode(x, ctx_for(layout, rnd=r)), ctx_for(layout, rnd=r)).values.double()
    mean /= draws
    step = torch.tensor([float(x[s].max() - x[s].min()) / 3 for s in layout.slices()]).repeat_interleave(
        torch.tensor(layout.sizes)
    )
    # One draw has variance <= step^2 / 4, so the mean's std <= step / (2 sqrt(draws)); allow 6 of those.
    # Nearest rounding would be off by up to step / 2, far beyond this tolerance (about 0.05 step).
    tol = 6 * step / (2 * math.sqrt(draws))
    assert bool(((mean - x.double()).abs() <= tol).all())


def test_quantizer_is_seeded_by_round_and_client() -> None:
    layout, x = make_layout(200), randn(200, seed=3)
    codec = parse_codec("q2")
    same = codec.encode(x, ctx_for(layout, client=1, rnd=3))
    assert same == codec.encode(x, ctx_for(layout, client=1, rnd=3))
    assert same != codec.encode(x, ctx_for(layout, client=1, rnd=4))
    assert same != codec.encode(x, ctx_for(layout, client=2, rnd=3))


def test_sign_is_exact_sign_times_mean_abs_per_tensor() -> None:
    layout = make_layout(13, 20)
    x = randn(33, seed=4)
    payload, dec = roundtrip("sign", x, ctx_for(layout))
    assert len(payload) == TAGS + 4 * 2 + math.ceil(33 / 8)
    for sl in layout.slices():
        scale = x[sl].abs().double().mean().float()
        torch.testing.assert_close(dec.values[sl], torch.sign(x[sl]) * scale, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- sparsifiers


def test_topk_keeps_the_k_largest_with_ties_to_lower_index() -> None:
    layout = make_layout(4, 3)
    x = torch.tensor([0.1, -3.0, 2.0, 0.0, -2.0, 5.0, 1.0])
    # k = round(3/7 * 7) = 3: |5| and |-3|, then |2| and |-2| tie -> the lower index (2) wins.
    payload, dec = roundtrip(f"topk:{3 / 7}", x, ctx_for(layout))
    assert dec.values.tolist() == [0.0, -3.0, 2.0, 0.0, 0.0, 5.0, 0.0]
    assert dec.present is None
    assert len(payload) == TAGS + TOPK_HEAD + 1 + 4 * 3  # bitmask of 7 bits = 1 byte


@pytest.mark.parametrize(("fraction", "params", "k"), [(0.01, 1000, 10), (1e-9, 1000, 1), (0.0025, 1000, 3)])
def test_topk_count(fraction: float, params: int, k: int) -> None:
    x = torch.arange(1, params + 1, dtype=torch.float32)
    _, dec = roundtrip(f"topk:{fraction}", x, ctx_for(make_layout(params)))
    assert int((dec.values != 0).sum()) == k  # 2.5 rounds half up to 3
    assert torch.equal(dec.values[-k:], x[-k:])


def _topk_payload_parts(x: torch.Tensor, fraction: float):
    layout = make_layout(x.numel())
    payload, dec = roundtrip(f"topk:{fraction}", x, ctx_for(layout))
    index = torch.nonzero(dec.values).flatten().tolist()
    gaps = [i - p - 1 for i, p in zip(index, [-1, *index[:-1]], strict=True)]
    varint_bytes = sum(len(naive_uvarint(g)) for g in gaps)
    bitmask_bytes = math.ceil(x.numel() / 8)
    return payload, dec, index, varint_bytes, bitmask_bytes


def test_topk_picks_varint_gaps_when_smaller() -> None:
    x = torch.zeros(300_000)
    spots = [5, 1_000, 150_000, 299_999]  # gaps up to 149 000 -> 3-byte varints
    x[spots] = torch.tensor([1.0, -2.0, 3.0, -4.0])
    x += 1e-6 * torch.rand(300_000, generator=torch.Generator().manual_seed(0))
    payload, dec, index, varint_bytes, bitmask_bytes = _topk_payload_parts(x, 4 / 300_000)
    assert index == spots and varint_bytes < bitmask_bytes
    assert payload[TAGS + 4] == GAPS
    assert len(payload) == TAGS + TOPK_HEAD + varint_bytes + 4 * 4
    assert torch.equal(dec.values[spots], x[spots])


def test_topk_picks_bitmask_when_smaller() -> None:
    x = torch.randn(4_000, generator=torch.Generator().manual_seed(1))
    payload, dec, index, varint_bytes, bitmask_bytes = _topk_payload_parts(x, 0.5)
    assert len(index) == 2_000 and bitmask_bytes < varint_bytes
    assert payload[TAGS + 4] == BITMASK
    assert len(payload) == TAGS + TOPK_HEAD + bitmask_bytes + 4 * 2_000
    assert torch.equal(dec.values[index], x[index])


def test_varints_match_a_naive_encoder() -> None:
    from fedloom.codecs._bits import decode_uvarints, encode_uvarints

    values = np.array([0, 1, 127, 128, 300, 16_383, 16_384, 2**32 - 1, 2**40 + 5], dtype=np.uint64)
    blob = encode_uvarints(values)
    assert blob == b"".join(naive_uvarint(int(v)) for v in values)
    decoded, used = decode_uvarints(memoryview(blob + b"\x05\x06"), values.size)
    assert used == len(blob) and decoded.tolist() == values.tolist()


def test_randk_is_unbiased_and_costs_no_index_bytes() -> None:
    layout = make_layout(12, 8)
    x = torch.linspace(-2.0, 2.0, 20) + 0.05
    codec, draws = parse_codec("randk:0.25"), 4000  # k = 5 of 20, scale 4
    payload = codec.encode(x, ctx_for(layout))
    assert len(payload) == TAGS + 4 * 5
    mean = torch.zeros(20, dtype=torch.float64)
    for r in range(draws):
        dec = codec.decode(codec.encode(x, ctx_for(layout, rnd=r)), ctx_for(layout, rnd=r))
        assert int((dec.values != 0).sum()) == 5
        mean += dec.values.double()
    mean /= draws
    # Per draw the variance is x^2 (20/5 - 1) = 3 x^2; allow 6 std of the mean. Unscaled: mean = x / 4.
    tol = 6 * x.double().abs() * math.sqrt(3 / draws)
    assert bool(((mean - x.double()).abs() <= tol).all())


def test_randk_indices_change_with_round_and_client() -> None:
    layout, x = make_layout(1000), randn(1000, seed=5)
    codec = parse_codec("randk:0.05")

    def support(client: int, rnd: int) -> set[int]:
        ctx = ctx_for(layout, client=client, rnd=rnd)
        return set(torch.nonzero(codec.decode(codec.encode(x, ctx), ctx).values).flatten().tolist())

    assert support(0, 0) == support(0, 0)
    assert support(0, 0) != support(0, 1)
    assert support(0, 0) != support(1, 0)


def test_mask_fixed_per_client_differs_between_clients_and_keeps_prop() -> None:
    layout = make_layout(60_000, 40_000)
    codec = parse_codec("mask:0.3")

    def decode(client: int, rnd: int, x: torch.Tensor) -> torch.Tensor:
        ctx = ctx_for(layout, client=client, rnd=rnd)
        payload = codec.encode(x, ctx)
        dec = codec.decode(payload, ctx)
        assert dec.present is None
        assert len(payload) == TAGS + 4 * int((dec.values != 0).sum())  # only kept values travel
        return dec.values

    x = torch.rand(100_000, generator=torch.Generator().manual_seed(9)) + 0.5  # no zeros, so nonzero == kept
    a0, a5 = decode(0, 0, x), decode(0, 5, 2 * x)
    assert torch.equal(a0 != 0, a5 != 0)  # same client, other round: same mask
    assert not torch.equal(a0 != 0, decode(1, 0, x) != 0)
    assert abs(float((a0 != 0).float().mean()) - 0.3) < 0.01
    kept = a0 != 0
    assert torch.equal(a0[kept], x[kept])  # not rescaled (the book)


def test_mask_one_is_lossless() -> None:
    x = randn(500, seed=6)
    payload, dec = roundtrip("mask:1.0", x, ctx_for(make_layout(500)))
    assert torch.equal(dec.values, x) and len(payload) == TAGS + 4 * 500
    assert not parse_codec("mask:1.0").lossy and parse_codec("mask:0.9").lossy


def test_layers_sends_tensors_with_largest_abs_mean() -> None:
    layout = make_layout(2, 3, 1, 4)
    # means: t0 0.5, t1 -2.0, t2 1.0, t3 -0.1 -> rate 0.5 keeps int(0.5 * 4) = 2 tensors: t1 and t2
    x = torch.tensor([0.0, 1.0, -1.0, -4.0, -1.0, 1.0, 0.2, -0.3, 0.1, -0.2])
    payload, dec = roundtrip("layers:0.5", x, ctx_for(layout))
    sent = torch.tensor([False] * 2 + [True] * 4 + [False] * 4)
    assert torch.equal(dec.present, sent)
    assert torch.equal(dec.values, torch.where(sent, x, torch.zeros(10)))
    assert len(payload) == TAGS + 1 + 4 * 4  # 1-byte tensor bitmask, 4 fp32 values


def test_layers_rounds_down_keeps_one_and_breaks_ties_by_order() -> None:
    layout = make_layout(2, 2, 2)
    x = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.5, 0.5])  # |means| 1, 1, 0.5: t0 and t1 tie
    _, dec = roundtrip("layers:0.1", x, ctx_for(layout))  # int(0.3) = 0 -> at least 1
    assert dec.present.tolist() == [True, True, False, False, False, False]
    _, dec = roundtrip("layers:0.99", x, ctx_for(layout))  # int(2.97) = 2, as the book's int()
    assert dec.present.tolist() == [True, True, True, True, False, False]


# ---------------------------------------------------------------- chains


def test_chain_topk_then_q8_quantizes_only_kept_values() -> None:
    layout = make_layout(1000, 1000)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, generator=g) * 0.1
    x[:100] = 5 + torch.rand(100, generator=g)  # tensor 0's kept values lie in [5, 6]
    payload, dec = roundtrip("topk:0.05+q8", x, ctx_for(layout))
    _, plain = roundtrip("topk:0.05", x, ctx_for(layout))
    kept = plain.values != 0
    assert int(kept.sum()) == 100 and torch.equal(dec.values[~kept], torch.zeros(1900))
    # The range is the kept values' [min, max], not [0, max]: error <= (6 - 5) / 255.
    lo, hi = float(x[:100].min()), float(x[:100].max())
    assert float((dec.values[:100] - x[:100]).abs().max()) <= (hi - lo) / 255 * (1 + 1e-5)
    bitmask = math.ceil(2000 / 8)  # 100 contiguous indices: 100 one-byte gaps < 250-byte bitmask
    assert payload[TAGS + 4] == GAPS
    assert len(payload) == TAGS + TOPK_HEAD + 100 + 8 * 1 + 100  # one non-empty tensor, 1 byte per code
    assert len(payload) < TAGS + TOPK_HEAD + bitmask + 4 * 100


@pytest.mark.parametrize("spec", ["layers:0.5+q4", "mask:0.5+sign", "randk:0.1+fp16", "topk:0.1+none"])
def test_chain_keeps_the_sparsifier_support(spec: str) -> None:
    layout = make_layout(300, 200, 500)
    x = torch.rand(1000, generator=torch.Generator().manual_seed(8)) + 0.5  # positive: nonzero marks the support
    ctx = ctx_for(layout, client=2, rnd=1)
    _, chained = roundtrip(spec, x, ctx)
    _, alone = roundtrip(spec.split("+")[0], x, ctx)
    assert torch.equal(chained.values != 0, alone.values != 0)
    assert (chained.present is None) == (alone.present is None)


def test_q_bytes_skip_tensors_a_sparsifier_emptied() -> None:
    layout = make_layout(100, 100, 100)
    x = torch.zeros(300)
    x[150:160] = torch.arange(1, 11, dtype=torch.float32)  # only tensor 1 holds kept values
    payload, _ = roundtrip("topk:0.01+q4", x, ctx_for(layout))  # k = 3
    # kept: 157, 158, 159 -> gaps 157 (2 varint bytes), 0, 0
    assert len(payload) == TAGS + TOPK_HEAD + 4 + 8 * 1 + math.ceil(3 * 4 / 8)


# ---------------------------------------------------------------- specs, safety, speed


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("topk:2", "(0, 1]"),
        ("topk:0", "(0, 1]"),
        ("topk", "needs a number"),
        ("topk:abc", "needs a number"),
        ("q9", "1..8"),
        ("q0", "1..8"),
        ("foo", "allowed"),
        ("", "empty"),
        ("mask:-1", "(0, 1]"),
        ("layers:nan", "(0, 1]"),
        ("topk:0.1+topk:0.1", "at most one sparsifier"),
        ("q8+topk:0.1", "must come first"),
        ("q8+fp16", "at most one value codec"),
        ("fp16:3", "takes no argument"),
        ("topk:0.1+", "allowed"),
    ],
)
def test_bad_specs_raise_config_error(spec: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_codec(spec)
    assert hint in str(err.value) and repr(spec.strip()) in str(err.value)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_encode_never_mutates_and_is_deterministic(spec: str) -> None:
    layout = make_layout(64, 36)
    x = randn(100, seed=7)
    snapshot = x.clone()
    codec, ctx = parse_codec(spec), ctx_for(layout, client=3, rnd=2)
    assert codec.encode(x, ctx) == codec.encode(x, ctx)
    if not spec.startswith(("randk", "mask")):  # error feedback refuses these (test_codec_error_feedback.py)
        ErrorFeedback(parse_codec(spec)).encode(x, ctx)
    assert torch.equal(x, snapshot)
    assert codec.name == spec


def test_decode_rejects_foreign_or_damaged_payloads() -> None:
    layout, x = make_layout(100), randn(100, seed=8)
    ctx = ctx_for(layout)
    payload = parse_codec("q8").encode(x, ctx)
    with pytest.raises(ValueError, match="tags"):
        parse_codec("q4").decode(payload, ctx)
    with pytest.raises(ValueError, match="truncated"):
        parse_codec("q8").decode(payload[:-1], ctx)
    with pytest.raises(ValueError, match="used"):
        parse_codec("q8").decode(payload + b"\0", ctx)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_100k_values_encode_and_decode_in_milliseconds(spec: str) -> None:
    import time

    layout = make_layout(50_000, 30_000, 20_000)
    x, ctx, codec = randn(100_000, seed=9), ctx_for(layout), parse_codec(spec)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        codec.decode(codec.encode(x, ctx), ctx)
        best = min(best, time.perf_counter() - start)
    assert best < 0.05, f"{spec}: {best * 1e3:.1f} ms"


def test_sign_sends_exact_zeros_as_zero_and_keeps_the_l1_norm() -> None:
    layout = make_layout(6, 4, 3)
    x = torch.tensor([0.0, 2.0, -1.0, 0.0, 0.0, 3.0, 1.0, -1.0, 2.0, -4.0, 0.0, 0.0, 0.0])
    payload, dec = roundtrip("sign", x, ctx_for(layout))
    # t0 has zeros: scale ||x||_1 / nnz = 6/3; t1 has none: mean |x| = 2, as before; t2 is all zero.
    assert dec.values.tolist() == [0.0, 2.0, -2.0, 0.0, 0.0, 2.0, 2.0, -2.0, 2.0, -2.0, 0.0, 0.0, 0.0]
    # scales, one sign bit per value, then non-zero bits only for the tensor that mixes zeros and non-zeros
    assert len(payload) == TAGS + 4 * 3 + math.ceil(13 / 8) + math.ceil(6 / 8)
    _, dec = roundtrip("topk:0.5+sign", x, ctx_for(layout))  # the zeros a sparsifier keeps stay zero too
    assert bool((dec.values[x == 0] == 0).all())


def test_sign_keeps_always_zero_coordinates_at_zero_over_rounds() -> None:
    """20–33 % of an MLP update is exactly zero; a one-bit sign would move those weights every round."""
    layout = make_layout(50, 50)
    codec, g = parse_codec("sign"), torch.Generator().manual_seed(1)
    dead = torch.arange(100) % 4 == 0
    total = torch.zeros(100)
    for rnd in range(30):
        x = torch.randn(100, generator=g).masked_fill(dead, 0.0)
        ctx = ctx_for(layout, rnd=rnd)
        total += codec.decode(codec.encode(x, ctx), ctx).values
    assert bool((total[dead] == 0).all()) and bool((total[~dead] != 0).all())


_SMALL_RUN = {"type": "iris", "model_name": "fnn", "no_models": 4, "k": 2, "global_epochs": 1, "local_epochs": 1,
              "batch_size": 10, "lr": 0.1, "lambda": 0.5, "seed": 0}  # fmt: skip


@pytest.mark.parametrize("down", ["randk:0.5", "randk:0.5+q8", "q2"])
def test_simulated_clients_train_from_the_broadcast_the_server_encoded(down) -> None:
    """A seeded down codec's draws (randk's index set) are the broadcast's: the simulated cohort decodes the
    payload with the server's context, so it trains from ``channel.down``'s vector (it once did not)."""
    from fedloom.config import build_config
    from fedloom.simulation import Federation

    cfg = build_config({**_SMALL_RUN, "compression": {"down": down}})
    fed = Federation.build(cfg)
    seen = []
    train = fed.engine.train
    fed.engine.train = lambda model, vec, *a, **k: seen.append(vec.clone()) or train(model, vec, *a, **k)
    expected = fed.channel.down(fed.server.global_vec, 1)[1]
    fed.run_round(1)
    assert seen and all(torch.equal(v, expected) for v in seen)
    assert not torch.equal(expected, fed.server.global_vec) or down == "q2"  # lossy: the test can tell


def test_down_codec_does_not_reuse_client_0s_upload_stream() -> None:
    """The broadcast has client_id 0; its draws must still differ from client 0's upload draws."""
    from fedloom.channel import Channel

    layout, x = make_layout(300), randn(300, seed=8)
    channel = Channel("q2", "q2", False, layout, seed=7)
    down, _ = channel.down(x, 3)
    (up,) = channel.up(x[None], [0], 3)
    assert down != up  # same vector, same codec, same round: only the stream tells them apart
    up_ctx, down_ctx = ctx_for(layout, client=0, rnd=3), CodecContext(layout, 0, 3, 7, down=True)
    assert up == parse_codec("q2").encode(x, up_ctx)  # uploads keep their streams
    assert down == parse_codec("q2").encode(x, down_ctx)
