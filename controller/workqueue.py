"""A deduplicating, delaying work queue of keys (client-go's workqueue, in small).

A key is in the queue at most once; a key being processed is never handed to a second
worker (same key serial, different keys parallel); a key added while it is processed is
handed out again once it is done. `add_after` keeps the earliest due time.

Batched keys (the periodic resync's: `add_after(..., batch=True)`) fall due at the start
of their slot (a multiple of `slot` seconds): the keys of one slot are handed to the worker
that took the first of them, one after another as it comes back for its next key, in one
wake-up; other workers are not woken for them (each thread wake-up costs CPU, and a pass
right after another runs on warm caches). They wait behind keys that are not batched, and
only for a worker that is coming back: a slot's key left waiting a whole slot (its worker
busy with a long pass) is handed to any worker. `Schedule` is that bookkeeping, pure (no
clock, no threads); `WorkQueue` adds the lock, the clock and the sleeping.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

SLOT = 1.0  # seconds: batched keys due in one slot are handed out together


class Schedule(Generic[K]):
    """Due times, the keys handed out, and which due key goes to whom (see the module)."""

    def __init__(self, slot: float = SLOT, offset: float = 0.0) -> None:
        self.slot, self.offset = slot, offset  # slots start at offset + k * slot
        # key -> its heap entry (due time, seq, key, batched); an entry no longer here is stale
        self._due: dict[K, tuple[float, int, K, bool]] = {}
        self._alone: list[tuple[float, int, K, bool]] = []  # heaps: keys not batched, batched
        self._batched: list[tuple[float, int, K, bool]] = []
        self._seq = 0
        self.processing: set[K] = set()
        self._batched_out: dict[K, float] = {}  # batched keys being processed (-> their slot): their workers come back
        self._dirty: dict[K, tuple[float, bool]] = {}  # added while processing

    def slot_of(self, when: float) -> float:
        """The start of the slot `when` falls in."""
        if self.slot <= 0:
            return when
        return math.floor((when - self.offset) / self.slot) * self.slot + self.offset

    def add(self, key: K, when: float, batch: bool = False) -> bool:
        """Due at `when` (a batched key: at the start of its slot); the earlier of two due
        times is kept, batched only if both are. True when the schedule changed."""
        if batch:
            when = self.slot_of(when)
        if key in self.processing:
            again = self._dirty.get(key)
            if again is None or when < again[0] or (again[1] and not batch):
                self._dirty[key] = (when, batch) if again is None else (min(when, again[0]), batch and again[1])
            return False
        prev = self._due.get(key)
        if prev is not None:
            if prev[0] <= when and (batch or not prev[3]):
                return False
            when, batch = min(when, prev[0]), batch and prev[3]
        self._seq += 1
        entry = (when, self._seq, key, batch)
        self._due[key] = entry
        heapq.heappush(self._batched if batch else self._alone, entry)
        return True

    def _top(self, heap: list[tuple[float, int, K, bool]]) -> tuple[float, int, K, bool] | None:
        """The earliest entry of one heap, stale entries dropped off its top."""
        due = self._due
        while heap:
            entry = heap[0]
            if due.get(entry[2]) is entry:
                return entry
            heapq.heappop(heap)
        return None

    def _reserved(self, when: float, now: float, owner: bool) -> bool:
        """A batched key of a slot being worked on waits for a worker coming back for it
        (not for `owner`, one that is), unless it has waited a whole slot."""
        return not owner and now < when + self.slot and any(w >= when for w in self._batched_out.values())

    def take(self, now: float, owner: bool = False) -> K | None:
        """The key to hand out now to a caller (owner: one that has just finished a batched
        key), or None. Keys not batched first."""
        top = self._top(self._alone)
        if top is not None and top[0] <= now:
            heapq.heappop(self._alone)
        else:
            top = self._top(self._batched)
            if top is None or top[0] > now or self._reserved(top[0], now, owner):
                return None
            heapq.heappop(self._batched)
            self._batched_out[top[2]] = top[0]
        key = top[2]
        del self._due[key]
        self.processing.add(key)
        return key

    def queued(self) -> bool:
        return bool(self._due)

    def batched_out(self, key: K) -> bool:
        """key was handed out as a batched key and is being processed."""
        return key in self._batched_out

    def done(self, key: K) -> bool:
        """The caller has finished with key: one added meanwhile is queued again. True when
        a sleeping caller may now take something (the schedule changed, or a batch lost
        the last worker it waited for)."""
        self.processing.discard(key)
        orphaned = self._batched_out.pop(key, None) is not None and not self._batched_out
        again = self._dirty.pop(key, None)
        changed = again is not None and self.add(key, again[0], again[1])
        return changed or orphaned

    def wake_at(self, now: float, owner: bool = False) -> float | None:
        """When a caller that took nothing should look again (None: only when woken)."""
        times = []
        top = self._top(self._alone)
        if top is not None:
            times.append(top[0])
        top = self._top(self._batched)
        if top is not None:
            times.append(top[0] + self.slot if self._reserved(top[0], now, owner) else top[0])
        return min(times) if times else None

    def ready(self, now: float) -> int:
        """Keys due now that a worker not coming back for a batch could take."""
        n = 0
        top = self._top(self._alone)
        if top is not None and top[0] <= now:  # (at idle the earliest is not due: no walk over every key)
            n += sum(1 for when, _, _, b in self._due.values() if when <= now and not b)
        top = self._top(self._batched)
        if top is not None and top[0] <= now:
            held = max(self._batched_out.values(), default=None)  # the latest slot being worked on
            n += sum(1 for when, _, _, b in self._due.values()
                     if b and when <= now and (held is None or when > held or now >= when + self.slot))
        return n

    def depth(self, now: float) -> int:
        """Keys due now and not yet handed out (client-go's depth: delayed keys are not in it)."""
        return sum(1 for entry in self._due.values() if entry[0] <= now)

    def pending(self) -> int:
        return len(self._due) + len(self.processing)


class WorkQueue(Generic[K]):
    def __init__(self, slot: float = SLOT, offset: float = 0.0) -> None:
        self._cv = threading.Condition()
        self._s: Schedule[K] = Schedule(slot, offset)
        self._closed = False
        self._timers: list[float] = []  # times that callers of get() sleep until

    def add(self, key: K) -> None:
        self.add_after(key, 0.0)

    def add_after(self, key: K, delay: float, batch: bool = False) -> None:
        """Due after delay; batch: at the start of the slot that falls in (early by less than
        a slot), handed out with the other keys of its slot (see the module)."""
        now = time.monotonic()
        with self._cv:
            if self._closed or not self._s.add(key, now + max(0.0, delay), batch):
                return
            if self._timers:  # a sleeper wakes at that time anyway: only an earlier key needs one
                target = self._s.wake_at(now)
                if target is None or target >= min(self._timers):
                    return
            self._cv.notify()

    def get(self, timeout: float | None = None, done: K | None = None) -> K | None:
        """The next due key, or None when closed or after timeout; `done`: a key the
        caller has finished with (as done(key), in the same turn of the lock).

        Of the idle callers, one sleeps until the next delayed key is due (a "timer"); the
        others sleep until woken: N idle workers wake once per due time, not N times (each
        wake-up of a thread costs CPU; at idle, the resync's keys are all there is). A timer
        that takes a key wakes one other caller to time the next (or to take over the rest
        of a slot should this one not come back in time)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            owner = False
            if done is not None:
                owner = self._s.batched_out(done)
                if self._s.done(done) and not owner:
                    self._cv.notify()
            while not self._closed:
                now = time.monotonic()
                key = self._s.take(now, owner)
                if key is not None:
                    if not self._timers and self._s.queued():
                        self._cv.notify()  # someone must sleep until the next one is due
                    return key
                target = self._s.wake_at(now, owner)
                owner = False  # (a batch taken over meanwhile, its keys are not this caller's)
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
            if self._s.done(key):
                self._cv.notify()

    def ready(self) -> int:
        """Keys due now and waiting for a worker (O(keys) when some are due: call it now and
        then). A slot's batched keys waiting for the worker coming back for them are not."""
        now = time.monotonic()
        with self._cv:
            return self._s.ready(now)

    def pending(self) -> int:
        with self._cv:
            return self._s.pending()

    def depth(self) -> int:
        """Keys due now and not yet handed out (client-go's depth: delayed keys are not in it)."""
        now = time.monotonic()
        with self._cv:
            return self._s.depth(now)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
