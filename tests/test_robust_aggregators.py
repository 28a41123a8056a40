"""Robust aggregators: hand-computed vectors, the float precision trap, n/f conditions and config parsing."""

import pytest
import torch

from fedloom.aggregator_spec import default_f
from fedloom.aggregators import (
    AggregationError,
    Bulyan,
    GeometricMedian,
    Krum,
    MultiKrum,
    NormClip,
    TrimmedMean,
    make_aggregator,
)
from fedloom.aggregators.robust import pairwise_sq_dists
from fedloom.config import build_config
from fedloom.errors import ConfigError, FedloomError

ONES5 = torch.ones(5, dtype=torch.int64)


def col(*v):
    return torch.tensor([[float(x)] for x in v])  # [clients, 1]


def test_trimmed_mean_drops_b_each_side_per_coordinate():
    diffs = torch.tensor([[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]])
    g = torch.tensor([10.0, 20.0])
    # beta 0.2, n 5: b = 1 per side; col0 mean(2,3,4) = 3, col1 mean(0,1,2) = 1
    assert TrimmedMean(0.2).aggregate(g, diffs, ONES5).tolist() == [13.0, 21.0]
    # beta 0.4: b = 2; the middle value only
    assert TrimmedMean(0.4).aggregate(torch.zeros(2), diffs, ONES5).tolist() == [3.0, 1.0]
    # sample counts are ignored: an attacker declaring 10^6 rows gains nothing
    big = torch.tensor([1, 1, 1, 1, 10**6])
    assert TrimmedMean(0.2).aggregate(g, diffs, big).tolist() == [13.0, 21.0]


def test_trimmed_mean_partial_path_agrees_with_dense_and_trims_over_senders():
    diffs = torch.tensor([[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]], dtype=torch.float64)
    tm = TrimmedMean(0.2)
    everyone = torch.ones(5, 2, dtype=torch.bool)
    assert torch.equal(tm.combine(diffs, everyone), tm.combine(diffs, None))
    present = everyone.clone()
    present[4, 0] = False  # col0 senders 1,2,3,4: b = ⌊0.8⌋ = 0, mean 2.5
    present[:, 1] = False  # nobody sent col1: no change
    out = tm.aggregate(torch.zeros(2), diffs.float(), ONES5, present)
    assert out.tolist() == [2.5, 0.0]


def test_krum_scores_and_choice_by_hand():
    diffs = col(0, 1, 2, 3, 100)
    # f 1, n 5: n - f - 2 = 2 nearest; scores 0:1+4, 1:1+1, 2:1+1, 3:1+4, 100:97²+98²
    assert Krum(f=1).select(diffs.double()).tolist() == [1]  # tie 1/2 goes to the lower index
    assert Krum(f=1).aggregate(torch.zeros(1), diffs, ONES5).tolist() == [1.0]
    assert MultiKrum(f=1, m=3).aggregate(torch.zeros(1), diffs, ONES5).tolist() == [1.0]  # mean(1, 2, 0)
    assert MultiKrum(f=1).aggregate(torch.zeros(1), diffs, ONES5).tolist() == [1.5]  # m = n - f: 1, 2, 0, 3


def test_multikrum_ignores_sample_counts():
    diffs = col(0, 1, 2, 3, 100)
    out = MultiKrum(f=1, m=2).aggregate(torch.zeros(1), diffs, torch.tensor([1, 1, 1, 10**6, 1]))
    assert out.tolist() == [1.5]  # plain mean of clients 1 and 2


def test_bulyan_recursive_krum_then_trimmed_around_median_by_hand():
    diffs = col(0, 1, 2, 3, 4, 5, 1000)  # n 7, f 1: θ = 5, β = 3
    # rounds (neighbours |R| - 3): picks 2 (score 10, tie with 3), 3 (9), 1 (10, tie with 4), 4 (1), 0 (all 0)
    assert Bulyan(f=1).select(diffs.double(), 1) == [2, 3, 1, 4, 0]
    # selection {0,1,2,3,4}: median 2, the 3 closest are 2, 1, 3 -> 2
    assert Bulyan(f=1).aggregate(torch.zeros(1), diffs, torch.ones(7)).tolist() == [2.0]
    # β closest to the median, per coordinate: with f 0 (θ = β = n) it is the plain mean
    assert Bulyan(f=0).aggregate(torch.zeros(1), col(0, 1, 8), torch.ones(3)).tolist() == [3.0]


def test_bulyan_takes_the_beta_closest_not_a_symmetric_trim():
    diffs = col(0, 1, 2, 3, 4, 9, 1000).double()  # n 7, f 1
    b = Bulyan(f=1)
    sel = b.select(diffs, 1)
    assert 6 not in sel
    vals = sorted(float(diffs[i, 0]) for i in sel)
    med = (vals[2] + vals[2]) / 2
    closest = sorted(vals, key=lambda v: abs(v - med))[:3]
    assert b.combine(diffs, None).tolist() == [sum(closest) / 3]


def test_geometric_median_by_hand():
    gm = GeometricMedian(nu=1e-9, tol=1e-12, max_iter=1000)
    out = gm.aggregate(torch.zeros(1), col(0, 1, 10), torch.ones(3))
    assert abs(float(out[0]) - 1.0) < 1e-4  # 1-D: the median
    assert gm.iterations < 1000  # stopped on the tolerance
    # four corners of a square around (1, 1) plus a far outlier: the median stays inside the square
    pts = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1e4, 1e4]])
    out = GeometricMedian().aggregate(torch.zeros(2), pts, ONES5)
    assert (out > 0).all() and (out < 2).all()
    # sample counts are ignored
    same = GeometricMedian().aggregate(torch.zeros(2), pts, torch.tensor([1, 1, 1, 1, 10**6]))
    assert torch.equal(out, same)


def test_norm_clip_by_hand():
    diffs = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    # M 2: [3,4] (norm 5) -> [1.2, 1.6]; [0,1] untouched; mean [0.6, 1.3]
    out = NormClip(2.0).aggregate(torch.zeros(2), diffs, torch.tensor([1, 100]))
    assert torch.allclose(out, torch.tensor([0.6, 1.3]))
    # default M: median norm of (5, 1, 2) = 2
    diffs3 = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]])
    out = NormClip().aggregate(torch.zeros(2), diffs3, torch.ones(3))
    assert torch.allclose(out, torch.tensor([0.4, 4.6 / 3]))


def test_norm_clip_partial_agrees_with_dense_and_averages_over_senders():
    diffs = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    nc = NormClip(2.0)
    assert torch.allclose(nc.combine(diffs, torch.ones(2, 2, dtype=torch.bool)), nc.combine(diffs, None))
    present = torch.tensor([[True, True], [False, True]])
    diffs[1, 0] = 0.0  # an absent value is decoded as 0
    assert torch.allclose(nc.combine(diffs, present), torch.tensor([1.2, 1.3], dtype=torch.float64))


def test_whole_update_rules_refuse_partial_updates():
    present = torch.tensor([[True, False], [True, True], [True, True], [True, True], [True, True]])
    for agg in (Krum(1), MultiKrum(1), Bulyan(0), GeometricMedian()):
        with pytest.raises(AggregationError, match="needs whole updates"):
            agg.aggregate(torch.zeros(2), torch.ones(5, 2), ONES5, present)
    # an all-true mask is the dense path
    assert Krum(1).aggregate(torch.zeros(1), col(0, 1, 2, 3, 100), ONES5, torch.ones(5, 1, dtype=torch.bool)) == 1


def test_krum_picks_an_honest_client_at_a_million_parameters():
    """Honest updates differ by ~1e-4 per coordinate on top of weights of size ~1; on float32 weights
    ‖x‖² + ‖y‖² − 2x·y has an error (~1e6 · 1e-7) far above the distances (~0.02) that decide."""
    gen = torch.Generator().manual_seed(0)
    p, honest, attackers = 1_000_000, 7, 2
    base = 1e-2 * torch.randn(p, generator=gen)
    ups = [base + 1e-4 * torch.randn(p, generator=gen) for _ in range(honest)]
    ups += [base + 1.5e-4 * torch.randn(p, generator=gen) for _ in range(attackers)]  # a bit noisier: ~0.03
    order = torch.randperm(honest + attackers, generator=gen)
    diffs = torch.stack(ups)[order]  # [9, 1e6] float32
    bad = {int(i) for i in (order >= honest).nonzero().flatten()}
    chosen = int(Krum(f=attackers).select(diffs.double())[0])
    assert chosen not in bad
    d = pairwise_sq_dists(diffs)
    ref = float(((diffs[0].double() - diffs[1].double()) ** 2).sum())
    assert abs(float(d[0, 1]) - ref) <= 1e-9 * ref
    weights = torch.randn(p, generator=gen)  # the trap, for the record: Gram on float32 weights is off
    x, y = weights + diffs[0], weights + diffs[1]
    naive = float(x @ x + y @ y - 2 * (x @ y))
    assert abs(naive - ref) > 0.1 * ref


def test_n_f_conditions_refused_with_a_clear_line():
    with pytest.raises(AggregationError, match=r"krum needs n ≥ 2f \+ 3 updates .* got n = 4, f = 1"):
        Krum(f=1).aggregate(torch.zeros(1), col(0, 1, 2, 3), torch.ones(4))
    with pytest.raises(AggregationError, match=r"bulyan needs n ≥ 4f \+ 3 updates .* got n = 6, f = 1"):
        Bulyan(f=1).aggregate(torch.zeros(1), col(0, 1, 2, 3, 4, 5), torch.ones(6))
    with pytest.raises(ConfigError, match=r"aggregator: krum needs n ≥ 2f \+ 3 .* n = 6, f = 2 \(n is k = 6\)"):
        build_config({"no_models": 10, "k": 6, "aggregator": {"name": "krum", "f": 2}})
    with pytest.raises(ConfigError, match=r"aggregator: bulyan needs n ≥ 4f \+ 3"):
        build_config({"no_models": 10, "k": 10, "aggregator": {"name": "bulyan", "f": 2}})
    with pytest.raises(ConfigError, match=r"multikrum averages m ≤ n - f"):
        build_config({"no_models": 10, "k": 5, "aggregator": {"name": "multikrum", "m": 5}})
    assert isinstance(AggregationError("x"), FedloomError)


def test_default_f_is_a_fifth_of_the_cohort_lowered_to_what_the_rule_accepts():
    assert default_f("krum", 20) == 4 and default_f("bulyan", 20) == 4
    assert default_f("krum", 5) == 1 and default_f("bulyan", 5) == 0 and default_f("bulyan", 7) == 1
    assert default_f("krum", 12) == 2 and default_f("bulyan", 12) == 2
    assert Krum().aggregate(torch.zeros(1), col(0, 1, 2, 3, 100), ONES5).tolist() == [1.0]  # f 1 by default


def test_config_forms_and_refusals():
    cfg = build_config({"aggregator": "krum"})
    assert cfg.aggregator.name == "krum" and cfg.aggregator.f is None
    assert isinstance(make_aggregator(cfg.lambda_, cfg.aggregator), Krum)
    cfg = build_config({"aggregator": {"name": "trimmed_mean", "beta": 0.1}})
    assert make_aggregator(None, cfg.aggregator).beta == 0.1
    assert build_config(cfg.to_dict()).aggregator == cfg.aggregator  # the resolved config loads again
    for name, cls in (
        ("multikrum", MultiKrum),
        ("bulyan", Bulyan),
        ("geomed", GeometricMedian),
        ("norm_clip", NormClip),
    ):
        assert isinstance(
            make_aggregator(None, build_config({"no_models": 10, "k": 10, "aggregator": name}).aggregator), cls
        )
    cases = [
        ({"aggregator": {"name": "trimmed_mean", "bta": 0.1}}, "unknown key 'aggregator.bta' (did you mean 'beta'?)"),
        ({"aggregator": "trimed_mean"}, "unknown aggregator 'trimed_mean' (did you mean 'trimmed_mean'?)"),
        ({"aggregator": {"name": "krum", "beta": 0.1}}, "krum takes f; beta is for trimmed_mean"),
        ({"aggregator": {"name": "trimmed_mean", "beta": 0.5}}, "aggregator.beta"),
        ({"secure": {"method": "paillier"}, "aggregator": "krum"}, "'krum' is not linear: secure aggregation"),
        ({"rate": 0.5, "aggregator": "krum"}, "krum needs whole updates"),
    ]
    for raw, msg in cases:
        with pytest.raises(ConfigError) as e:
            build_config(raw)
        assert msg in str(e.value), str(e.value)
    build_config({"rate": 0.5, "aggregator": "trimmed_mean"})  # partial updates: handled


def test_the_section_compares_and_prints_as_its_rule_name():
    cfg = build_config({"aggregator": {"name": "krum", "f": 1}})
    assert cfg.aggregator == "krum" and cfg.aggregator != "mean" and f"{cfg.aggregator}" == "krum"
    assert build_config({}).aggregator == "mean" and not build_config({}).aggregator != "mean"
    assert cfg.aggregator != build_config({"aggregator": "krum"}).aggregator  # sections compare field by field
