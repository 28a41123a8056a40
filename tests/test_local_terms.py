"""Local terms of federated optimizers in both engines: FedProx's μ·(w − w_t), SCAFFOLD's c − c_i, and the
number of SGD steps each client took."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import fedloom.engine_kernels as ek
from fedloom.client import Client
from fedloom.config import build_config
from fedloom.data import FedData, load_data
from fedloom.data.partition import Partition
from fedloom.engine_vectorized import VectorizedEngine
from fedloom.engines import AutoEngine, LocalNorm
from fedloom.models import build_model
from fedloom.params import Layout, flatten
from fedloom.training import LocalSpec, SequentialEngine, train_one

ENGINES = [SequentialEngine, VectorizedEngine]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine two threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ by hand (logreg)
X = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
Y = torch.tensor([0, 2])


def _toy() -> FedData:
    """One client holding two rows: with batch 2 every step is a full batch, whatever the shuffle."""
    return FedData("toy", X, Y, X, Y, ["a", "b", "c"], Partition(np.arange(2), np.array([0, 2])))


def _grad_ce(w: torch.Tensor) -> torch.Tensor:
    """∇F of the mean cross-entropy of nn.Linear(2, 3) at flat ``w`` = (W [3, 2], b [3]), written out:
    dF/dz = (softmax(z) − onehot(y)) / rows, ∇W = (dF/dz)ᵀ x, ∇b = Σ_rows dF/dz."""
    W, b = w[:6].view(3, 2), w[6:]
    r = (torch.softmax(X @ W.T + b, 1) - nn.functional.one_hot(Y, 3)) / len(Y)  # [rows, classes]
    return torch.cat([(r.T @ X).reshape(-1), r.sum(0)])


W_G = torch.tensor([0.3, -0.2, 0.1, 0.4, -0.5, 0.2, 0.05, -0.1, 0.0])  # the received global model
C = torch.tensor([0.2, -0.1, 0.05, 0.3, -0.4, 0.1, -0.2, 0.15, 0.05])  # a SCAFFOLD correction c − c_i


@pytest.mark.parametrize("engine", ENGINES)
def test_fedprox_one_step_by_hand_from_a_start_other_than_the_global_model(engine):
    """h(w) = F(w) + μ/2‖w − w_t‖² (Li et al. 2020, eq. 2): w1 = w0 − lr·(∇F(w0) + μ·(w0 − w_t))."""
    lr, mu, w0 = 0.3, 0.7, torch.zeros(9)
    res = engine().train(nn.Linear(2, 3), W_G, _toy(), [0], LocalSpec(1, 2, lr, 0.9, mu), 0, 1, starts=w0[None])
    w1 = w0 - lr * (_grad_ce(w0) + mu * (w0 - W_G))
    assert torch.allclose(res.diffs[0], w1 - W_G, atol=1e-6)
    assert res.train_loss[0].item() == pytest.approx(np.log(3), abs=1e-6)  # F at w0 = 0, without the term
    plain = engine().train(nn.Linear(2, 3), W_G, _toy(), [0], LocalSpec(1, 2, lr, 0.9), 0, 1, starts=w0[None])
    assert (plain.diffs - res.diffs).abs().max() > 0.1  # the term changed the step


@pytest.mark.parametrize("engine", ENGINES)
def test_fedprox_two_steps_with_momentum_by_hand(engine):
    """From w_t itself the term is 0 on step 1 and μ·(w1 − w_t) on step 2; it goes into the momentum buffer:
    buf1 = g1, w1 = w0 − lr·buf1; buf2 = m·buf1 + ∇F(w1) + μ(w1 − w_t), w2 = w1 − lr·buf2."""
    lr, m, mu = 0.3, 0.9, 0.7
    res = engine().train(nn.Linear(2, 3), W_G, _toy(), [0], LocalSpec(2, 2, lr, m, mu), 0, 1)
    buf = _grad_ce(W_G)
    w1 = W_G - lr * buf
    buf = m * buf + _grad_ce(w1) + mu * (w1 - W_G)
    w2 = w1 - lr * buf
    assert torch.allclose(res.diffs[0], w2 - W_G, atol=1e-6)
    assert res.steps.tolist() == [2]


@pytest.mark.parametrize("engine", ENGINES)
def test_scaffold_correction_by_hand(engine):
    """Karimireddy et al. 2020, Alg. 1 line 10: y ← y − η(g(y) + c − c_i); two steps with momentum, and with
    FedProx's term on top of it."""
    lr, m, mu = 0.3, 0.5, 0.4
    spec = LocalSpec(2, 2, lr, m, mu)
    res = engine().train(nn.Linear(2, 3), W_G, _toy(), [0], spec, 0, 1, correction=C[None])
    buf = _grad_ce(W_G) + C
    w1 = W_G - lr * buf
    buf = m * buf + _grad_ce(w1) + mu * (w1 - W_G) + C
    w2 = w1 - lr * buf
    assert torch.allclose(res.diffs[0], w2 - W_G, atol=1e-6)
    one = engine().train(nn.Linear(2, 3), W_G, _toy(), [0], LocalSpec(1, 2, lr), 0, 1, correction=C[None])
    assert torch.allclose(one.diffs[0], -lr * (_grad_ce(W_G) + C), atol=1e-6)  # one plain step


def test_train_one_and_client_take_the_terms_and_count_steps():
    net = nn.Linear(2, 3)
    lr, mu, w0 = 0.3, 0.7, torch.zeros(9)
    diff, loss, steps = train_one(net, W_G, X, Y, LocalSpec(1, 2, lr, 0.0, mu), 0, start=w0, correction=C)
    assert torch.allclose(diff, -lr * (_grad_ce(w0) + mu * (w0 - W_G) + C) - W_G, atol=1e-6) and steps == 1
    client = Client(0, _toy())
    update = client.local_train(net, W_G, LocalSpec(3, 2, lr), 0, 1, correction=C)
    ref = SequentialEngine().train(net, W_G, _toy(), [0], LocalSpec(3, 2, lr), 0, 1, correction=C[None])
    assert torch.equal(update.diff, ref.diffs[0]) and update.steps == 3
    assert client.local_train(net, W_G, LocalSpec(3, 2, lr), 0, 1).steps == 3  # the old call still works


@pytest.mark.parametrize("engine", ENGINES)
def test_a_correction_of_the_wrong_shape_is_refused(engine):
    with pytest.raises(ValueError, match="correction has shape"):
        engine().train(nn.Linear(2, 3), W_G, _toy(), [0], LocalSpec(1, 2, 0.1), 0, 1, correction=C)


# ------------------------------------------------------------------------------ engines agree (real models)
UNEVEN = {"no_models": 6, "k": 6, "momentum": 0.9, "lr": 0.05, "local_epochs": 2, "batch_size": 7,
          "partition": {"method": "quantity", "alpha": 1.0}}  # fmt: skip
# Well-conditioned settings, as in test_vectorized.py (the CNN at lr 0.02; mlp_bn at batch 16, momentum 0.5).
CASES = {
    "fnn": {"type": "iris"},
    "mlp_bn": {"type": "digits", "hidden": [16, 8], "batch_size": 16, "momentum": 0.5},
    "cnn": {"type": "digits", "lr": 0.02},
}
_DATA: dict[str, FedData] = {}


def _setup(model: str, mu: float = 0.0):
    cfg = build_config({**UNEVEN, **CASES[model], "model_name": model})
    key = cfg.type + str(cfg.partition)
    data = _DATA.setdefault(key, load_data(cfg))
    net = build_model(model, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
    return net, data, LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum, mu)


def _correction(net: nn.Module, clients: int, scale: float = 0.05) -> torch.Tensor:
    """``[clients, params]`` random corrections, on the buffer entries too (which must be ignored)."""
    return scale * torch.randn(clients, Layout.from_model(net).size, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("model", list(CASES))
def test_vectorized_equals_sequential_with_fedprox_and_scaffold(model):
    net, data, spec = _setup(model, mu=0.5)
    cohort = [4, 0, 5, 2, 1, 3]  # uneven shards, not sorted
    g, corr = flatten(net), _correction(net, 6)
    ref = SequentialEngine().train(net, g, data, cohort, spec, 7, 3, correction=corr)
    vec = VectorizedEngine().train(net, g, data, cohort, spec, 7, 3, correction=corr)
    assert torch.allclose(ref.diffs, vec.diffs, atol=1e-5, rtol=0), (ref.diffs - vec.diffs).abs().max()
    assert torch.allclose(ref.train_loss, vec.train_loss, atol=1e-5, rtol=0)
    assert torch.equal(ref.steps, vec.steps) and torch.equal(ref.num_samples, vec.num_samples)
    plain = VectorizedEngine().train(net, g, data, cohort, dataclasses.replace(spec, mu=0.0), 7, 3)
    assert (plain.diffs - vec.diffs).abs().max() > 1e-3  # the terms changed the result: not vacuous
    assert torch.equal(g, flatten(net))  # nobody wrote into the global vector or the model


@pytest.mark.parametrize("engine", ENGINES)
def test_the_correction_of_buffer_entries_is_ignored(engine):
    """Only parameters have gradients: BatchNorm's running statistics take no correction."""
    net, data, spec = _setup("mlp_bn")
    g, corr = flatten(net), _correction(net, 2)
    stats = slice(Layout.from_model(net).num_trainable, None)
    other = corr.clone()
    other[:, stats] = 100.0
    a = engine().train(net, g, data, [1, 3], spec, 0, 1, correction=corr)
    b = engine().train(net, g, data, [1, 3], spec, 0, 1, correction=other)
    assert torch.equal(a.diffs, b.diffs)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_terms_and_a_zero_correction_give_the_same_bits(engine):
    net, data, spec = _setup("fnn")
    g = flatten(net)
    none = engine().train(net, g, data, [0, 2], spec, 0, 1)
    zero = engine().train(net, g, data, [0, 2], spec, 0, 1, correction=torch.zeros(2, g.numel()))
    assert torch.equal(none.diffs, zero.diffs) and torch.equal(none.train_loss, zero.train_loss)


@pytest.mark.skipif(ek._FUSED_SGD is None, reason="counts kernels of the fused SGD path")
def test_the_vectorized_step_runs_no_extra_kernel_without_terms():
    """Speed: with μ = 0 and no correction a step is the gradient kernel and the fused SGD update, nothing else;
    with terms it gains one ``add_`` (the shift) per step (counted by torch's profiler)."""
    net, data, spec = _setup("fnn")

    def ops(spec):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            res = VectorizedEngine().train(net, flatten(net), data, [0, 1], spec, 0, 1)
        names = [e.name for e in prof.events()]
        return names.count("aten::add_"), names.count("aten::_fused_sgd_"), int(res.steps.max())

    fused = ek._FUSED_SGD is not None
    adds, updates, steps = ops(spec)
    assert adds == 0 and (updates == steps or not fused)
    adds, updates, steps = ops(dataclasses.replace(spec, mu=0.1))
    assert adds == steps and (updates == steps or not fused)  # one per lock step (the clients of a step share it)


def test_fedbn_anchors_the_proximal_term_at_the_received_model_and_passes_the_correction():
    """Under FedBN a client starts from its own BatchNorm entries, but w_t stays the received global model."""
    net, data, spec = _setup("mlp_bn", mu=0.5)
    g, corr = flatten(net), _correction(net, 2)
    local = LocalNorm(SequentialEngine())
    local.train(net, g, data, [1, 3], spec, 0, 1)  # clients 1 and 3 now hold their own BatchNorm entries
    mask = local._mask
    starts = g.expand(2, -1).clone()
    starts[0, mask], starts[1, mask] = local.state[1], local.state[3]
    assert (starts - g).abs().max() > 0  # the starts differ from the global model
    res = local.train(net, g, data, [1, 3], spec, 0, 2, correction=corr)
    ref = SequentialEngine().train(net, g, data, [1, 3], spec, 0, 2, starts=starts, correction=corr)
    assert torch.equal(res.diffs, ref.diffs) and torch.equal(res.steps, ref.steps)
    vec = LocalNorm(VectorizedEngine())
    vec.load_state_dict({"1": starts[0, mask], "3": starts[1, mask]})
    assert torch.allclose(vec.train(net, g, data, [1, 3], spec, 0, 2, correction=corr).diffs, ref.diffs, atol=1e-5)


def test_fedbn_takes_the_callers_starts_as_the_base():
    net, data, spec = _setup("mlp_bn")
    g = flatten(net)
    base = g + 0.01 * torch.randn(2, g.numel(), generator=torch.Generator().manual_seed(1))  # [clients, params]
    kept = base.clone()
    res = LocalNorm(SequentialEngine()).train(net, g, data, [1, 3], spec, 0, 1, starts=base)
    assert torch.equal(res.diffs, SequentialEngine().train(net, g, data, [1, 3], spec, 0, 1, starts=base).diffs)
    assert torch.equal(base, kept)  # the caller's starts were not written into


def test_auto_engine_passes_the_correction_through():
    net, data, spec = _setup("fnn", mu=0.3)
    g, corr = flatten(net), _correction(net, 2)
    a = AutoEngine().train(net, g, data, [0, 4], spec, 0, 1, correction=corr)
    assert torch.equal(a.diffs, VectorizedEngine().train(net, g, data, [0, 4], spec, 0, 1, correction=corr).diffs)


# ----------------------------------------------------------------------------------------------------- steps
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model", ["fnn", "mlp_bn"])
def test_steps_are_epochs_times_batches_less_skipped_one_row_batches(engine, model):
    net, data, spec = _setup(model)
    cohort = [4, 0, 5, 2, 1, 3]
    n = data.partition.sizes()[cohort]
    batches = -(-n // spec.batch_size)  # ⌈n/B⌉
    expected = spec.epochs * batches
    if model == "mlp_bn":
        single = n % spec.batch_size == 1  # BatchNorm cannot normalize a trailing one-row batch: skipped
        assert single.any()  # the case is exercised
        expected = expected - spec.epochs * single
    res = engine().train(net, flatten(net), data, cohort, spec, 0, 1)
    assert res.steps.dtype == torch.int64 and res.steps.tolist() == expected.tolist()
