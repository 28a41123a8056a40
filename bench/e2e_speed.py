"""End to end, each run a fresh process: ``fedloom run`` (the CLI at its defaults: threads auto, device auto,
checkpoints, figures, report) against the book-style loop and Flower's simulation doing the same training.

Used by ``bench/sim_speed.py`` (its last table); runnable alone:

    python bench/e2e_speed.py --workloads seed,s1 --reps 3

Wall time runs from launching ``python`` to its exit: interpreter and imports, data, training, and for fedloom
its output files, figures and report; for Flower also Ray's start and shutdown. Each contender is started the
same way (``python FILE ...`` in a fresh process); the book loop and Flower read the data with fedloom's loader
(the same split and partition) inside their process. The CLI's own ``train_seconds`` (first round included,
cold process) is printed beside it, with peak RSS of every process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(HERE), env.get("PYTHONPATH", "")) if p)
    return env


def _peak_wrapper(cmd: list[str]) -> list[str]:
    """Run ``cmd`` under a tiny Python parent that prints the child's own peak RSS (os.wait4)."""
    code = (
        "import os,sys,subprocess;p=subprocess.Popen(sys.argv[1:]);_,s,u=os.wait4(p.pid,0);"
        "print('PEAK',u.ru_maxrss/1024,flush=True);sys.exit(os.waitstatus_to_exitcode(s))"
    )
    return [sys.executable, "-c", code, *cmd]


def run_one(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(_peak_wrapper(cmd), capture_output=True, text=True, env=_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:6])} … failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    lines = proc.stdout.strip().splitlines()
    peak = float(next(line.split()[1] for line in lines if line.startswith("PEAK")))
    result = next((json.loads(line[7:]) for line in lines if line.startswith("RESULT ")), {})
    return {"wall": wall, "peak_mb": peak, **result}


def cli_config(workload: str, tmp: Path, device: str) -> Path:
    """The workload as a config file for ``fedloom run`` (runtime left at its defaults, except ``device``)."""
    import sim_speed  # the workload definitions

    if workload == "s3":
        raw = json.loads((HERE / "configs" / "s3.json").read_text(encoding="utf-8"))
    else:
        raw = dict(sim_speed.WORKLOADS[workload], seed=sim_speed.SEED, name=workload)
        raw["lambda"] = 1.0 / raw["k"]
    if device != "auto":
        raw["runtime"] = {"device": device}
    path = tmp / f"{workload}.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def commands(workload: str, tmp: Path, device: str, skip: set[str]) -> dict[str, list[str]]:
    py = sys.executable
    conf = cli_config(workload, tmp, device)
    out = {"fedloom run (CLI)": [py, str(HERE / "e2e_speed.py"), "--child", "cli", workload, str(conf), str(tmp)]}
    if "book" not in skip:
        out["book-style loop"] = [py, str(HERE / "e2e_speed.py"), "--child", "book", workload]
    if "flower" not in skip and workload != "s3":  # 10 000 Ray clients: not run
        out["flower simulation"] = [py, str(HERE / "e2e_speed.py"), "--child", "flower", workload]
    return out


def child(kind: str, workload: str, *rest: str) -> None:
    """Inside the fresh process: run one contender and print ``RESULT {json}``."""
    if kind == "cli":
        from fedloom.cli import main

        conf, tmp = rest
        out = Path(tmp) / f"run-{workload}-{os.getpid()}"
        sys.argv = ["fedloom", "run", "-c", conf, "--out", str(out), "-q"]
        if main() != 0:  # as the `fedloom` program runs it (argv from the command line: its exit path too)
            raise SystemExit(1)
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        keys = ("train_seconds", "threads", "device", "final_accuracy")
        print("RESULT " + json.dumps({k: summary.get(k) for k in keys}))
        return
    import sim_speed
    import torch

    data = sim_speed.s3_data() if workload == "s3" else sim_speed.workload_data(workload)
    if kind == "book":
        torch.set_num_threads(1)  # as issue 12 compares: the loop pinned to 1 thread (torch's default collapses
        # on a shared machine; on an idle one it is at most ~2× faster for these small models)
        res = sim_speed.run_book(workload, data)
    else:
        sim_speed.SKIPPED.update(sim_speed.find_skips({"pfl-research"}, None))
        if sim_speed.SKIPPED.get("flower simulation"):
            print("RESULT " + json.dumps({"skipped": sim_speed.SKIPPED["flower simulation"]}))
            return
        res = sim_speed.run_flower(workload, data)
    print("RESULT " + json.dumps({"train_seconds": res["seconds"], "threads": torch.get_num_threads(),
                                  "final_accuracy": res["accuracy"]}))  # fmt: skip


def measure(workloads: list[str], reps: int, device: str = "auto", skip: set[str] = frozenset()) -> dict:
    """{workload: {contender: median result}}, repetitions interleaved across contenders."""
    import sim_speed  # its wait for an idle machine

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fedloom-e2e-") as tmp:
        for w in workloads:
            cmds = commands(w, Path(tmp), device, skip)
            runs: dict[str, list[dict]] = {n: [] for n in cmds}
            for _ in range(reps):
                for name, cmd in cmds.items():
                    sim_speed.quiet()  # Ray's processes outlive a Flower run for a moment: nobody is timed beside them
                    try:
                        runs[name].append(run_one(cmd))
                    except RuntimeError as e:
                        runs[name] = [{"error": str(e)}]
            out[w] = {}
            for name, rs in runs.items():
                if not rs or "error" in rs[0] or "skipped" in rs[0]:
                    out[w][name] = rs[0] if rs else {"error": "no result"}
                    continue
                med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "peak_mb", "train_seconds")}
                out[w][name] = {**rs[-1], **med}
    return out


def print_e2e(results: dict) -> None:
    print("End to end, fresh processes (wall = launch to exit; train s = the round loop as each reports it, cold):")
    head = f"{'workload':8}  {'contender':18}  {'wall s':>7}  {'÷ fedloom':>9}  {'train s':>8}  {'peak MB':>8}  details"
    print(head)
    print("-" * len(head))
    for w, by in results.items():
        ref = by.get("fedloom run (CLI)", {}).get("wall", float("nan"))
        for name, r in by.items():
            if "error" in r or "skipped" in r:
                print(f"{w:8}  {name:18}  {r.get('error') or r.get('skipped')}")
                continue
            extra = f"threads {r.get('threads')}" + (f", device {r['device']}" if r.get("device") else "")
            print(f"{w:8}  {name:18}  {r['wall']:7.2f}  {r['wall'] / ref:9.1f}  {r['train_seconds']:8.3f}  "
                  f"{r['peak_mb']:8.0f}  {extra}, accuracy {r['final_accuracy']:.4f}")  # fmt: skip
    s3 = results.get("s3", {}).get("fedloom run (CLI)")
    if s3 and "wall" in s3:
        ok = s3["wall"] <= 10 and s3["peak_mb"] <= 2048
        print(f"s3 target (≤ 10 s wall, ≤ 2 GB peak RSS, CLI defaults): {s3['wall']:.1f} s, {s3['peak_mb']:.0f} MB: "
              f"{'met' if ok else 'NOT met'}")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(*sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="seed,s1,s2,s3")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--skip", default="", help="comma-separated: book, flower")
    args = p.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print_e2e(measure([w.strip() for w in args.workloads.split(",")], args.reps, args.device, skip))


if __name__ == "__main__":
    main()
