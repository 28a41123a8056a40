"""Simulation speed: fedloom's engines side by side with a book-style PyTorch loop, Flower's simulation and
pfl-research, in one process run, printed as one ratio table.

    python bench/sim_speed.py                      # all workloads, 1 and 2 torch threads, median of 3
    python bench/sim_speed.py --quick              # one timed repetition, S3 with the vectorized engine only
    python bench/sim_speed.py --workloads seed,s1 --threads 2
    python bench/sim_speed.py --skip flower,pfl    # without the (slow) external contenders
    python bench/sim_speed.py --device cuda        # fedloom on the GPU (adds s4: 1 000 CNN clients, MNIST-5k)

fedloom's contenders: ``fedloom default`` (what a user gets: engine auto, ``runtime.threads: auto`` — its
threads column shows the count it chose — and ``runtime.device`` from ``--device``), and the vectorized and
sequential engines pinned to the row's thread count. After the in-process table comes a fresh-process one
(``bench/e2e_speed.py``): ``fedloom run`` at its defaults against the book loop and Flower's simulation, wall
time from launch to exit; then issue 12's targets.

External contenders, each skipped with a message when it is not installed:

- Flower's simulation (``pip install "flwr[simulation]==1.42.0"``: Ray) runs in this process through
  ``flwr.simulation.run_simulation`` (see ``bench/flower_contender.py``); ``threads`` is the number of CPUs
  given to Ray, one client actor per CPU. Each run starts and stops Ray: its end-to-end time includes that.
- pfl-research pins an older ``attrs`` than flwr, so it lives in its own virtual environment and runs in a
  subprocess kept up for the whole run (``bench/pfl_contender.py``, ``--pfl-python``; by default
  ``bench/.venv-pfl/bin/python`` when it exists), on a ``.npz`` this script writes from fedloom's data: the same
  split, partition and initial weights. Create it with
  ``python3 -m venv bench/.venv-pfl && bench/.venv-pfl/bin/pip install torch==2.13.0 pfl``.

Workloads (issue 3); every contender runs the same algorithm: local SGD with momentum, cross-entropy, and
the server step ``G += λ·Σ diff`` with ``λ = 1/k`` (the mean update):

- seed: iris, fnn [3], 10 clients, k 5, 20 rounds, 3 local epochs, batch 10, lr 0.3
- s1:   mnist 5k (4 000 train rows), mlp [100], 8 clients × 500 rows, all 8 per round, 5 rounds, 1 epoch,
        batch 32, lr 0.1
- s2:   digits, mlp [32], 100 clients, all 100 per round, 5 rounds, 1 epoch, batch 10, lr 0.3
- s3:   Synthetic(1, 1) (FedProx §5.1), logreg, 10 000 clients, 1 000 per round, 2 rounds: peak RSS, each
        contender in its own subprocess so the number is that workload's alone (the CLI runs
        bench/configs/s3.json, the same workload through ``type: synthetic``).
- s4:   mnist 5k, cnn, 1 000 clients × 4 rows, all per round, 3 rounds, batch 4, lr 0.05 (a GPU-sized cohort;
        only fedloom and the book loop run it)

Time is the round loop (local training, aggregation and evaluation of every round), after a warm-up run of
the same contender in the same process: the first ``torch.optim`` step of a process costs ~1.5–2 s here.
End to end adds what a run builds before its rounds (model, loaders, federation; for Flower: Ray, its actors
and their start-up, and Ray's shutdown; data already in memory for everyone, or for Flower's actors in the .npz).
Repetitions are interleaved across contenders so that load from other jobs on the machine hits all alike;
the table reports medians. Before each run the script waits (up to 10 s) until no other process's thread is
runnable: Ray's processes outlive Flower's shutdown for a moment, and nobody is timed beside them. Compare
ratios within one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from fedloom.config import Config, build_config
from fedloom.data import FedData, load_data
from fedloom.data.partition import Partition
from fedloom.data.synthetic import synthetic
from fedloom.models import DEFAULT_HIDDEN, build_model
from fedloom.simulation import Federation, run_federation

WORKLOADS = {
    "seed": {"type": "iris", "model_name": "fnn", "no_models": 10, "k": 5, "global_epochs": 20,
             "local_epochs": 3, "batch_size": 10, "lr": 0.3},
    "s1": {"type": "mnist", "model_name": "mlp", "hidden": [100], "no_models": 8, "k": 8, "global_epochs": 5,
           "local_epochs": 1, "batch_size": 32, "lr": 0.1},
    "s2": {"type": "digits", "model_name": "mlp", "hidden": [32], "no_models": 100, "k": 100, "global_epochs": 5,
           "local_epochs": 1, "batch_size": 10, "lr": 0.3},
    "s3": {"type": "iris", "model_name": "logreg", "no_models": 10_000, "k": 1_000, "global_epochs": 2,
           "local_epochs": 1, "batch_size": 10, "lr": 0.05},
    "s4": {"type": "mnist", "model_name": "cnn", "no_models": 1_000, "k": 1_000, "global_epochs": 3,
           "local_epochs": 1, "batch_size": 4, "lr": 0.05},
}  # fmt: skip
S3_DATA = {"num_samples": 500_000, "dim": 60, "classes": 10, "alpha": 1.0, "beta": 1.0, "eval_fraction": 0.1}
SEED = 0


DEVICE = "cpu"  # runtime.device of fedloom's contenders (--device); the other contenders run on the CPU


def config(workload: str, engine: str = "auto", threads: int | str | None = None) -> Config:
    """The workload's config; ``threads`` None: the thread count torch has now (the table's column)."""
    runtime = {"engine": engine, "checkpoint": False, "device": DEVICE,
               "threads": torch.get_num_threads() if threads is None else threads}  # fmt: skip
    raw = dict(WORKLOADS[workload], seed=SEED, runtime=runtime)
    raw["lambda"] = 1.0 / raw["k"]
    return build_config(raw)


def s3_data(seed: int = SEED) -> FedData:
    """Synthetic(α, β) with 10 000 clients; every client lends a random tenth of its rows (never its first
    one) to the pooled eval set. Rows stay grouped by client, so the partition is just offsets."""
    s = S3_DATA
    rng = np.random.default_rng(seed)
    x, y, sizes = synthetic(WORKLOADS["s3"]["no_models"], s["num_samples"], s["dim"], s["classes"], s["alpha"],
                            s["beta"], rng, min_size=2)  # fmt: skip
    held = rng.random(len(y)) < s["eval_fraction"]
    held[np.cumsum(sizes) - sizes] = False  # every client keeps at least one training row
    owner = np.repeat(np.arange(len(sizes)), sizes)
    train_sizes = np.bincount(owner[~held], minlength=len(sizes))
    part = Partition(np.arange(int(train_sizes.sum()), dtype=np.int64), np.concatenate([[0], np.cumsum(train_sizes)]))
    return FedData(
        "synthetic", torch.from_numpy(x[~held]), torch.from_numpy(y[~held]), torch.from_numpy(x[held]),
        torch.from_numpy(y[held]), [str(c) for c in range(s["classes"])], part, None,
    )  # fmt: skip


def workload_data(workload: str) -> FedData:
    return s3_data() if workload == "s3" else load_data(config(workload))


# --------------------------------------------------------------------------------------------- contenders
# A contender runs one workload and returns {"seconds": round loop (wall), "end_to_end": wall from before the
# model is built to after the last round, "cpu": its process CPU time in the round loop, "train": local training
# inside it (wall), "accuracy": final accuracy}; a contender may add keys of its own.
Result = dict[str, float]
nan = float("nan")


def run_fedloom(engine: str, threads: str | None = None) -> Callable[[str, FedData], Result]:
    """fedloom with ``engine``, at the table's thread count, or at ``threads`` (``"auto"``: the default)."""

    def run(workload: str, data: FedData) -> Result:
        before = torch.get_num_threads()
        t0 = time.perf_counter()
        fed = Federation.build(config(workload, engine, threads), data)
        inner, spent = fed.engine.train, [0.0]

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            spent[0] += time.perf_counter() - t0
            return out

        fed.engine.train = timed  # instance attribute: time spent in local training only
        cpu = time.process_time()
        res = run_federation(fed)
        cpu, end_to_end = time.process_time() - cpu, time.perf_counter() - t0
        torch.set_num_threads(before)  # `auto` may have changed it: the next contender runs at the table's count
        assert engine == "auto" or res.summary["engine"] == engine, res.summary["engine"]
        acc = res.summary["final_accuracy"]
        return {"seconds": res.summary["train_seconds"], "end_to_end": end_to_end, "cpu": cpu, "train": spent[0],
                "accuracy": acc, "threads_used": float(res.summary["threads"])}  # fmt: skip

    return run


def _local_sgd(model: torch.nn.Module, loader: DataLoader, cfg: Config) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    for _ in range(cfg.local_epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()


def _accuracy(model: torch.nn.Module, data: FedData) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data.x_eval).argmax(1) == data.y_eval).float().mean())


def run_book(workload: str, data: FedData) -> Result:
    """The textbook loop (《联邦学习实战》 ch.3 style): one DataLoader per client over its rows, a model copy
    per sampled client, torch.optim.SGD, then ``G += λ·Σ diff`` on the state dict; evaluation every round."""
    cfg = config(workload)
    start = time.perf_counter()
    model = build_model(cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
    train = TensorDataset(data.x_train, data.y_train)
    loaders = [
        DataLoader(train, batch_size=cfg.batch_size, sampler=SubsetRandomSampler(data.partition.indices(c).tolist()))
        for c in range(cfg.no_models)
    ]
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    t0, cpu, training = time.perf_counter(), time.process_time(), 0.0
    for _ in range(cfg.global_epochs):
        t1 = time.perf_counter()
        total = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
        for c in rng.choice(cfg.no_models, cfg.k, replace=False):
            local = copy.deepcopy(model)
            _local_sgd(local, loaders[c], cfg)
            for name, p in local.state_dict().items():
                total[name] += p - model.state_dict()[name]
        training += time.perf_counter() - t1
        for name, p in model.state_dict().items():
            p.add_(total[name], alpha=cfg.lambda_)
        accuracy = _accuracy(model, data)
    end = time.perf_counter()
    return {"seconds": end - t0, "end_to_end": end - start, "cpu": time.process_time() - cpu, "train": training,
            "accuracy": accuracy}  # fmt: skip


_TMP: list[Path] = []


def _tmpdir() -> Path:
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="fedloom-bench-")))
        atexit.register(shutil.rmtree, _TMP[0], ignore_errors=True)
    return _TMP[0]


def export_npz(workload: str, data: FedData) -> str:
    """The workload's data, partition, initial weights and hyper-parameters as one .npz (written once per run)
    for the contenders that run elsewhere: Flower's Ray actors and the pfl subprocess."""
    path = _tmpdir() / f"{workload}.npz"
    if not path.exists():
        cfg = config(workload)
        model = build_model(cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
        meta = {
            "model_name": cfg.model_name, "features": data.num_features, "classes": data.num_classes,
            "hidden": cfg.hidden or DEFAULT_HIDDEN.get(cfg.model_name),  # fnn/mlp: their widths; else None
            "image_shape": list(data.image_shape) if data.image_shape else None, "seed": cfg.seed, "lr": cfg.lr,
            "momentum": cfg.momentum, "local_epochs": cfg.local_epochs, "batch_size": cfg.batch_size,
            "global_epochs": cfg.global_epochs, "k": cfg.k, "no_models": cfg.no_models,
        }  # fmt: skip
        init = {f"init/{k}": v.detach().numpy() for k, v in model.state_dict().items()}
        np.savez(
            path, x_train=data.x_train.numpy(), y_train=data.y_train.numpy(), x_eval=data.x_eval.numpy(),
            y_eval=data.y_eval.numpy(), client_index=data.partition.order, client_offsets=data.partition.offsets,
            meta=np.array(json.dumps(meta)), **init,
        )  # fmt: skip
    return str(path)


def run_flower(workload: str, data: FedData) -> Result:
    """Flower's simulation (Ray backend), end to end: the book's local SGD in a ClientApp, FedAvg with every
    client weighted 1 (the plain mean = λ = 1/k), central evaluation each round (``bench/flower_contender.py``).
    Its "round loop" runs from the first client's local training to the last round's evaluation. It runs in a
    process of its own (times taken inside it): Ray's threads outlive its shutdown and would share this one."""
    ray_dir = str(_tmpdir() / "ray")  # Ray's session files go with this run's other files
    script = Path(__file__).with_name("flower_contender.py")
    cmd = [sys.executable, str(script), export_npz(workload, data), str(torch.get_num_threads()), ray_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return {"cpu": nan, **json.loads(line[len("RESULT ") :])}


class PflProcess:
    """The pfl contender: a subprocess in pfl's own environment, up for the whole run (warmed up like the
    in-process contenders), one run per request."""

    procs: dict[str, subprocess.Popen] = {}
    python: str | None = None

    @classmethod
    def run(cls, workload: str, data: FedData) -> Result:
        proc = cls.procs.get(workload)
        if proc is None:
            script = Path(__file__).with_name("pfl_contender.py")
            proc = subprocess.Popen(
                [cls.python, str(script), export_npz(workload, data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            cls.procs[workload] = proc
            cls._expect(proc, "READY")
        proc.stdin.write(json.dumps({"threads": torch.get_num_threads()}) + "\n")
        proc.stdin.flush()
        return json.loads(cls._expect(proc, "RESULT "))

    @staticmethod
    def _expect(proc: subprocess.Popen, prefix: str) -> str:
        for line in proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        raise RuntimeError(f"pfl contender exited ({proc.wait()}) before printing {prefix.strip()}; see its stderr")

    @classmethod
    def close(cls) -> None:
        for proc in cls.procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
        cls.procs.clear()


def _available(*modules: str, hint: str) -> str | None:
    """None when every module imports, else the reason to skip."""
    for m in modules:
        try:
            __import__(m)
        except Exception as e:  # ImportError, or a broken install
            return f"skipped: {m} not importable ({type(e).__name__}); {hint}"
    return None


PFL_VENV = Path(__file__).with_name(".venv-pfl") / "bin" / "python"
PFL_HINT = (
    "create its environment with `python3 -m venv bench/.venv-pfl && bench/.venv-pfl/bin/pip install "
    "torch==2.13.0 pfl` (pfl pins an older attrs than flwr) or pass --pfl-python PATH"
)
CONTENDERS: dict[str, Callable[[str, FedData], Result]] = {
    "fedloom default": run_fedloom("auto", "auto"),  # runtime.threads auto, engine auto: what a user gets
    "fedloom vectorized": run_fedloom("vectorized"),
    "fedloom sequential": run_fedloom("sequential"),
    "book-style loop": run_book,
    "flower simulation": run_flower,
    "pfl-research": PflProcess.run,
}
SKIPPED: dict[str, str | None] = {}  # contender → reason, filled by main()
SHORT = {"flower": "flower simulation", "pfl": "pfl-research", "book": "book-style loop",
         "sequential": "fedloom sequential", "default": "fedloom default"}  # fmt: skip
EXTERNAL = ("flower simulation", "pfl-research")
ONLY = {"s4": ("fedloom default", "fedloom vectorized", "book-style loop")}  # 1 000 CNN clients: no others
IN_S3 = (
    "fedloom default",
    "fedloom vectorized",
    "fedloom sequential",
    "book-style loop",
)  # Flower's 10 000 Ray clients: not here


def find_skips(skip: set[str], pfl_python: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {name: "skipped: --skip" for name in skip}
    if "flower simulation" not in out:
        os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
        os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        if "FLWR_HOME" not in os.environ:  # private, removed at exit with the rest of this run's files
            os.environ["FLWR_HOME"] = str(_tmpdir() / "flwr-home")
        sys.path.insert(0, str(Path(__file__).parent))  # flower_contender, for us and (via PYTHONPATH) Ray's actors
        out["flower simulation"] = _available(
            "flwr", "ray", "flower_contender", hint='pip install "flwr[simulation]==1.42.0" (the Ray backend)'
        )
    if "pfl-research" not in out:
        python = pfl_python or (str(PFL_VENV) if PFL_VENV.exists() else None)
        if python is None:
            out["pfl-research"] = f"skipped: no pfl environment at {PFL_VENV}; {PFL_HINT}"
        else:
            try:
                check = subprocess.run([python, "-c", "import pfl, torch"], capture_output=True, text=True)
                code, err = check.returncode, check.stderr
            except OSError as e:
                code, err = 1, str(e)
            if code:
                last = (err.strip().splitlines() or ["?"])[-1]
                out["pfl-research"] = f"skipped: {python} cannot import pfl ({last}); {PFL_HINT}"
            else:
                PflProcess.python = python
    return out


# --------------------------------------------------------------------------------------------- measuring
def time_workload(workload: str, threads: list[int], reps: int) -> dict[str, dict[int, Result]]:
    """{contender: {threads: median result}} for the runnable contenders. An external contender that fails
    is dropped from the run with its error in SKIPPED; fedloom's own contenders' errors propagate."""
    data = workload_data(workload)
    runnable = {n: f for n, f in CONTENDERS.items() if not SKIPPED.get(n) and n in ONLY.get(workload, CONTENDERS)}
    out: dict[str, dict[int, Result]] = {n: {} for n in runnable}

    def attempt(name: str) -> Result | None:
        quiet()  # Ray's processes outlive its shutdown for a moment: nobody is timed beside them
        if name not in EXTERNAL:
            return runnable[name](workload, data)
        try:
            return runnable[name](workload, data)
        except Exception as e:
            SKIPPED[name] = f"failed in {workload}: {type(e).__name__}: {e}"
            del runnable[name]
            return None

    for t in threads:
        torch.set_num_threads(t)
        for name in list(runnable):
            attempt(name)  # warm-up: first optimizer step, vmap tracing, allocator; pfl's process start
        got: dict[str, list[Result]] = {n: [] for n in runnable}
        for _ in range(reps):  # interleaved, so background load hits every contender alike
            for name in list(runnable):
                res = attempt(name)
                if res is not None:
                    got[name].append(res)
        for name, results in got.items():
            if name in runnable and results:
                out[name][t] = {k: statistics.median(r[k] for r in results) for k in results[0]}
                out[name][t]["accuracy"] = results[-1]["accuracy"]
    return {n: r for n, r in out.items() if r}


def quiet(patience: float = 10.0) -> None:
    """Wait (at most ``patience`` s) until no other thread is runnable on this machine, this process's own
    included (Flower's simulation leaves Ray's threads in it for a while): the table compares contenders on
    an idle machine, and ``runtime.threads: auto`` would rightly avoid a busy core."""
    import threading

    from fedloom.cpuload import _running_tasks, others_running

    me = str(threading.get_native_id())

    def busy() -> bool:
        return bool((others_running() or 0) > 0 or _running_tasks() - {me})

    end, calm = time.perf_counter() + patience, 0
    while time.perf_counter() < end and calm < 5:  # five calm readings 10 ms apart
        calm = 0 if busy() else calm + 1
        time.sleep(0.01)


def sgemm_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    """Measured float32 matmul speed of this machine (GFLOP/s) at ``threads`` torch threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def s1_flops() -> tuple[float, float]:
    """(training, evaluation) FLOPs of S1's round loop: forward 2·(784·100 + 100·10) per row; backward the
    weight gradients (as many) plus the input gradient of layer 2 (2·100·10), none for layer 1's input.
    (ENGINE_NOTES' ≈9.5 GFLOP counts training as 3 forwards and no evaluation.)"""
    cfg, rows = config("s1"), 4_000  # 8 clients × 500 rows, every client every round
    fwd = 2 * (784 * 100 + 100 * 10)
    train = cfg.global_epochs * cfg.local_epochs * rows * (2 * fwd + 2 * 100 * 10)
    return float(train), float(cfg.global_epochs * 1_000 * fwd)  # 1 000 eval rows per round


def s3_child(contender: str) -> None:
    """Run S3 with one contender and print its numbers (this process holds nothing else)."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    t0 = time.perf_counter()
    data = s3_data()
    built = time.perf_counter() - t0
    res = CONTENDERS[contender]("s3", data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({**res, "peak_rss_mb": peak_mb, "data_seconds": built}))


def s3(contenders: list[str], threads: int) -> dict[str, dict]:
    """S3 with each contender in its own process: its peak RSS is that workload's alone."""
    out = {}
    for name in contenders:
        env = dict(os.environ, BENCH_THREADS=str(threads))
        proc = subprocess.run([sys.executable, __file__, "--s3-child", name], capture_output=True, text=True, env=env)
        lines = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()
        out[name] = json.loads(lines[-1]) if proc.returncode == 0 else {"error": lines[-1]}
    return out


# ---------------------------------------------------------------------------------------------- printing
def _ratio(book: float, x: float) -> str:
    return f"{book / x:.1f}" if book == book and x == x else ""  # blank when either is NaN


def print_table(results: dict, s3_res: dict | None, s3_threads: int) -> None:
    head = ["workload", "contender", "threads", "round loop s", "× book", "end to end s", "× book", "cpu s", "× book",
            "local training s", "× book", "accuracy"]  # fmt: skip
    rows: list[list[str]] = []
    for workload, by_name in results.items():
        book = by_name.get("book-style loop", {})
        for name, by_threads in by_name.items():
            for t, r in by_threads.items():
                b = book.get(t, {"seconds": nan, "end_to_end": nan, "cpu": nan, "train": nan})
                cells = [f"{r['seconds']:.3f}", _ratio(b["seconds"], r["seconds"])]
                cells += [f"{r['end_to_end']:.3f}", _ratio(b["end_to_end"], r["end_to_end"])]
                cells += [f"{r['cpu']:.3f}" if r["cpu"] == r["cpu"] else "", _ratio(b["cpu"], r["cpu"])]
                cells += [f"{r['train']:.3f}" if r["train"] == r["train"] else ""]
                cells += [_ratio(b["train"], r["train"]), f"{r['accuracy']:.4f}"]
                shown = f"auto→{int(r['threads_used'])}" if name == "fedloom default" else str(t)
                rows.append([workload, name, shown, *cells])
    for name, r in (s3_res or {}).items():
        if "error" in r:
            rows.append(["s3", name, str(s3_threads), f"failed: {r['error']}"])
            continue
        cells = [f"{r['seconds']:.3f}", "", f"{r['end_to_end']:.3f}", "", f"{r['cpu']:.3f}", "", f"{r['train']:.3f}",
                 "", f"{r['accuracy']:.4f}"]  # fmt: skip
        shown = f"auto→{int(r['threads_used'])}" if name == "fedloom default" else str(s3_threads)
        rows.append(["s3", name, shown, *cells, f"peak RSS {r['peak_rss_mb']:.0f} MB"])
    full = [r for r in rows if len(r) >= len(head)]
    widths = [max(len(x) for x in col) for col in zip(head, *full)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths + [0])))
    for name, reason in SKIPPED.items():
        if reason:
            print(f"{name}: {reason}")
    print()
    for workload, by_name in results.items():  # same-accuracy check
        t = max(by_name["fedloom vectorized"])
        acc = {name: r[t]["accuracy"] for name, r in by_name.items() if t in r}
        same = acc["fedloom vectorized"] == acc.get("fedloom sequential", acc["fedloom vectorized"])
        spread = 100 * (max(acc.values()) - min(acc.values()))
        print(f"{workload}: fedloom engines {'identical' if same else 'DIFFER'} in final accuracy; "
              f"all contenders within {spread:.1f} points")  # fmt: skip
    print_external(results)


def print_external(results: dict) -> None:
    """Flower's time broken down, and fedloom vectorized against each external contender (issue 3's targets:
    S1 ≥ 30× Flower's simulation end to end, ≥ 3× pfl-research)."""
    for workload, by_name in results.items():
        for t, r in by_name.get("flower simulation", {}).items():
            print(f"flower simulation, {workload} @{t} CPU(s) for Ray: end to end {r['end_to_end']:.2f} s = start-up "
                  f"{r['startup']:.2f} s (run_simulation called → first client's local training: Ray, actors) + "
                  f"rounds {r['seconds']:.2f} s + shutdown {r['shutdown']:.2f} s")  # fmt: skip
    if any("flower simulation" in by_name for by_name in results.values()):
        print("  (flwr.simulation.run_simulation: deprecated since flwr 1.13 for the `flwr run` CLI, yet Flower's only "
              "in-process entry point; used here, with the Message API's ClientApp/ServerApp and FedAvg)")  # fmt: skip
    targets = {"flower simulation": 30, "pfl-research": 3}
    for workload, by_name in results.items():
        vec = by_name["fedloom vectorized"]
        for name in EXTERNAL:
            for t, r in by_name.get(name, {}).items():
                v = vec.get(t)
                if v is None:
                    continue
                goal = f" (issue 3's target {targets[name]}×)" if workload == "s1" else ""
                cpu = (
                    f"; cpu {v['cpu']:.3f} vs {r['cpu']:.3f} s = {r['cpu'] / v['cpu']:.1f}×"
                    if r["cpu"] == r["cpu"]
                    else ""
                )
                print(f"{workload} @{t}: fedloom vectorized vs {name}: round loop {v['seconds']:.3f} vs "
                      f"{r['seconds']:.3f} s = {r['seconds'] / v['seconds']:.1f}×; end to end {v['end_to_end']:.3f} vs "
                      f"{r['end_to_end']:.3f} s = {r['end_to_end'] / v['end_to_end']:.1f}×{cpu}{goal}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one timed repetition; S3 with the vectorized engine only")
    p.add_argument("--workloads", help="comma-separated subset of seed,s1,s2,s3,s4 (default: seed,s1,s2,s3; with "
                   "--device cuda also s4, 1 000 CNN clients on MNIST-5k)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="fedloom's runtime.device")
    p.add_argument("--e2e-reps", type=int, default=3, help="fresh-process end-to-end repetitions (0: skip that table)")
    p.add_argument("--e2e-workloads", help="workloads of the end-to-end table (default: --workloads but s4)")
    p.add_argument("--threads", default="1,2", help="torch thread counts to time, e.g. 1,2")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per contender (the table shows medians)")
    p.add_argument("--skip", default="", help="comma-separated contenders to leave out: flower, pfl, book, sequential")
    p.add_argument("--pfl-python", help=f"Python of pfl's environment (default: {PFL_VENV}, when it exists)")
    p.add_argument("--s3-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    global DEVICE
    DEVICE = os.environ.get("BENCH_DEVICE", "cpu") if args.s3_child else args.device
    os.environ["BENCH_DEVICE"] = DEVICE  # the S3 children read it from the environment
    if args.s3_child:
        return s3_child(args.s3_child)
    skip = {w.strip().lower() for w in args.skip.split(",") if w.strip()}
    if skip - set(SHORT):
        p.error(f"unknown --skip {sorted(skip - set(SHORT))}; known: {', '.join(SHORT)}")
    SKIPPED.update(find_skips({SHORT[w] for w in skip}, args.pfl_python))
    workloads = args.workloads or ("seed,s1,s2,s3" + (",s4" if args.device == "cuda" else ""))
    names = [w.strip().lower() for w in workloads.split(",") if w.strip()]
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    threads = [int(t) for t in args.threads.split(",")]
    reps = 1 if args.quick else args.reps
    load = os.getloadavg()[0]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {gpu}; fedloom's device {DEVICE}; "
          f"load average {load:.1f} at start; median of {reps};")  # fmt: skip
    print("λ = 1/k; round loop = local training + aggregation + evaluation of every round, after a warm-up run")
    try:
        results = {w: time_workload(w, threads, reps) for w in names if w != "s3"}
    finally:
        PflProcess.close()
    s3_res = None
    if "s3" in names:
        s3_res = s3(["fedloom vectorized"] if args.quick else [n for n in IN_S3 if not SKIPPED.get(n)], min(threads))
    print()
    print_table(results, s3_res, min(threads))
    if "s1" in results:
        train_flops, eval_flops = s1_flops()
        flops = train_flops + eval_flops
        print()
        for t in threads:
            speed = sgemm_gflops(t)
            floor = flops / speed / 1e9
            vec = results["s1"]["fedloom vectorized"].get(t, {}).get("seconds", nan)
            print(
                f"S1 compute floor @{t} thread(s): {flops / 1e9:.2f} GFLOP (training {train_flops / 1e9:.2f} + "
                f"evaluation {eval_flops / 1e9:.2f}) ÷ {speed:.0f} GFLOP/s (sgemm 1024³, measured now) = "
                f"{floor:.3f} s; fedloom vectorized round loop {vec:.3f} s = {vec / floor:.1f}× the floor"
            )
    e2e = None
    if args.e2e_reps > 0:
        import e2e_speed

        print()
        e2e_skip = {w for w in ("book", "flower") if w in skip or SKIPPED.get(SHORT[w])}
        e2e_names = args.e2e_workloads.split(",") if args.e2e_workloads else [w for w in names if w != "s4"]
        e2e = e2e_speed.measure(e2e_names, args.e2e_reps, args.device, e2e_skip)
        e2e_speed.print_e2e(e2e)
    print_targets(results, e2e)
    print(
        f"\nload average {os.getloadavg()[0]:.1f} at end (other jobs share this machine: compare ratios, not seconds)"
    )


TARGETS = {"seed": 10.0, "s1": 2.5, "s2": 10.0}  # issue 12: × the book-style loop pinned to 1 thread


def print_targets(results: dict, e2e: dict | None) -> None:
    """Issue 12's targets at the defaults: the CLI's cold ``train_seconds`` (fresh process, first round included)
    and the warm round loop of ``fedloom default``, each against the book loop's warm round loop at 1 thread."""
    print("\nIssue 12 targets (fedloom at its defaults; book-style loop pinned to 1 thread, warm):")
    for w, goal in TARGETS.items():
        book = results.get(w, {}).get("book-style loop", {}).get(1)
        warm = results.get(w, {}).get("fedloom default", {})
        if book is None or not warm:
            continue
        ratios = {"warm": book["seconds"] / statistics.median(r["seconds"] for r in warm.values())}
        cold = ((e2e or {}).get(w) or {}).get("fedloom run (CLI)", {}).get("train_seconds")
        if cold:
            ratios["CLI cold"] = book["seconds"] / cold
        shown = ", ".join(f"{k} {v:.1f}×" for k, v in ratios.items())
        print(
            f"  {w}: {shown} the book loop (target ≥ {goal:g}×: {'met' if min(ratios.values()) >= goal else 'NOT met'})"
        )
    for name, goal, key in (("flower simulation", 30.0, "end_to_end"), ("pfl-research", 2.5, "seconds")):
        theirs, ours = results.get("s1", {}).get(name, {}), results.get("s1", {}).get("fedloom default", {})
        if theirs and ours:
            t = max(theirs)
            ratio = theirs[t][key] / statistics.median(r[key] for r in ours.values())
            verdict = "met" if ratio >= goal else "NOT met"
            print(f"  s1 vs {name} @{t}: {key.replace('_', ' ')} {ratio:.1f}× (target ≥ {goal:g}×: {verdict})")
    print("  (s1 against the book loop and pfl-research is capped near 3.2× by the compute floor printed above)")


if __name__ == "__main__":
    main()
