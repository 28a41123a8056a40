"""Deployment overhead: a federation of real ``fedloom server`` / ``fedloom client`` processes on loopback
against the in-process simulation of the same config, per round, printed as one table.

    python bench/deploy.py                  # iris, fnn [16], 3 clients, 10 rounds
    python bench/deploy.py --rounds 6 --clients 2

Per-round time is the median over rounds 2..R of the ``seconds`` column of ``metrics.jsonl`` (round 1 also
waits for the clients to start, shown apart). The simulation time is the best of three runs' median round,
after a warm-up run in the same process (the first ``torch.optim`` step of a process costs ~1 s here, and
other jobs on a 2-core machine make single runs noisy).

The floor: flwr 1.42's SuperNode pulls the SuperLink for a new message and, when there is none, sleeps 3 s
(``flwr/supernode/start_client_internal.py``, main loop); after handing a message to its ClientApp it checks
for the answer every 0.5 s (``_push_messages``). A SuperNode asks again right after delivering its answer,
before the server can have aggregated, so each round waits ~3 s for the next pull plus up to 0.5 s for the
answer check: ~3.5 s per round that no ClientApp or ServerApp can remove. The bench reads both intervals from
the installed flwr source, so it says so if they change. What fedloom removes on top: the per-message
``flwr-clientapp`` process of a stock SuperNode, which imports flwr and torch again for every message
(both measured below), and ``Grid.send_and_receive``'s 3 s pull interval on the server side (fedloom pulls
every 0.05 s).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedloom.config import build_config
from fedloom.flower.local import LocalFederation
from fedloom.simulation import Federation, run_federation


def config(clients: int, rounds: int) -> dict:
    return {
        "name": "deploy-bench", "type": "iris", "model_name": "fnn", "hidden": [16], "no_models": clients,
        "k": clients, "global_epochs": rounds, "local_epochs": 3, "batch_size": 10, "lr": 0.3, "momentum": 0.5,
        "seed": 0, "runtime": {"round_timeout": 10, "min_clients": min(2, clients)},
    }  # fmt: skip


def simulated_round(raw: dict, repeats: int = 3) -> tuple[float, float]:
    """(seconds per simulated round: the best of ``repeats`` runs' medians, final accuracy), after a warm-up."""
    cfg = build_config(raw)
    run_federation(Federation.build(cfg))  # warm-up
    runs = [run_federation(Federation.build(cfg)).rows for _ in range(repeats)]
    return min(statistics.median(r["seconds"] for r in rows) for rows in runs), runs[-1][-1]["accuracy"]


def deployed_rounds(raw: dict, clients: int, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="fedloom-bench-") as tmp:
        conf = Path(tmp) / "conf.json"
        conf.write_text(json.dumps(raw), encoding="utf-8")
        with LocalFederation(conf, Path(tmp) / "fed") as fed:
            server = fed.server()
            for i in range(clients):
                fed.client(i)
            code = server.wait(timeout)
            if code != 0:
                sys.exit(f"the deployed run failed (exit {code}):\n{server.output()[-3000:]}")
            return fed.rows()


def supernode_intervals() -> tuple[float, float]:
    """The SuperNode's sleep after an empty pull and its answer-check interval, read from flwr's source."""
    from flwr.supernode import start_client_internal as sci

    main_loop = inspect.getsource(sci.start_client_internal)
    push = inspect.getsource(sci._push_messages)
    pull = re.search(r"if run_id is None:.*?time\.sleep\(([\d.]+)\)", main_loop, re.S)
    check = re.search(r"time\.sleep\(([\d.]+)\)", push)
    return float(pull.group(1)) if pull else float("nan"), float(check.group(1)) if check else float("nan")


def import_seconds(module: str) -> float:
    """Wall time of a fresh Python process that imports ``module`` (median of 3)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    raw = config(args.clients, args.rounds)

    sim, sim_acc = simulated_round(raw)
    rows = deployed_rounds(raw, args.clients, timeout=120 + 15 * args.rounds)
    steady = rows[1:]
    dep = statistics.median(r["seconds"] for r in steady)
    exchange = statistics.median(r["exchange_seconds"] for r in steady)
    client = statistics.median(r["client_seconds"] for r in steady)
    pull, check = supernode_intervals()
    floor = pull + check
    flwr_import = import_seconds("flwr.supernode.runtime.run_clientapp")
    torch_import = import_seconds("torch")

    print(f"\nfedloom deployment vs simulation: iris, fnn [16], {args.clients} clients on 127.0.0.1, "
          f"{args.rounds} rounds (medians over rounds 2..{args.rounds})\n")  # fmt: skip
    table = [
        ("simulation: one in-process round", sim),
        ("deployment: one round (server clock)", dep),
        ("  of which: messages out and answers back", exchange),
        ("  of which: local training in the slowest client", client),
        ("overhead per round (deployment - simulation)", dep - sim),
        (f"floor: SuperNode sleep after an empty pull ({pull:g} s) + answer check ({check:g} s)", floor),
        ("overhead above the floor", dep - sim - floor),
        ("first round (includes clients starting and connecting)", rows[0]["seconds"]),
        ("avoided per message: a fresh flwr-clientapp process (python + import flwr)", flwr_import),
        ("avoided per message: importing torch in that process", torch_import),
    ]
    width = max(len(k) for k, _ in table)
    print(f"| {'what':<{width}} | seconds |\n|{'-' * (width + 2)}|---------|")
    for k, v in table:
        print(f"| {k:<{width}} | {v:7.3f} |")
    print(f"\nfinal accuracy: deployment {rows[-1]['accuracy']:.4f}, simulation {sim_acc:.4f}")
    print(f"deployment / simulation per round: {dep / sim:.0f}x; above the SuperNode floor: {dep - sim - floor:+.3f} s")


if __name__ == "__main__":
    main()
