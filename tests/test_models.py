import pytest
import torch

from fedloom.errors import ConfigError
from fedloom.models import build_model


def test_fnn_default_is_the_seeds_network():
    m = build_model("fnn", 4, 3)
    linears = [l for l in m if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(4, 3), (3, 3)]
    assert isinstance(m[1], torch.nn.ReLU)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("mlp", {}), ("logreg", {}), ("cnn", {"image_shape": (1, 8, 8)}), ("fnn", {"hidden": [5, 4]})],
)
def test_models_map_rows_to_logits(name, kw):
    m = build_model(name, 64, 10, **kw)
    assert m(torch.randn(7, 64)).shape == (7, 10)


def test_same_seed_same_weights_and_no_global_rng_use():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("mlp", 5, 2, seed=7)
    after = torch.rand(1)
    b = build_model("mlp", 5, 2, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(before, after)  # building a model did not advance the global RNG


def test_cnn_needs_images_and_torchvision_names_explain():
    with pytest.raises(ConfigError, match="image data"):
        build_model("cnn", 4, 3)
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(ConfigError, match="torchvision"):
            build_model("resnet18", 64, 10, image_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="hidden applies"):
        build_model("logreg", 4, 3, hidden=[3])
