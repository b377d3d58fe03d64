"""How many reconciles run at once: as many as the work waits on, not more.

A reconcile is Python: while it computes it holds the GIL, so a second worker thread
only helps while the first one waits (a backend call, a subprocess, fsync, a socket).
With a backend that answers from memory, eight threads only take turns on the GIL and
are slower than one; with Terraform or Docker, one thread would leave the machine idle.

So the number of workers allowed to run follows the process's measured CPU use, like a
thread pool sized by Little's law: while the process keeps about a core busy, more
threads cannot help (halve); while keys are queued and the process mostly waits, they
can (double). It starts at a few (START), so either way the right width is reached
within a few tenths of a second.
`Limit` is the pure decision; `Gate` applies it to threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BUSY = 0.85  # of one core: GIL-bound, fewer threads
IDLE = 0.6  # of one core, with work queued: waiting on something, more threads
INTERVAL = 0.1  # seconds between decisions
START = 4  # workers allowed before the first decision


class Limit:
    def __init__(self, most: int, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.most = max(1, most)
        self.value = min(START, self.most)
        self._clock, self._cpu = clock, cpu
        self._t, self._c = clock(), cpu()
        self._mu = threading.Lock()

    def update(self, backlog: Callable[[], int]) -> int:
        """The limit now; `backlog()`: how many keys are due and not being worked on."""
        with self._mu:
            now = self._clock()
            if now - self._t < INTERVAL:
                return self.value
            used = (self._cpu() - self._c) / (now - self._t)
            self._t, self._c = now, self._cpu()
            if used >= BUSY and self.value > 1:
                self.value //= 2
            elif used < IDLE and self.value < self.most and backlog() > 0:
                self.value = min(self.most, self.value * 2)
            return self.value


class Gate:
    """At most `limit` threads inside at once; the limit can change at any time."""

    def __init__(self, limit: int = 1) -> None:
        self._cv = threading.Condition()
        self._limit = limit
        self._inside = 0
        self._closed = False

    def enter(self) -> bool:
        """Wait for a place; False once closed."""
        with self._cv:
            while self._inside >= self._limit and not self._closed:
                self._cv.wait()
            if self._closed:
                return False
            self._inside += 1
            return True

    def leave(self) -> None:
        with self._cv:
            self._inside -= 1
            self._cv.notify()

    def set_limit(self, limit: int) -> None:
        with self._cv:
            if limit != self._limit:
                self._limit = limit
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
