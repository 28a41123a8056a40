"""Where Seed's round time goes: the measurements behind the README's "Why Seed stays near 8×".

    python bench/seed_floor.py               # ~1 minute; --procs 7 for more fresh processes

Issue 12 asks Seed (iris, fnn, 10 clients, k 5, 20 rounds, 3 local epochs) for ≥ 10× the book-style loop in
the ``train_seconds`` a fresh process reports. This script splits that time, each figure a median:

1. the book loop's warm round loop (1 thread, this process) and what 10× leaves: a tenth of it;
2. **cold**: fresh processes, each building the federation at the defaults and running its 20 rounds
   (``train_seconds``, the first round, a later round);
3. **pre-warmed**: fresh processes that first run another Seed federation (another seed, 2 rounds), then the
   measured one: its first round still builds that federation's own state (workspace, seed table, thread
   choice), but no kernel or library call is made for the first time in the process. Cold minus pre-warmed
   first round is what the process's first calls cost;
4. **hot** (this process, warm, the same call repeated): one cohort's local training, the round without it
   (the engine returns a kept result), and the whole round. Their sum against the whole round is what running
   the round's many small parts one after another costs beyond each part run alone (caches, branch predictors).

Compare within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sim_speed import SEED, config, run_book, workload_data  # noqa: E402

from fedloom.simulation import Federation, run_federation  # noqa: E402


def _rounds(result) -> dict:
    seconds = [r["seconds"] for r in result.rows]
    return {"train": result.summary["train_seconds"], "first": seconds[0], "later": statistics.median(seconds[3:])}


def child(kind: str) -> None:
    """One fresh process: the federation as ``fedloom run`` builds it at the defaults (threads and engine auto)."""
    if kind == "prewarm":
        other = config("seed", threads="auto").model_copy(update={"seed": SEED + 1, "global_epochs": 2})
        run_federation(Federation.build(other))
    print(json.dumps(_rounds(run_federation(Federation.build(config("seed", threads="auto"))))))


def fresh(kind: str, procs: int) -> dict:
    runs = []
    for _ in range(procs):
        out = subprocess.run([sys.executable, __file__, "--child", kind], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _per_call(f, calls: int = 300, reps: int = 5) -> float:
    for _ in range(30):
        f()
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        best.append((time.perf_counter() - t0) / calls)
    return statistics.median(best)


def hot() -> dict:
    torch.set_num_threads(1)
    cfg = config("seed", threads=1)
    fed = Federation.build(cfg, workload_data("seed"))
    run_federation(Federation.build(cfg, fed.data))  # warm-up
    cohort, vec = fed.server.sample(3), fed.server.global_vec
    engine = fed.engine.train

    def train():
        return engine(fed.model, vec, fed.data, cohort, fed.spec, cfg.seed, 3)

    out = {"round": _per_call(lambda: fed.run_round(3)), "training": _per_call(train)}
    kept = train()

    def stub(model, vec, data, clients, *args, **kwargs):
        result = copy.copy(kept)
        result.clients = list(clients)
        return result

    fed.engine.train = stub
    out["rest"] = _per_call(lambda: fed.run_round(3))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=5, help="fresh processes per cold / pre-warmed figure")
    p.add_argument("--child", choices=["cold", "prewarm"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    torch.set_num_threads(1)
    data = workload_data("seed")
    run_book("seed", data)  # warm-up: the first torch.optim step of a process
    book = statistics.median(run_book("seed", data)["seconds"] for _ in range(5))
    rounds = config("seed").global_epochs
    cold, warm_proc, parts = fresh("cold", args.procs), fresh("prewarm", args.procs), hot()
    ms = 1e3
    print(f"Seed ({rounds} rounds), torch {torch.__version__}; medians; ms")
    print(f"book-style loop, warm round loop (1 thread): {book * ms:.1f}; 10x leaves {book / 10 * ms:.1f} for all")
    for name, r in (("cold process", cold), ("pre-warmed process", warm_proc)):
        print(f"{name:20s} train_seconds {r['train'] * ms:6.2f}  first round {r['first'] * ms:5.2f}  "
              f"a later round {r['later'] * ms:5.3f}  ({book / r['train']:.1f}x the book loop)")  # fmt: skip
    print(f"the process's first calls (cold - pre-warmed first round): {(cold['first'] - warm_proc['first']) * ms:.2f}")
    total = parts["training"] + parts["rest"]
    print(f"hot, warm process: local training {parts['training'] * ms:.3f} + the rest of the round "
          f"{parts['rest'] * ms:.3f} = {total * ms:.3f}; the whole round {parts['round'] * ms:.3f} "
          f"({parts['round'] / total:.2f}x the parts run alone)")  # fmt: skip
    budget = (book / 10 - cold["first"]) / (rounds - 1)
    print(f"10x cold would need the other {rounds - 1} rounds at {budget * ms:.3f} each after this first round")


if __name__ == "__main__":
    main()
