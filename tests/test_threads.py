"""runtime.threads: the decision logic of fedloom.threads, checked by hand with injected timings."""

from __future__ import annotations

import pytest
import torch

from fedloom import threads as th
from fedloom.config import build_config
from fedloom.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    th._DECISIONS.clear()
    yield
    th._DECISIONS.clear()
    torch.set_num_threads(before)


def test_candidates():
    assert th.candidates(1) == [1]
    assert th.candidates(2) == [1, 2]
    assert th.candidates(6) == [1, 2, 4, 6]
    assert th.candidates(16) == [1, 2, 4, 8, 16]


def test_choose_idle_machine_takes_the_faster_count():
    # medians: 1 thread 1.0 ms, 2 threads 0.55 ms: 2 threads are 45 % faster
    assert th.choose({1: [1.0e-3, 1.1e-3, 0.9e-3], 2: [0.5e-3, 0.6e-3, 0.55e-3]}) == 2


def test_choose_busy_core_falls_back_to_one_thread():
    # issue 12's bmm beside one busy core: 0.48 ms at 1 thread, 6.5 ms at 2
    assert th.choose({1: [0.48e-3] * 3, 2: [6.5e-3] * 3}) == 1


def test_choose_prefers_fewer_threads_within_tolerance():
    # 4 threads fastest (0.50); 2 threads (0.54) are within 10 % of it, so 2 wins; 1 thread (0.9) is not
    assert th.choose({1: [0.9], 2: [0.54], 4: [0.50]}) == 2
    assert th.choose({1: [0.9], 2: [0.56], 4: [0.50]}) == 4  # 12 % slower: not within 10 %
    assert th.choose({1: [1.0], 2: [0.95]}, tolerance=0.0) == 2


def test_choose_uses_means():
    # one lucky 2-thread sample (0.1) must not hide that 2 threads are usually slow
    assert th.choose({1: [1.0, 1.0, 1.0], 2: [0.1, 3.0, 3.0]}) == 1
    # nor may mostly-fast samples hide an occasional collapse: the run pays the total (mean 1.2 vs 1.0)
    assert th.choose({1: [1.0, 1.0, 1.0], 2: [0.5, 0.5, 2.6]}) == 1


def test_probe_sets_the_choice():
    calls = []

    def measure(probe, counts):
        calls.append(counts)
        return {1: [1e-3], 2: [0.5e-3]}

    tuner = th.ThreadTuner(maximum=2, measure_fn=measure)
    assert tuner.probe(lambda: None) == 2 and torch.get_num_threads() == 2
    assert calls == [[1, 2]] and tuner.history == [2]
    single = th.ThreadTuner(maximum=1, measure_fn=measure)
    assert single.probe(lambda: None) == 1 and len(calls) == 1  # nothing to measure on one core


def _fake_clock(monkeypatch, cost):
    clock, calls = [0.0], {n: 0 for n in cost}

    def probe():
        clock[0] += cost[torch.get_num_threads()]
        calls[torch.get_num_threads()] += 1

    monkeypatch.setattr(th.time, "perf_counter", lambda: clock[0])
    return probe, calls


def test_measure_skips_other_counts_for_tiny_kernels(monkeypatch):
    probe, calls = _fake_clock(monkeypatch, {1: 5e-6, 2: 2e-6})  # below torch's parallel grain
    times = th.measure(probe, [1, 2])
    assert list(times) == [1] and calls[2] == 0  # 2 threads never even warmed up
    assert th.choose(times) == 1


def test_decisions_are_reused_for_the_same_kernel_until_recheck_seconds():
    now, calls = [0.0], []

    def measure(probe, counts):
        calls.append(counts)
        return {1: [1e-3], 2: [0.5e-3]}

    def probe():
        pass

    probe.key = ("linear", 8, 32, 784, 100)
    first = th.ThreadTuner(maximum=2, clock=lambda: now[0], measure_fn=measure)
    second = th.ThreadTuner(maximum=2, clock=lambda: now[0], measure_fn=measure)
    assert first.probe(probe) == 2 and second.probe(probe) == 2 and len(calls) == 1  # the second one reused it
    assert second.probe(probe, fresh=True) == 2 and len(calls) == 2  # a re-check always measures
    now[0] += th.RECHECK_SECONDS
    assert first.probe(probe) == 2 and len(calls) == 3  # too old: measured again
    assert first.probe(lambda: None) == 2 and len(calls) == 4  # a probe without a key is never reused


def test_measure_stops_timing_a_collapsed_count(monkeypatch):
    probe, calls = _fake_clock(monkeypatch, {1: 5e-5, 2: 5e-3})  # 2 threads collapsed (a busy core): 100× slower
    times = th.measure(probe, [1, 2], reps=3)
    assert len(times[1]) == 3 and len(times[2]) == 1  # dropped after its first repetition
    assert times[2][0] == pytest.approx(5e-3)  # one call's time: cut short, not the 10 calls a sample has at 1 thread
    assert calls[2] == 1  # that one call: 5 ms for the collapsed count in all
    assert th.choose(times) == 1


def test_observe_asks_again_when_a_cohort_gets_much_slower():
    tuner = th.ThreadTuner(maximum=2, measure_fn=lambda p, c: {1: [1e-3], 2: [0.5e-3]})
    tuner.probe(lambda: None)
    assert not tuner.observe(0.10, 1000)  # 1e-4 s per sample: the baseline
    assert not tuner.observe(0.20, 1000)  # 2×: load noise, within SLOWDOWN
    assert tuner.observe(0.30, 1000)  # 3× slower per sample: load arrived, measure again
    tuner.probe(lambda: None)
    assert not tuner.observe(0.05, 100)  # a new baseline after each probe (5e-4 per sample)


def test_observe_asks_again_after_recheck_seconds():
    tuner = th.ThreadTuner(maximum=2, measure_fn=lambda p, c: {1: [1e-3], 2: [0.5e-3]})
    tuner.probe(lambda: None)
    steps = [tuner.observe(1.0, 1000) for _ in range(int(th.RECHECK_SECONDS))]
    assert steps[-1] and not any(steps[:-1])


class _FakeEngine:
    name = "vectorized"

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, 0

    def train(self, model, global_vec, data, clients, spec, seed, round):
        self.calls += 1
        return self.seconds[self.calls - 1]


class _FakeSequential(_FakeEngine):
    name = "sequential"  # its steps are not hooked: measured with a model probe


def test_tuned_engine_probes_first_then_on_slowdown(monkeypatch):
    from fedloom.data import load_data
    from fedloom.models import build_model
    from fedloom.training import LocalSpec

    cfg = build_config({"no_models": 4, "k": 2})
    data = load_data(cfg)
    model = build_model("fnn", data.num_features, data.num_classes)
    now = [0.0]
    tuner = th.ThreadTuner(maximum=2, clock=lambda: now[0], measure_fn=lambda p, c: {1: [2], 2: [1]})
    inner = _FakeSequential([1.0, 1.0, 3.0, 1.0])
    eng = th.TunedEngine(inner, "auto", tuner)
    spec = LocalSpec(1, 10, 0.1)

    real = inner.train

    def step(seconds):
        def timed(*a):
            now[0] += seconds
            return real(*a)

        monkeypatch.setattr(inner, "train", timed)
        eng.train(model, None, data, [0, 1], spec, 0, 1)

    step(1.0)
    assert tuner.probes == 1 and eng.threads == 2  # probed before the first cohort
    step(1.0)
    step(3.0)  # 3× slower: probe again before the next cohort
    assert tuner.probes == 1
    step(1.0)
    assert tuner.probes == 2
    assert th.threads_summary(eng) == {"threads": 2, "threads_auto": [2, 2], "device": "cpu"}


def test_fixed_threads_are_set_and_never_measured():
    eng = th.tune_threads(_FakeEngine([0.0]), 1)
    assert torch.get_num_threads() == 1 and th.threads_summary(eng) == {"threads": 1, "device": "cpu"}


def test_config_threads_field():
    assert build_config({}).runtime.threads == "auto"
    assert build_config({"runtime": {"threads": 3}}).runtime.threads == 3
    for bad in (0, "many", 1.5):
        with pytest.raises(ConfigError, match="runtime.threads"):
            build_config({"runtime": {"threads": bad}})


def test_auto_on_cuda_keeps_one_cpu_thread():
    """On a GPU the CPU only plans batches and copies: auto does not probe CPU threads there."""
    import torch

    from fedloom.threads import tune_threads

    before = torch.get_num_threads()
    try:
        engine = tune_threads(object(), "auto", torch.device("cuda"))
        assert engine.setting == 1 and engine.threads == 1 and torch.get_num_threads() == 1
        assert tune_threads(object(), "auto", torch.device("cpu")).setting == "auto"
    finally:
        torch.set_num_threads(before)


# --- measuring the vectorized engine's own steps ------------------------------------------------------------------
def _run_steps(tuner, cost, steps, rows=256):
    """``steps`` local steps through the tuner's hooks; a step at n threads lasts ``cost[n]`` seconds of the
    injected clock. Returns the thread count of every step."""
    used = []
    for _ in range(steps):
        tuner.step_begin(rows)
        used.append(torch.get_num_threads())
        tuner.now[0] += cost[torch.get_num_threads()]
        tuner.step_end()
    return used


def _step_tuner(maximum=2, crowd=(0,)):
    """A tuner on an injected clock; ``crowd``: what its readings of other runnable threads return, in turn."""
    now, readings = [0.0], list(crowd)
    tuner = th.ThreadTuner(
        maximum=maximum,
        clock=lambda: now[0],
        crowd=lambda: readings.pop(0) if readings[1:] else readings[0],
        cores=maximum,
    )
    tuner.now = now
    return tuner


def test_steps_are_measured_interleaved_and_the_faster_count_wins():
    tuner = _step_tuner()
    tuner.start()
    assert tuner.measuring and tuner.watching
    used = _run_steps(tuner, {1: 1e-3, 2: 0.8e-3}, 10)  # 1.25×: not decided by one sample each
    # 1 thread: warm-up and one timed step; 2 threads: warm-up, timed; then 2 more rounds of both
    assert used[:8] == [1, 1, 2, 2, 1, 2, 1, 2]
    assert not tuner.measuring and tuner.threads == 2 and tuner.history == [2]
    assert used[8:] == [2, 2] and torch.get_num_threads() == 2


def test_a_clear_difference_is_decided_after_one_sample_of_each():
    tuner = _step_tuner()
    tuner.start()
    used = _run_steps(tuner, {1: 1e-3, 2: 0.5e-3}, 6)  # 2× faster (S1's case)
    assert used == [1, 1, 2, 2, 2, 2] and tuner.history == [2] and not tuner.measuring
    tuner.start()
    used = _run_steps(tuner, {1: 1e-3, 2: 2.5e-3}, 6)  # 2.5× slower, under _DROP: one sample says it too
    assert used[:4] == [1, 1, 2, 2] and used[4:] == [1, 1] and tuner.history == [2, 1]


def test_a_collapsed_count_costs_two_steps():
    # issue 12's bmm beside a busy core: 2 threads 13× slower than 1
    tuner = _step_tuner()
    tuner.start()
    used = _run_steps(tuner, {1: 0.5e-3, 2: 6.5e-3}, 6)
    assert used.count(2) == 2  # its warm-up step and one timed step
    assert tuner.history == [1] and used[4:] == [1, 1]


def test_a_slow_warm_up_step_alone_does_not_drop_a_count():
    # the first step at 2 threads waited ~10 ms for its new thread to get a core; the next ones are fast
    tuner = _step_tuner()
    tuner.start()
    costs = iter([1e-3, 1e-3, 12e-3] + [0.5e-3, 1e-3, 0.5e-3] * 3)
    used = []
    for _ in range(8):
        tuner.step_begin(256)
        used.append(torch.get_num_threads())
        tuner.now[0] += next(costs) if used[-1] == 2 or len(used) <= 2 else 1e-3
        tuner.step_end()
    assert tuner.history == [2]


def test_near_tie_keeps_one_thread():
    tuner = _step_tuner()
    tuner.start()
    _run_steps(tuner, {1: 1.0e-3, 2: 0.95e-3}, 8)
    assert tuner.history == [1]  # 5 % faster is not worth a collapse under load


def test_tiny_steps_are_decided_at_one_thread_without_trying_more():
    tuner = _step_tuner()
    tuner.start()
    used = _run_steps(tuner, {1: 50e-6, 2: 40e-6}, 4)
    assert used == [1, 1, 1, 1] and tuner.history == [1]


def test_a_run_too_short_to_repay_more_threads_stays_at_one():
    """20 steps left at 1 ms: 20 ms, under _SHORT_RUN: decided at 1 thread after its timed step, 2 never tried;
    with 1 000 steps left the same costs measure 2 threads and pick them. The machine's load is read only
    by the run that goes on to try 2 threads (twice, before it does)."""
    readings = []
    short = _step_tuner()
    short.crowd = lambda: readings.append("short") or 0
    short.horizon = 20
    short.start()
    assert _run_steps(short, {1: 1e-3, 2: 0.5e-3}, 4) == [1, 1, 1, 1] and short.history == [1]
    long = _step_tuner()
    long.crowd = lambda: readings.append("long") or 0
    long.horizon = 1000
    long.start()
    used = _run_steps(long, {1: 1e-3, 2: 0.5e-3}, 10)
    assert used[:3] == [1, 1, 2] and long.threads == 2
    assert readings == ["long", "long"]


def test_tuned_engine_tells_the_tuner_the_steps_left():
    """horizon = this cohort's lock steps (epochs × ⌈largest shard / batch⌉) × the rounds left, its own included."""
    from fedloom.data import load_data
    from fedloom.training import LocalSpec

    cfg = build_config({"no_models": 4, "k": 2})
    data = load_data(cfg)
    seen = []

    class Engine(_FakeEngine):
        name = "sequential"

        def train(self, *a, **k):
            seen.append(tuner.horizon)
            return super().train(*a, **k)

    tuner = th.ThreadTuner(maximum=2, measure_fn=lambda p, c: {1: [1.0]})
    eng = th.TunedEngine(Engine([0.0] * 3), "auto", tuner, rounds=3)
    spec = LocalSpec(2, 10, 0.1)
    shard = int(data.partition.sizes()[[0, 1]].max())
    for rnd in (1, 2, 3):
        eng.train(None, None, data, [0, 1], spec, 0, rnd)
    per_round = 2 * -(-shard // 10)
    assert seen == [3 * per_round, 2 * per_round, per_round]
    assert th.TunedEngine(Engine([0.0]), "auto", th.ThreadTuner()).tuner.horizon == float("inf")  # rounds unknown


def test_a_step_that_collapses_later_starts_a_new_measurement():
    tuner = _step_tuner()
    tuner.start()
    _run_steps(tuner, {1: 1e-3, 2: 0.5e-3}, 10)
    assert tuner.threads == 2
    used = _run_steps(tuner, {1: 1e-3, 2: 8e-3}, 6)  # load arrives: 2 threads collapse
    assert used[0] == 2 and used[1:3] == [1, 1]  # one slow step, then 1 thread at once (the new measurement)
    assert tuner.history == [2, 1] and not tuner.measuring
    assert used.count(2) == 2  # the step that noticed it and the new measurement's warm-up


def test_one_moderately_slow_step_is_noise_two_in_a_row_are_load():
    tuner = _step_tuner()
    tuner.start()
    _run_steps(tuner, {1: 1e-3, 2: 0.5e-3}, 10)
    assert tuner.threads == 2
    used = _run_steps(tuner, {1: 1e-3, 2: 1.5e-3}, 1) + _run_steps(tuner, {1: 1e-3, 2: 0.5e-3}, 3)
    assert used == [2, 2, 2, 2] and tuner.history == [2]  # 3× once (a preempted thread): nothing measured
    used = _run_steps(tuner, {1: 1e-3, 2: 1.5e-3}, 2) + _run_steps(tuner, {1: 1e-3, 2: 1.5e-3}, 2)
    assert used[:2] == [2, 2] and used[2:] == [1, 1]  # 3× twice: load, measured again (1 thread first)
    assert tuner.measuring


def test_our_own_running_threads_are_not_counted_as_others(monkeypatch):
    import fedloom.cpuload as cl

    runs = iter([{"1", "2"}, {"1"}])  # our OpenMP worker ran at the first look, slept by the second
    monkeypatch.setattr(cl, "_running_tasks", lambda: next(runs))
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/proc/loadavg":
            import io

            return io.StringIO("0.50 0.40 0.30 2/300 12345")  # both of ours were counted here
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert cl.others_running() == 0


def test_the_reading_thread_sees_itself_running():
    import threading

    import fedloom.cpuload as cl

    assert str(threading.get_native_id()) in cl._running_tasks()


def test_noise_at_one_thread_starts_nothing():
    tuner = _step_tuner()
    tuner.start()
    _run_steps(tuner, {1: 1e-3, 2: 6e-3}, 6)
    assert tuner.threads == 1 and not tuner.watching  # at 1 thread the steps are not even timed
    assert not tuner.observe(0.01, 100)
    assert not tuner.observe(0.5, 10)  # 500× slower per sample at 1 thread: fewer threads cannot dodge it
    assert tuner.observe(0.5, 10)  # but after _RECHECK_STEPS[0] s of training: has the load left?


def test_one_core_measures_nothing():
    tuner = _step_tuner(maximum=1)
    tuner.start()
    assert not tuner.measuring and tuner.history == [1]


def test_a_cohort_ending_mid_measurement_uses_the_best_so_far():
    tuner = _step_tuner()
    tuner.start()
    _run_steps(tuner, {1: 1e-3, 2: 0.8e-3}, 4)  # 1 warm-up, 1 timed, 2 warm-up, 2 timed
    assert tuner.measuring
    tuner.settle()
    assert torch.get_num_threads() == 2  # for the round's evaluation until the next cohort's steps go on
    _run_steps(tuner, {1: 1e-3, 2: 0.8e-3}, 4)
    assert tuner.history == [2]


def test_auto_run_trains_the_same_numbers_and_records_its_choice():
    from fedloom.simulation import Federation, run_federation

    base = {"no_models": 6, "k": 3, "global_epochs": 3, "runtime": {"checkpoint": False, "engine": "vectorized"}}
    runs = {}
    for threads in (1, "auto"):
        raw = {**base, "runtime": {**base["runtime"], "threads": threads}}
        runs[threads] = run_federation(Federation.build(build_config(raw)))
    assert torch.equal(runs[1].global_vec, runs["auto"].global_vec)
    summary = runs["auto"].summary
    assert summary["threads_auto"] and summary["threads"] == summary["threads_auto"][-1]


def test_a_count_is_not_tried_while_other_processes_hold_its_cores():
    tuner = _step_tuner(crowd=(1,))  # one other runnable thread on a 2-core machine, at start and before 2's turn
    tuner.start()
    used = _run_steps(tuner, {1: 1e-3, 2: 50e-3}, 4)
    assert used == [1, 1, 1, 1] and tuner.history == [1]  # decided after 1 thread's timed step, no collapse paid
    assert not tuner.observe(0.01, 100)
    assert tuner.observe(th._RECHECK_CROWDED, 100)  # nothing was paid: look again soon, the others may be gone


def test_cores_freed_later_are_used_at_the_next_look():
    tuner = _step_tuner(crowd=(1, 1, 0))  # busy at the first measurement's two readings, then free
    tuner.start()
    _run_steps(tuner, {1: 1e-3, 2: 0.5e-3}, 3)
    assert tuner.history == [1] and tuner.observe(1.0, 100)
    tuner.start()  # what TunedEngine does before the next cohort
    _run_steps(tuner, {1: 1e-3, 2: 0.5e-3}, 8)
    assert tuner.history == [1, 2]


def test_one_busy_reading_is_not_enough_to_skip_a_count():
    tuner = _step_tuner(crowd=(1, 0))  # a passing process at start; the cores free when 2 threads' turn comes
    tuner.start()
    used = _run_steps(tuner, {1: 1e-3, 2: 0.8e-3}, 8)
    assert used.count(2) == 4 and tuner.history == [2]


def test_others_running_reads_this_machine():
    n = th.others_running()
    assert n is None or n >= 0
    assert th.usable_cores() >= 1
