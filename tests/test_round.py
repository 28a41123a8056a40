"""The one round (fedloom/round.py): hostile answers fail their sender only, in either runtime, and a
resumed run ends bit for bit where an uninterrupted one ends."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from cohorts import Relay

from fedloom.cli import main
from fedloom.config import build_config
from fedloom.round import Answer, Replies, check_update
from fedloom.runs import RunDir
from fedloom.simulation import Federation, run_federation

BASE = {"type": "iris", "model_name": "fnn", "no_models": 4, "k": 4, "global_epochs": 3, "lr": 0.1, "seed": 1}


class Tamper(Relay):
    """A cohort that lets the real clients answer, then replaces client 0's answer with ``change(answer)``."""

    def __init__(self, inner, change):
        super().__init__(inner)
        self.change = change

    def train(self, rnd, clients, down, task):
        rep = self.inner.train(rnd, clients, down, task)
        answers = [self.change(a) if a.client == 0 else a for a in rep.answers]
        return Replies([a for a in answers if a is not None] + getattr(self, "more", []), rep.failed, rep.sent)


def _fp32_payload(values: np.ndarray) -> bytes:
    """A well-formed identity-codec payload (2-byte tag, then fp32 values) holding ``values``."""
    from fedloom.codecs import CodecContext, parse_codec

    fed = Federation.build(build_config(BASE))
    ctx = CodecContext(fed.layout, 0, 1, 0)
    return parse_codec("none").encode(torch.from_numpy(values.astype(np.float32)), ctx)


def _round_with(change, cfg=BASE):
    fed = Federation.build(build_config(cfg))
    fed.round.cohort = Tamper(fed.cohort, change)
    before = fed.server.global_vec.clone()
    row = fed.run_round(1)
    return fed, row, before


def _values(fed, fill: float) -> np.ndarray:
    return np.full(fed.num_params, fill, dtype=np.float64)


N = Federation.build(build_config(BASE)).num_params


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (np.full(N, np.nan), "non-finite"),
        (np.full(N, np.inf), "non-finite"),
        (np.full(N, 1e30), "max_update_norm"),
        (np.full(N, 1e6), "max_update_norm"),
    ],
)
def test_a_poisoned_update_fails_its_client_and_the_round_goes_on(values, why):
    payload = _fp32_payload(values)
    fed, row, _ = _round_with(lambda a: Answer(a.client, payload, a.num_samples, a.train_loss))
    assert row["applied"] and sorted(row["clients"]) == [1, 2, 3]
    assert why in row["failed"]["0"]
    assert bool(torch.isfinite(fed.server.global_vec).all())
    assert fed.server.health_table()["0"]["failures"] == 1


@pytest.mark.parametrize("n", [0, -79, 10**9])
def test_a_sample_count_outside_what_the_client_declared_fails_it(n):
    fed, row, _ = _round_with(lambda a: Answer(a.client, a.payload, n, a.train_loss))
    assert row["applied"] and 0 not in row["clients"]
    assert f"num_samples {n} outside 1.." in row["failed"]["0"]


def test_a_payload_that_does_not_decode_fails_its_client():
    fed, row, _ = _round_with(lambda a: Answer(a.client, b"\x00\x01garbage", a.num_samples, a.train_loss))
    assert "does not decode" in row["failed"]["0"] and row["applied"]


def test_answers_from_outside_the_cohort_or_twice_are_ignored():
    cfg = {**BASE, "k": 2}
    fed = Federation.build(build_config(cfg))
    tamper = Tamper(fed.cohort, lambda a: a)
    fed.round.cohort = tamper
    cohort = fed.server.sample(1)
    outsider = next(c for c in range(4) if c not in cohort)
    payload = _fp32_payload(np.full(fed.num_params, 0.5))
    tamper.more = [Answer(outsider, payload, 10, 0.0), Answer(cohort[0], payload, 10, 0.0)]
    reference = Federation.build(build_config(cfg))
    assert fed.run_round(1)["clients"] == cohort
    reference.run_round(1)
    assert torch.equal(fed.server.global_vec, reference.server.global_vec)  # neither extra answer counted


def test_too_few_good_updates_leave_the_model_unchanged():
    cfg = {**BASE, "runtime": {"min_clients": 4}}
    payload = _fp32_payload(np.full(N, np.nan))
    fed, row, before = _round_with(lambda a: Answer(a.client, payload, a.num_samples, a.train_loss), cfg)
    assert not row["applied"] and row["clients"] == []
    assert torch.equal(fed.server.global_vec, before)


def test_check_update_by_hand():
    assert check_update(torch.tensor([3.0, 4.0]), 5.0) == ""
    assert "norm 5" in check_update(torch.tensor([3.0, 4.0]), 4.99)
    assert "non-finite" in check_update(torch.tensor([1.0, math.nan]), 1e9)


def test_max_update_norm_must_be_finite_and_positive():
    from fedloom.errors import ConfigError

    for bad in (float("inf"), 0, -1):
        with pytest.raises(ConfigError, match="max_update_norm"):
            build_config({**BASE, "runtime": {"max_update_norm": bad}})


# --- resume ----------------------------------------------------------------------------------------
RESUME = {
    **BASE,
    "no_models": 6,
    "k": 3,
    "global_epochs": 6,
    "compression": {"up": "topk:0.2+q8+ef"},
    "runtime": {"dropout": 0.2},
}


def test_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(RESUME), encoding="utf-8")
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "whole"), "-q"]) == 0
    # an interrupted run: three rounds written as `fedloom run` writes them, then the process is gone
    cfg = build_config(RESUME)
    fed = Federation.build(cfg)
    run_dir = RunDir(tmp_path / "cut", cfg.to_dict()).create()

    def on_round(row):
        run_dir.append(row)
        run_dir.write_checkpoint(fed.state_dict(row["round"]))

    for r in range(1, 4):
        on_round(fed.run_round(r))
    run_dir.append(fed.run_round(4))  # a row written, then the crash before its checkpoint: round 4 is redone
    with open(run_dir.metrics, "a", encoding="utf-8") as f:
        f.write('{"round": 5, "acc')  # cut short by the interruption
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "cut"), "--resume", "-q"]) == 0
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 7))
    for a, b in zip(rows, ref, strict=True):
        assert (a["accuracy"], a["loss"], a["bytes_up"], a["clients"]) == (
            b["accuracy"],
            b["loss"],
            b["bytes_up"],
            b["clients"],
        )
    s1 = json.loads((tmp_path / "whole" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s1["final_accuracy"] == s2["final_accuracy"] and s1["bytes_up"] == s2["bytes_up"]


def test_fast_rounds_are_saved_once_a_second_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    """Rounds faster than the save interval: metrics and checkpoint are written after the last round only; with
    saves after rounds 1 and 2 only, Ctrl-C in round 5 keeps rows 1-4 and the round-2 checkpoint, and --resume
    ends where a whole run ends."""
    import fedloom.runner as runner

    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(RESUME), encoding="utf-8")
    saved = []
    write = RunDir.write_checkpoint
    monkeypatch.setattr(
        RunDir, "write_checkpoint", lambda self, state: (saved.append(state["round"]), write(self, state))
    )
    monkeypatch.setattr(runner, "_SAVE_EVERY", 3600.0)  # the default's second, without depending on the clock
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "whole"), "-q"]) == 0
    assert saved == [6]
    saved.clear()
    monkeypatch.setattr(runner, "_SAVE_EVERY", 0.0)  # every round, as with slow rounds
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "each"), "-q"]) == 0
    assert saved == [1, 2, 3, 4, 5, 6]
    run_round = Federation.run_round

    def interrupted(self, r):
        if r == 3:
            monkeypatch.setattr(runner, "_SAVE_EVERY", 3600.0)
        if r == 5:
            raise KeyboardInterrupt
        return run_round(self, r)

    monkeypatch.setattr(Federation, "run_round", interrupted)
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "cut"), "-q"]) == 130  # "fedloom: interrupted"
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["round"] == 2
    monkeypatch.setattr(Federation, "run_round", run_round)
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "cut"), "--resume", "-q"]) == 0

    def metrics(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["round"], r["accuracy"], r["loss"], r["clients"]) for r in map(json.loads, lines)]

    assert metrics("cut") == metrics("each") == metrics("whole") and len(metrics("whole")) == 6
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    again = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_resume_without_the_error_feedback_state_would_differ(tmp_path):
    """The residuals are part of the checkpoint: dropping them changes the result (so the test above can fail)."""
    cfg = build_config(RESUME)
    whole = Federation.build(cfg)
    run_federation(whole)
    fed = Federation.build(cfg)
    for r in range(1, 4):
        fed.run_round(r)
    state = fed.state_dict(3)
    state["clients"] = {}
    again = Federation.build(cfg)
    again.load_state_dict(state)
    run_federation(again, start_round=4)
    assert not torch.equal(whole.server.global_vec, again.server.global_vec)


def test_resume_refuses_a_folder_without_checkpoint(tmp_path, capsys):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(BASE), encoding="utf-8")
    (tmp_path / "run").mkdir()
    assert main(["run", "-c", str(conf), "--out", str(tmp_path / "run"), "--resume", "-q"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_fp32_payload_helper_is_the_identity_codec():
    fed = Federation.build(build_config(BASE))
    payload = _fp32_payload(np.arange(fed.num_params, dtype=np.float64))
    assert len(payload) == 4 * fed.num_params + 2
    assert struct.unpack("<f", payload[-4:])[0] == fed.num_params - 1


def test_resume_with_fedbn_carries_each_clients_batchnorm():
    """FedBN's per-client BatchNorm lives with the simulated clients: it is in the checkpoint too."""
    raw = {"type": "digits", "model_name": "mlp_bn", "hidden": [8], "no_models": 4, "k": 2, "global_epochs": 4}
    cfg = build_config({**raw, "local_epochs": 1, "batch_size": 32, "runtime": {"bn": "fedbn"}})
    whole = Federation.build(cfg)
    run_federation(whole)
    fed = Federation.build(cfg)
    for r in range(1, 3):
        fed.run_round(r)
    state = fed.state_dict(2)
    assert state["clients"]["engine"]  # each trained client's BatchNorm entries
    again = Federation.build(cfg)
    again.load_state_dict(state)
    run_federation(again, start_round=3)
    assert torch.equal(whole.server.global_vec, again.server.global_vec)
    state["clients"]["engine"] = {}
    lost = Federation.build(cfg)
    lost.load_state_dict(state)
    run_federation(lost, start_round=3)
    assert not torch.equal(whole.server.global_vec, lost.server.global_vec)


def test_a_ciphertext_outside_the_key_fails_its_sender_and_the_others_are_added():
    pytest.importorskip("gmpy2")
    secure = {"method": "paillier", "key_bits": 512, "allow_weak_keys": True, "clip": 2.0}
    fed = Federation.build(build_config({**BASE, "secure": secure}))
    garbage = lambda a: Answer(a.client, b"\xff" * len(a.payload), a.num_samples, a.train_loss, a.stats)  # noqa: E731
    fed.round.cohort = Tamper(fed.cohort, garbage)
    row = fed.run_round(1)
    assert row["applied"] and row["clients"] == [1, 2, 3]
    assert "not valid under the federation's public key" in row["failed"]["0"]
