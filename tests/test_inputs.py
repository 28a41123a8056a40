"""Hostile and clumsy inputs through the command line: exit 2, one line on stderr naming the field or file,
no traceback, nothing written; run folders that never lose or mix a user's files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IRIS = ROOT / "configs" / "iris.json"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "MPLBACKEND": "Agg"}


def fedloom(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fedloom.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=300,
    )


def _one_clear_line(p, needle):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedloom: error: "), p.stderr
    assert needle in lines[0], lines[0]


def _csv(path, header, rows, encoding="utf-8"):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n", encoding=encoding)
    return path.name


def _two_class_rows(n=12, shift=0):
    return [[i + shift, (i * 7) % 5, "ab"[i % 2]] for i in range(n)]


# (id, config file name, its bytes, extra CLI args, needle in the one error line)
CONFIGS = [
    ("json-infinity", "c.json", b'{"lr": Infinity}', [], "field 'lr': inf is not a finite number"),
    ("json-nan-lambda", "c.json", b'{"lambda": NaN}', [], "field 'lambda': nan is not a finite number"),
    ("json-1e999", "c.json", b'{"lr": 1e999}', [], "field 'lr'"),
    ("yaml-inf", "c.yaml", b"partition:\n  alpha: .inf\n", [], "field 'partition.alpha'"),
    ("toml-nan", "c.toml", b"momentum = nan\n", [], "field 'momentum': nan is not a finite number"),
    ("set-infinity", "c.json", b"{}", ["--set", "lr=Infinity"], "--set lr=Infinity: field 'lr'"),
    ("latin-1", "c.json", '{"name": "café"}'.encode("latin-1"), [], "not UTF-8 text"),
    ("gbk", "c.yaml", "name: 联邦\n".encode("gbk"), [], "save the config file as UTF-8"),
    ("binary", "c.json", bytes(range(256)) * 4, [], "c.json"),
    ("utf-16", "c.json", '{"k": 3}'.encode("utf-16"), [], "UTF-16"),
    ("deep-json", "c.json", b"[" * 100_000 + b"]" * 100_000, [], "nested too deeply"),
    ("deep-set", "c.json", b"{}", ["--set", "hidden=" + "[" * 50 + "]" * 50], "nested more than"),
    ("yaml-date", "c.yaml", b"lr: 2024-01-01\n", [], "field 'lr'"),
    ("toml-datetime", "c.toml", b"name = 2024-01-01T10:00:00\n", [], "field 'name': a date/time"),
    ("seed-2^32", "c.json", b'{"seed": 4294967296}', [], "field 'seed'"),
    ("hidden-absurd", "c.json", b'{"hidden": [1000000000000]}', [], "at most 65536 units"),
    ("name-300", "c.json", json.dumps({"name": "n" * 300}).encode(), [], "at most 100 characters"),
    ("dup-json", "c.json", b'{"k": 3, "k": 4}', [], "duplicate key 'k'"),
    ("dup-yaml", "c.yaml", b"k: 3\nlr: 0.1\nk: 4\n", [], "duplicate key 'k' at line 3"),
    ("yaml-line-col", "c.yaml", b"k: 3\npartition:\n  method: [iid\n", [], "at line 4 column 1"),
    ("set-bool-int", "c.json", b"{}", ["--set", "batch_size=true"], "--set batch_size=true: field 'batch_size'"),
    ("bool-int-file", "c.json", b'{"local_epochs": true}', [], "field 'local_epochs'"),
    ("set-blamed", "c.json", b'{"k": 2}', ["--set", "k=abc"], "--set k=abc: field 'k'"),
    ("set-rule-blamed", "c.json", b'{"no_models": 4, "k": 2}', ["--set", "k=9"], "with --set k=9: k (9)"),
    ("sweep-empty", "c.json", b'{"sweep": []}', [], "field 'sweep': is empty"),
    ("data-for-bundled", "c.json", b'{"type": "iris", "data": {"path": "x.csv"}}', [], "the data section is for"),
    ("lambda-median", "c.json", b'{"lambda": 0.5, "aggregator": "median"}', [], "ignores it"),
    ("eval-0.99", "c.json", b'{"eval_fraction": 0.99}', [], "training rows"),
    ("set-empty-key-part", "c.json", b"{}", ["--set", "partition..alpha=1"], "empty part in the key"),
    ("memory-too-small", "c.json", b'{"runtime": {"client_memory_mb": 1e-05}}', [], "smallest task needs 0.00"),
]


@pytest.mark.parametrize(("name", "body", "extra", "needle"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, name, body, extra, needle):
    (tmp_path / name).write_bytes(body)
    out = tmp_path / "out"
    p = fedloom("run", "-c", tmp_path / name, "--out", out, "-q", *extra)
    _one_clear_line(p, needle)
    assert not out.exists()
    assert "allow_weak_keys=True" not in p.stderr and "overwrite=True" not in p.stderr


def _csv_case(tmp, case):
    """Write the files of one CSV case; returns the config's data section and no_models."""
    if case == "nan-cell":
        return {"path": _csv(tmp / "t.csv", ["a", "b", "y"], [*_two_class_rows(), [1, "nan", "a"]])}, 2
    if case == "inf-cell":
        return {"path": _csv(tmp / "t.csv", ["a", "b", "y"], [[1, "-inf", "a"], *_two_class_rows()])}, 2
    if case == "1e999-cell":
        return {"path": _csv(tmp / "t.csv", ["a", "b", "y"], [*_two_class_rows(), [1, "1e999", "b"]])}, 2
    if case == "latin-1":
        return {"path": _csv(tmp / "t.csv", ["a", "b", "y"], [[1, 2, "é"], *_two_class_rows()], "latin-1")}, 2
    if case == "gbk":
        return {"path": _csv(tmp / "t.csv", ["a", "b", "y"], [[1, 2, "联邦"], *_two_class_rows()], "gbk")}, 2
    if case == "binary":
        (tmp / "t.csv").write_bytes(b"a,b,y\n" + bytes(range(256)))
        return {"path": "t.csv"}, 2
    if case == "client-columns-renamed":
        a = _csv(tmp / "c0.csv", ["a", "b", "y"], _two_class_rows())
        b = _csv(tmp / "c1.csv", ["a", "c", "y"], _two_class_rows())
        return {"clients": [a, b], "label": "y"}, 2
    if case == "eval-columns-renamed":
        a = _csv(tmp / "c0.csv", ["a", "b", "y"], _two_class_rows())
        e = _csv(tmp / "ev.csv", ["b", "z", "y"], _two_class_rows())
        return {"clients": [a], "eval": e, "label": "y"}, 1
    if case == "clients-single-class":
        a = _csv(tmp / "c0.csv", ["a", "y"], [[i, "x"] for i in range(8)])
        b = _csv(tmp / "c1.csv", ["a", "y"], [[i, "x"] for i in range(8)])
        return {"clients": [a, b], "label": "y"}, 2
    if case == "label-only-in-eval":
        a = _csv(tmp / "c0.csv", ["a", "b", "y"], _two_class_rows())
        e = _csv(tmp / "ev.csv", ["a", "b", "y"], [[1, 2, "a"], [2, 3, "zebra"]])
        return {"clients": [a], "eval": e, "label": "y"}, 1
    if case == "one-row-clients":
        a = _csv(tmp / "c0.csv", ["a", "y"], [[1, "a"]])
        b = _csv(tmp / "c1.csv", ["a", "y"], [[2, "b"]])
        return {"clients": [a, b], "label": "y"}, 2
    if case == "empty-label":
        return {"path": _csv(tmp / "t.csv", ["a", "b", "y"], [*_two_class_rows(), [1, 2, " "]])}, 2
    if case == "duplicate-column":
        return {"path": _csv(tmp / "t.csv", ["a", "a", "y"], _two_class_rows())}, 2
    if case == "folder-as-file":
        (tmp / "t.csv").mkdir()
        return {"path": "t.csv"}, 2
    raise AssertionError(case)


CSV_CASES = [
    ("nan-cell", "line 14, column 'b': 'nan' is not a finite number"),
    ("inf-cell", "line 2, column 'b': '-inf' is not a finite number"),
    ("1e999-cell", "column 'b': '1e999' is not a finite number"),
    ("latin-1", "t.csv: not UTF-8 text"),
    ("gbk", "t.csv: not UTF-8 text"),
    ("binary", "t.csv"),
    ("client-columns-renamed", "c1.csv: no column 'b'"),
    ("eval-columns-renamed", "ev.csv: no column 'a'"),
    ("clients-single-class", "a single class"),
    ("label-only-in-eval", "ev.csv: label 'zebra' appears in no client file"),
    ("one-row-clients", "c0.csv's 1 rows leaves no training row"),
    ("empty-label", "empty label"),
    ("duplicate-column", "column 'a' appears more than once"),
    ("folder-as-file", "is a folder"),
]


@pytest.mark.parametrize(("case", "needle"), CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv_is_one_line_exit_2_and_writes_nothing(tmp_path, case, needle):
    data, clients = _csv_case(tmp_path, case)
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"type": "csv", "no_models": clients, "k": 1, "data": {"label": "y", **data}}))
    out = tmp_path / "out"
    p = fedloom("run", "-c", conf, "--out", out, "-q")
    _one_clear_line(p, needle)
    assert not out.exists()


def test_relative_paths_resolve_against_the_config_folder_not_the_current_one(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "cwd").mkdir()
    _csv(tmp_path / "conf" / "t.csv", ["a", "b", "y"], _two_class_rows(20))
    _csv(tmp_path / "cwd" / "t.csv", ["a", "y"], [[1, "a"]])  # a same-named decoy in the current folder
    conf = tmp_path / "conf" / "c.json"
    conf.write_text(json.dumps({"type": "csv", "no_models": 2, "k": 1, "data": {"path": "t.csv", "label": "y"}}))
    from fedloom.config import load_config

    cwd = os.getcwd()
    os.chdir(tmp_path / "cwd")
    try:
        cfg = load_config(conf)
    finally:
        os.chdir(cwd)
    assert cfg.data.path == str(tmp_path / "conf" / "t.csv")


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_out_that_cannot_be_a_folder(tmp_path, where):
    (tmp_path / "plain").write_text("x")
    out = tmp_path / "plain" / "run" if where == "under-a-file" else Path("/proc/fedloom-test-run")
    p = fedloom("run", "-c", IRIS, "--set", "global_epochs=1", "--out", out, "-q")
    _one_clear_line(p, "--out")


# --- run folders --------------------------------------------------------------------------------------------
def test_a_users_own_files_are_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own"}')
    for extra in ([], ["--overwrite"]):
        p = fedloom("run", "-c", IRIS, "--set", "global_epochs=1", "--out", out, "-q", *extra)
        _one_clear_line(p, "holds files fedloom did not write")
    assert (out / "config.json").read_text() == '{"my": "own"}' and sorted(os.listdir(out)) == ["config.json"]


def test_a_finished_run_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    assert fedloom("run", "-c", IRIS, "--set", "global_epochs=2", "--out", out, "-q").returncode == 0
    before = (out / "summary.json").read_text()
    p = fedloom("run", "-c", IRIS, "--set", "global_epochs=1", "--out", out, "-q")
    _one_clear_line(p, "already holds a finished fedloom run; pass --overwrite")
    assert (out / "summary.json").read_text() == before
    p = fedloom("run", "-c", IRIS, "--set", "global_epochs=1", "--out", out, "-q", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "summary.json").read_text())["rounds"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or n == "RUNNING"]


def test_experiment_refuses_an_existing_out_before_running(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    p = fedloom("experiment", "fl-vs-central", "-c", IRIS, "--out", out, "-q")
    _one_clear_line(p, "holds files fedloom did not write (e.g. notes.txt)")
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_resume_refuses_another_config_naming_the_keys(tmp_path):
    from fedloom.config import build_config
    from fedloom.runs import open_run_dir

    out = tmp_path / "run"
    run = open_run_dir(out, build_config({"global_epochs": 3}).to_dict())  # an interrupted run: RUNNING stays
    run.append({"round": 1, "accuracy": 0.5, "loss": 1.0})
    p = fedloom("run", "-c", IRIS, "--set", "lr=0.1", "--out", out, "-q", "--resume")
    _one_clear_line(p, "--resume: the config differs")
    assert "lr" in p.stderr and "global_epochs" in p.stderr and "name" in p.stderr
    assert fedloom("run", "-c", IRIS, "--out", tmp_path / "none", "--resume").returncode == 2


def test_an_interrupted_run_says_so_and_report_refuses_it(tmp_path):
    from fedloom.config import build_config
    from fedloom.runs import MARKER, open_run_dir

    run = open_run_dir(tmp_path / "run", build_config({}).to_dict())
    run.append({"round": 1, "accuracy": 0.5, "loss": 1.0})  # ... and then the process is killed
    assert (run.path / MARKER).is_file() and not (run.path / "summary.json").exists()
    _one_clear_line(fedloom("report", run.path), "incomplete run")
    p = fedloom("run", "-c", IRIS, "--out", run.path, "-q")
    _one_clear_line(p, "already holds an unfinished fedloom run")


def _finished(tmp_path):
    out = tmp_path / "run"
    p = fedloom("run", "-c", IRIS, "--set", "global_epochs=2", "--out", out, "-q")
    assert p.returncode == 0, p.stderr
    return out


def test_report_refuses_damaged_or_mixed_folders(tmp_path):
    out = _finished(tmp_path)
    good = {f: (out / f).read_bytes() for f in ("metrics.jsonl", "config.json", "summary.json")}

    def damaged(name, text, needle):
        (out / name).write_text(text)
        _one_clear_line(fedloom("report", out), needle)
        (out / name).write_bytes(good[name])

    rows = good["metrics.jsonl"].decode().splitlines()
    damaged("metrics.jsonl", rows[0] + "\n" + rows[1][:15], "line 2 is truncated")
    damaged("metrics.jsonl", '{"round": 1, "loss": 1.0}\n' + rows[1], "line 1: no 'accuracy'")
    damaged("metrics.jsonl", rows[0] + "\n", "mixed or partial run: summary.json counts 2 rounds")
    damaged("config.json", "", "config.json: is empty")
    damaged("config.json", "{}", "config.json: no valid 'name'")
    damaged("summary.json", "[1, 2]", "summary.json: expected a JSON object")
    _one_clear_line(fedloom("report", out / "summary.json"), "not a folder (give a run or experiment folder)")
    assert fedloom("report", out).returncode == 0


# --- messages -----------------------------------------------------------------------------------------------
def test_keygen_names_flags_not_python_arguments(tmp_path):
    pytest.importorskip("gmpy2")
    p = fedloom("keygen", tmp_path / "k", "--key-bits", "1024")
    _one_clear_line(p, "--allow-weak-keys")
    assert "allow_weak_keys=True" not in p.stderr


def test_mismatched_key_pair_is_refused_when_keys_load(tmp_path):
    pytest.importorskip("gmpy2")
    from fedloom.secure.paillier import PUBLIC_FILE, generate_keypair, save_keypair

    for d in ("a", "b"):
        save_keypair(*generate_keypair(512, allow_weak_keys=True), tmp_path / d)
    (tmp_path / "b" / PUBLIC_FILE).write_bytes((tmp_path / "a" / PUBLIC_FILE).read_bytes())
    conf = tmp_path / "c.json"
    secure = {"method": "paillier", "key_bits": 512, "allow_weak_keys": True, "key_dir": "b", "bits": 8}
    conf.write_text(json.dumps({"global_epochs": 1, "secure": secure}))
    out = tmp_path / "out"
    _one_clear_line(fedloom("run", "-c", conf, "--out", out, "-q"), "belong to different key pairs")
    assert not out.exists()


def test_keygen_twice_names_the_overwrite_flag(tmp_path):
    pytest.importorskip("gmpy2")
    args = ("keygen", tmp_path / "k", "--key-bits", "512", "--allow-weak-keys")
    assert fedloom(*args).returncode == 0
    _one_clear_line(fedloom(*args), "pass --overwrite to replace it")
