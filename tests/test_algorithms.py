"""The server steps of fedloom/algorithms/ against hand-computed cases (FedOpt, FedNova, SCAFFOLD)."""

import io
import math

import pytest
import torch

from fedloom.aggregators import BookLambda, CoordinateMedian, FedAvg
from fedloom.algorithm_spec import AlgorithmConfig
from fedloom.algorithms import (
    FedNova,
    Scaffold,
    ServerOptimizer,
    client_control,
    make_server_algorithm,
    norm_factor,
    normalize,
)
from fedloom.secure.base import Decrypted
from fedloom.secure.secagg import SecAggState, Stage, apply_aggregate

F64 = torch.float64
X0 = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
SIZES = torch.tensor([1, 3])  # FedAvg weights 1 and 3: the mean update is (A + 3B) / 4
# two rounds of client updates [clients, params] whose weighted means are Δ1 = [2, 0, -1] and Δ2 = [1, 2, -1]
ROUND1 = torch.tensor([[5.0, -3.0, -1.0], [1.0, 1.0, -1.0]], dtype=F64)  # (A + 3B)/4 = [8, 0, -4]/4
ROUND2 = torch.tensor([[4.0, 2.0, -7.0], [0.0, 2.0, 1.0]], dtype=F64)  # (A + 3B)/4 = [4, 8, -4]/4
SMALL = {"beta1": 0.5, "beta2": 0.75, "tau": 0.5}  # round numbers for hand arithmetic (τ² = 0.25)


def _two_rounds(opt):
    x1 = opt.aggregate(X0, ROUND1, SIZES)
    return x1, opt.aggregate(x1, ROUND2, SIZES)


def _close(actual, expected, tol=1e-12):
    assert torch.allclose(actual, torch.tensor(expected, dtype=F64), rtol=0, atol=tol), (actual, expected)


# --- FedOpt (Reddi et al., ICLR 2021, Algorithm 2; FedAvgM of Hsu et al. 2019) ------------------------------
def test_fedadam_two_steps_by_hand():
    x1, x2 = _two_rounds(ServerOptimizer(FedAvg(), "fedadam", server_lr=1.0, **SMALL))
    # round 1, Δ1 = [2, 0, -1]: m = 0.5·0 + 0.5·Δ1 = [1, 0, -0.5]
    # v = 0.75·τ² + 0.25·Δ1² = 0.1875 + [1, 0, 0.25] = [1.1875, 0.1875, 0.4375]
    _close(x1, [1 + 1 / (math.sqrt(1.1875) + 0.5), 1.0, 1 - 0.5 / (math.sqrt(0.4375) + 0.5)])
    # round 2, Δ2 = [1, 2, -1]: m = 0.5·[1, 0, -0.5] + 0.5·[1, 2, -1] = [1, 1, -0.75]
    # v = 0.75·[1.1875, 0.1875, 0.4375] + 0.25·[1, 4, 1] = [1.140625, 1.140625, 0.578125]
    step2 = [1 / (math.sqrt(1.140625) + 0.5), 1 / (math.sqrt(1.140625) + 0.5), -0.75 / (math.sqrt(0.578125) + 0.5)]
    _close(x2, (x1 + torch.tensor(step2, dtype=F64)).tolist())


def test_fedyogi_two_steps_by_hand():
    x1, x2 = _two_rounds(ServerOptimizer(FedAvg(), "fedyogi", server_lr=1.0, **SMALL))
    # round 1: v0 − Δ1² = 0.25 − [4, 0, 1] has signs [-1, +1, -1]
    # v = 0.25 − 0.25·[4, 0, 1]·[-1, 1, -1] = [1.25, 0.25, 0.5]; m = [1, 0, -0.5] as Adam's
    _close(x1, [1 + 1 / (math.sqrt(1.25) + 0.5), 1.0, 1 - 0.5 / (math.sqrt(0.5) + 0.5)])
    # round 2: v − Δ2² = [1.25, 0.25, 0.5] − [1, 4, 1] = [0.25, -3.75, -0.5]: signs [+1, -1, -1]
    # v = [1.25 − 0.25, 0.25 + 1, 0.5 + 0.25] = [1, 1.25, 0.75]  (Adam's would be [1.140625, 1.140625, 0.578125])
    # m = [1, 1, -0.75]
    step2 = [1 / (1 + 0.5), 1 / (math.sqrt(1.25) + 0.5), -0.75 / (math.sqrt(0.75) + 0.5)]
    _close(x2, (x1 + torch.tensor(step2, dtype=F64)).tolist())


def test_fedadagrad_two_steps_by_hand():
    x1, x2 = _two_rounds(ServerOptimizer(FedAvg(), "fedadagrad", server_lr=1.0, tau=0.5))
    # m = Δ (no β₁); v = 0.25 + Δ1² = [4.25, 0.25, 1.25]
    _close(x1, [1 + 2 / (math.sqrt(4.25) + 0.5), 1.0, 1 - 1 / (math.sqrt(1.25) + 0.5)])
    # v = [4.25, 0.25, 1.25] + [1, 4, 1] = [5.25, 4.25, 2.25]; √2.25 = 1.5
    step2 = [1 / (math.sqrt(5.25) + 0.5), 2 / (math.sqrt(4.25) + 0.5), -1 / (1.5 + 0.5)]
    _close(x2, (x1 + torch.tensor(step2, dtype=F64)).tolist())


def test_fedavgm_two_steps_by_hand():
    x1, x2 = _two_rounds(ServerOptimizer(FedAvg(), "fedavgm", server_lr=2.0, server_momentum=0.5))
    _close(x1, [5.0, 1.0, -1.0])  # v = Δ1 = [2, 0, -1]; x = [1,1,1] + 2·v
    _close(x2, [9.0, 5.0, -4.0])  # v = 0.5·[2, 0, -1] + [1, 2, -1] = [2, 2, -1.5]; x = [5, 1, -1] + 2·v


def test_fedavgm_with_zero_momentum_and_unit_lr_is_fedavg():
    opt = ServerOptimizer(FedAvg(), "fedavgm", server_lr=1.0, server_momentum=0.0)
    x1 = opt.aggregate(X0, ROUND1, SIZES)
    _close(x1, FedAvg().aggregate(X0, ROUND1, SIZES).tolist())
    _close(opt.aggregate(x1, ROUND2, SIZES), FedAvg().aggregate(x1, ROUND2, SIZES).tolist())


def test_server_optimizer_over_median_steps_with_the_median():
    diffs = torch.tensor([[1.0, 4.0], [2.0, -8.0], [30.0, 0.0]], dtype=F64)  # median per coordinate: [2, 0]
    opt = ServerOptimizer(CoordinateMedian(), "fedavgm", server_lr=1.0, server_momentum=0.5)
    assert opt.linear is False and ServerOptimizer(FedAvg(), "fedadam", 0.1).linear is True
    x0 = torch.zeros(2, dtype=F64)
    x1 = opt.aggregate(x0, diffs, torch.tensor([1, 1, 100]))  # sample counts ignored by the median
    _close(x1, [2.0, 0.0])
    x2 = opt.aggregate(x1, diffs, torch.tensor([1, 1, 1]))  # v = 0.5·[2, 0] + [2, 0] = [3, 0]
    _close(x2, [5.0, 0.0])
    with pytest.raises(TypeError):  # the median has no finish: secure aggregation cannot use it either
        opt.finish(x0, diffs.sum(0), 3.0)


def test_server_optimizer_delegates_weight_to_inner():
    assert ServerOptimizer(FedAvg(), "fedadam", 0.1).weight(7) == 7.0
    assert ServerOptimizer(BookLambda(0.5), "fedadam", 0.1).weight(7) == 1.0


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_resumed_optimizer_continues_exactly(name):
    kw = {"server_momentum": 0.5} if name == "fedavgm" else {"tau": 0.5}
    straight = ServerOptimizer(FedAvg(), name, server_lr=0.3, **kw)
    assert straight.state_dict() == {}  # nothing before the first step
    x1 = straight.aggregate(X0, ROUND1, SIZES)
    buf = io.BytesIO()
    torch.save(straight.state_dict(), buf)  # what Round.state_dict checkpoints
    x2 = straight.aggregate(x1, ROUND2, SIZES)
    buf.seek(0)
    resumed = ServerOptimizer(FedAvg(), name, server_lr=0.3, **kw)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(resumed.aggregate(x1, ROUND2, SIZES), x2)
    fresh = ServerOptimizer(FedAvg(), name, server_lr=0.3, **kw)  # without the moments the step differs
    assert not torch.allclose(fresh.aggregate(x1, ROUND2, SIZES), x2)
    resumed.load_state_dict({})
    assert resumed.state_dict() == {}


def test_state_of_another_optimizer_is_refused():
    adam = ServerOptimizer(FedAvg(), "fedadam", 0.1)
    adam.aggregate(X0, ROUND1, SIZES)
    with pytest.raises(ValueError, match="fedavgm state holds"):
        ServerOptimizer(FedAvg(), "fedavgm", 1.0).load_state_dict(adam.state_dict())


def test_a_round_without_updates_takes_no_step():
    opt = ServerOptimizer(FedAvg(), "fedavgm", server_lr=1.0, server_momentum=0.9)
    x1 = opt.aggregate(X0, ROUND1, SIZES)
    before = opt.state_dict()
    assert torch.equal(opt.aggregate(x1, torch.zeros(0, 3, dtype=F64), torch.zeros(0)), x1)
    assert torch.equal(opt.finish(x1, torch.zeros(3, dtype=F64), 0.0), x1)
    assert torch.equal(opt.state_dict()["m"], before["m"])


def _secure_apply(aggregator, global_vec, diffs, sizes, weight_ref=2.0):
    """What secure aggregation hands the server: Σ (w_i/w_ref)·diff_i and Σ w_i, decrypted; then APPLY."""
    w = torch.tensor([aggregator.weight(int(n)) for n in sizes], dtype=F64)
    state = SecAggState(round=1, cohort=list(range(len(sizes))), stage=Stage.DECRYPT)
    state.result = Decrypted(values=((w / weight_ref) @ diffs).numpy(), weight=int(w.sum()))
    return apply_aggregate(state, aggregator, global_vec, weight_ref)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_secure_path_equals_plain_path(name):
    plain, secure = (ServerOptimizer(FedAvg(), name, server_lr=0.5) for _ in range(2))
    x1p = plain.aggregate(X0, ROUND1, SIZES)
    x1s = _secure_apply(secure, X0, ROUND1, SIZES)
    assert torch.allclose(x1s, x1p, rtol=0, atol=1e-12)
    assert torch.allclose(_secure_apply(secure, x1s, ROUND2, SIZES), plain.aggregate(x1p, ROUND2, SIZES), atol=1e-12)


def test_bad_optimizer_settings_are_refused():
    with pytest.raises(ValueError, match="server optimizer must be one of"):
        ServerOptimizer(FedAvg(), "sgd", 1.0)
    with pytest.raises(ValueError, match="beta2"):
        ServerOptimizer(FedAvg(), "fedadam", 1.0, beta2=1.0)
    with pytest.raises(ValueError, match="server_lr"):
        ServerOptimizer(FedAvg(), "fedadam", 0.0)


# --- make_server_algorithm --------------------------------------------------------------------------------
def test_make_server_algorithm_maps_the_config():
    inner = FedAvg()
    assert make_server_algorithm(inner, AlgorithmConfig(name="fedavg")) is inner
    assert make_server_algorithm(inner, AlgorithmConfig(name="fedprox", mu=1.0)) is inner
    assert isinstance(make_server_algorithm(inner, AlgorithmConfig(name="fednova")), FedNova)
    scaffold = make_server_algorithm(inner, AlgorithmConfig(name="scaffold", server_lr=0.5))
    assert isinstance(scaffold, Scaffold) and scaffold.server_lr == 0.5
    adam = make_server_algorithm(inner, AlgorithmConfig(name="fedadam", beta1=0.8, tau=0.01))
    assert (adam.name, adam.inner, adam.server_lr, adam.beta1, adam.beta2, adam.tau) == (
        "fedadam",
        inner,
        0.1,
        0.8,
        0.99,
        0.01,
    )
    avgm = make_server_algorithm(inner, AlgorithmConfig(name="fedavgm", server_momentum=0.5))
    assert (avgm.name, avgm.server_lr, avgm.server_momentum) == ("fedavgm", 1.0, 0.5)
    assert make_server_algorithm(inner, AlgorithmConfig(name="fedadagrad")).name == "fedadagrad"
    with pytest.raises(ValueError, match="replaces FedAvg's weighted mean"):
        make_server_algorithm(CoordinateMedian(), AlgorithmConfig(name="fednova"))


# --- SCAFFOLD (Karimireddy et al., ICML 2020, Algorithm 1, option II) ---------------------------------------
def test_client_control_option_two_by_hand():
    c_i, c = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    diff = torch.tensor([-0.3, 0.6, 0.0])  # y_i − x after K = 3 steps of η_l = 0.1: (x − y_i)/(Kη_l) = [1, -2, 0]
    new = client_control(c_i, c, diff, steps=3, lr=0.1)
    assert torch.allclose(new, torch.tensor([0.5 - 1 + 1, -1 - 1 - 2, 0 - 1 + 0]), atol=1e-6)
    assert torch.equal(client_control(c_i, c, torch.zeros(3), steps=0, lr=0.1), c_i)  # no step: kept


def test_option_two_is_the_mean_gradient_along_the_local_path():
    # f_i(y) = ½ a (y − e)²; K corrected GD steps y ← y − η (g(y) − c_i + c); option II's c_i⁺ = (1/K) Σ_k g(y_k)
    a, e, eta, k = 2.0, torch.tensor([1.0, -3.0], dtype=F64), 0.05, 4
    x = torch.tensor([0.0, 0.5], dtype=F64)
    c_i, c = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([-1.0, 0.4], dtype=F64)
    y, grads = x.clone(), []
    for _ in range(k):
        g = a * (y - e)
        grads.append(g)
        y = y - eta * (g - c_i + c)
    assert torch.allclose(client_control(c_i, c, y - x, k, eta), torch.stack(grads).mean(0), atol=1e-12)


def test_scaffold_server_control_update():
    server = Scaffold()
    assert torch.equal(server.control(3), torch.zeros(3)) and server.state_dict() == {}
    server.update_control(torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -3.0]]), num_clients=4)
    assert torch.allclose(server.control(3), torch.tensor([1.0, 0.5, 0.0]))  # 0 + [4, 2, 0]/4
    server.update_control(torch.tensor([[4.0, 4.0, 4.0]]), num_clients=4)
    assert torch.allclose(server.control(3), torch.tensor([2.0, 1.5, 1.0]))  # + [4, 4, 4]/4
    resumed = Scaffold()
    resumed.load_state_dict(server.state_dict())
    assert torch.equal(resumed.control(3), server.control(3))
    with pytest.raises(ValueError, match="layout"):
        server.control(5)


def test_scaffold_server_step_with_eta_g():
    g = torch.tensor([1.0, 1.0])
    diffs = torch.tensor([[2.0, 0.0], [-1.0, 3.0]])
    out = Scaffold(server_lr=0.5).aggregate(g, diffs, torch.tensor([1, 2]))
    # Δx = ([2, 0] + 2·[-1, 3]) / 3 = [0, 2]; x + 0.5·Δx = [1, 2]
    assert torch.allclose(out, torch.tensor([1.0, 2.0]))
    assert torch.allclose(Scaffold(1.0).aggregate(g, diffs, torch.tensor([1, 2])), FedAvg().aggregate(g, diffs, [1, 2]))


# --- FedNova (Wang et al., NeurIPS 2020) ------------------------------------------------------------------
def test_norm_factor_sgd_is_the_number_of_steps():
    assert norm_factor(5) == 5.0 and norm_factor(0) == 0.0


def test_norm_factor_with_momentum_by_hand_and_against_torch_sgd():
    # ρ = 0.5, τ = 3: buffers u1 = g1, u2 = 0.5 g1 + g2, u3 = 0.25 g1 + 0.5 g2 + g3;
    # Σ u = 1.75 g1 + 1.5 g2 + 1 g3, so ‖a‖₁ = 4.25 = [3 − 0.5(1 − 0.125)/0.5] / 0.5
    assert norm_factor(3, 0.5) == pytest.approx(4.25, abs=1e-12)
    # torch.optim.SGD with momentum 0.5 on a loss of constant gradient 1 moves by lr·‖a‖₁ in 3 steps
    p = torch.zeros(1, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.5)
    for _ in range(3):
        opt.zero_grad()
        p.sum().backward()
        opt.step()
    assert float(-p.detach()) == pytest.approx(0.1 * norm_factor(3, 0.5), abs=1e-12)


def test_normalize_divides_by_the_norm_factor():
    d = torch.tensor([4.25, -8.5])
    assert torch.allclose(normalize(d, 3, 0.5), torch.tensor([1.0, -2.0]))
    assert torch.allclose(normalize(d, 2), torch.tensor([2.125, -4.25]))
    assert torch.equal(normalize(d, 0), torch.zeros(2))


def test_fednova_step_by_hand_and_through_secure_aggregation():
    g = torch.tensor([1.0, 1.0], dtype=F64)
    normalized = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)  # d_i, n = [1, 3]; a_i = [2, 10]
    nova = FedNova()
    nova.begin_round([1.0, 3.0], [2.0, 10.0])  # τ_eff = (1·2 + 3·10)/4 = 8
    # x + 8 · (1·[1, 0] + 3·[0, 1]) / 4 = [1, 1] + [2, 6]
    assert torch.allclose(nova.aggregate(g, normalized, torch.tensor([1, 3])), torch.tensor([3.0, 7.0], dtype=F64))
    with pytest.raises(RuntimeError, match="begin_round"):  # one τ_eff per round, never reused
        nova.aggregate(g, normalized, torch.tensor([1, 3]))
    nova.begin_round([1.0, 3.0], [2.0, 10.0])
    out = _secure_apply(nova, g, normalized, torch.tensor([1, 3]))
    assert torch.allclose(out, torch.tensor([3.0, 7.0], dtype=F64))


def _local_gd(w, e, steps, lr):
    """`steps` steps of GD on f(w) = ½‖w − e‖² from w; returns the update diff = w_local − w."""
    y = w.clone()
    for _ in range(steps):
        y = y - lr * (y - e)
    return y - w


@pytest.mark.parametrize("sizes", [(5, 5), (1, 3)])
def test_fednova_and_fedavg_fixed_points_on_two_quadratics(sizes):
    # client i: f_i(w) = ½‖w − e_i‖², τ_1 = 1 and τ_2 = 10 local GD steps of lr η, p_i = n_i / Σ n.
    # Local GD: w → e_i + (1 − η)^τ_i (w − e_i), so diff_i = q_i (e_i − w) with q_i = 1 − (1 − η)^τ_i.
    # FedAvg: w ← w + Σ p_i q_i (e_i − w); fixed point w* = Σ p_i q_i e_i / Σ p_i q_i (pulled to client 2).
    # FedNova: w ← w + τ_eff Σ p_i (q_i/τ_i)(e_i − w); fixed point Σ p_i r_i e_i / Σ p_i r_i with r_i = q_i/τ_i,
    # and r_i = η (1 − (τ_i − 1)η/2 + O(η²)): the weighted optimum Σ p_i e_i up to O(ητ), the bias FedAvg
    # keeps as η → 0 (its weights tend to p_i τ_i).
    eta, steps = 1e-3, (1, 10)
    e = torch.tensor([[0.0, 2.0], [1.0, -1.0]], dtype=F64)  # [clients, params]
    n = torch.tensor(sizes)
    p = n.to(F64) / n.sum()
    q = torch.tensor([1 - (1 - eta) ** t for t in steps], dtype=F64)
    r = q / torch.tensor(steps, dtype=F64)
    avg_star = (p * q) @ e / (p * q).sum()
    nova_star = (p * r) @ e / (p * r).sum()
    optimum = p @ e

    w_avg = w_nova = torch.tensor([5.0, 5.0], dtype=F64)
    fedavg, fednova = FedAvg(), FedNova()
    for _ in range(6000):
        diffs = torch.stack([_local_gd(w_avg, e[i], steps[i], eta) for i in range(2)])
        w_avg = fedavg.aggregate(w_avg, diffs, n)
        uploads = torch.stack([normalize(_local_gd(w_nova, e[i], steps[i], eta), steps[i]) for i in range(2)])
        fednova.begin_round([fednova.weight(int(k)) for k in n], [norm_factor(t) for t in steps])
        w_nova = fednova.aggregate(w_nova, uploads, n)

    assert torch.allclose(w_avg, avg_star, rtol=0, atol=1e-6)
    assert torch.allclose(w_nova, nova_star, rtol=0, atol=1e-6)
    assert (nova_star - optimum).abs().max() < 5 * eta  # O(ητ) from the weighted optimum
    assert (avg_star - optimum).abs().max() > 0.1  # FedAvg stays biased towards the client with 10 steps
    assert ((avg_star - e[1]).norm() < (optimum - e[1]).norm()).item()
