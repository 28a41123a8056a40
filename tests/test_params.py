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
