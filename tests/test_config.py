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


# --- issue 10: inputs that used to pass silently or end in a traceback ------------------------------------
@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"lr": float("inf")}, "field 'lr'"),
        ({"lambda": float("nan")}, "field 'lambda': Input should be a finite number"),
        ({"partition": {"alpha": float("inf")}}, "field 'partition.alpha'"),
        ({"batch_size": True}, "field 'batch_size'"),  # no bool -> int coercion
        ({"k": "3"}, "field 'k'"),  # no str -> int coercion
        ({"runtime": {"checkpoint": 1}}, "field 'runtime.checkpoint'"),
        ({"seed": 2**32}, "field 'seed'"),
        ({"hidden": [10**9]}, "at most 65536 units"),
        ({"hidden": [4] * 65}, "at most 64 layers"),
        ({"name": "x" * 101}, "at most 100 characters"),
        ({"sweep": []}, "field 'sweep': is empty"),
        ({"type": "wine", "data": {"path": "x.csv"}}, "the data section is for type: csv"),
        ({"lambda": 0.5, "aggregator": "median"}, "aggregator median ignores it"),
        ({"secure": {"key_bits": 10**6}}, "field 'secure.key_bits'"),
        ({"global_epochs": 10**400}, "field 'global_epochs'"),
        ({"type": "synthetic", "synthetic": {"alpha": 1e300}}, "field 'synthetic.alpha'"),
        ({"type": "synthetic", "synthetic": {"num_samples": 10**9, "dim": 60}}, "at most 536,870,912 values"),
        ({"secure": {"method": "paillier", "clip": 1e300}}, "field 'secure.clip'"),
    ],
)
def test_strict_values_are_refused_in_one_line(raw, needle):
    with pytest.raises(ConfigError) as e:
        build_config(raw, "conf.json")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_codec_names_are_case_insensitive():
    cfg = build_config({"compression": {"up": "TopK:0.1+Q8+EF", "down": "FP16"}, "sweep": ["Q4", "none"]})
    assert (cfg.compression.up, cfg.compression.down, cfg.sweep) == ("topk:0.1+q8+ef", "fp16", ["q4", "none"])


@pytest.mark.parametrize(
    ("name", "body", "needle"),
    [
        ("c.json", b'{"k": 3, "lr": 0.1, "k": 4}', "duplicate key 'k'"),
        ("c.yaml", b"k: 3\nk: 4\n", "duplicate key 'k' at line 2 column 1"),
        ("c.json", b'{"lr": Infinity}', "field 'lr': inf is not a finite number"),
        ("c.json", b'{"lr": 1e999}', "field 'lr'"),
        ("c.toml", b"lr = inf\n", "field 'lr'"),
        ("c.toml", b"name = 1979-05-27\n", "field 'name': a date/time (1979-05-27)"),
        ("c.json", '{"name": "é"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9"),
        ("c.json", b"\xff\xfe{\x00}\x00", "UTF-16"),
        ("c.json", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        ("c.json", b'{"runtime": ' * 40 + b"1" + b"}" * 40, "nested more than 32 levels"),
        ("c.yaml", b"k: 3\nlr: [1,\n", "malformed YAML at line 3 column 1"),
    ],
)
def test_config_files_that_used_to_pass_or_crash(tmp_path, name, body, needle):
    (tmp_path / name).write_bytes(body)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / name)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bom_and_yaml_dates_and_exponents_are_read(tmp_path):
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"k": 3}')
    assert load_config(tmp_path / "bom.json").k == 3
    (tmp_path / "c.yaml").write_text("name: 2024-01-01\nlr: 1e-3\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.name == "2024-01-01" and cfg.lr == 0.001


def test_set_mistakes_are_blamed_on_set(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"no_models": 4, "k": 2}')
    with pytest.raises(ConfigError, match=r"^--set batch_size=true: field 'batch_size'"):
        load_config(f, ["batch_size=true"])
    with pytest.raises(ConfigError, match=r"with --set k=9: k \(9\) must be"):
        load_config(f, ["k=9"])
    with pytest.raises(ConfigError, match=r"^--set lr=NaN: field 'lr'"):
        load_config(f, ["lr=NaN"])


def test_every_relative_path_resolves_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "t.csv").write_text("decoy")  # same name in the current folder: must not be picked
    (tmp_path / "keys").mkdir()
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "sub" / "c.json"
    f.write_text(
        json.dumps({"type": "csv", "no_models": 2, "k": 1, "data": {"clients": ["t.csv", "u.csv"], "eval": "e.csv"},
                    "secure": {"key_dir": "keys"}})
    )  # fmt: skip
    cfg = load_config(f)
    sub = tmp_path / "sub"
    assert cfg.data.clients == [str(sub / "t.csv"), str(sub / "u.csv")] and cfg.data.eval == str(sub / "e.csv")
    assert cfg.secure.key_dir == str(sub / "keys")


def test_unreadable_config_is_one_line(tmp_path, monkeypatch):
    f = tmp_path / "c.json"
    f.write_text("{}")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(f), "read_bytes", denied)
    with pytest.raises(ConfigError, match=r"c.json: permission denied"):
        load_config(f)
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        monkeypatch.undo()
        load_config(tmp_path)
