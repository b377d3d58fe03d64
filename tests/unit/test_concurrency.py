"""The worker limit follows what the work waits on (converge.concurrency): fake clocks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from converge.concurrency import INTERVAL, Gate, Limit, RunDelay
from converge.workqueue import WorkQueue


class Clocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.waited = 0.0  # for a core
        self.looked = 0  # reads of the run delay

    def spend(self, wall: float, cpu_share: float, waited_share: float = 0.0) -> None:
        self.wall += wall
        self.cpu += wall * cpu_share
        self.waited += wall * waited_share

    def run_delay(self) -> float:
        self.looked += 1
        return self.waited


def test_the_limit_halves_while_the_work_only_computes_and_doubles_while_it_waits() -> None:
    c = Clocks()
    limit = Limit(16, clock=lambda: c.wall, cpu=lambda: c.cpu, waited=c.run_delay)
    assert limit.value == 4  # a few: the right width is reached in a few decisions either way
    for want in (2, 1, 1):  # a backend answering from memory: a core busy, threads only contend
        c.spend(1.01 * INTERVAL, 0.99)
        assert limit.update(lambda: 100) == want
    for want in (2, 4, 8, 16, 16):  # e.g. Terraform or Docker calls: the process mostly waits
        c.spend(1.01 * INTERVAL, 0.1)
        assert limit.update(lambda: 100) == want
    c.spend(INTERVAL / 2, 0.99)
    assert limit.update(lambda: 100) == 16  # decides at most once an interval
    c.spend(1.01 * INTERVAL, 0.7)
    assert limit.update(lambda: 100) == 16  # between the two thresholds: keep
    c.spend(1.01 * INTERVAL, 0.99)
    assert limit.update(lambda: 100) == 8
    c.spend(1.01 * INTERVAL, 0.1)
    assert limit.update(lambda: 0) == 8  # waiting but nothing queued: no reason to grow


def test_threads_waiting_for_a_core_count_as_busy_while_keys_are_queued() -> None:
    """On a shared machine a GIL-bound pass gets a part of a core: the rest of the time its
    thread waits in the run queue, which is no reason for more threads."""
    c = Clocks()
    limit = Limit(16, clock=lambda: c.wall, cpu=lambda: c.cpu, waited=c.run_delay)
    for want in (2, 1, 1):
        c.spend(1.01 * INTERVAL, 0.45, 0.5)
        assert limit.update(lambda: 100) == want
    c.spend(1.01 * INTERVAL, 0.1, 0.05)  # e.g. Terraform: the process waits on its calls
    assert limit.update(lambda: 100) == 2
    looked = c.looked
    for _ in range(5):  # at idle (nothing queued) the run delay is not read at all
        c.spend(1.01 * INTERVAL, 0.001)
        assert limit.update(lambda: 0) == 2
    assert c.looked == looked


def test_gate_admits_up_to_the_limit_and_closes() -> None:
    gate = Gate(1)
    assert gate.enter()
    entered = threading.Event()
    second = threading.Thread(target=lambda: gate.enter() and entered.set(), daemon=True)
    second.start()
    time.sleep(0.05)
    assert not entered.is_set()
    gate.set_limit(2)
    assert entered.wait(2)
    gate.leave()
    gate.leave()
    gate.set_limit(0)
    result: list[bool] = []
    third = threading.Thread(target=lambda: result.append(gate.enter()), daemon=True)
    third.start()
    time.sleep(0.05)
    gate.close()
    third.join(2)
    assert result == [False]


def test_a_thread_inside_keeps_its_place_until_the_limit_drops_below_the_count() -> None:
    gate = Gate(2)
    assert gate.enter() and gate.enter()
    assert gate.stay(2) and gate.stay(2)  # unchanged: both keep their places
    assert not gate.stay(1)  # one too many: this one gives its place up
    assert gate.stay(1)  # the other keeps its own
    entered = threading.Event()
    waiting = threading.Thread(target=lambda: gate.enter() and entered.set(), daemon=True)
    waiting.start()
    time.sleep(0.05)
    assert not entered.is_set()
    assert gate.stay(2)  # a raised limit lets a waiting thread in
    assert entered.wait(2)


def test_run_delay_adds_each_threads_delay_also_of_threads_gone(tmp_path: Path) -> None:
    def threads(**delays: int) -> None:
        for tid in list(tmp_path.iterdir()):
            (tid / "schedstat").unlink()
            tid.rmdir()
        for tid, ns in delays.items():
            (tmp_path / tid[1:]).mkdir()
            (tmp_path / tid[1:] / "schedstat").write_text(f"123 {ns} 7\n")

    threads(t1=1_000_000_000, t2=0)
    delay = RunDelay(str(tmp_path))
    assert delay() == 1.0  # what the threads waited so far
    threads(t1=1_500_000_000, t3=2_000_000_000)  # t2 ended, t3 is new
    assert delay() == 3.5
    assert RunDelay(str(tmp_path / "missing"))() == 0.0  # no schedstats: nothing known


def test_run_delay_reads_this_process() -> None:
    delay = RunDelay()
    first = delay()
    time.sleep(0.01)
    assert delay() >= first >= 0.0  # cumulative, of this process's threads


def test_a_workqueue_get_can_mark_the_key_handled_before_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    assert q.get(timeout=1) == "a"
    q.add("a")  # while processing: handed out again only after done ...
    assert q.get(timeout=1) == "b"
    assert q.get(timeout=0.01, done="b") is None  # (b done; a is still being processed)
    assert q.get(timeout=1, done="a") == "a"  # ... here, by the get that marks it done
    assert q.get(timeout=0.01, done="a") is None
    assert q.pending() == 0


def test_workqueue_ready_counts_due_keys_only() -> None:
    q: WorkQueue[str] = WorkQueue()
    assert q.ready() == 0
    q.add_after("later", 60)
    assert q.ready() == 0  # the earliest is not due: nothing walked
    q.add("now")
    q.add("also")
    q.add_after("later", 0)  # superseded: now due
    assert q.ready() == 3
    assert q.get(timeout=1) in {"now", "also", "later"}
    assert q.ready() == 2


class _CountingCondition(threading.Condition):
    """A real Condition that counts the returns from wait(): each is a thread woken."""

    def __init__(self) -> None:
        super().__init__()
        self.woken = 0

    def wait(self, timeout: float | None = None) -> bool:
        got = super().wait(timeout)
        self.woken += 1
        return got


def test_a_changed_limit_wakes_only_as_many_waiting_threads_as_places_are_free() -> None:
    gate = Gate(1)
    cv = gate._cv = _CountingCondition()  # (before any thread waits on it)
    assert gate.enter()
    entered: list[bool] = []
    waiters = [threading.Thread(target=lambda: entered.append(gate.enter()), daemon=True) for _ in range(4)]
    for t in waiters:
        t.start()
    deadline = time.monotonic() + 5
    while len(cv._waiters) < 4 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    gate.set_limit(0)  # lowered: no place for anyone, nobody woken
    assert gate.stay(1)  # back to one, still no place free: nobody woken
    time.sleep(0.1)
    assert cv.woken == 0 and entered == []
    gate.set_limit(3)  # two places free: two woken, both enter
    while len(entered) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert entered == [True, True] and cv.woken == 2
    gate.close()
    for t in waiters:
        t.join(2)
    assert entered == [True, True, False, False]
