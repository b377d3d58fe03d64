"""The worker limit follows what the work waits on (converge.concurrency): fake clocks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from converge.concurrency import INTERVAL, CpuWanted, Gate, Limit
from converge.workqueue import WorkQueue


class Clocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def spend(self, wall: float, cpu_share: float) -> None:
        self.wall += wall
        self.cpu += wall * cpu_share


def test_the_limit_halves_while_the_work_only_computes_and_doubles_while_it_waits() -> None:
    c = Clocks()
    limit = Limit(16, clock=lambda: c.wall, cpu=lambda: c.cpu)
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


def test_cpu_wanted_adds_each_threads_run_delay_also_of_threads_gone(tmp_path: Path) -> None:
    def threads(**delays: int) -> None:
        for tid in list(tmp_path.iterdir()):
            (tid / "schedstat").unlink()
            tid.rmdir()
        for tid, ns in delays.items():
            (tmp_path / tid[1:]).mkdir()
            (tmp_path / tid[1:] / "schedstat").write_text(f"123 {ns} 7\n")

    threads(t1=1_000_000_000, t2=0)
    wanted = CpuWanted(str(tmp_path))
    first = wanted() - time.process_time()
    assert 0.99 < first < 1.01  # what the threads waited so far
    threads(t1=1_500_000_000, t3=2_000_000_000)  # t2 ended, t3 is new
    assert 3.49 < wanted() - time.process_time() < 3.51
    assert CpuWanted(str(tmp_path / "missing"))() <= time.process_time()  # no schedstats: CPU time only


def test_cpu_wanted_reads_this_process() -> None:
    wanted = CpuWanted()
    before = wanted()
    end = time.process_time() + 0.05
    while time.process_time() < end:  # busy
        pass
    assert wanted() - before >= 0.05


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
