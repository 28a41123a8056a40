"""``runtime.threads: auto``: pick torch's intra-op thread count by timing the run's own work.

Why not torch's default (one thread per core)? On an idle machine it is the fastest for the vectorized
engine's batched GEMMs (2 threads ≈ 1.8× one on a 2-core machine), but as soon as another process keeps a
core busy, every parallel region waits for the thread that has no core: small GEMMs at 2 threads became
13–35× slower than at 1 on that machine (issue 12). Neither fixed choice is right on a shared machine, so
``auto`` measures:

1. **Measure real steps** (vectorized engine). Until measured, a run uses 1 thread. The first local steps
   are timed, each at one candidate thread count (1, 2, 4, … up to torch's default), interleaved: 1 thread
   first (a warm-up step, then a timed one), then a warm-up step per other count, then timed steps until
   each count has ``_REPS`` (or until one sample of each is ``_EARLY``× away from the winner's: S1's 2
   threads are ~1.9× faster, and each further 1-thread step costs); the time is seconds per trained row. A
   count whose timed step is ``_DROP``× slower than the 1-thread step is not tried again: under load a
   collapsed count costs one step, two the first time the tuner tries it: its first warm-up step alone does
   not drop it, since a count's first step may wait for its new threads to get a core (10–19 ms instead of
   ~1 ms for S1's 2-thread warm-up on an idle lab machine, now and then), which one step cannot tell from
   load. Before a count is first tried, the machine's runnable threads are read (:mod:`fedloom.cpuload`,
   once 1 thread's step is timed and again then; a run that stops at 1 thread reads nothing: the first
   reading of a process cost ~0.4 ms, a tenth of Seed's first round): a count whose cores other
   processes hold is not tried at all, since beside a busy core even one collapsed step of S1 cost half the
   run's training; the next look comes soon (``_RECHECK_CROWDED``), as it costs nothing. A 1-thread step
   under ``_TINY_STEP`` ends the measurement at 1 thread (nothing to parallelize), and so does one whose
   time, over the local steps the run has left, stays under ``_SHORT_RUN``: more threads could save at most
   part of that, less than trying them may cost (their first steps, and on a VM the new thread's first wait
   for a core: S2's whole run is ~18 ms, and trying 2 threads, then keeping 1, cost it 1.09–1.16× the time
   of 1 thread).
   The steps are the run's own training (S1 and S2 trained to the same bits at 1, 2 and auto threads on
   the lab machine; tests/test_threads.py checks a small run), so measuring costs only the difference
   between the counts. (A synthetic probe shaped like the first layer,
   timed for a few milliseconds before the first cohort, chose 1 thread for S1 where 2 were 1.5× faster.)
   The sequential engine, whose steps are not hooked, is measured with a copy of the model
   (:func:`measure`, :func:`model_probe`).
2. **Decide** (:func:`choose`): the fewest threads whose mean time is within ``tolerance`` of the fastest.
   The mean, not the median: a run pays the total, and under load the slow samples are the point.
   Fewer threads win near-ties because they are the ones that do not collapse when load arrives.
3. **Look again.** At more than 1 thread every step stays timed: one ``COLLAPSE``× slower per row than the
   best step of its size since the decision (load arrived), or two in a row ``SLOWDOWN``× slower, start a new
   measurement at the next step (one step between the two may be the OS preempting a thread for a moment).
   Every cohort's seconds per sample are watched too (:meth:`ThreadTuner.observe`, the sequential engine's
   only signal), and after a while of training (load may have left) the next cohort is measured again.
   At 1 thread nothing is re-measured for a slowdown: fewer threads cannot dodge load.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .cpuload import others_running, usable_cores

__all__ = ["ThreadTuner", "TunedEngine", "choose", "candidates", "tune_threads", "threads_summary"]

_UNREAD = -1  # _crowd_at_start before its reading
_DECISIONS: dict[tuple, tuple[float, int]] = {}  # (kernel key, max threads) → (when, threads chosen)
_TORCH_DEFAULT = torch.get_num_threads()  # read at import, before anyone changes it: one per core by default
TOLERANCE = 0.10  # fewer threads win unless more threads are >10 % faster (the idle-machine budget)
SLOWDOWN = 2.5  # a cohort this much slower per sample than the best since the last probe triggers a new one
# (a collapse is 10× and more; load noise on a shared machine reaches 2×, which must not trigger probes)
COLLAPSE = 8.0  # one step this much slower per row than the best of its size is a collapse (load): measure at
# once; a step between SLOWDOWN and COLLAPSE× slower may be the OS preempting a thread for a moment (a 2 ms step
# of S1 hit by a few ms): it counts when the next step is slow too
RECHECK_SECONDS = 5.0  # and at least this often (of training time), so a load that leaves is noticed;
# measuring steps costs little: they are re-measured after 1 s, or 50× their slowest measured step if longer
# (a collapsed count's step, the price of looking again under load, stays ≤ 2 % of the time)
_RECHECK_STEPS = (1.0, 50.0)
_RECHECK_CROWDED = 0.05  # after a count was skipped for other processes (nothing paid): look again soon
_TINY_SECONDS = 30e-6  # a probe faster than this at 1 thread is below torch's parallel grain: 1 thread
_TINY_STEP = 300e-6  # a local step faster than this at 1 thread: its ops are too small for threads to save more
# than a few microseconds each, against a collapse under load; 1 thread, other counts not tried
_SHORT_RUN = 0.05  # seconds: a run whose remaining local steps take less at 1 thread stays at 1 thread
_REPS = 3  # interleaved repetitions per candidate; the decision uses means
_DROP = 3.0  # a candidate this much slower than the best after a repetition is not timed again
_EARLY = 1.5  # one sample of every count, each this far from the winner's: decided without more repetitions
_TARGET_SECONDS = 5e-4  # one timed sample repeats the probe until it lasts about this long


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


def _decisive(timings: dict[int, list[float]]) -> bool:
    """Whether the timings already decide: every count timed, and each one's first sample at least ``_EARLY``×
    away from the winner's (in either direction), so that more samples would not change :func:`choose`."""
    if len(timings) < 2 or not all(timings.values()):
        return False
    first = {n: t[0] for n, t in timings.items()}
    best = choose({n: [t] for n, t in first.items()})
    return all(max(t, first[best]) >= _EARLY * min(t, first[best]) for n, t in first.items() if n != best)


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


def model_probe(model: nn.Module, rows: int, features: int) -> Callable[[], None]:
    """One forward and backward of (a copy of) ``model`` on ``rows`` random rows (the sequential engine)."""
    work = copy.deepcopy(model)
    x = torch.randn(rows, features)

    def probe() -> None:
        work.zero_grad(set_to_none=True)
        work(x).sum().backward()

    probe.key = ("model", repr(model), rows, features)
    return probe


@dataclass
class ThreadTuner:
    """Chooses and re-checks the thread count; ``clock`` and ``measure_fn`` are injectable for tests.

    Two ways to measure: :meth:`probe` times a callable (the sequential engine), :meth:`start` schedules the
    next local steps of the vectorized engine, each timed between :meth:`step_begin` and :meth:`step_end`."""

    maximum: int = _TORCH_DEFAULT
    clock: Callable[[], float] = time.perf_counter
    measure_fn: Callable[[Callable[[], None], list[int]], dict[int, list[float]]] = measure
    crowd: Callable[[], int | None] = others_running  # other processes' runnable threads now (None: unknown)
    cores: int = field(default_factory=usable_cores)
    reps: int = _REPS
    threads: int = 0  # the current choice (0 before the first decision)
    probes: int = 0  # decisions made
    history: list[int] = field(default_factory=list)  # every choice made, in order
    _best_rate: float = float("inf")  # seconds per sample, best cohort since the last decision
    _since: float = 0.0  # training seconds since the last decision
    _plan: list[tuple[int, bool]] = field(default_factory=list)  # (threads, warm-up?) of the next steps to time
    _times: dict[int, list[float]] = field(default_factory=dict)  # seconds per row of the timed steps
    _step: tuple[float, int] = (0.0, 0)  # the step being timed: its start and rows
    _slowest: float = 0.0  # seconds of the slowest step timed in the current measurement
    _recheck: float = RECHECK_SECONDS  # training seconds after a decision before measuring again
    _best_step: dict[int, float] = field(default_factory=dict)  # rows → best seconds per row since the decision
    _crowd_at_start: int | None = None  # crowd() once 1 thread was timed (_UNREAD: not yet; None: unknown)
    _skipped: bool = False  # a count was left out of this measurement because other processes held its cores
    _slow_steps: int = 0  # consecutive steps SLOWDOWN× slower than the best of their size (outside a measurement)
    _used: set[int] = field(default_factory=set)  # counts this tuner has run steps at (their threads exist)
    horizon: float = float("inf")  # local steps the run has left (set by TunedEngine per cohort; inf: unknown)

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
        self._recheck = RECHECK_SECONDS
        return self._decide(chosen)

    def _decide(self, chosen: int) -> int:
        self._plan, self._best_step, self._slow_steps = [], {}, 0
        self.probes += 1
        self.history.append(chosen)
        self.threads = chosen
        self._best_rate, self._since = float("inf"), 0.0
        torch.set_num_threads(chosen)
        return chosen

    # --- measuring the engine's own steps ---------------------------------------------------------------------
    @property
    def measuring(self) -> bool:
        return bool(self._plan)

    def start(self) -> None:
        """Time the next steps: one warm-up step per count, then ``reps`` rounds of all counts, interleaved so
        that load hits every count alike. One core: nothing to measure."""
        counts = candidates(self.maximum)
        if len(counts) == 1:
            self._decide(1)
            return
        more = counts[1:]
        # 1 thread first, warm-up (the first step of a process also warms torch up) and one timed step, so that
        # every later count's first timed step can already be compared with it (and dropped if it collapsed)
        self._plan = [(1, True), (1, False), *((n, True) for n in more), *((n, False) for n in more)]
        self._plan += [(n, False) for _ in range(self.reps - 1) for n in counts]
        self._times = {n: [] for n in counts}
        self._slowest, self._skipped = 0.0, False
        self._crowd_at_start = _UNREAD  # read once 1 thread is timed, if the measurement goes on (see step_end)

    def _fits(self, n: int) -> bool:
        """Whether ``n`` threads find free cores: by the count of other runnable threads once 1 thread was timed
        (read now if not yet) or now, whichever is lower (one reading may catch a passing process)."""
        if self._crowd_at_start == _UNREAD:
            self._crowd_at_start = self.crowd()
        readings = [c for c in (self._crowd_at_start, self.crowd()) if c is not None]
        return not readings or min(readings) + n <= self.cores

    @property
    def watching(self) -> bool:
        """Whether steps should be timed: while measuring, and while more than 1 thread is in use (a step
        that collapses when load arrives starts a new measurement at once, not a cohort later)."""
        return bool(self._plan) or self.threads > 1

    def step_begin(self, rows: int) -> None:
        """Before a local step of ``rows`` trained rows (all clients of the step): set its thread count. A count
        about to be tried for the first time while other processes hold the cores it needs is not tried:
        beside a busy core, one collapsed step of S1 cost 60–90 ms, half the run's training."""
        while self._plan and self._plan[0][1] and self._plan[0][0] > 1 and not self._fits(self._plan[0][0]):
            n = self._plan[0][0]
            self._plan = [(m, w) for m, w in self._plan if m != n]
            self._skipped = True
            self._end_if_alone()
        if self._plan:
            torch.set_num_threads(self._plan[0][0])
        self._step = (self.clock(), rows)

    def step_end(self) -> None:
        """After the step: record its seconds per row; drop a collapsed count; decide when the plan is done.
        Outside a measurement: a step ``SLOWDOWN``× slower per row than the best of its size since the last
        decision starts a new measurement."""
        t0, rows = self._step
        raw = self.clock() - t0
        seconds = raw / max(1, rows)
        if not self._plan:
            self._used.add(self.threads)
            best = self._best_step.setdefault(rows, seconds)
            self._best_step[rows] = min(best, seconds)
            slow = self.threads > 1 and seconds > SLOWDOWN * best
            self._slow_steps = self._slow_steps + 1 if slow else 0
            if slow and (self._slow_steps >= 2 or seconds > COLLAPSE * best):
                self.start()  # load arrived: a collapse at once, a lesser slowdown when the next step confirms it
            return
        self._slowest = max(self._slowest, raw)
        n, warm_up = self._plan.pop(0)
        first_use, slowest_ok = n not in self._used, _DROP * min(self._times[1], default=float("inf"))
        self._used.add(n)
        if not warm_up:
            self._times[n].append(seconds)
        if n == 1 and not warm_up and (raw < _TINY_STEP or raw * self.horizon < _SHORT_RUN):
            self._plan = []  # too small to parallelize, or too little left to repay trying: nothing else to time
        elif n == 1 and not warm_up and self._crowd_at_start == _UNREAD:
            self._crowd_at_start = self.crowd()  # more counts to try: the first of the two readings _fits takes
        elif n > 1 and not (warm_up and first_use) and seconds > slowest_ok:
            self._plan = [(m, w) for m, w in self._plan if m != n]  # collapsed (a busy core): not tried again
        elif not warm_up and _decisive({m: t for m, t in self._times.items() if m in self._counts_left()}):
            self._plan = []  # one sample of each count already tells: the rest would only cost (1 thread's steps)
        self._end_if_alone()
        if not self._plan and self._times:
            self._end()

    def _counts_left(self) -> set[int]:
        """The counts still in this measurement: timed already or still planned."""
        return {m for m, t in self._times.items() if t} | {m for m, _ in self._plan}

    def _end_if_alone(self) -> None:
        """End the measurement once only 1 thread is left to time and it has been timed."""
        if self._plan and all(m == 1 for m, _ in self._plan) and self._times[1]:
            self._plan = []
            self._end()

    def _end(self) -> None:
        if self._skipped:  # the other processes may be gone in a moment; looking again costs two readings
            self._recheck = _RECHECK_CROWDED
        else:
            self._recheck = max(_RECHECK_STEPS[0], _RECHECK_STEPS[1] * self._slowest)
        self._decide(choose({m: t for m, t in self._times.items() if t}))
        self._times = {}

    def settle(self) -> None:
        """A cohort ended while steps were still being measured: until the plan goes on with the next cohort's
        steps, use the best count so far (1 before any timing), e.g. for the round's evaluation."""
        if self._plan:
            timed = {m: t for m, t in self._times.items() if t}
            torch.set_num_threads(choose(timed) if timed else 1)

    def observe(self, seconds: float, samples: int) -> bool:
        """Record one cohort (``seconds`` of training for ``samples`` sample-steps); True when the thread
        count should be measured again: this cohort was ``SLOWDOWN``× slower per sample than the best since
        the last decision, or ``RECHECK_SECONDS`` of training have passed since it (measured steps: after
        ``_RECHECK_STEPS``)."""
        self._since += seconds
        rate = seconds / max(1, samples)
        slow = self.threads > 1 and rate > SLOWDOWN * self._best_rate  # at 1 thread, load cannot be dodged
        self._best_rate = min(self._best_rate, rate)
        return slow or self._since >= self._recheck


class TunedEngine:
    """Wraps an engine: measures before or during the first cohort, times every cohort, measures again when
    needed.

    ``threads`` is an int (fixed: set once, never measured) or ``"auto"``; ``rounds``: the run's last round
    (None: unknown), from which and each cohort's round the tuner's ``horizon`` is estimated."""

    def __init__(self, engine: object, threads: int | str, tuner: ThreadTuner | None = None, rounds: int | None = None):
        self.engine, self.setting, self.rounds = engine, threads, rounds
        self.device = torch.device("cpu")
        self.tuner = tuner if tuner is not None else ThreadTuner()
        # auto: 1 thread until measured (whatever runs before the first step cannot collapse under load)
        torch.set_num_threads(1 if threads == "auto" else int(threads))
        self._pending = threads == "auto"  # measure again from the next cohort

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
        if self.setting != "auto" or not clients:
            return self.engine.train(model, global_vec, data, clients, spec, *args, **kwargs)
        steps = _steps_timed(self.engine, model)
        if self._pending and not self.tuner.measuring:
            if steps:
                self.tuner.start()
            else:
                fresh = self.tuner.probes > 0  # a re-check asked for by observe(): measure again
                self.tuner.probe(model_probe(model, spec.batch_size, data.num_features), fresh)
            self._pending = False
        sizes = data.partition.sizes()[clients]  # [clients] rows
        rnd = args[1] if len(args) > 1 else kwargs.get("round")  # train(model, vec, data, clients, spec, seed, round)
        if self.rounds is not None and rnd is not None:  # this cohort's lock steps × the rounds left, this one's too
            from .engine_plan import steps_per_epoch

            lock_steps = spec.epochs * int(steps_per_epoch(sizes, spec.batch_size, False).max())
            self.tuner.horizon = lock_steps * max(1, self.rounds - int(rnd) + 1)
        t0 = self.tuner.clock()
        from .engine_kernels import STEP_TIMER as timer  # late: that module imports torch.func

        timer[0] = self.tuner if steps and self.tuner.watching else None
        try:
            out = self.engine.train(model, global_vec, data, clients, spec, *args, **kwargs)
        finally:
            timer[0] = None
            self.tuner.settle()
        samples = int(sizes.sum()) * spec.epochs
        self._pending = self.tuner.observe(self.tuner.clock() - t0, samples) or self._pending
        return out


def _steps_timed(engine: object, model: nn.Module) -> bool:
    """Whether ``engine`` trains ``model`` with the vectorized engine's step kernels (which time themselves)."""
    from .engine_vectorized import supports  # late: that module imports torch.func

    return engine.name == "vectorized" or (engine.name == "auto" and supports(model))


def tune_threads(
    engine: object,
    threads: int | str | None,
    device: torch.device | None = None,
    server: object | None = None,
    rounds: int | None = None,
) -> TunedEngine:
    """``engine`` wrapped for ``runtime.threads`` (``None`` is read as ``auto``); with ``device``, the engine
    and ``server``'s evaluation are pointed at it (:func:`fedloom.device.use_device`); ``rounds``: the run's
    last round (:class:`TunedEngine`)."""
    if device is not None and server is not None:
        from .device import use_device

        use_device(device, engine, server)
    setting = "auto" if threads is None else threads
    if setting == "auto" and device is not None and device.type == "cuda":
        # the GPU does the arithmetic; the CPU only plans batches and copies, where more threads cost
        # (an H100 host: 1 000 CNN clients took 3.2 s at 16 threads, 1.2 s at 1)
        setting = 1
    wrapped = TunedEngine(engine, setting, rounds=rounds)
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
