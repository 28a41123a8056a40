"""A plain PyTorch loop doing the Iris demo's training (configs/iris.json), as a user would write it:
scikit-learn loads and splits the data, one DataLoader per client, torch.optim.SGD, FedAvg by sample count,
evaluation every round. ``bench/startup.py`` times it as a fresh process beside ``fedloom run``.

    python bench/plain_iris.py            # iris via sklearn.datasets.load_iris (what most users write)
    python bench/plain_iris.py --csv      # iris read from scikit-learn's bundled CSV (no sklearn import)
    python bench/plain_iris.py --threads 1  # torch pinned to one thread (default: torch's, one per core)

Same settings as configs/iris.json: 10 clients (iid, 12 rows each), 5 per round, 30 rounds, 3 local epochs,
batch 10, lr 0.3, momentum 0.5, fnn 4-3-3, 20 % stratified eval split, features standardized.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CLIENTS, K, ROUNDS, EPOCHS, BATCH, LR, MOMENTUM, SEED = 10, 5, 30, 3, 10, 0.3, 0.5, 0


def load(csv: bool):
    if csv:  # what fedloom does: the same numbers without importing scikit-learn
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
        from fedloom.data.split import load_bundled, train_test_split

        x, y, _ = load_bundled("iris")
        return train_test_split(x, y, 0.2, SEED, y)
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)


def main() -> None:
    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    x_tr, x_ev, y_tr, y_ev = load("--csv" in sys.argv)
    mean, std = x_tr.mean(0), x_tr.std(0)
    x_tr, x_ev = [torch.tensor((a - mean) / std, dtype=torch.float32) for a in (x_tr, x_ev)]
    y_tr, y_ev = torch.tensor(y_tr), torch.tensor(y_ev)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    shards = np.array_split(rng.permutation(len(y_tr)), CLIENTS)
    loaders = [DataLoader(TensorDataset(x_tr[s], y_tr[s]), batch_size=BATCH, shuffle=True) for s in shards]
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    for _ in range(ROUNDS):
        total, n = [torch.zeros_like(p) for p in model.parameters()], 0
        for c in rng.choice(CLIENTS, K, replace=False):
            local = copy.deepcopy(model)
            opt = torch.optim.SGD(local.parameters(), lr=LR, momentum=MOMENTUM)
            for _ in range(EPOCHS):
                for xb, yb in loaders[c]:
                    opt.zero_grad()
                    F.cross_entropy(local(xb), yb).backward()
                    opt.step()
            size = len(shards[c])
            for t, p, g in zip(total, local.parameters(), model.parameters()):
                t += size * (p.detach() - g.detach())
            n += size
        with torch.no_grad():
            for p, t in zip(model.parameters(), total):
                p += t / n
            accuracy = float((model(x_ev).argmax(1) == y_ev).float().mean())
    print(f"accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
