"""Shortcuts taken for speed give exactly what the plain path gives: the cohort decoded and checked at once
(a bad payload still fails only its sender), evaluation without copying into the model, and the vectorized
engine's kept workspace and batch layouts (nothing leaks from one call into the next)."""

from __future__ import annotations

import pytest
import torch
from cohorts import Relay
from torch import nn

import fedloom.engine_plan as engine_plan
import fedloom.engine_vectorized as ev
from fedloom.codecs import CodecContext, parse_codec
from fedloom.config import build_config
from fedloom.data import load_data
from fedloom.engine_kernels import sgd_
from fedloom.engine_vectorized import VectorizedEngine
from fedloom.models import build_model
from fedloom.params import flatten
from fedloom.round import Answer, Replies, check_update, check_updates
from fedloom.server import _dense_layers
from fedloom.simulation import Federation
from fedloom.training import LocalSpec

BASE = {"type": "iris", "model_name": "fnn", "no_models": 5, "k": 5, "global_epochs": 2, "lr": 0.1, "seed": 3}


class Replace(Relay):
    """A cohort whose real clients answer, then ``change[c](answer)`` replaces client c's answer (None: drop)."""

    def __init__(self, inner, change: dict):
        super().__init__(inner)
        self.change = change

    def train(self, rnd, clients, down, task):
        rep = self.inner.train(rnd, clients, down, task)
        answers = [self.change.get(a.client, lambda x: x)(a) for a in rep.answers]
        return Replies([a for a in answers if a is not None], rep.failed, rep.sent)


def _run(change: dict, cfg=BASE):
    fed = Federation.build(build_config(cfg))
    fed.round.cohort = Replace(fed.cohort, change)
    return fed, fed.run_round(1)


def _with(payload: bytes):
    return lambda a: Answer(a.client, payload, a.num_samples, a.train_loss)


def test_bad_payloads_of_every_kind_in_one_cohort_fail_only_their_senders():
    fed = Federation.build(build_config(BASE))
    ctx = CodecContext(fed.layout, 0, 1, 0)
    nan = parse_codec("none").encode(torch.full((fed.num_params,), float("nan")), ctx)
    bad = {
        0: _with(b"\x00\x01garbage"),  # does not decode
        1: _with(nan[:-4]),  # one value short
        2: _with(nan),  # well formed, non-finite
    }
    fed, row = _run(bad)
    assert sorted(row["clients"]) == [3, 4] and row["applied"]
    assert "decode" in row["failed"]["0"] and "decode" in row["failed"]["1"]
    assert "non-finite" in row["failed"]["2"]
    # the survivors aggregate exactly as they would had the others never answered
    alone, row_alone = _run({c: (lambda a: None) for c in (0, 1, 2)})
    assert row_alone["clients"] == row["clients"]
    assert torch.equal(fed.server.global_vec, alone.server.global_vec)


def test_batched_norm_check_equals_the_one_update_check():
    rows = torch.tensor([[3.0, 4.0, 0.0], [1e30, 1e30, 1.0], [float("nan"), 0.0, 0.0], [float("inf"), 1, 1]])
    for max_norm in (5.0, 4.99, float("inf")):
        assert check_updates(rows, max_norm) == [check_update(r, max_norm) for r in rows]


@pytest.mark.parametrize(("model", "dataset", "hidden"), [("fnn", "iris", None), ("mlp", "digits", [16, 8]),
                                                          ("logreg", "wine", None)])  # fmt: skip
def test_evaluation_without_loading_gives_the_models_own_numbers(model, dataset, hidden):
    cfg = build_config({**BASE, "type": dataset, "model_name": model, **({"hidden": hidden} if hidden else {})})
    fed = Federation.build(cfg)
    server = fed.server
    assert server._dense is not None
    vec = server.global_vec + 0.3 * torch.randn(server.layout.size, generator=torch.Generator().manual_seed(0))
    fast = server.evaluate(vec)
    assert server.evaluate(vec.double()) == fast  # another dtype: copied into the float32 model, as before
    server._dense = None  # the plain path: copy into the model, call it
    assert server.evaluate(vec) == fast
    assert torch.equal(flatten(fed.model), vec)  # (only the plain path wrote into the model)


def test_models_outside_a_plain_linear_relu_stack_take_the_plain_evaluation():
    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    assert _dense_layers(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3))) is None
    assert _dense_layers(Custom(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))) is None
    assert ev.linear_stack(Custom(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))) is None  # the engine: vmap path
    assert _dense_layers(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 3))) is None
    assert _dense_layers(nn.Linear(4, 3, bias=False)) is None
    assert _dense_layers(build_model("fnn", 4, 3)) == [(0, 3, 4), (15, 3, 3)]


@pytest.mark.parametrize("model", ["fnn", "mlp_bn"])
def test_a_kept_workspace_gives_what_a_fresh_engine_gives(model):
    """Train cohorts of varying sizes through one engine (workspaces kept and replaced, layouts cached) and
    compare each with a fresh engine whose caches were emptied first."""
    cfg = build_config({**BASE, "type": "digits", "model_name": model, "no_models": 8, "hidden": [8]})
    data = load_data(cfg)
    net = build_model(model, data.num_features, data.num_classes, [8], None, 0)
    g, spec = flatten(net), LocalSpec(2, 7, 0.1, 0.5)
    engine = VectorizedEngine()
    for rnd, cohort in enumerate([[0, 1, 2], [3, 4, 5], [7, 0], [1, 2, 3], [6, 5, 4, 3, 2, 1]]):
        kept = engine.train(net, g, data, cohort, spec, 0, rnd)
        ev._WORKSPACES.clear()
        engine_plan.LAYOUTS.clear()
        fresh = VectorizedEngine().train(net, g, data, cohort, spec, 0, rnd)
        assert torch.equal(kept.diffs, fresh.diffs) and torch.equal(kept.train_loss, fresh.train_loss)
        assert torch.equal(kept.steps, fresh.steps) and torch.equal(kept.num_samples, fresh.num_samples)
        g = g + kept.diffs.mean(0)  # the next round starts elsewhere
    assert len(engine_plan.LAYOUTS) <= engine_plan.KEEP_LAYOUTS


def test_results_do_not_alias_the_kept_workspace():
    cfg = build_config({**BASE, "no_models": 4, "k": 4})
    data = load_data(cfg)
    net = build_model("fnn", data.num_features, data.num_classes, None, None, 0)
    engine, spec = VectorizedEngine(), LocalSpec(1, 5, 0.1, 0.0)
    first = engine.train(net, flatten(net), data, [0, 1], spec, 0, 1)
    saved = first.diffs.clone()
    engine.train(net, flatten(net) + 1, data, [2, 3], spec, 0, 2)  # same shape: the same workspace
    assert torch.equal(first.diffs, saved)


@pytest.mark.parametrize("contiguous", [True, False])
def test_sgd_step_is_torch_sgds_on_contiguous_and_strided_tensors(contiguous):
    """The fused kernel silently mis-steps a strided tensor (torch 2.13): sgd_ must then take the foreach path."""
    spec = LocalSpec(1, 4, 0.1, 0.5, mu=0.01)
    store = torch.randn(3, 9)
    p = store[:, :7] if not contiguous else store[:, :7].contiguous()
    g, buf = torch.randn(3, 7), torch.randn(3, 7)
    ref_p, ref_buf = p.clone(), buf.clone()
    ref_buf.mul_(0.5).add_(g + 0.01 * ref_p)
    ref_p.sub_(0.1 * ref_buf)
    sgd_([p], [g.clone()], [buf], spec)
    assert p.is_contiguous() == contiguous
    assert torch.allclose(p, ref_p, atol=1e-6) and torch.allclose(buf, ref_buf, atol=1e-6)


@pytest.mark.parametrize(("model", "hidden"), [("fnn", None), ("mlp", [16, 8]), ("mlp_bn", [32]), ("logreg", None)])
def test_activation_count_without_a_probe_equals_the_probes(model, hidden, monkeypatch):
    net = build_model(model, 64, 10, hidden, None, 0)
    counted = ev._activations_per_row(net, 64)
    ev._ACTIVATIONS.pop(net)
    monkeypatch.setattr(ev, "fast_stack", lambda m: None)  # forces the probe forward pass
    assert ev._activations_per_row(net, 64) == counted
