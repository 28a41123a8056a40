"""The algorithm section through the one round (simulation): stragglers, SCAFFOLD's control variates, FedNova's
step counts, both engines, checkpoints. The algorithms' formulas are tested against hand-computed cases in
test_algorithms.py and test_local_terms.py; the deployed runtime in test_equivalence.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cohorts import Relay

from fedloom.algorithm_spec import ALGORITHMS
from fedloom.config import build_config
from fedloom.errors import ConfigError
from fedloom.local_algorithm import straggler_plan
from fedloom.round import Replies
from fedloom.simulation import Federation, run_federation

BASE = {
    "type": "iris", "model_name": "fnn", "hidden": [8], "no_models": 6, "k": 4, "global_epochs": 3,
    "local_epochs": 4, "batch_size": 10, "lr": 0.1, "momentum": 0.5, "seed": 5,
}  # fmt: skip


def _cfg(**more):
    return build_config({**BASE, **more})


class Spy(Relay):
    """A cohort that records the answers (and may change client 0's) before the round sees them."""

    def __init__(self, inner, change=None):
        super().__init__(inner)
        self.change, self.seen = change, []

    def train(self, rnd, clients, down, task):
        rep = self.inner.train(rnd, clients, down, task)
        self.seen.append((task, rep.answers))
        answers = [self.change(a) if self.change and a.client == rep.answers[0].client else a for a in rep.answers]
        return Replies(answers, rep.failed, rep.sent)


def _spied(cfg, change=None):
    fed = Federation.build(cfg)
    spy = Spy(fed.cohort, change)
    fed.round.cohort = spy
    return fed, spy


def test_the_same_clients_straggle_whatever_the_algorithm():
    for rnd in range(1, 6):
        cohort = list(range(10))
        plans = {}
        for name in ("fedavg", "fedprox", "scaffold", "fednova"):
            cfg = build_config({**BASE, "no_models": 10, "k": 10, "algorithm": name, "runtime": {"stragglers": 0.5}})
            epochs, dropped = straggler_plan(cfg, rnd, cohort)
            plans[name] = sorted(epochs) or dropped
            assert len(plans[name]) == 5
            assert all(1 <= e <= cfg.local_epochs - 1 for e in epochs.values())
        assert len({tuple(p) for p in plans.values()}) == 1, plans
        # fedavg drops its stragglers, fedprox and fednova keep their partial work (auto)
        assert straggler_plan(build_config({**BASE, "runtime": {"stragglers": 0.5}}), rnd, cohort)[0] == {}


def test_dropped_stragglers_fail_and_still_count_the_model_they_received():
    fed = Federation.build(_cfg(runtime={"stragglers": 0.5}))
    row = fed.run_round(1)
    stragglers = [c for c, r in row["failed"].items() if r.startswith("straggler")]
    assert len(stragglers) == 2 and len(row["clients"]) == 2
    plain = Federation.build(_cfg()).run_round(1)
    assert row["bytes_down"] == plain["bytes_down"]  # four clients were sent the model either way
    assert row["bytes_up"] == plain["bytes_up"] // 2


def test_partial_work_trains_fewer_epochs_and_reports_its_steps():
    fed, spy = _spied(_cfg(algorithm={"name": "fedprox", "mu": 0.1}, runtime={"stragglers": 0.5}))
    row = fed.run_round(1)
    assert len(row["clients"]) == 4 and not row["failed"]
    task, answers = spy.seen[0]
    assert len(task.epochs) == 2
    per_epoch = {a.client: math.ceil(a.num_samples / BASE["batch_size"]) for a in answers}
    for a in answers:
        assert a.steps == task.epochs.get(a.client, BASE["local_epochs"]) * per_epoch[a.client]


def test_scaffold_uploads_and_broadcasts_control_variates_and_checks_them():
    fed, spy = _spied(_cfg(algorithm="scaffold"))
    plain = Federation.build(_cfg()).run_round(1)
    row = fed.run_round(1)
    params = fed.num_params
    assert row["bytes_up"] == plain["bytes_up"] + 4 * params * len(row["clients"])
    assert row["bytes_down"] == plain["bytes_down"] + 4 * params * len(row["clients"])
    control = fed.server.aggregator.control(fed.num_params)
    assert control.shape == (params,) and float(control.abs().sum()) > 0
    # c ← c + (1/N) Σ Δc_i over the clients that answered (c started at 0)
    deltas = [np.frombuffer(a.control, "<f4") for a in spy.seen[0][1]]
    assert torch.allclose(control, torch.from_numpy(np.sum(deltas, 0) / BASE["no_models"]), atol=1e-6)
    # the next round broadcasts that c
    fed.run_round(2)
    assert spy.seen[1][0].control == control.numpy().astype("<f4").tobytes()


@pytest.mark.parametrize(
    "bad, reason",
    [
        (lambda a: setattr(a, "control", a.control[:-4]) or a, "bytes, expected"),
        (lambda a: setattr(a, "control", np.full(len(a.control) // 4, np.nan, "<f4").tobytes()) or a, "non-finite"),
        (lambda a: setattr(a, "control", np.full(len(a.control) // 4, 1e6, "<f4").tobytes()) or a, "norm"),
    ],
)
def test_a_bad_control_variate_fails_its_client_only(bad, reason):
    fed, spy = _spied(_cfg(algorithm="scaffold"), bad)
    row = fed.run_round(1)
    (culprit,) = row["failed"]
    assert reason in row["failed"][culprit] and len(row["clients"]) == 3
    assert bool(torch.isfinite(fed.server.aggregator.control(fed.num_params)).all())


@pytest.mark.parametrize("steps", [0, 10**9])
def test_fednova_refuses_a_step_count_outside_what_the_client_could_do(steps):
    fed, _ = _spied(_cfg(algorithm="fednova"), lambda a: setattr(a, "steps", steps) or a)
    row = fed.run_round(1)
    assert any("steps" in r for r in row["failed"].values()) and len(row["clients"]) == 3


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_learns_and_both_engines_agree(name):
    runs = {}
    for engine in ("sequential", "vectorized"):
        cfg = _cfg(algorithm=name, global_epochs=4, runtime={"engine": engine, "stragglers": 0.25})
        runs[engine] = run_federation(Federation.build(cfg))
    seq, vec = runs["sequential"], runs["vectorized"]
    assert torch.allclose(seq.global_vec, vec.global_vec, atol=1e-4), name
    assert [r["clients"] for r in seq.rows] == [r["clients"] for r in vec.rows]
    assert seq.summary["aggregator"] == (name if name not in ("fedavg", "fedprox") else "fedavg")
    assert seq.rows[-1]["loss"] < seq.rows[0]["loss"] * 1.5 and math.isfinite(seq.rows[-1]["loss"])


@pytest.mark.parametrize("name", ["scaffold", "fedadam", "fedyogi", "fedavgm", "fednova"])
def test_a_resumed_run_continues_exactly(name):
    cfg = _cfg(algorithm=name, global_epochs=4)
    whole = run_federation(Federation.build(cfg))
    first = Federation.build(cfg)
    for r in (1, 2):
        first.run_round(r)
    state = first.state_dict(2)
    second = Federation.build(cfg)
    assert second.load_state_dict(state) == 2
    for r in (3, 4):
        second.run_round(r)
    assert torch.equal(second.server.global_vec, whole.global_vec)


def test_fedprox_mu_zero_is_fedavg_and_mu_changes_the_model():
    avg = run_federation(Federation.build(_cfg()))
    prox0 = run_federation(Federation.build(_cfg(algorithm={"name": "fedprox", "mu": 0.0})))
    prox = run_federation(Federation.build(_cfg(algorithm={"name": "fedprox", "mu": 1.0})))
    assert torch.equal(avg.global_vec, prox0.global_vec)
    assert not torch.allclose(avg.global_vec, prox.global_vec, atol=1e-4)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"algorithm": "fedadam", "lambda": 0.1}, "lambda is FedAvg's server step"),
        ({"algorithm": "scaffold", "aggregator": "median"}, "not a mean"),
        ({"algorithm": {"name": "fedprox", "mu": -1}}, "mu"),
        ({"algorithm": {"name": "fedavgm", "beta1": 0.9}}, "beta1 is for"),
        ({"algorithm": "fedprox", "local_epochs": 1, "runtime": {"stragglers": 0.5}}, "local_epochs ≥ 2"),
        ({"runtime": {"stragglers": 1.0}}, "stragglers"),
        ({"runtime": {"straggler_work": "some"}}, "straggler_work"),
    ],
)
def test_bad_algorithm_settings_are_one_clear_line(raw, words):
    with pytest.raises(ConfigError, match=words) as e:
        build_config({**BASE, **raw})
    assert "\n" not in str(e.value)


def test_scaffold_keeps_no_control_variate_for_batchnorm_statistics():
    fed = Federation.build(_cfg(algorithm="scaffold", model_name="mlp_bn", hidden=[8]))
    fed.run_round(1)
    control, trainable = fed.server.aggregator.control(fed.num_params), fed.layout.num_trainable
    assert trainable < fed.num_params and float(control[:trainable].abs().sum()) > 0
    assert not control[trainable:].any()
