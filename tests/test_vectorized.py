"""The vectorized cohort engine gives the sequential reference's numbers; the Synthetic(α, β) generator."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import fedloom.engine_kernels as ek
import fedloom.engine_vectorized as ev
from fedloom.config import build_config
from fedloom.data import FedData, load_data
from fedloom.data.partition import Partition
from fedloom.data.synthetic import power_law_sizes, synthetic
from fedloom.engine_vectorized import VectorizedEngine, linear_stack, supports
from fedloom.engines import AutoEngine, make_engine
from fedloom.errors import ConfigError
from fedloom.models import build_model
from fedloom.params import Layout, flatten
from fedloom.simulation import Federation, run_federation
from fedloom.training import LocalSpec, SequentialEngine

ATOL = 1e-5
# Uneven shards (quantity skew), momentum, several epochs, a batch size that divides no shard evenly.
UNEVEN = {"no_models": 6, "k": 6, "momentum": 0.9, "lr": 0.05, "local_epochs": 2, "batch_size": 7,
          "partition": {"method": "quantity", "alpha": 1.0}}  # fmt: skip
CASES = {
    "fnn": {"type": "iris"},
    "mlp": {"type": "digits", "hidden": [16, 8]},
    "logreg": {"type": "wine"},
    # digits rows are 8×8 images; goes through vmap(grad). At lr 0.05 with momentum 0.9 this CNN's float32
    # training is chaotic (max-pool/ReLU decisions flip: float32 vs float64 of the *reference* differ by 0.65
    # after 180 steps), so two engines can only agree on a well-conditioned case.
    "cnn": {"type": "digits", "lr": 0.02},
}
_DATA: dict[str, FedData] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine two threads thrash (10–100× slower small ops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(model: str, **over):
    cfg = build_config({**UNEVEN, **CASES[model], "model_name": model, **over})
    key = cfg.type + str(cfg.partition) + str(cfg.no_models)
    data = _DATA.setdefault(key, load_data(cfg))
    net = build_model(model, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
    spec = LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
    return net, data, spec


def _global(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _assert_same(a, b, atol=ATOL):
    assert a.clients == b.clients
    assert torch.equal(a.num_samples, b.num_samples)
    assert torch.allclose(a.diffs, b.diffs, atol=atol, rtol=0), (a.diffs - b.diffs).abs().max()
    assert torch.allclose(a.train_loss, b.train_loss, atol=atol, rtol=0), (a.train_loss - b.train_loss).abs().max()


@pytest.mark.parametrize("model", list(CASES))
def test_vectorized_equals_sequential_on_uneven_shards(model):
    net, data, spec = _setup(model)
    sizes = data.partition.sizes()
    assert len(set(sizes.tolist())) > 3 and (sizes % spec.batch_size > 0).sum() >= 4  # really uneven
    cohort = [4, 0, 5, 2, 1, 3]  # not sorted: results come back in the caller's order
    g = _global(net)
    ref = SequentialEngine().train(net, g, data, cohort, spec, seed=7, round=3)
    vec = VectorizedEngine().train(net, g, data, cohort, spec, seed=7, round=3)
    _assert_same(ref, vec)
    assert ref.diffs.abs().max() > 0.1  # training moved the model: the comparison is not vacuous
    assert torch.equal(g, _global(net))  # neither engine wrote into the global vector or the model


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("softmax_by_hand", [False, True])
def test_momentum_values_and_one_epoch(momentum, softmax_by_hand, monkeypatch):
    monkeypatch.setattr(ek, "_SOFTMAX_BY_HAND", 0 if softmax_by_hand else 10**9)  # both softmax paths
    net, data, _ = _setup("mlp")
    spec = LocalSpec(1, 32, 0.1, momentum)
    g = _global(net)
    _assert_same(
        SequentialEngine().train(net, g, data, [1, 3], spec, 0, 1),
        VectorizedEngine().train(net, g, data, [1, 3], spec, 0, 1),
    )


def test_a_model_off_the_fast_path_goes_through_vmap_and_still_matches():
    net, data, spec = _setup("fnn")
    odd = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    assert linear_stack(odd) is None and supports(odd)
    g = _global(odd)
    _assert_same(
        SequentialEngine().train(odd, g, data, [0, 1, 2], spec, 1, 1),
        VectorizedEngine().train(odd, g, data, [0, 1, 2], spec, 1, 1),
    )


def test_one_step_by_hand():
    """logreg from zero weights, one client, one batch of 2 rows: grad W = (softmax(0) − onehot(y))ᵀ x / 2 =
    (1/3 − onehot)ᵀ x / 2, grad b = Σ (1/3 − onehot) / 2; diff = −lr·grad; loss = ln 3."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    y = torch.tensor([0, 2])
    data = FedData("toy", x, y, x, y, ["a", "b", "c"], Partition(np.arange(2), np.array([0, 2])))
    net = nn.Linear(2, 3)
    res = VectorizedEngine().train(net, torch.zeros(9), data, [0], LocalSpec(1, 2, 0.3, 0.9), 0, 1)
    r = torch.full((2, 3), 1 / 3) - nn.functional.one_hot(y, 3)  # [rows, classes]
    expected = -0.3 * torch.cat([(r.T @ x / 2).reshape(-1), r.sum(0) / 2])
    assert torch.allclose(res.diffs[0], expected, atol=1e-7)
    assert res.train_loss[0].item() == pytest.approx(np.log(3), abs=1e-6) and res.num_samples.tolist() == [2]


def test_an_empty_client_is_unchanged():
    x = torch.randn(9, 4)
    y = torch.randint(0, 3, (9,))
    data = FedData("toy", x, y, x, y, ["a", "b", "c"], Partition(np.arange(9), np.array([0, 4, 4, 9])))
    net = build_model("fnn", 4, 3)
    g, spec = _global(net), LocalSpec(2, 3, 0.1, 0.5)
    ref = SequentialEngine().train(net, g, data, [0, 1, 2], spec, 0, 1)
    vec = VectorizedEngine().train(net, g, data, [0, 1, 2], spec, 0, 1)
    _assert_same(ref, vec)
    assert vec.num_samples.tolist() == [4, 0, 5] and not vec.diffs[1].any() and vec.train_loss[1] == 0


def test_chunked_equals_unchunked_and_memory_sizes_the_chunks(monkeypatch):
    net, data, spec = _setup("mlp")
    g, cohort = _global(net), list(range(6))
    whole = VectorizedEngine().train(net, g, data, cohort, spec, 0, 2)
    _assert_same(whole, VectorizedEngine(chunk=2).train(net, g, data, cohort, spec, 0, 2), atol=1e-6)
    # Pretend memory is short: the budget then fits about two clients per chunk.
    engine = VectorizedEngine()
    ordered = sorted(cohort, key=lambda c: -data.partition.sizes()[c])
    assert engine.chunks(net, data, ordered[:1], spec) == [ordered[:1]]  # a small cohort: one chunk
    monkeypatch.setattr(ev, "_SMALL_BYTES", 0)
    monkeypatch.setattr(ev, "_GATHER_BYTES", 0)
    one_client = ev._F32 * 4 * sum(p.numel() for p in net.parameters())
    fake = SimpleNamespace(available=2.5 * one_client / ev._MEMORY_FRACTION)
    monkeypatch.setattr(ev.psutil, "virtual_memory", lambda: fake)
    chunks = engine.chunks(net, data, ordered, spec)
    assert len(chunks) > 2 and [c for ch in chunks for c in ch] == ordered
    _assert_same(whole, engine.train(net, g, data, cohort, spec, 0, 2), atol=1e-6)


def _rows(res):
    return [(r["round"], r["clients"], r["bytes_up"], r["bytes_down"]) for r in res.rows]


@pytest.mark.parametrize(
    "raw",
    [
        {"global_epochs": 6, "no_models": 8, "k": 4, "partition": {"method": "quantity", "alpha": 0.8}},
        {"type": "digits", "model_name": "mlp", "hidden": [16], "global_epochs": 3, "no_models": 20, "k": 10,
         "batch_size": 16, "lambda": 0.1, "runtime": {"dropout": 0.2}},
    ],
)  # fmt: skip
def test_federation_metrics_do_not_depend_on_the_engine(raw):
    runs = {}
    for engine in ("sequential", "vectorized", "auto"):
        cfg = build_config({**raw, "runtime": {**raw.get("runtime", {}), "engine": engine}})
        runs[engine] = run_federation(Federation.build(cfg))
    seq, vec, auto = runs["sequential"], runs["vectorized"], runs["auto"]
    assert _rows(seq) == _rows(vec) == _rows(auto)
    for key in ("accuracy", "loss", "train_loss"):
        assert [r[key] for r in vec.rows] == pytest.approx([r[key] for r in seq.rows], abs=1e-5)
    assert torch.allclose(seq.global_vec, vec.global_vec, atol=1e-5)
    assert (seq.summary["engine"], vec.summary["engine"], auto.summary["engine"]) == (
        "sequential", "vectorized", "vectorized",
    )  # fmt: skip


def test_chunk_setting_reaches_the_engine():
    cfg = build_config({"runtime": {"engine": "vectorized", "chunk": 3}})
    assert Federation.build(cfg).engine.chunk == 3


def test_engine_choice_and_models_the_vectorized_engine_refuses():
    assert isinstance(make_engine("sequential"), SequentialEngine)
    assert isinstance(make_engine("vectorized", 4), VectorizedEngine) and make_engine("vectorized", 4).chunk == 4
    assert isinstance(make_engine("auto"), AutoEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("fast")
    with pytest.raises(ConfigError, match="chunk"):
        VectorizedEngine(0)
    assert supports(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)))  # mlp_bn
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))  # statistics, off the stack
    assert not supports(bn) and not supports(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)))
    _, data, spec = _setup("fnn")
    g = flatten(bn)
    with pytest.raises(ConfigError, match="use engine auto or sequential"):
        VectorizedEngine().train(bn, g, data, [0], spec, 0, 1)
    auto = AutoEngine()
    auto.train(bn, g, data, [0], spec, 0, 1)
    assert auto.name == "sequential"  # auto falls back to the reference for such models


@pytest.mark.parametrize(
    ("runtime", "needle"),
    [({"engine": "fast"}, "runtime.engine"), ({"chunk": 0}, "runtime.chunk")],
)
def test_runtime_fields_are_validated(runtime, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config({"runtime": runtime})
    assert build_config({"runtime": {"engine": "vectorized", "chunk": 5}}).runtime.chunk == 5


def test_linear_stack_detects_the_fast_path_models():
    assert len(linear_stack(build_model("fnn", 4, 3, [5, 6]))) == 3
    assert len(linear_stack(build_model("logreg", 4, 3))) == 1
    assert linear_stack(build_model("cnn", 64, 10, image_shape=(1, 8, 8))) is None
    assert linear_stack(nn.Sequential(nn.Linear(4, 3), nn.ReLU())) is None  # must end with a Linear


# ----------------------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_sizes_and_grouping():
    x, y, sizes = synthetic(50, 5_000, 60, 10, 1.0, 1.0, np.random.default_rng(0))
    assert x.shape == (5_000, 60) and x.dtype == np.float32 and y.shape == (5_000,) and y.dtype == np.int64
    assert sizes.shape == (50,) and sizes.sum() == 5_000 and sizes.min() >= 1
    assert y.min() >= 0 and y.max() < 10
    assert sizes.max() > 5 * np.median(sizes)  # power law: a few clients hold much of the data
    ends = np.cumsum(sizes)
    means = np.array([x[e - s : e].mean(0) for s, e in zip(sizes, ends) if s >= 20])  # per-client input means
    assert means.std(0).mean() > 0.5  # rows of one client share their v_k: grouped by client, in order


def test_synthetic_clients_differ_in_labels_and_alpha_beta_zero_still_varies_models():
    for alpha_beta in (1.0, 0.0):
        x, y, sizes = synthetic(40, 8_000, 20, 5, alpha_beta, alpha_beta, np.random.default_rng(1), min_size=50)
        owner = np.repeat(np.arange(40), sizes)
        hist = np.zeros((40, 5))
        np.add.at(hist, (owner, y), 1)
        p = hist / hist.sum(1, keepdims=True)  # [clients, classes] label distribution per client
        tv = 0.5 * np.abs(p[:, None] - p[None]).sum(-1)  # [clients, clients] total variation distance
        assert tv[np.triu_indices(40, 1)].mean() > 0.3  # non-IID: clients' label mixes differ a lot
        assert sizes.min() >= 50


def test_synthetic_is_deterministic_and_scales_to_10k_clients():
    a = synthetic(10_000, 200_000, 60, 10, 0.5, 0.5, np.random.default_rng(3))
    b = synthetic(10_000, 200_000, 60, 10, 0.5, 0.5, np.random.default_rng(3))
    c = synthetic(10_000, 200_000, 60, 10, 0.5, 0.5, np.random.default_rng(4))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert len(a[2]) == 10_000 and a[2].sum() == 200_000


def test_synthetic_rejects_impossible_settings():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="min_size"):
        power_law_sizes(10, 15, rng, min_size=2)
    with pytest.raises(ValueError, match="classes"):
        synthetic(3, 30, 5, 1, 1.0, 1.0, rng)
    with pytest.raises(ValueError, match="standard deviations"):
        synthetic(3, 30, 5, 3, -1.0, 1.0, rng)


# ---------------------------------------------------------------------------------------------- BatchNorm
# Well conditioned: at batch 7 with momentum 0.9 BatchNorm's 7-row statistics make the *reference* chaotic
# (a 1e-7 relative nudge of the start moves its diff by 0.017), so no two float32 programs agree there.
BN = {"type": "digits", "model_name": "mlp_bn", "hidden": [16, 8], "batch_size": 16, "momentum": 0.5}


def _bn_setup(**over):
    cfg = build_config({**UNEVEN, **BN, **over})
    key = cfg.type + str(cfg.partition) + str(cfg.no_models)
    data = _DATA.setdefault(key, load_data(cfg))
    net = build_model(cfg.model_name, data.num_features, data.num_classes, cfg.hidden, None, cfg.seed)
    return net, data, LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)


def test_batchnorm_model_trains_alike_in_both_engines_statistics_included():
    net, data, spec = _bn_setup()
    layout = Layout.from_model(net)
    assert layout.buffers == 4 and layout.names[-4:] == ("1.running_mean", "1.running_var", "4.running_mean",
                                                         "4.running_var")  # fmt: skip
    sizes = data.partition.sizes()
    assert (sizes % spec.batch_size == 1).any()  # a trailing one-row batch, which BatchNorm must skip
    cohort = [4, 0, 5, 2, 1, 3]
    g = flatten(net)
    ref = SequentialEngine().train(net, g, data, cohort, spec, seed=7, round=3)
    vec = VectorizedEngine().train(net, g, data, cohort, spec, seed=7, round=3)
    _assert_same(ref, vec)
    stats = slice(layout.num_trainable, layout.size)
    assert ref.diffs[:, stats].abs().min(1).values.gt(0).all()  # every client moved its running statistics
    assert torch.equal(g, flatten(net))  # neither engine wrote into the model or the global vector
    auto = AutoEngine()
    _assert_same(ref, auto.train(net, g, data, cohort, spec, 7, 3))
    assert auto.name == "vectorized"


def test_sequential_scratch_model_starts_every_client_from_the_global_statistics():
    """One scratch model serves the cohort: a client's result must not depend on who trained before it."""
    net, data, spec = _bn_setup()
    g = flatten(net)
    alone = SequentialEngine().train(net, g, data, [3], spec, 7, 3)
    after_others = SequentialEngine().train(net, g, data, [0, 5, 3], spec, 7, 3)
    assert torch.equal(alone.diffs[0], after_others.diffs[2])


def test_batch_size_one_is_refused_for_batchnorm():
    net, data, _ = _bn_setup()
    spec = LocalSpec(1, 1, 0.1, 0.0)
    for engine in (SequentialEngine(), VectorizedEngine()):
        with pytest.raises(ConfigError, match="batch_size 1"):
            engine.train(net, flatten(net), data, [0], spec, 0, 1)


def _recalibrated_accuracy(fed) -> float:
    """The global weights with BatchNorm statistics recomputed on all training rows (cumulative average)."""
    import copy

    from fedloom.params import load_into

    model = copy.deepcopy(fed.model)
    load_into(model, fed.server.global_vec)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(fed.data.x_train)
    model.eval()
    with torch.no_grad():
        return float((model(fed.data.x_eval).argmax(1) == fed.data.y_eval).float().mean())


def test_digits_batchnorm_accuracy_is_that_of_the_averaged_statistics():
    """The issue: BatchNorm statistics never travelled, so the server evaluated with its initial ones (0.778
    reported where recalibrated statistics gave 0.969). Now the reported accuracy is the model's own."""
    raw = {"type": "digits", "model_name": "mlp_bn", "hidden": [32], "global_epochs": 15, "no_models": 10,
           "k": 5, "local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.5}  # fmt: skip
    runs = {}
    for engine in ("sequential", "vectorized"):
        fed = Federation.build(build_config({**raw, "runtime": {"engine": engine}}))
        runs[engine] = (run_federation(fed), fed)
    (seq, fed), (vec, _) = runs["sequential"], runs["vectorized"]
    assert [r["accuracy"] for r in vec.rows] == pytest.approx([r["accuracy"] for r in seq.rows], abs=1e-5)
    assert torch.allclose(seq.global_vec, vec.global_vec, atol=1e-5)
    reported = seq.summary["final_accuracy"]
    assert reported > 0.9 and abs(reported - _recalibrated_accuracy(fed)) < 0.03  # measured 0.936
    initial = fed.server.global_vec.clone()  # what the server evaluated before: its initial statistics
    for name, part in zip(fed.layout.names, fed.layout.slices()):
        if name.endswith(("running_mean", "running_var")):
            initial[part] = 0.0 if name.endswith("mean") else 1.0
    assert fed.server.evaluate(initial)[0] < reported - 0.2  # measured 0.642


def test_models_whose_state_cannot_travel_are_refused_with_one_line():
    cumulative = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, momentum=None), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="momentum=None") as e:
        Layout.from_model(cumulative)
    assert "\n" not in str(e.value)

    class Counter(nn.Linear):
        def __init__(self):
            super().__init__(4, 3)
            self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    with pytest.raises(ConfigError, match="buffer 'steps'"):
        flatten(Counter())


# -------------------------------------------------------------------------------------------------- FedBN
def test_fedbn_keeps_each_clients_batchnorm_and_averages_the_rest():
    from fedloom.engines import LocalNorm
    from fedloom.params import norm_mask

    net, data, spec = _bn_setup()
    mask = norm_mask(net)
    layout = Layout.from_model(net)
    assert int(mask.sum()) == 4 * (16 + 8)  # γ, β, running mean and variance of both BatchNorm layers
    assert not mask[: layout.offsets[2]].any()  # the first Linear is shared
    g1 = flatten(net)
    for inner in (SequentialEngine(), VectorizedEngine()):
        fedbn = LocalNorm(inner)
        r1 = fedbn.train(net, g1, data, [0, 1], spec, 0, 1)
        local0 = (g1 + r1.diffs[0])[mask]
        assert torch.equal(fedbn.state[0], local0)
        g2 = g1 + r1.diffs.mean(0)  # some new global model
        r2 = fedbn.train(net, g2, data, [2, 0], spec, 0, 2)  # not in step order: starts must follow the clients
        start = g2.clone()
        start[mask] = local0  # client 0 trains from its own BatchNorm, client 2 (first time) from the global one
        by_hand = SequentialEngine().train(net, g2, data, [0], spec, 0, 2, starts=start[None])
        torch.testing.assert_close(r2.diffs[1], by_hand.diffs[0], atol=ATOL, rtol=0)
        plain = SequentialEngine().train(net, g2, data, [2], spec, 0, 2)
        torch.testing.assert_close(r2.diffs[0], plain.diffs[0], atol=ATOL, rtol=0)
        from_global = SequentialEngine().train(net, g2, data, [0], spec, 0, 2)
        assert not torch.allclose(r2.diffs[1], from_global.diffs[0], atol=1e-3)  # its own BatchNorm mattered
        restored = LocalNorm(inner)
        restored.load_state_dict(fedbn.state_dict())
        assert restored.state.keys() == fedbn.state.keys() == {0, 1, 2}


def test_fedbn_config():
    fed = Federation.build(build_config({**BN, "no_models": 4, "k": 2, "global_epochs": 2,
                                         "runtime": {"bn": "fedbn"}}))  # fmt: skip
    res = run_federation(fed)
    assert len(fed.engine.state) > 0 and res.summary["final_accuracy"] > 0
    with pytest.raises(ConfigError, match="runtime.bn: fedbn"):
        build_config({"model_name": "mlp", "runtime": {"bn": "fedbn"}})
    with pytest.raises(ConfigError, match="runtime.bn"):
        build_config({"runtime": {"bn": "local"}})
