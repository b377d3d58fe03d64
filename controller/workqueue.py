"""A deduplicating, delaying work queue of keys (client-go's workqueue, in small).

A key is in the queue at most once; a key being processed is never handed to a second
worker (same key serial, different keys parallel); a key added while it is processed is
handed out again once it is done. `add_after` keeps the earliest due time.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: dict[K, float] = {}  # key -> monotonic time it becomes ready
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._processing: set[K] = set()
        self._dirty_while_processing: dict[K, float] = {}
        self._closed = False
        self._timers: list[float] = []  # due times that callers of get() sleep until

    def add(self, key: K) -> None:
        self.add_after(key, 0.0)

    def add_after(self, key: K, delay: float) -> None:
        when = time.monotonic() + max(0.0, delay)
        with self._cv:
            self._add(key, when)

    def _add(self, key: K, when: float) -> None:
        """add_after, holding the lock."""
        if self._closed:
            return
        if key in self._processing:
            prev = self._dirty_while_processing.get(key)
            if prev is None or when < prev:
                self._dirty_while_processing[key] = when
            return
        prev = self._due.get(key)
        if prev is not None and prev <= when:
            return
        self._due[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        self._cv.notify()

    def get(self, timeout: float | None = None, done: K | None = None) -> K | None:
        """The next due key, or None when closed or after timeout; `done`: a key the
        caller has finished with (as done(key), in the same turn of the lock).

        Of the idle callers, one sleeps until the next delayed key is due (a "timer"); the
        others sleep until woken: N idle workers wake once per due key, not N times (each
        wake-up of a thread costs CPU; at idle, the resync's keys are all there is). A timer
        that takes a key wakes one other caller to time the next."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            if done is not None:
                self._done(done)
            while not self._closed:
                now = time.monotonic()
                self._prune()
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._processing.add(key)
                    if self._heap and not self._timers:
                        self._cv.notify()  # someone must sleep until the next one is due
                    return key
                target = self._heap[0][0] if self._heap else None
                timing = target is not None and all(t > target for t in self._timers)
                wait = target - now if timing and target is not None else None
                if end is not None:
                    left = end - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                if timing and target is not None:
                    self._timers.append(target)
                try:
                    self._cv.wait(wait)
                finally:
                    if timing and target is not None:
                        self._timers.remove(target)
            return None

    def done(self, key: K) -> None:
        """The caller has finished with key (handed out by get): a key added meanwhile
        is queued again."""
        with self._cv:
            self._done(key)

    def _done(self, key: K) -> None:
        self._processing.discard(key)
        when = self._dirty_while_processing.pop(key, None)
        if when is not None:
            self._add(key, when)

    def _prune(self) -> None:
        """Drop the heap's superseded entries off its top (holding the lock)."""
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def ready(self) -> int:
        """Keys due now and waiting for a worker (O(keys): call it now and then)."""
        now = time.monotonic()
        with self._cv:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return 0  # the earliest is not due yet (at idle: always; no walk over every key)
            return sum(1 for when in self._due.values() if when <= now)

    def pending(self) -> int:
        with self._cv:
            return len(self._due) + len(self._processing)

    def depth(self) -> int:
        """Keys due now and not yet handed out (client-go's depth: delayed keys are not in it)."""
        now = time.monotonic()
        with self._cv:
            return sum(1 for when in self._due.values() if when <= now)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
