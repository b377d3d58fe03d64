"""The worker limit follows what the work waits on (converge.concurrency): fake clocks."""

from __future__ import annotations

import threading
import time

from converge.concurrency import INTERVAL, Gate, Limit


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
