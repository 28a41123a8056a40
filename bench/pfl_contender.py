"""pfl-research (Apple's ``pfl``) as a contender of ``bench/sim_speed.py``, run in pfl's own virtual environment.

pfl pins an older ``attrs`` than flwr, so it cannot share fedloom's environment; ``sim_speed.py`` starts this
script with that environment's Python (``--pfl-python``). Create the environment once (torch pinned to the local
CPU wheel; an unpinned torch downloads the CUDA build)::

    python3 -m venv bench/.venv-pfl && bench/.venv-pfl/bin/pip install torch==2.13.0 pfl

Protocol: ``python bench/pfl_contender.py DATA.npz`` loads the data the bench wrote from fedloom's ``load_data``
(same split, same partition, same initial weights, the hyper-parameters in ``meta``), then answers every line
``{"threads": t}`` on stdin with one run on stdout: ``RESULT {"seconds", "end_to_end", "cpu", "train",
"accuracy"}``. The process stays up between runs, so the bench warms it up and interleaves its repetitions with
the other contenders exactly as it does in process.

The work is the others': pfl's ``FederatedAveraging`` on ``SimulatedBackend`` with ``WeightByUser`` (every
client weighted 1: the plain mean, ``λ = 1/k``) and a central SGD step of 1 (``G += mean diff``), local
``torch.optim.SGD`` with the same learning rate, momentum, epochs and batch size through pfl's
``PyTorchModel``, cohort of ``k`` clients drawn by pfl's ``minimize_reuse`` sampler, and central evaluation of
the global model after every round (``CentralEvaluationCallback``). pfl's per-user evaluation before and after
local training (``do_evaluation``) is switched off: no other contender does it. pfl iterates a user's rows in
stored order (no per-epoch reshuffle); they are already in the partition's random order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByUser
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.central_evaluation import CentralEvaluationCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn


class FNN(nn.Sequential):
    """fedloom's ``fnn``/``mlp`` (Linear → ReLU → … → Linear) with the ``loss``/``metrics`` pfl calls."""

    def __init__(self, widths: list[int]):
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)

    def loss(self, x, y, eval=False):
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=False):
        self.eval()
        logits = self(x)
        correct = float((logits.argmax(1) == y).sum())
        return {
            "accuracy": Weighted(correct, len(y)),
            "loss": Weighted(float(F.cross_entropy(logits, y)) * len(y), len(y)),
        }


class Timed(FederatedAveraging):
    """FederatedAveraging, timing local training and without the per-user evaluations."""

    train_seconds = 0.0

    def simulate_one_user(self, model, user_dataset, central_context):
        return super().simulate_one_user(model, user_dataset, dataclasses.replace(central_context, do_evaluation=False))

    def train_one_user(self, initial_model_state, model, user_dataset, central_context):
        t0 = time.perf_counter()
        out = super().train_one_user(initial_model_state, model, user_dataset, central_context)
        Timed.train_seconds += time.perf_counter() - t0
        return out


def load(path: str) -> dict:
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    d["meta"] = json.loads(str(d["meta"]))
    if d["meta"]["model_name"] not in ("fnn", "mlp"):
        raise SystemExit(f"pfl contender: model {d['meta']['model_name']} not supported (fnn, mlp only)")
    for k in ("x_train", "y_train", "x_eval", "y_eval"):
        d[k] = torch.from_numpy(d[k])  # tensors once, as pfl's own PyTorch benchmarks hand them over
    return d


def run_once(d: dict) -> dict[str, float]:
    meta = d["meta"]
    np.random.seed(meta["seed"])  # pfl's user sampler draws from numpy's global generator
    torch.manual_seed(meta["seed"])
    Timed.train_seconds = 0.0
    t0 = time.perf_counter()
    model_net = FNN([meta["features"], *meta["hidden"], meta["classes"]])
    model_net.load_state_dict({k[len("init/") :]: torch.from_numpy(d[k]) for k in d if k.startswith("init/")})
    model = PyTorchModel(
        model=model_net,
        local_optimizer_create=partial(torch.optim.SGD, momentum=meta["momentum"]),
        central_optimizer=torch.optim.SGD(model_net.parameters(), lr=1.0),
    )
    idx, off = d["client_index"], d["client_offsets"]
    users = {c: idx[off[c] : off[c + 1]] for c in range(meta["no_models"])}
    x, y = d["x_train"], d["y_train"]
    slices = {c: (x[torch.from_numpy(rows)], y[torch.from_numpy(rows)]) for c, rows in users.items()}
    train = FederatedDataset.from_slices(slices, get_user_sampler("minimize_reuse", list(range(meta["no_models"]))))
    central = Dataset(raw_data=[d["x_eval"], d["y_eval"]])
    backend = SimulatedBackend(training_data=train, val_data=None, postprocessors=[WeightByUser()])
    algorithm_params = NNAlgorithmParams(
        central_num_iterations=meta["global_epochs"], evaluation_frequency=1, train_cohort_size=meta["k"],
        val_cohort_size=None,
    )  # fmt: skip
    train_params = NNTrainHyperParams(
        local_learning_rate=meta["lr"], local_num_epochs=meta["local_epochs"], local_batch_size=meta["batch_size"]
    )
    eval_params = NNEvalHyperParams(local_batch_size=None)
    callbacks = [CentralEvaluationCallback(central, model_eval_params=eval_params, frequency=1)]
    t1, cpu = time.perf_counter(), time.process_time()
    Timed().run(
        algorithm_params=algorithm_params, backend=backend, model=model, model_train_params=train_params,
        model_eval_params=eval_params, callbacks=callbacks, send_metrics_to_platform=False,
    )  # fmt: skip
    t2, cpu = time.perf_counter(), time.process_time() - cpu
    model_net.eval()
    with torch.no_grad():
        acc = float((model_net(d["x_eval"]).argmax(1) == d["y_eval"]).float().mean())
    return {"seconds": t2 - t1, "end_to_end": t2 - t0, "cpu": cpu, "train": Timed.train_seconds, "accuracy": acc}


def main() -> None:
    logging.disable(logging.INFO)  # pfl logs every central iteration
    d = load(sys.argv[1])
    print("READY", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        torch.set_num_threads(int(req["threads"]))
        print("RESULT " + json.dumps(run_once(d)), flush=True)


if __name__ == "__main__":
    main()
