"""Simulated attackers (fedloom.attacks): hand-computed updates, doctored data, selection and a short run."""

import dataclasses
import math
from statistics import NormalDist

import pytest
import torch
from torch import nn

from fedloom.attack_spec import AttackConfig
from fedloom.attacks import Attack, choose_attackers, updates
from fedloom.attacks import data as poison
from fedloom.config import build_config
from fedloom.errors import ConfigError
from fedloom.params import flatten
from fedloom.training import CohortResult


def test_model_poisoning_updates_by_hand():
    honest = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert updates.sign_flip(honest, 2.0).tolist() == [-4.0, -6.0]
    assert updates.ipm(honest, 0.5).tolist() == [-1.0, -1.5]
    # ALIE: n 20, f 4 -> s = ⌊11⌋ − 4 = 7, z = Φ⁻¹(13/20)
    assert updates.alie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(0.65)) == pytest.approx(0.385320, abs=1e-6)
    assert updates.alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(6 / 10))  # s = 6 − 2 = 4
    # μ − zσ with σ over n: honest [0,0], [2,4] -> μ [1,2], σ [1,2]; z 1 -> [0, 0]; z −1 -> [2, 4]
    two = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    assert updates.alie(two, 1.0).tolist() == [0.0, 0.0] and updates.alie(two, -1.0).tolist() == [2.0, 4.0]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    noise = updates.gaussian(200_000, 2.5, g1)
    assert torch.equal(noise, updates.gaussian(200_000, 2.5, g2))
    assert abs(float(noise.mean())) < 0.05 and float(noise.std()) == pytest.approx(2.5, rel=0.01)


def test_attackers_fixed_by_seed_or_listed():
    spec = AttackConfig(name="gaussian", fraction=0.2)
    a = choose_attackers(spec, 20, seed=0)
    assert len(a) == 4 == len(set(a)) and a == choose_attackers(spec, 20, seed=0) and a == sorted(a)
    assert any(choose_attackers(spec, 20, seed=s) != a for s in (1, 2, 3))
    assert choose_attackers(AttackConfig(name="gaussian", fraction=0.01), 20, 0).__len__() == 1  # at least one
    assert choose_attackers(AttackConfig(name="ipm", clients=[7, 2]), 20, 0) == [2, 7]


class _Toy:
    """A FedData stand-in: 4 clients of 5 rows, 3 classes, 6 features."""

    def __init__(self):
        self.x_train = torch.arange(120, dtype=torch.float32).reshape(20, 6) / 120
        self.y_train = torch.arange(20) % 3
        self.num_classes, self.num_features, self.num_clients, self.image_shape = 3, 6, 4, None

    def client_indices(self, c):
        return torch.arange(5 * c, 5 * c + 5)


def _replace(obj, **kw):
    out = _Toy()
    out.__dict__.update(obj.__dict__)
    out.__dict__.update(kw)
    return out


def test_label_flip_and_backdoor_rows(monkeypatch):
    monkeypatch.setattr(dataclasses, "replace", _replace)
    d = _Toy()
    flipped = poison.flip_labels(d, [1])
    assert flipped.y_train[5:10].tolist() == [2 - int(v) for v in d.y_train[5:10]]  # c -> C − 1 − c
    assert torch.equal(flipped.y_train[:5], d.y_train[:5]) and torch.equal(flipped.y_train[10:], d.y_train[10:])
    assert poison.default_trigger(d) == [2, 3, 4, 5]
    doc, rows = poison.poison_rows(d, [0, 3], 0.4, [0, 5], 9.0, 1, seed=0)
    assert len(rows) == 4 and all(0 <= r < 5 or 15 <= r < 20 for r in rows.tolist())  # ⌈0.4·5⌉ = 2 each
    assert (doc.x_train[rows][:, [0, 5]] == 9.0).all() and (doc.y_train[rows] == 1).all()
    others = torch.tensor([r for r in range(20) if r not in rows.tolist()])
    assert torch.equal(doc.x_train[others], d.x_train[others]) and torch.equal(doc.y_train[others], d.y_train[others])
    assert (d.x_train != 9.0).all()  # the original is untouched


def test_backdoor_accuracy_counts_triggered_rows_not_of_the_target():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 10.0]]))  # class 1 iff feature 1 is large
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    vec = flatten(model)
    x = torch.zeros(3, 2)
    y = torch.tensor([0, 0, 1])  # the row of label 1 is left out
    assert poison.backdoor_accuracy(model, vec, x, y, [1], 1.0, 1) == 1.0
    assert poison.backdoor_accuracy(model, vec, x, y, [1], 0.0, 1) == 0.0
    assert math.isnan(poison.backdoor_accuracy(model, vec, x, torch.ones(3, dtype=torch.int64), [1], 1.0, 1))


def _result(diffs, clients):
    ones = torch.ones(len(clients), dtype=torch.int64)
    return CohortResult(clients, diffs, ones, torch.zeros(len(clients)), ones)


def test_apply_replaces_only_attackers_from_start_round():
    d = _Toy()
    att = Attack(AttackConfig(name="sign_flip", clients=[2], scale=2.0, start_round=3), d, 0, 5)
    diffs = torch.tensor([[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]])  # clients 0, 1, 2
    res = _result(diffs, [0, 1, 2])
    assert att.apply(2, res, None) is res  # before start_round
    out = att.apply(3, res, None)
    assert out.diffs[:2].tolist() == diffs[:2].tolist()
    assert out.diffs[2].tolist() == [-4.0, -6.0]  # −2 × mean of the honest [1,1], [3,5]
    assert res.diffs[2].tolist() == [100.0, 100.0]  # not modified in place
    assert att.row(3, {"clients": [0, 2]}) == {"attackers": 1}


def test_backdoor_apply_retrains_on_poisoned_rows_and_scales_by_gamma(monkeypatch):
    monkeypatch.setattr(dataclasses, "replace", _replace)
    d = _Toy()
    att = Attack(AttackConfig(name="backdoor", clients=[1], gamma=3.0, poison_label=2, trigger=[0]), d, 0, 5)
    seen = {}

    def retrain(data, clients):
        seen["clients"], seen["data"] = clients, data
        return _result(torch.tensor([[1.0, -2.0]]), clients)

    out = att.apply(1, _result(torch.zeros(3, 2), [0, 1, 3]), retrain)
    assert seen["clients"] == [1] and out.diffs.tolist() == [[0.0, 0.0], [3.0, -6.0], [0.0, 0.0]]
    poisoned = (seen["data"].y_train != d.y_train) | (seen["data"].x_train != d.x_train).any(1)
    assert poisoned[5:10].any() and not poisoned[:5].any() and not poisoned[10:].any()


def test_attack_config_refusals():
    cases = [
        ({"attack": {"name": "gaussian"}}, "set one of fraction"),
        ({"attack": {"name": "gaussian", "fraction": 0.2, "clients": [1]}}, "set one of fraction"),
        ({"attack": {"name": "gaussian", "clients": [10]}}, "attack.clients: client 10 does not exist"),
        ({"attack": {"name": "sign_flip", "fraction": 0.2, "std": 1}}, "sign_flip takes scale; std is not"),
        ({"attack": {"name": "gausian", "fraction": 0.2}}, "attack.name"),
        ({"attack": {"name": "backdoor", "fraction": 0.2, "trigger": [-1]}}, "trigger must be a non-empty list"),
        ({"attack": {"name": "ipm", "fraction": 0.2, "epsilom": 1}}, "did you mean 'epsilon'"),
    ]
    for raw, msg in cases:
        with pytest.raises(ConfigError) as e:
            build_config(raw)
        assert msg in str(e.value), str(e.value)


def test_a_short_simulated_run_reports_attackers_and_backdoor_success():
    from fedloom.simulation import Federation

    cfg = build_config(
        {"type": "iris", "no_models": 5, "k": 5, "global_epochs": 2, "local_epochs": 1,
         "attack": {"name": "backdoor", "clients": [0, 3], "poison_label": 1, "gamma": 2}}
    )  # fmt: skip
    fed = Federation.build(cfg)
    row = fed.run_round(1)
    assert row["attackers"] == 2 and 0.0 <= row["backdoor_accuracy"] <= 1.0
    cfg = build_config({"type": "iris", "no_models": 5, "k": 5, "global_epochs": 1, "local_epochs": 1})
    clean_fed = Federation.build(cfg)
    clean = clean_fed.run_round(1)
    assert "attackers" not in clean and "backdoor_accuracy" not in clean
    flip = build_config({**cfg.to_dict(), "attack": {"name": "sign_flip", "clients": [1], "scale": 10}})
    fed = Federation.build(flip)
    row = fed.run_round(1)
    assert row["attackers"] == 1 and row["clients"] == clean["clients"]  # answered like an honest client
    assert not torch.allclose(fed.server.global_vec, clean_fed.server.global_vec)


def test_flower_runtime_refuses_simulated_attackers():
    from fedloom.errors import FedloomError
    from fedloom.flower import check_deployable

    with pytest.raises(FedloomError, match="attack: the simulated attackers run in the simulation only"):
        check_deployable(build_config({"attack": {"name": "gaussian", "fraction": 0.2}}))


def test_backdoor_trigger_and_label_checked_against_the_data():
    from fedloom.simulation import Federation

    for attack, msg in (({"trigger": [4]}, "trigger indices < 4 features"), ({"poison_label": 3}, "< 3 classes")):
        cfg = build_config({"type": "iris", "attack": {"name": "backdoor", "clients": [0], **attack}})
        with pytest.raises(ConfigError, match=msg):
            Federation.build(cfg)
