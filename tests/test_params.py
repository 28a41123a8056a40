import pytest
import torch

from fedloom.models import build_model
from fedloom.params import Layout, flatten, load_into, unflatten


def test_flatten_unflatten_round_trip_follows_the_layout():
    model = build_model("fnn", 4, 3, hidden=[5])
    layout = Layout.from_model(model)
    assert layout.shapes == ((5, 4), (5,), (3, 5), (3,)) and layout.offsets == (0, 20, 25, 40, 43)
    vec = flatten(model)
    parts = unflatten(vec, layout)
    assert all(torch.equal(parts[n], p) for n, p in model.named_parameters())
    load_into(model, torch.arange(43, dtype=torch.float32))
    assert model[0].bias.tolist() == [20.0, 21.0, 22.0, 23.0, 24.0]
    with pytest.raises(ValueError, match="layout expects 43"):
        unflatten(torch.zeros(42), layout)


def test_batchnorm_statistics_travel_in_the_vector_and_counters_reset():
    model = build_model("mlp_bn", 4, 3, hidden=[5])  # Linear(4,5) → BatchNorm1d(5) → ReLU → Linear(5,3)
    layout = Layout.from_model(model)
    assert layout.names == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias",
                            "1.running_mean", "1.running_var")  # fmt: skip
    assert layout.buffers == 2 and layout.num_trainable == 20 + 5 + 5 + 5 + 15 + 3 and layout.size == 63
    assert layout.to_dict()["buffers"] == 2
    model.train()
    model(torch.randn(8, 4))  # moves the running statistics and counts one batch
    vec = flatten(model)
    assert torch.equal(vec[-10:-5], model[1].running_mean) and torch.equal(vec[-5:], model[1].running_var)
    fresh = build_model("mlp_bn", 4, 3, hidden=[5], seed=1)
    load_into(fresh, vec)
    assert torch.equal(flatten(fresh), vec) and int(fresh[1].num_batches_tracked) == 0
    assert torch.equal(unflatten(vec, layout)["1.running_var"], model[1].running_var)
    with pytest.raises(ValueError, match="62 values"):
        load_into(fresh, vec[:-1])


def test_models_without_buffers_keep_their_layout():
    layout = Layout.from_model(build_model("mlp", 4, 3, hidden=[5]))
    assert layout.buffers == 0 and layout.num_trainable == layout.size == 43
