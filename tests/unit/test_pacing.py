"""Probe pacing (converge.probememo) and resync spreading (converge.runtime.resync_delay):
fake clocks, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from converge.api import ServiceKey
from converge.backends.health import ProbeResult
from converge.probememo import ProbeMemo
from converge.runtime import resync_delay

KEY = ServiceKey("default", "web")
RUN = (datetime(2026, 1, 1, tzinfo=UTC), 8080)
BAD = ProbeResult(False, "status 500")
GOOD = ProbeResult(True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_counted_failure_is_not_counted_again_within_the_period() -> None:
    clock = Clock()
    memo = ProbeMemo(clock)
    probes: list[float] = []

    def probe() -> ProbeResult:
        probes.append(clock.now)
        return BAD

    h = memo.health(KEY, RUN, 5.0, True, probe)
    assert h.result == BAD and h.fresh and probes == [100.0]
    clock.now += 1  # woken again (its own status write): no probe, nothing new to count
    h = memo.health(KEY, RUN, 5.0, True, probe)
    assert h.result == BAD and not h.fresh and probes == [100.0]
    clock.now += 4  # a period later: probe again
    assert memo.health(KEY, RUN, 5.0, True, probe).fresh and probes == [100.0, 105.0]


def test_the_probers_result_is_counted_once_by_the_next_pass() -> None:
    clock = Clock()
    memo = ProbeMemo(clock)
    memo.record(KEY, RUN, BAD)

    def never() -> ProbeResult:
        raise AssertionError("probed although a fresh result was there")

    assert memo.health(KEY, RUN, 5.0, True, never).fresh
    assert not memo.health(KEY, RUN, 5.0, True, never).fresh


def test_start_up_and_a_new_run_always_probe() -> None:
    clock = Clock()
    memo = ProbeMemo(clock)
    memo.record(KEY, RUN, GOOD)
    assert memo.health(KEY, RUN, 5.0, False, lambda: BAD).result == BAD  # not healthy yet: probe
    memo.record(KEY, RUN, GOOD)
    restarted = (datetime(2026, 1, 2, tzinfo=UTC), 8080)
    assert memo.health(KEY, restarted, 5.0, True, lambda: BAD).result == BAD  # another run: probe
    memo.forget(KEY)
    assert memo.health(KEY, RUN, 5.0, True, lambda: GOOD).result == GOOD


def test_resync_slots_spread_over_the_period_and_keep_their_phase() -> None:
    period = 60.0
    keys = [ServiceKey("default", f"svc-{i}") for i in range(600)]
    due = [100.0 + resync_delay(k, period, 100.0) for k in keys]
    assert all(100.0 + period / 2 <= d < 100.0 + 1.5 * period for d in due)
    per_second = [0] * 120
    for d in due:
        per_second[int(d - 100.0)] += 1
    assert max(per_second) <= 4 * len(keys) / period  # no burst: ~10/s, never a whole period's worth
    # The next slot after a pass at any time is the same phase again, one period on.
    for k, d in zip(keys[:20], due[:20], strict=True):
        assert abs(resync_delay(k, period, d) - period) < 1e-6
        assert abs(d + 3.0 + resync_delay(k, period, d + 3.0) - (d + period)) < 1e-6


def test_probe_slots_group_due_times_early_never_late_and_keep_a_key_in_its_slot() -> None:
    from converge.prober import BATCH_SECONDS, first_delay, slot

    period = 10.0
    width = min(BATCH_SECONDS, period / 10)
    keys = [ServiceKey("default", f"svc-{i}") for i in range(200)]
    now = 1000.3
    due = [slot(now + first_delay(k, period, now), period) for k in keys]
    assert all(now - width < d <= now + period for d in due)  # early by less than a slot, never late
    starts = set(due)
    assert len(starts) <= period / width + 1  # one wake-up per slot, not per key
    assert max(due.count(s) for s in starts) <= 3 * len(keys) * width / period  # still spread over the period
    for d in due[:20]:  # a probe started in its slot and ended within it is due in the same slot a period on
        for took in (0.0, 0.004, width * 0.9):
            assert abs(slot(d + took + period, period) - (d + period)) < 1e-6
    assert abs(slot(5.37, 0.5) - 5.35) < 1e-9  # short periods: slots of a tenth of the period


def test_a_start_up_watchs_pass_is_planned_with_once_and_its_failures_are_not_kept() -> None:
    clock = Clock()
    memo = ProbeMemo(clock)
    memo.record_passed(KEY, RUN, BAD)  # a refusal while it starts: nothing kept
    assert memo.health(KEY, RUN, 5.0, False, lambda: BAD).result == BAD  # probed
    memo.record_passed(KEY, RUN, GOOD)  # the answer that woke the pass

    def never() -> ProbeResult:
        raise AssertionError("probed again although the watch's pass was there")

    h = memo.health(KEY, RUN, 5.0, False, never)
    assert h.result == GOOD and h.fresh
    assert memo.health(KEY, RUN, 5.0, False, lambda: BAD).result == BAD  # counted: the next pass probes
    memo.record_passed(KEY, RUN, GOOD)
    restarted = (datetime(2026, 1, 2, tzinfo=UTC), 8080)
    assert memo.health(KEY, restarted, 5.0, False, lambda: BAD).result == BAD  # another run: probe
    memo.record_passed(KEY, RUN, GOOD)
    clock.now += 5  # a period old: probe
    assert memo.health(KEY, RUN, 5.0, False, lambda: BAD).result == BAD
