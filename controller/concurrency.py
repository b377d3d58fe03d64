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

While keys are queued, "busy" counts the time the process's threads were runnable but
waiting for a core (the scheduler's run delay, /proc/self/task/*/schedstat) as well as
the CPU they got: on a machine shared with other work a GIL-bound process gets only
part of a core, and by CPU time alone would look like it waits on I/O (and add threads
that only contend). (Read only then: at idle nothing is queued and nothing is read.)
`Limit` is the pure decision; `Gate` applies it to threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from converge import rawread

BUSY = 0.85  # of one core: GIL-bound, fewer threads
IDLE = 0.6  # of one core, with work queued: waiting on something, more threads
INTERVAL = 0.1  # seconds between decisions
START = 4  # workers allowed before the first decision


class RunDelay:
    """Seconds the process's threads have waited for a core while runnable (the run
    queue's delay), cumulative; 0 where the kernel keeps no schedstats."""

    def __init__(self, tasks: str = "/proc/self/task") -> None:
        self._tasks = tasks
        self._delay: dict[str, int] = {}  # thread id -> its run delay seen last (ns)
        self._waited = 0  # ns, of every thread seen, also those gone since
        self._ok = os.path.isdir(tasks)  # noqa: PTH112 - str paths: read every decision

    def _run_delay(self) -> int:
        if not self._ok:
            return 0
        seen: dict[str, int] = {}
        try:
            for tid in os.listdir(self._tasks):  # noqa: PTH208
                try:
                    seen[tid] = int(rawread.read_once(f"{self._tasks}/{tid}/schedstat", 256).split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # a thread that just ended
        except OSError:
            self._ok = False
            return 0
        for tid, ns in seen.items():
            self._waited += max(0, ns - self._delay.get(tid, 0))  # a new thread: all of its delay
        self._delay = seen
        return self._waited

    def __call__(self) -> float:
        return self._run_delay() / 1e9


class Limit:
    def __init__(self, most: int, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time, waited: Callable[[], float] | None = None) -> None:
        self.most = max(1, most)
        self.value = min(START, self.most)
        self._clock, self._cpu, self._waited = clock, cpu, waited if waited is not None else RunDelay()
        self._t, self._c = clock(), cpu()
        self._tw, self._w = self._t, self._waited()
        self._mu = threading.Lock()

    def update(self, backlog: Callable[[], int]) -> int:
        """The limit now; `backlog()`: how many keys are due and not being worked on."""
        if self._clock() - self._t < INTERVAL:  # most calls: no decision due (no lock taken)
            return self.value
        with self._mu:
            now = self._clock()
            if now - self._t < INTERVAL:
                return self.value
            cpu = self._cpu()
            used = (cpu - self._c) / (now - self._t)
            self._t, self._c = now, cpu
            if used >= BUSY:
                self.value = max(1, self.value // 2)
            elif backlog() > 0:  # keys wait for a worker: did the workers wait for a core?
                waited = self._waited()
                used += (waited - self._w) / (now - self._tw)
                self._tw, self._w = now, waited
                if used >= BUSY:
                    self.value = max(1, self.value // 2)
                elif used < IDLE:
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
            if self._inside < self._limit:
                self._cv.notify()

    def stay(self, limit: int) -> bool:
        """For a thread inside, after a piece of work: set the limit, and keep its place
        (True) or give it up (False) when more are inside than the limit allows (it may
        enter() again). Takes no lock while the limit is unchanged and kept."""
        if limit == self._limit and self._inside <= limit:
            return True
        with self._cv:
            self._set(limit)
            if self._inside <= self._limit:
                return True
            self._inside -= 1
            return False  # (still at the limit: nobody to wake)

    def set_limit(self, limit: int) -> None:
        with self._cv:
            self._set(limit)

    def _set(self, limit: int) -> None:
        """The new limit (holding the lock); wakes only as many waiting threads as there
        are places now free: a lowered limit wakes none (under a start of many daemons the
        limit moves every tenth of a second, and waking every waiting worker each time only
        to find no place cost a thread wake-up and a GIL hand-off apiece)."""
        if limit != self._limit:
            self._limit = limit
            free = limit - self._inside
            if free > 0:
                self._cv.notify(free)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
