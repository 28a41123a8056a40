"""``runtime.threads: auto``: pick torch's intra-op thread count by timing the run's own kernels.

Why not torch's default (one thread per core)? On an idle machine it is the fastest for the vectorized
engine's batched GEMMs (2 threads ≈ 1.8× one on a 2-core machine), but as soon as another process keeps a
core busy, every parallel region waits for the thread that has no core: small GEMMs at 2 threads became
13–35× slower than at 1 on that machine (issue 12). Neither fixed choice is right on a shared machine, so
``auto`` measures:

1. **Probe.** Before the first cohort trains, a kernel shaped like the cohort's own work (the first
   layer's batched matmul ``[clients, batch, in] × [clients, in, out]`` and its weight gradient for
   Linear stacks; one forward and backward of the model otherwise) is timed at each candidate thread
   count (1, 2, 4, … up to torch's default), interleaved, a few repetitions; a count that is 3× slower
   than the best is not timed further (under load a collapsed count would otherwise dominate the cost).
2. **Decide** (:func:`choose`): the fewest threads whose mean time is within ``tolerance`` of the fastest.
   The mean, not the median: a run pays the total, and under load the slow samples are the point.
   Fewer threads win near-ties because they are the ones that do not collapse when load arrives.
3. **Look again** (:class:`ThreadTuner.observe`): every cohort's seconds per trained sample are watched;
   when a cohort is much slower than the best since the last probe (load arrived), or a while has passed
   (load may have left), the probe runs again.

On an idle machine a probe costs a few milliseconds; beside busy cores about one scheduler slice per thread
count tried (a collapsed count is timed for one call, then dropped). Kernels too small for torch to
parallelize are decided at 1 thread from three single calls, and a decision is reused for the same kernel
shapes within ``RECHECK_SECONDS`` in one process (a sweep of runs probes once, not once per run).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ThreadTuner", "TunedEngine", "choose", "candidates", "tune_threads", "threads_summary"]

_DECISIONS: dict[tuple, tuple[float, int]] = {}  # (kernel key, max threads) → (when, threads chosen)
_TORCH_DEFAULT = torch.get_num_threads()  # read at import, before anyone changes it: one per core by default
TOLERANCE = 0.10  # fewer threads win unless more threads are >10 % faster (the idle-machine budget)
SLOWDOWN = 2.5  # a cohort this much slower per sample than the best since the last probe triggers a new one
# (a collapse is 10× and more; load noise on a shared machine reaches 2×, which must not trigger probes)
RECHECK_SECONDS = 5.0  # and at least this often (of training time), so a load that leaves is noticed
_TINY_SECONDS = 30e-6  # a probe faster than this at 1 thread is below torch's parallel grain: 1 thread
_REPS = 3  # interleaved repetitions per candidate; the decision uses means
_DROP = 3.0  # a candidate this much slower than the best after a repetition is not timed again
_TARGET_SECONDS = 5e-4  # one timed sample repeats the probe until it lasts about this long
_PROBE_CLIENTS = 256  # clients in a probe: enough to parallelize over, few enough to cost milliseconds
_PROBE_ROWS = 2048  # rows of a whole-model probe


def candidates(maximum: int) -> list[int]:
    """Thread counts worth trying: 1, 2, 4, … and ``maximum`` itself."""
    out, n = [], 1
    while n < maximum:
        out.append(n)
        n *= 2
    return out + [max(1, maximum)]


def choose(timings: dict[int, list[float]], tolerance: float = TOLERANCE) -> int:
    """The fewest threads whose mean time is within ``tolerance`` of the fastest mean.

    >>> choose({1: [1.0, 1.1, 0.9], 2: [0.5, 0.6, 0.55]})  # idle: 2 threads nearly twice as fast
    2
    >>> choose({1: [1.0], 2: [0.95]})  # 5 % is not worth the risk of collapsing under load
    1
    """
    if not timings:
        raise ValueError("no timings to choose from")
    med = {n: statistics.fmean(t) for n, t in timings.items()}
    best = min(med.values())
    return min(n for n, m in med.items() if m <= best * (1 + tolerance))


def measure(probe: Callable[[], None], counts: list[int], reps: int = _REPS) -> dict[int, list[float]]:
    """Seconds per probe call at each thread count, repetitions interleaved so load hits all alike.

    ``counts[0]`` (1) is calibrated first; when a call there is below ``_TINY_SECONDS`` the other counts are
    not timed at all (torch would not parallelize it). A sample is cut short once it is ``_DROP``× the best
    one, and a count that far behind is not timed again: a collapsed count costs about one call."""
    before = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in counts}
    try:
        torch.set_num_threads(counts[0])
        probe()  # warm-up: allocator, first-call dispatch
        singles = []
        for _ in range(3):  # the fastest of three single calls: preemption only ever adds time
            t0 = time.perf_counter()
            probe()
            singles.append(time.perf_counter() - t0)
        once = min(singles)
        if once < _TINY_SECONDS:
            return {counts[0]: singles}  # too small for torch to parallelize: nothing else to time
        inner = max(1, min(1000, int(_TARGET_SECONDS / once)))
        alive, best = list(counts), float("inf")
        for _ in range(reps):
            for n in alive:
                # no warm-up for n > 1: a sample lasts ~_TARGET_SECONDS, far more than a thread pool's start,
                # and under load a warm-up call of a collapsed count would cost a whole scheduler slice
                torch.set_num_threads(n)
                t0, calls = time.perf_counter(), 0
                while calls < inner:
                    probe()
                    calls += 1
                    if time.perf_counter() - t0 > _DROP * best * inner:
                        break
                times[n].append((time.perf_counter() - t0) / calls)
                best = min(best, times[n][-1])
            best_mean = min(statistics.fmean(times[n]) for n in alive)  # a count 3× slower is out
            alive = [n for n in alive if statistics.fmean(times[n]) <= _DROP * best_mean]
    finally:
        torch.set_num_threads(before)
    return {n: t for n, t in times.items() if t}


def linear_probe(clients: int, batch: int, features: int, out: int) -> Callable[[], None]:
    """The vectorized engine's largest kernels for a Linear stack: forward ``baddbmm`` of the first layer
    and its weight gradient ``bmm``, at the cohort's shapes."""
    x, w = torch.randn(clients, batch, features), torch.randn(clients, features, out)  # [a, B, in], [a, in, out]
    b, g = torch.randn(clients, 1, out), torch.randn(clients, batch, out)
    gw = torch.empty(clients, out, features)

    def probe() -> None:
        torch.baddbmm(b, x, w)
        torch.bmm(g.transpose(1, 2), x, out=gw)

    probe.key = ("linear", clients, batch, features, out)  # same shapes, same decision (see ThreadTuner.probe)
    return probe


def model_probe(model: nn.Module, rows: int, features: int) -> Callable[[], None]:
    """One forward and backward of (a copy of) ``model`` on ``rows`` random rows."""
    work = copy.deepcopy(model)
    x = torch.randn(rows, features)

    def probe() -> None:
        work.zero_grad(set_to_none=True)
        work(x).sum().backward()

    probe.key = ("model", repr(model), rows, features)
    return probe


@dataclass
class ThreadTuner:
    """Chooses and re-checks the thread count; ``clock`` and ``measure_fn`` are injectable for tests."""

    maximum: int = _TORCH_DEFAULT
    clock: Callable[[], float] = time.perf_counter
    measure_fn: Callable[[Callable[[], None], list[int]], dict[int, list[float]]] = measure
    threads: int = 0  # the current choice (0 before the first probe)
    probes: int = 0
    history: list[int] = field(default_factory=list)  # every choice made, in order
    _best_rate: float = float("inf")  # seconds per sample, best cohort since the last probe
    _since: float = 0.0  # training seconds since the last probe

    def probe(self, probe: Callable[[], None], fresh: bool = False) -> int:
        """Time ``probe`` at each candidate count, set the chosen one and return it. A decision made in this
        process for the same kernel less than ``RECHECK_SECONDS`` ago is reused unless ``fresh``."""
        key = (getattr(probe, "key", None), self.maximum)
        cached = _DECISIONS.get(key) if key[0] is not None and not fresh else None
        if cached is not None and self.clock() - cached[0] < RECHECK_SECONDS:
            chosen = cached[1]
        else:
            counts = candidates(self.maximum)
            chosen = 1 if len(counts) == 1 else choose(self.measure_fn(probe, counts))
            if key[0] is not None:
                _DECISIONS[key] = (self.clock(), chosen)
        self.probes += 1
        self.history.append(chosen)
        self.threads = chosen
        self._best_rate, self._since = float("inf"), 0.0
        torch.set_num_threads(chosen)
        return chosen

    def observe(self, seconds: float, samples: int) -> bool:
        """Record one cohort (``seconds`` of training for ``samples`` sample-steps); True when the thread
        count should be measured again: this cohort was ``SLOWDOWN``× slower per sample than the best since
        the last probe, or ``RECHECK_SECONDS`` of training have passed since it."""
        self._since += seconds
        rate = seconds / max(1, samples)
        slow = rate > SLOWDOWN * self._best_rate
        self._best_rate = min(self._best_rate, rate)
        return slow or self._since >= RECHECK_SECONDS


class TunedEngine:
    """Wraps an engine: probes before the first cohort, times every cohort, re-probes when needed.

    ``threads`` is an int (fixed: set once, never measured) or ``"auto"``."""

    def __init__(self, engine: object, threads: int | str, tuner: ThreadTuner | None = None):
        self.engine, self.setting = engine, threads
        self.device = torch.device("cpu")
        self.tuner = tuner if tuner is not None else ThreadTuner()
        if threads != "auto":
            torch.set_num_threads(int(threads))
        self._pending = threads == "auto"  # probe before the next cohort

    @property
    def name(self) -> str:
        return self.engine.name

    def __getattr__(self, attr: str):  # the wrapped engine's own settings (chunk, …) read through
        if attr == "engine":  # not set yet (copy/pickle): no recursion
            raise AttributeError(attr)
        return getattr(self.engine, attr)

    @property
    def threads(self) -> int:
        return self.tuner.threads if self.setting == "auto" else int(self.setting)

    def train(self, model: nn.Module, global_vec: torch.Tensor, data, clients: list[int], spec, *args, **kwargs):
        if self._pending and clients:
            fresh = self.tuner.probes > 0  # a re-check asked for by observe(): measure again
            self.tuner.probe(_probe_for(self.engine, model, data, len(clients), spec.batch_size), fresh)
            self._pending = False
        t0 = self.tuner.clock()
        out = self.engine.train(model, global_vec, data, clients, spec, *args, **kwargs)
        if self.setting == "auto" and clients:
            samples = int(data.partition.sizes()[clients].sum()) * spec.epochs
            self._pending = self.tuner.observe(self.tuner.clock() - t0, samples)
        return out


def _probe_for(engine: object, model: nn.Module, data, clients: int, batch: int) -> Callable[[], None]:
    """A probe shaped like the cohort's work (see the module docstring): one client's batch for the
    sequential engine, the cohort's (or chunk's) stacked batches for the vectorized one."""
    from .engine_vectorized import linear_stack, supports  # late: that module imports torch.func

    if engine.name == "sequential" or (engine.name == "auto" and not supports(model)):
        return model_probe(model, batch, data.num_features)
    chunk = getattr(engine, "chunk", None) or getattr(getattr(engine, "vectorized", None), "chunk", None)
    clients = min(clients, chunk or clients, _PROBE_CLIENTS)
    linears = linear_stack(model)
    if linears is not None:
        return linear_probe(clients, batch, linears[0].in_features, linears[0].out_features)
    return model_probe(model, min(clients * batch, _PROBE_ROWS), data.num_features)


def tune_threads(
    engine: object, threads: int | str | None, device: torch.device | None = None, server: object | None = None
) -> TunedEngine:
    """``engine`` wrapped for ``runtime.threads`` (``None`` is read as ``auto``); with ``device``, the engine
    and ``server``'s evaluation are pointed at it (:func:`fedloom.device.use_device`)."""
    if device is not None and server is not None:
        from .device import use_device

        use_device(device, engine, server)
    setting = "auto" if threads is None else threads
    if setting == "auto" and device is not None and device.type == "cuda":
        # the GPU does the arithmetic; the CPU only plans batches and copies, where more threads cost
        # (an H100 host: 1 000 CNN clients took 3.2 s at 16 threads, 1.2 s at 1)
        setting = 1
    wrapped = TunedEngine(engine, setting)
    wrapped.device = device or torch.device("cpu")
    return wrapped


def threads_summary(engine: object) -> dict:
    """``summary.json`` entries: the thread count in use at the end and, for ``auto``, every choice made;
    the device the cohorts trained on (the sequential engine always trains on the CPU)."""
    if not isinstance(engine, TunedEngine):
        return {"threads": torch.get_num_threads()}
    out: dict = {"threads": engine.threads}
    if engine.setting == "auto":
        out["threads_auto"] = engine.tuner.history
    out["device"] = "cpu" if engine.name == "sequential" else engine.device.type
    return out
