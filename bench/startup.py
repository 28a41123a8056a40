"""Start-up: the Iris demo (``fedloom run -c configs/iris.json``, defaults) against a plain PyTorch loop doing
the same training (``bench/plain_iris.py``), each a fresh process, wall time from launch to exit.

    python bench/startup.py               # 5 interleaved repetitions, medians and ratios
    python bench/startup.py --reps 9

Contenders (all fresh ``python`` processes, started the same way, in this order every repetition so that
load from other jobs hits all alike):

- ``fedloom run`` with progress display (what a user types), and with ``-q``;
- the plain loop as most users write it (iris via ``sklearn.datasets.load_iris``, torch's default threads),
  the same pinned to 1 thread, and the same reading iris from scikit-learn's bundled CSV (no sklearn import);
- ``fedloom run`` on a config with a typo (time to the one-line error: the config is checked before torch
  is imported).

Issue 12's target: the demo takes at most half the plain loop's wall time. Compare ratios, not seconds: the
machine may be shared.
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

ROOT = Path(__file__).resolve().parents[1]


def contenders(tmp: Path) -> dict[str, list[str]]:
    py, conf = sys.executable, str(ROOT / "configs" / "iris.json")
    bad = tmp / "typo.json"
    bad.write_text(json.dumps({"no_modls": 10}), encoding="utf-8")
    plain = str(ROOT / "bench" / "plain_iris.py")
    return {
        "fedloom run (progress)": [py, "-m", "fedloom.cli", "run", "-c", conf, "--out", str(tmp / "run")],
        "fedloom run -q": [py, "-m", "fedloom.cli", "run", "-c", conf, "--out", str(tmp / "run-q"), "-q"],
        "plain loop (sklearn, torch threads)": [py, plain],
        "plain loop (sklearn, 1 thread)": [py, plain, "--threads", "1"],
        "plain loop (CSV, 1 thread)": [py, plain, "--csv", "--threads", "1"],
        "fedloom run, config typo": [py, "-m", "fedloom.cli", "run", "-c", str(bad), "--out", str(tmp / "bad"), "-q"],
    }


_RUNS = [0]


def wall(cmd: list[str], env: dict[str, str], expect: int = 0) -> float:
    """Seconds from launch to exit; a ``fedloom run`` writes to a fresh ``--out`` folder every time (an
    existing one is refused with exit code 2 in a fraction of the time: that would be timed instead)."""
    if "--out" in cmd:
        _RUNS[0] += 1
        cmd = list(cmd)
        cmd[cmd.index("--out") + 1] += f"-{_RUNS[0]}"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}, expected {expect}:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env |= {"MPLBACKEND": "Agg", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with tempfile.TemporaryDirectory(prefix="fedloom-startup-") as tmp:
        cmds = contenders(Path(tmp))
        expect = {name: 2 if "typo" in name else 0 for name in cmds}  # the typo: its one-line error, exit 2
        for name, cmd in cmds.items():  # warm the OS file cache: every contender's first start reads the disk
            wall(cmd, env, expect[name])
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.reps):
            for name, cmd in cmds.items():
                times[name].append(wall(cmd, env, expect[name]))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at end; median of {args.reps} fresh processes")
    ref = med["plain loop (sklearn, torch threads)"]
    ref1 = med["plain loop (sklearn, 1 thread)"]
    width = max(map(len, med))
    print(f"{'contender'.ljust(width)}  wall s  min s   max s   ÷ plain  ÷ plain@1")
    for name, m in med.items():
        t = times[name]
        print(f"{name.ljust(width)}  {m:6.2f}  {min(t):6.2f}  {max(t):6.2f}  {m / ref:7.2f}  {m / ref1:9.2f}")
    demo = med["fedloom run (progress)"]
    verdict = "met" if demo <= 0.5 * ref else f"NOT met ({demo / ref:.2f}×, target ≤ 0.50×)"
    print(f"\ndemo / plain loop = {demo / ref:.2f} (issue 12 target ≤ 0.50: {verdict}); "
          f"against the plain loop pinned to 1 thread {demo / ref1:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
