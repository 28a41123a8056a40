"""Compression wired into the round: config keys, byte meter, error-feedback state, the experiment."""

import json

import pytest
import torch

from fedloom.aggregators import BookLambda, FedAvg
from fedloom.channel import Channel, split_ef
from fedloom.config import build_config
from fedloom.errors import ConfigError
from fedloom.experiments.compression import DEFAULT_SWEEP, pareto_front, run
from fedloom.simulation import Federation, run_federation


def test_book_rate_and_prop_keys_choose_the_books_codecs():
    assert build_config({"rate": 0.9}).upload_codec == "layers:0.9"
    assert build_config({"prop": 0.5}).upload_codec == "mask:0.5"
    assert build_config({"compression": {"up": "q4+ef"}}).upload_codec == "q4+ef"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"compression": {"up": "topk:2"}}, "field 'compression.up'"),
        ({"compression": {"up": "q9"}}, "q1 .. q8"),
        ({"compression": {"down": "q8+ef"}}, "upload only"),
        ({"compression": {"upp": "q8"}}, "did you mean 'up'"),
        ({"rate": 0.9, "prop": 0.5}, "only one of rate"),
        ({"rate": 0.9, "compression": {"up": "q8"}}, "do not also set compression.up"),
        ({"rate": 1.5}, "field 'rate'"),
        ({"sweep": ["q8", "zip"]}, "sweep: codec spec 'zip'"),
    ],
)
def test_bad_compression_settings_are_config_errors(raw, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build_config(raw)


def test_split_ef():
    assert split_ef("topk:0.01+q8+ef") == ("topk:0.01+q8", True)
    assert split_ef("q8") == ("q8", False)
    assert split_ef("ef") == ("none", True)


def test_upload_bytes_are_the_real_payload_lengths():
    cfg = build_config({"global_epochs": 1, "compression": {"up": "topk:0.2+q4"}})
    fed = Federation.build(cfg)
    row = fed.run_round(1)
    # independently: train the same cohort and encode with a fresh channel (same seeds → same payloads)
    res = fed.engine.train(fed.model, Federation.build(cfg).server.global_vec, fed.data, row["clients"], fed.spec, 0, 1)
    payloads = Channel("topk:0.2+q4", "none", False, fed.layout, 0).up(res.diffs, row["clients"], 1)
    assert row["bytes_up"] == sum(len(p) for p in payloads)
    fp32 = 4 * fed.num_params + 2  # raw values + the codec's 2 tag bytes
    assert row["bytes_up"] < fp32 * len(row["clients"])
    assert row["bytes_down"] == fp32 * cfg.k


def test_error_feedback_keeps_state_only_for_clients_that_trained():
    cfg = build_config(
        {"global_epochs": 3, "no_models": 10, "k": 2, "compression": {"up": "sign", "error_feedback": True}}
    )
    fed = Federation.build(cfg)
    res = run_federation(fed)
    trained = {c for r in res.rows for c in r["clients"]}
    assert set(fed.channel.ef.residuals) == trained and len(trained) < 10
    assert all(r.abs().sum() > 0 for r in fed.channel.ef.residuals.values())


def test_error_feedback_is_not_wrapped_around_a_lossless_codec():
    assert Channel("none+ef", "none", True, Federation.build(build_config({})).layout, 0).ef is None


def test_partial_updates_average_over_senders():
    g = torch.zeros(3)
    diffs = torch.tensor([[2.0, 4.0, 0.0], [0.0, 8.0, 6.0]])  # [clients, params]; zeros where not sent
    present = torch.tensor([[True, True, False], [False, True, True]])
    # hand: coordinate 0 only client 0 → 2; coordinate 1 both → (4 + 8)/2 = 6; coordinate 2 only client 1 → 6
    assert torch.allclose(FedAvg().aggregate(g, diffs, torch.tensor([5, 5]), present), torch.tensor([2.0, 6.0, 6.0]))
    # the book's λ rule: λ·k·(mean over senders); λ = 1/k gives the same mean
    assert torch.allclose(
        BookLambda(0.5).aggregate(g, diffs, torch.tensor([1, 9]), present), torch.tensor([2.0, 6.0, 6.0])
    )
    # FedAvg weights the senders by their sample counts: coordinate 1 = (1·4 + 3·8)/4 = 7
    assert torch.allclose(FedAvg().aggregate(g, diffs, torch.tensor([1, 3]), present), torch.tensor([2.0, 7.0, 6.0]))


def test_pareto_front_hand_case():
    rows = [
        {"method": "a", "bytes_up": 100, "accuracy": 0.9},
        {"method": "b", "bytes_up": 10, "accuracy": 0.8},
        {"method": "c", "bytes_up": 50, "accuracy": 0.7},  # beaten by b on both axes
        {"method": "d", "bytes_up": 200, "accuracy": 0.9},  # beaten by a (fewer bytes, same accuracy)
    ]
    assert [r["method"] for r in pareto_front(rows)] == ["a", "b"]


def test_default_sweep_is_valid():
    build_config({"sweep": list(DEFAULT_SWEEP)})


def test_compression_experiment_writes_rows_table_and_figures(tmp_path):
    cfg = build_config({"global_epochs": 3, "no_models": 4, "k": 4, "local_epochs": 1, "sweep": ["q8", "topk:0.1+ef"]})
    summary = run(cfg, tmp_path)
    methods = [r["method"] for r in summary["results"]]
    assert methods == ["none", "q8", "topk:0.1+ef"]
    rows = {r["method"]: r for r in summary["results"]}
    # 27 fp32 values (110 B) vs 27 bytes + 4 per-tensor scales of 8 B + 2 tags (61 B)
    assert rows["none"]["ratio_up_mean"] == 1.0 and rows["q8"]["ratio_up_mean"] == pytest.approx(110 / 61)
    for r in summary["results"]:  # each number as mean, std and per-seed values (experiments/seeds.py)
        assert {"method", "accuracy_mean", "loss_mean", "bytes_up_mean", "bytes_down_mean", "ratio_up_mean"} <= set(r)
    assert (tmp_path / "table.md").read_text().count("\n|") >= 4
    assert json.loads((tmp_path / "summary.json").read_text())["results"][0]["method"] == "none"
    assert (tmp_path / "figures" / "accuracy_vs_bytes.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "accuracy_per_round.png").is_file()
