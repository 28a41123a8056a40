import json

import pytest

from fedloom.config import apply_overrides, build_config, load_config
from fedloom.errors import ConfigError

BOOK = {
    "model_name": "fnn",
    "no_models": 10,
    "type": "iris",
    "global_epochs": 20,
    "local_epochs": 3,
    "k": 5,
    "batch_size": 32,
    "lr": 0.001,
    "momentum": 0.0001,
    "lambda": 0.1,
}


def test_book_keys_load_with_their_meaning(tmp_path):
    f = tmp_path / "conf.json"
    f.write_text(json.dumps(BOOK))
    cfg = load_config(f)
    assert (cfg.no_models, cfg.k, cfg.global_epochs, cfg.lambda_) == (10, 5, 20, 0.1)
    assert cfg.to_dict()["lambda"] == 0.1  # written back with the book's spelling


def test_yaml_and_toml_give_the_same_config(tmp_path):
    (tmp_path / "c.yaml").write_text("k: 3\npartition:\n  method: dirichlet\n  alpha: 0.3\n")
    (tmp_path / "c.toml").write_text("k = 3\n[partition]\nmethod = 'dirichlet'\nalpha = 0.3\n")
    assert load_config(tmp_path / "c.yaml") == load_config(tmp_path / "c.toml")


def test_overrides_reach_sections_and_parse_json_values():
    raw = apply_overrides({"k": 5}, ["k=3", "partition.alpha=0.3", "hidden=[8,4]", "name=x"])
    assert raw == {"k": 3, "partition": {"alpha": 0.3}, "hidden": [8, 4], "name": "x"}
    assert build_config(raw).hidden == [8, 4]


def test_overrides_do_not_mutate_the_input():
    raw = {"partition": {"alpha": 1.0}}
    apply_overrides(raw, ["partition.alpha=0.1"])
    assert raw == {"partition": {"alpha": 1.0}}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"kk": 3}, "unknown key 'kk' (did you mean 'k'?)"),
        ({"no_model": 3}, "did you mean 'no_models'"),
        ({"partition": {"methd": "iid"}}, "unknown key 'partition.methd' (did you mean 'method'?)"),
        ({"k": 11}, "k (11) must be ≤ no_models (10)"),
        ({"k": 0}, "field 'k'"),
        ({"no_models": -1}, "field 'no_models'"),
        ({"no_models": "ten"}, "field 'no_models'"),
        ({"lr": 0}, "field 'lr'"),
        ({"momentum": 1.5}, "field 'momentum'"),
        ({"lambda": -0.1}, "field 'lambda'"),
        ({"type": "irs"}, "did you mean 'iris'"),
        ({"type": "cifar"}, "needs a download"),
        ({"model_name": "resnt18"}, "did you mean 'resnet18'"),
        ({"model_name": "transformer"}, "unknown model"),
        ({"hidden": []}, "field 'hidden'"),
        ({"hidden": [4, 0]}, "field 'hidden'"),
        ({"partition": {"method": "random"}}, "field 'partition.method'"),
        ({"partition": {"alpha": 0}}, "field 'partition.alpha'"),
        ({"runtime": {"dropout": 1.0}}, "field 'runtime.dropout'"),
        ({"runtime": {"min_clients": 6}}, "runtime.min_clients (6) must be ≤ k (5)"),
        ({"type": "csv"}, "type: csv needs a data section"),
        ({"type": "csv", "data": {"label": "y"}}, "data.path"),
        ({"type": "csv", "data": {"clients": ["a.csv"]}}, "data.clients lists 1 files but no_models is 10"),
        ({"eval_fraction": 1.0}, "field 'eval_fraction'"),
        ({"name": "a b"}, "field 'name'"),
        ({"secure": {"method": "paillier", "key_bits": 1024}}, "allow_weak_keys"),
        ({"secure": {"method": "rsa"}}, "field 'secure.method'"),
        ({"secure": {"method": "paillier"}, "aggregator": "median"}, "not linear"),
        ({"secure": {"method": "paillier"}, "compression": {"up": "q8"}}, "cannot also be compressed"),
        ({"secure": {"protocol": "encrypted-model"}}, "needs secure.method: paillier"),
        ({"secure": {"method": "paillier", "protocol": "encrypted-model"}}, "method paillier, model_name logreg"),
        (
            {"secure": {"method": "paillier", "protocol": "encrypted-model"}, "model_name": "logreg"},
            "set lambda",
        ),
        ({"aggregator": "trimmed"}, "field 'aggregator'"),
        ({"feature_num": 0}, "field 'feature_num'"),
    ],
)
def test_every_invalid_field_is_one_clear_line(raw, needle):
    with pytest.raises(ConfigError) as e:
        build_config(raw, "conf.json")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("conf.json")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"k": 3,,}')
    with pytest.raises(ConfigError, match="malformed JSON at line 1"):
        load_config(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.json")
    (tmp_path / "bad.yaml").write_text("k: [1,\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["k"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"k": 3}, ["k.x=1"])


def test_relative_data_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.json"
    f.write_text(json.dumps({"type": "csv", "no_models": 2, "k": 1, "data": {"path": "t.csv", "label": "y"}}))
    assert load_config(f).data.path == str(tmp_path / "sub" / "t.csv")
