"""runtime.device: resolution, the refusal of cuda without CUDA, and the plumbing (dtype/device of every
payload) on the CPU. With CUDA present, the CUDA run equals the CPU run to float rounding."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fedloom.config import build_config
from fedloom.device import on_device, resolve_device
from fedloom.errors import ConfigError
from fedloom.simulation import Federation, run_federation

SMALL = {"type": "digits", "model_name": "mlp", "hidden": [16], "no_models": 6, "k": 4, "global_epochs": 2,
         "local_epochs": 1, "batch_size": 16, "lr": 0.1, "momentum": 0.5, "runtime": {"threads": 1}}  # fmt: skip
HAS_CUDA = torch.cuda.is_available()


def _run(extra: dict) -> tuple:
    cfg = build_config({**SMALL, "runtime": {**SMALL["runtime"], **extra}})
    fed = Federation.build(cfg)
    return fed, run_federation(fed)


def test_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ConfigError, match="runtime.device"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="runtime.device"):
        build_config({"runtime": {"device": "gpu"}})


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^runtime.device: cuda, but this torch .*; use auto or cpu$"):
        resolve_device("cuda")
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({**SMALL, "runtime": {"device": "cuda"}}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fedloom.cli", "run", "-c", str(conf), "--out", str(out), "-q"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "runtime.device: cuda" in proc.stderr
    assert not out.exists()  # refused before anything is written


def test_on_device_copies_once():
    t = torch.arange(4.0)
    assert on_device(t, torch.device("cpu")) is t
    meta = torch.device("meta")
    first = on_device(t, meta)
    assert first.device == meta and on_device(t, meta) is first


@pytest.mark.parametrize("engine", ["vectorized", "auto", "sequential"])
def test_cpu_payloads_are_cpu_float32(engine):
    fed, res = _run({"engine": engine, "device": "cpu"})
    assert res.summary["device"] == "cpu" and res.summary["threads"] == 1
    assert fed.server.global_vec.device.type == "cpu" and fed.server.global_vec.dtype == torch.float32
    cohort = fed.engine.train(fed.model, fed.server.global_vec, fed.data, [0, 1, 2], fed.spec, 0, 9)
    assert cohort.diffs.device.type == "cpu" and cohort.diffs.dtype == torch.float32
    assert cohort.diffs.shape == (3, fed.num_params)
    assert cohort.num_samples.dtype == torch.int64 and cohort.train_loss.dtype == torch.float32


def test_explicit_cpu_equals_default_on_a_cpu_machine():
    if HAS_CUDA:
        pytest.skip("auto picks cuda here")
    _, a = _run({"engine": "vectorized"})
    _, b = _run({"engine": "vectorized", "device": "cpu"})
    assert torch.equal(a.global_vec, b.global_vec)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_cuda_equals_cpu(model):
    over = {"model_name": model} | ({"hidden": None} if model == "cnn" else {})
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = build_config({**SMALL, **over, "runtime": {"threads": 1, "engine": "vectorized", "device": device}})
        fed = Federation.build(cfg)
        runs[device] = (fed, run_federation(fed))
    cpu, (f_gpu, gpu) = runs["cpu"][1], runs["cuda"]
    assert gpu.summary["device"] == "cuda" and f_gpu.server.x_eval.device.type == "cuda"
    assert gpu.global_vec.device.type == "cpu"  # the wire and the global model stay on the CPU
    assert torch.allclose(cpu.global_vec, gpu.global_vec, atol=1e-4, rtol=1e-4)
    for r_cpu, r_gpu in zip(cpu.rows, gpu.rows):
        assert r_gpu["loss"] == pytest.approx(r_cpu["loss"], abs=1e-4)
        assert r_gpu["train_loss"] == pytest.approx(r_cpu["train_loss"], abs=1e-4)
        assert r_gpu["bytes_up"] == r_cpu["bytes_up"]
