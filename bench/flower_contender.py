"""Flower's simulation (flwr 1.42, Ray backend) as a contender of ``bench/sim_speed.py``.

Kept in its own importable module because Ray's actors are other processes: the ClientApp's functions must be
importable by name there (Flower puts the driver's ``sys.path``, which holds ``bench/``, on the actors'
``PYTHONPATH``), and each actor keeps the client data it read in this module's cache.

Flower 1.42's Message API: a ``ClientApp`` with a ``@train`` function, a ``ServerApp`` whose ``@main`` runs
``flwr.serverapp.strategy.FedAvg.start``, central evaluation through ``evaluate_fn``. The only in-process way to
run them is ``flwr.simulation.run_simulation``, deprecated since 1.13 in favour of the ``flwr run`` CLI (a
SuperLink and app processes); it still works in 1.42 and is what this driver uses.

The work is the book loop's: each client trains the same local SGD (``torch.optim.SGD``, cross-entropy, a
shuffled ``DataLoader`` over its rows) on the rows fedloom's partition gives it (read from the bench's
``.npz``), the strategy averages with every client weighted 1 (the plain mean, i.e. ``λ = 1/k``), and the
server evaluates the global model after every round.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, TensorDataset

from fedloom.models import build_model

_CLIENT_DATA: dict[str, dict] = {}  # per actor process: npz path → arrays and model spec, read once


def _client_data(path: str) -> dict:
    if path not in _CLIENT_DATA:
        with np.load(path) as z:
            _CLIENT_DATA[path] = {k: z[k] for k in z.files}
    return _CLIENT_DATA[path]


def _build(meta: dict) -> torch.nn.Module:
    shape = tuple(meta["image_shape"]) if meta["image_shape"] else None
    return build_model(meta["model_name"], meta["features"], meta["classes"], meta["hidden"], shape, meta["seed"])


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's local SGD, exactly the book loop's ``_local_sgd``."""
    start = time.time()
    torch.set_num_threads(1)  # one Ray CPU per actor
    cfg = msg.content["config"]
    d = _client_data(str(cfg["data"]))
    meta = json.loads(str(d["meta"]))
    c = int(context.node_config["partition-id"])
    idx = d["client_index"][d["client_offsets"][c] : d["client_offsets"][c + 1]]
    train_set = TensorDataset(torch.from_numpy(d["x_train"][idx]), torch.from_numpy(d["y_train"][idx]))
    loader = DataLoader(train_set, batch_size=meta["batch_size"], shuffle=True)
    model = _build(meta)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=meta["lr"], momentum=meta["momentum"])
    model.train()
    for _ in range(meta["local_epochs"]):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    metrics = MetricRecord({"weight": 1, "start": start, "train": time.time() - start})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def run(
    npz_path: str, x_eval: torch.Tensor, y_eval: torch.Tensor, threads: int, ray_dir: str | None = None
) -> dict[str, float]:
    """One simulation, end to end (Ray start, actors, rounds, shutdown); times in seconds.

    ``threads`` CPUs go to Ray (``ray.init(num_cpus=threads)``, one CPU per client actor, so ``threads``
    clients train at once); the server's evaluation runs in this process at torch's current thread count.
    ``ray_dir``: Ray's session files (logs, sockets) go there instead of /tmp/ray."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning; no GPUs here
    if "FLWR_HOME" not in os.environ:  # a private one (sim_speed.py sets it inside its own temporary folder)
        os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="fedloom-bench-flwr-home-")
        atexit.register(shutil.rmtree, os.environ["FLWR_HOME"], ignore_errors=True)
    import ray
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)  # per-round INFO logs and the deprecation warning
    d = _client_data(npz_path)
    meta = json.loads(str(d["meta"]))
    model = _build(meta)
    out: dict[str, float] = {}
    fits: list[tuple[float, float]] = []  # (start, local training seconds) of every client update

    class Mean(FedAvg):  # FedAvg, and the clients' timings collected on the way
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            for r in replies:
                if r.has_error():  # FedAvg would log it and average the rest: here it is a failed run
                    raise RuntimeError(f"a Flower client failed: {r.error.reason}")
                m = r.content["metrics"]
                fits.append((float(m["start"]), float(m["train"])))
            return super().aggregate_train(server_round, replies)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            out["accuracy"] = float((model(x_eval).argmax(1) == y_eval).float().mean())
        return MetricRecord({"accuracy": out["accuracy"]})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        k, n = meta["k"], meta["no_models"]
        strategy = Mean(
            fraction_train=k / n, fraction_evaluate=0.0, min_train_nodes=k, min_available_nodes=n,
            weighted_by_key="weight",
        )  # fmt: skip
        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=meta["global_epochs"],
            train_config=ConfigRecord({"data": npz_path}), evaluate_fn=evaluate,
        )  # fmt: skip
        out["loop_end"] = time.time()

    backend = {
        "init_args": {
            "num_cpus": threads,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
            **({"_temp_dir": ray_dir} if ray_dir else {}),
        },
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    t0 = time.time()
    try:
        run_simulation(server_app, client_app, num_supernodes=meta["no_models"], backend_config=backend)
    finally:
        if ray.is_initialized():  # run_simulation shuts Ray down itself; this is for a failed run
            ray.shutdown()
    t1 = time.time()
    if "loop_end" not in out or not fits:
        raise RuntimeError("Flower's simulation finished without running its rounds")
    first = min(s for s, _ in fits)
    return {
        "end_to_end": t1 - t0,
        "startup": first - t0,  # run_simulation called → first client's local training starts
        "seconds": out["loop_end"] - first,  # first local training → last round's evaluation done
        "shutdown": t1 - out["loop_end"],
        "train": sum(t for _, t in fits),  # summed over clients (``threads`` of them run at once)
        "accuracy": out["accuracy"],
    }


if __name__ == "__main__":  # sim_speed.py runs it here, in a process of its own: Ray's threads stay out of the bench's
    import sys

    npz, threads, ray_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(threads)
    arrays = np.load(npz)
    result = run(npz, torch.from_numpy(arrays["x_eval"]), torch.from_numpy(arrays["y_eval"]), threads, ray_dir)
    print("RESULT " + json.dumps(result), flush=True)
