"""Client-level differential privacy (fedloom/privacy/): the accountant against published numbers, clipping
and noise scale by hand, the fixed denominator, Poisson sampling's rate, reproducible noise, the config's
refusals, ε in the rows and the summary, and the max_epsilon stop."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from fedloom.cli import main
from fedloom.config import build_config
from fedloom.errors import ConfigError, FedloomError
from fedloom.privacy.accountant import Accountant, Plan, solve_noise
from fedloom.privacy.mechanism import DPSum, clip_rows, privatize_update
from fedloom.privacy.settings import PrivacyConfig
from fedloom.privacy.stage import denominator
from fedloom.server import Server
from fedloom.simulation import Federation, run_federation

dpa = pytest.importorskip("dp_accounting")

BASE = {"type": "iris", "no_models": 10, "k": 5, "global_epochs": 3, "local_epochs": 1, "lr": 0.1, "seed": 3}


def cfg_with(privacy: dict, **more):
    return build_config({**BASE, **more, "privacy": privacy})


# --- the accountant ---------------------------------------------------------------------------------------
def test_rdp_accountant_reproduces_opacus_published_case():
    # Opacus's own test (pytorch/opacus, opacus/tests/accountants_test.py, test_rdp_accountant): noise 1.5,
    # sample rate 0.04, int(90/0.04) = 2 250 steps, δ 1e-5 → ε = 7.32911117143. dp-accounting converts RDP to
    # (ε, δ) with a slightly different bound, so the two agree to about 3e-5 relative, not to every digit.
    plan = Plan("poisson", "central", num_clients=100, cohort=4, noise_multiplier=1.5)  # q = 4/100 = 0.04
    eps = Accountant(plan, 1e-5).epsilon(2250)
    assert eps == pytest.approx(7.32911117143, abs=1e-3)


def test_fixed_sampling_is_replace_one_without_replacement_at_half_the_multiplier():
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    plan = Plan("fixed", "central", num_clients=100, cohort=10, noise_multiplier=1.2)
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(0.6)), 50)
    assert Accountant(plan, 1e-5).epsilon(50) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-2)
    assert "replace-one" in plan.why and plan.relation == "replace one client"
    # the sampler gives no add/remove amplification: the same σ costs more than Poisson's claim would
    poisson = Accountant(Plan("poisson", "central", 100, 10, 1.2), 1e-5).epsilon(50)
    assert Accountant(plan, 1e-5).epsilon(50) > poisson


def test_local_mode_has_no_amplification():
    local = Accountant(Plan("fixed", "local", 100, 10, 2.0), 1e-5)
    acc = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.GaussianDpEvent(1.0), 7)  # σ/2: any two updates of one client differ by up to 2C
    assert local.epsilon(7) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-2)


def test_epsilon_grows_with_rounds_and_is_zero_before_any():
    acc = Accountant(Plan("poisson", "central", 10, 5, 1.0), 1e-5)
    eps = [acc.epsilon(r) for r in range(4)]
    assert eps[0] == 0.0 and eps[1] < eps[2] < eps[3]


def test_target_epsilon_solves_the_smallest_noise():
    plan = Plan("poisson", "central", 100, 10, 1.0)
    sigma = solve_noise(plan, 20, 1e-5, 3.0)
    at = lambda s: Accountant(Plan("poisson", "central", 100, 10, s), 1e-5).epsilon(20)  # noqa: E731
    assert at(sigma) <= 3.0 < at(sigma * 0.99)


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import fails as if not installed
    with pytest.raises(FedloomError, match=r"pip install 'fedloom\[privacy\]'"):
        Accountant(Plan("poisson", "central", 10, 5, 1.0), 1e-5)
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({**BASE, "privacy": {"clip": 1.0, "noise_multiplier": 1.0}}))
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "r"), "-q"]) == 2


# --- the mechanism by hand ------------------------------------------------------------------------------
def test_clipping_by_hand():
    rows, norms = clip_rows(torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]), 1.0)
    assert torch.allclose(rows, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    assert norms.tolist() == pytest.approx([5.0, 0.5, 0.0])


def test_server_step_clips_sums_and_divides_by_the_fixed_denominator():
    p = PrivacyConfig(clip=1.0, noise_multiplier=0.0)
    step = DPSum(p, 0.0, denominator=5.0, seed=0)
    diffs = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # the server clips again: the bound holds whatever was sent
    new = step.step(1, torch.zeros(2), diffs, None)
    assert torch.allclose(new, torch.tensor([0.9, 1.2]) / 5)  # (0.6+0.3, 0.8+0.4) / k, not / 2 answers
    assert step.last["dp_clipped_updates"] == 1
    # nobody answered: the (noised) step is still taken, zero here
    assert torch.equal(step.step(2, torch.zeros(2), torch.zeros(0, 2), None), torch.zeros(2))


def test_denominator_is_k_or_one_over_lambda():
    assert denominator(cfg_with({"clip": 1.0, "noise_multiplier": 1.0})) == 5.0
    assert denominator(cfg_with({"clip": 1.0, "noise_multiplier": 1.0}, **{"lambda": 0.1})) == pytest.approx(10.0)


def test_noise_scale_by_hand_and_same_seed_same_noise():
    p = PrivacyConfig(clip=0.5, noise_multiplier=2.0)
    d = 200_000
    step = DPSum(p, 2.0, denominator=4.0, seed=7)
    noise = step.step(3, torch.zeros(d, dtype=torch.float64), torch.zeros(0, d, dtype=torch.float64), None)
    assert float(noise.std()) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.01)  # σC/D
    again = DPSum(p, 2.0, denominator=4.0, seed=7).step(3, torch.zeros(d, dtype=torch.float64), torch.zeros(0, d), None)
    assert torch.equal(noise, again)
    other = DPSum(p, 2.0, 4.0, seed=7).step(4, torch.zeros(d, dtype=torch.float64), torch.zeros(0, d), None)
    assert not torch.equal(noise, other)


def test_local_noise_scale_and_fresh_entropy():
    p = PrivacyConfig(clip=1.0, noise_multiplier=3.0, mode="local")
    diff = torch.zeros(100_000, dtype=torch.float64)
    out = privatize_update(p, diff, seed=1, rnd=2, client=3)
    assert float(out.std()) == pytest.approx(3.0, rel=0.02)
    assert torch.equal(out, privatize_update(p, diff, seed=1, rnd=2, client=3))
    assert not torch.equal(out, privatize_update(p, diff, seed=1, rnd=2, client=4))
    assert not torch.equal(out, privatize_update(p, diff, seed=1, rnd=2, client=3, fresh=True))
    central = PrivacyConfig(clip=1.0, noise_multiplier=3.0)
    big = torch.full((4,), 10.0)
    assert float(torch.linalg.vector_norm(privatize_update(central, big, 1, 2, 3))) == pytest.approx(1.0)


# --- sampling -------------------------------------------------------------------------------------------
def _server(sampling: str, n: int = 20, k: int = 5) -> Server:
    s = Server(torch.nn.Linear(1, 1), torch.zeros(2), None, torch.zeros(0, 1), torch.zeros(0), n, k, seed=0)
    s.sampling = sampling
    return s


def test_poisson_sampling_empirical_rate():
    s, rounds = _server("poisson"), 4000
    counts, sizes = np.zeros(20), []
    for r in range(1, rounds + 1):
        cohort = s.sample(r)
        sizes.append(len(cohort))
        counts[cohort] += 1
    q = 5 / 20
    se = np.sqrt(q * (1 - q) / rounds)
    assert np.all(np.abs(counts / rounds - q) < 5 * se)  # every client joins at rate k/n
    assert np.var(sizes) == pytest.approx(20 * q * (1 - q), rel=0.1)  # the cohort's size varies (binomial)
    assert s.sample(9) == s.sample(9)


def test_fixed_sampling_is_always_k_distinct():
    s = _server("fixed")
    assert all(len(set(s.sample(r))) == 5 for r in range(1, 50))


# --- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "privacy, more, needle",
    [
        ({"clip": 1.0, "noise_multiplier": 1.0, "target_epsilon": 2.0}, {}, "not both"),
        ({"clip": 1.0}, {}, "set noise_multiplier"),
        ({"noise_multiplier": 1.0}, {}, "privacy.noise_multiplier needs privacy.clip"),
        ({"clip": 1.0, "noise_multiplier": 1.0}, {"aggregator": "median"}, "not linear"),
        ({"clip": 1.0, "noise_multiplier": 1.0, "delta": 0.2}, {}, "privacy.delta"),
        ({"clip": 1.0, "noise_multiplier": 1.0}, {"runtime": {"min_clients": 2}}, "runtime.min_clients"),
        ({"clip": 1.0, "noise_multiplier": 1.0}, {"secure": {"method": "ckks"}}, "secure aggregation"),
        ({"clip": 1.0, "target_epsilon": 5.0, "max_epsilon": 2.0}, {}, "max_epsilon"),
        ({"clip": -1.0, "noise_multiplier": 1.0}, {}, "privacy.clip"),
        ({"clip": 1.0, "noise_multiplier": 1.0, "mode": "both"}, {}, "privacy.mode"),
    ],
)
def test_config_refuses_contradictions_with_one_line(privacy, more, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")) as e:
        cfg_with(privacy, **more)
    assert "\n" not in str(e.value)


# --- runs -----------------------------------------------------------------------------------------------
def test_run_reports_epsilon_per_round_and_in_summary():
    cfg = cfg_with({"clip": 1.0, "noise_multiplier": 1.0}, runtime={"sampling": "poisson"})
    res = run_federation(Federation.build(cfg))
    eps = [r["epsilon"] for r in res.rows]
    assert eps == sorted(eps) and eps[0] > 0
    assert eps[-1] == pytest.approx(Accountant(Plan("poisson", "central", 10, 5, 1.0), 1e-5).epsilon(3))
    s = res.summary
    assert s["epsilon"] == eps[-1] and s["delta"] == 1e-5 and s["sampling"] == "poisson"
    assert "add/remove" in s["accounting"] and s["neighbouring"] == "add/remove one client"
    again = run_federation(Federation.build(cfg))
    assert torch.equal(res.global_vec, again.global_vec)  # the same seed gives the same noise
    other = run_federation(Federation.build(cfg.model_copy(update={"seed": 4})))
    assert not torch.equal(res.global_vec, other.global_vec)


def test_fixed_sampling_summary_claims_no_add_remove():
    res = run_federation(Federation.build(cfg_with({"clip": 1.0, "noise_multiplier": 1.0})))
    assert res.summary["neighbouring"] == "replace one client" and "no add/remove" in res.summary["accounting"]


def test_target_epsilon_is_met_after_the_last_round():
    res = run_federation(Federation.build(cfg_with({"clip": 1.0, "target_epsilon": 8.0})))
    assert res.summary["epsilon"] <= 8.0 and res.summary["noise_multiplier"] > 0


def test_max_epsilon_stops_before_the_round_that_would_pass_it():
    acc = Accountant(Plan("fixed", "central", 10, 5, 1.0), 1e-5)
    cap = (acc.epsilon(2) + acc.epsilon(3)) / 2
    res = run_federation(Federation.build(cfg_with({"clip": 1.0, "noise_multiplier": 1.0, "max_epsilon": cap})))
    assert len(res.rows) == 2 and res.summary["epsilon"] <= cap and res.summary["stopped_by_max_epsilon"]


def test_local_mode_composes_over_the_most_picked_client():
    cfg = cfg_with({"clip": 1.0, "noise_multiplier": 2.0, "mode": "local"})
    fed = Federation.build(cfg)
    res = run_federation(fed)
    most = max(h["picked"] for h in res.health.values())
    assert res.summary["epsilon"] == pytest.approx(Accountant(Plan("fixed", "local", 10, 5, 2.0), 1e-5).epsilon(most))


def test_cli_writes_epsilon_to_metrics_and_summary(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({**BASE, "privacy": {"clip": 1.0, "noise_multiplier": 1.0}}))
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "r"), "-q"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [r["round"] for r in rows] == [1, 2, 3] and all("epsilon" in r for r in rows)
    assert summary["epsilon"] == rows[-1]["epsilon"] and summary["delta"] == 1e-5


# --- the deployed client --------------------------------------------------------------------------------
def test_deployed_worker_clips_before_encoding_like_the_simulated_client():
    pytest.importorskip("flwr")
    from fedloom.flower.fingerprint import config_hash
    from fedloom.flower.protocol import VERSION
    from fedloom.flower.worker import ClientWorker

    cfg = cfg_with({"clip": 0.05, "noise_multiplier": 1.0}, no_models=3, k=3)
    fed = Federation.build(cfg)
    worker = ClientWorker(cfg, 1, log=lambda s: None)
    down, received = fed.channel.down(fed.server.global_vec, 2)
    reply = worker.handle(
        "train",
        {
            "v": VERSION,
            "config_hash": config_hash(cfg),
            "round": 2,
            "payload": down,
            "epochs": cfg.local_epochs,
            "control": b"",
        },
    )
    assert reply["ok"]
    (sent,), _ = fed.channel.decode_up([reply["payload"]], [1], 2)
    update = fed.clients[1].local_train(fed.model, received, fed.spec, cfg.seed, 2)
    assert float(torch.linalg.vector_norm(update.diff)) > 0.05  # so the clip did something
    assert torch.allclose(sent, privatize_update(cfg.privacy, update.diff, cfg.seed, 2, 1))
    assert float(torch.linalg.vector_norm(sent.double())) == pytest.approx(0.05, rel=1e-5)


def test_summary_names_the_dp_step_not_the_weighted_fedavg():
    res = run_federation(Federation.build(cfg_with({"clip": 1.0, "noise_multiplier": 1.0})))
    assert res.summary["aggregator"] == "dp-fedavg (uniform weights, fixed denominator 5)"


# --- the experiment ---------------------------------------------------------------------------------------
def test_privacy_experiment_table_curve_and_epsilon_order(tmp_path, monkeypatch):
    import fedloom.experiments.privacy as exp
    from fedloom.experiments import run_experiment

    NOISE, CLIPS = (0.0, 0.5, 2.0), (0.5, 1.0)  # a smaller grid than the default: the test stays fast
    monkeypatch.setattr(exp, "NOISE", NOISE)
    monkeypatch.setattr(exp, "CLIPS", CLIPS)

    cfg = build_config({**BASE, "global_epochs": 2, "seeds": 2, "runtime": {"sampling": "poisson"}})
    s = run_experiment("privacy", cfg, tmp_path / "x")
    rows = s["results"]
    assert len(rows) == 1 + len(NOISE) * len(CLIPS) and rows[0]["setting"] == "no privacy"
    assert rows[0]["epsilon_mean"] is None and not rows[0]["private"]
    for clip in CLIPS:
        eps = [r["epsilon_mean"] for r in rows[1:] if r["clip_mean"] == clip and r["noise_multiplier_mean"] > 0]
        assert eps == sorted(eps, reverse=True)  # more noise, smaller ε; the same for every clip
        assert eps[-1] == pytest.approx(Accountant(Plan("poisson", "central", 10, 5, max(NOISE)), 1e-5).epsilon(2))
    assert all(len(r["accuracy_per_seed"]) == 2 for r in rows)
    assert (tmp_path / "x" / "figures" / "accuracy_vs_epsilon.png").is_file()
    assert "∞" in (tmp_path / "x" / "table.md").read_text() and s["sampling"] == "poisson"


def test_privacy_experiment_refuses_target_epsilon(tmp_path):
    from fedloom.experiments import run_experiment

    cfg = cfg_with({"clip": 1.0, "target_epsilon": 5.0})
    with pytest.raises(ConfigError, match="target_epsilon"):
        run_experiment("privacy", cfg, tmp_path / "y")
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_dp_over_flower_gives_the_simulated_numbers(tmp_path):
    """Real server and client processes: the workers clip, the server noises (the same seeded noise as the
    simulation), ε in the rows and the summary as simulated."""
    pytest.importorskip("flwr")
    from fedloom.flower.local import LocalFederation

    raw = {
        **BASE, "no_models": 3, "k": 3, "global_epochs": 3, "runtime": {"round_timeout": 20, "min_clients": 1},
        "privacy": {"clip": 0.5, "noise_multiplier": 0.3},
    }  # fmt: skip
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(raw), encoding="utf-8")
    fed = LocalFederation(conf, tmp_path / "fed")
    try:
        server = fed.server()
        clients = [fed.client(i) for i in range(3)]
        assert server.wait(240) == 0, server.output()[-3000:]
        rows = fed.rows()
        sim = run_federation(Federation.build(build_config(raw)))
        assert [r["round"] for r in rows] == [1, 2, 3]
        for mine, ref in zip(rows, sim.rows, strict=True):
            assert mine["epsilon"] == pytest.approx(ref["epsilon"])
            assert mine["accuracy"] == pytest.approx(ref["accuracy"]) and mine["loss"] == pytest.approx(
                ref["loss"], rel=1e-4
            )
        summary = json.loads((fed.out / "summary.json").read_text(encoding="utf-8"))
        assert summary["epsilon"] == pytest.approx(sim.summary["epsilon"]) and "replace-one" in summary["accounting"]
        for c in clients:
            assert c.wait(30) == 0, c.output()[-2000:]
    finally:
        fed.close()


# --- adaptive clipping ------------------------------------------------------------------------------------
def test_adaptive_update_noise_and_clip_step_by_hand():
    p = PrivacyConfig(clip=1.0, noise_multiplier=1.0, adaptive={"target_quantile": 0.25, "lr": 0.2, "count_noise": 1.0})
    s = DPSum(p, 1.0, denominator=2.0, seed=0, cohort=2)
    assert s.update_sigma == pytest.approx((1 - 0.25) ** -0.5)  # (z⁻² − (2σ_b)⁻²)^(−1/2) with z = σ_b = 1
    quiet = PrivacyConfig(clip=1.0, noise_multiplier=0.0, adaptive={"target_quantile": 0.25, "count_noise": 1e-12})
    s = DPSum(quiet, 0.0, denominator=2.0, seed=0, cohort=2)
    new = s.step(1, torch.zeros(2), torch.tensor([[0.3, 0.4], [0.0, 2.0]]), None)  # norms 0.5 and 2
    assert torch.allclose(new, torch.tensor([0.3, 1.4]) / 2)  # this round's step used C = 1
    assert s.last["dp_unclipped_fraction"] == pytest.approx(0.5)  # 1 of the expected 2 within C
    assert s.clip == pytest.approx(float(np.exp(-0.2 * (0.5 - 0.25))))
    assert torch.equal(privatize_update(quiet, torch.full((3,), 9.0), 0, 1, 0), torch.full((3,), 9.0))  # server clips


@pytest.mark.parametrize(
    "privacy, needle",
    [
        ({"clip": 1.0, "noise_multiplier": 1.0, "mode": "local", "adaptive": {}}, "mode: central"),
        ({"clip": 1.0, "noise_multiplier": 1.0, "adaptive": {"count_noise": 0.4}}, "count_noise 0.4 must exceed"),
        ({"clip": 1.0, "target_epsilon": 3.0, "adaptive": {}}, "needs privacy.noise_multiplier"),
    ],
)
def test_adaptive_refusals(privacy, needle):
    with pytest.raises(ConfigError, match=needle):
        cfg_with(privacy)


def test_adaptive_clip_moves_toward_the_quantile_and_survives_a_checkpoint():
    cfg = cfg_with({"clip": 100.0, "noise_multiplier": 0.3, "adaptive": {"lr": 0.5}}, global_epochs=8)
    fed = Federation.build(cfg)
    res = run_federation(fed)
    clips = [r["dp_clip"] for r in res.rows]
    assert clips[0] == 100.0 and clips[-1] < 100.0 * np.exp(-0.5 * 0.3 * 6)  # all updates fit: C shrinks
    state = fed.state_dict(8)
    other = Federation.build(cfg)
    other.load_state_dict(state)
    assert other.round.privacy.sum.clip == fed.round.privacy.sum.clip
    assert res.summary["adaptive_clip"] and res.summary["clip_last_round"] == clips[-1]


def test_a_round_nobody_answered_still_releases_its_noise():
    cfg = cfg_with({"clip": 1.0, "noise_multiplier": 1.0}, runtime={"dropout": 0.9}, global_epochs=4)
    fed = Federation.build(cfg)
    before = fed.server.global_vec.clone()
    rows = []
    for r in range(1, 5):
        rows.append(fed.run_round(r))
        if not rows[-1]["clients"]:
            break
    empty = rows[-1]
    assert not empty["clients"] and empty["applied"]  # nobody answered, and the round still counts
    assert not torch.equal(fed.server.global_vec, before)  # the noise was added
