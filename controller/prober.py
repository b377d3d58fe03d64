"""The prober: health probes of healthy services, apart from reconciling (kubelet's split).

A healthy service's next look is only a probe (core.Plan.probe_after). Probing it alone
costs a fraction of a full reconcile, so the runtime hands such keys here: each is
probed every period, and only a failed probe sends the key back to the work queue, where
the reconcile counts the failure and decides. Process exits and store changes still go
straight to the queue; a periodic resync still re-observes everything.

Probes run on a bounded pool of threads: one endpoint that accepts and never answers
holds one thread for at most its probe's timeout, never the others' probes (a key is
probed by one thread at a time). Only `concurrency` endpoints hung at once can delay
the rest, and only by their timeout.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from converge.api import ServiceKey
from converge.reconciler import Probe
from converge.supervise import supervised

log = logging.getLogger("converge")

BATCH_SECONDS = 0.25  # probes due this close together run in one wake-up
CONCURRENCY = 16  # probes in flight at once


class Prober:
    def __init__(self, on_failure: Callable[[ServiceKey], None], concurrency: int = CONCURRENCY) -> None:
        self._on_failure = on_failure
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="probe")
        self._cv = threading.Condition()
        self._tracked: dict[ServiceKey, tuple[Probe, float]] = {}  # key -> (probe, due)
        self._heap: list[tuple[float, int, ServiceKey]] = []
        self._seq = 0
        self._closed = False
        self._thread = supervised("prober", self._loop, lambda: self._closed)
        self._thread.start()

    def track(self, key: ServiceKey, probe: Probe) -> None:
        due = time.monotonic() + probe.period
        with self._cv:
            self._tracked[key] = (probe, due)
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, key))
            self._cv.notify()

    def untrack(self, key: ServiceKey) -> None:
        with self._cv:
            self._tracked.pop(key, None)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)  # a hung probe ends at its timeout

    def _next(self) -> tuple[ServiceKey, Probe] | None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                while self._heap:
                    due, _, key = self._heap[0]
                    entry = self._tracked.get(key)
                    if entry is None or entry[1] != due:
                        heapq.heappop(self._heap)  # untracked or rescheduled since
                        continue
                    if due <= now + BATCH_SECONDS:  # a little early beats an extra wake-up
                        heapq.heappop(self._heap)
                        return key, entry[0]
                    break
                self._cv.wait(self._heap[0][0] - now - BATCH_SECONDS / 2 if self._heap else None)
            return None

    def _loop(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._pool.submit(self._probe, *item)
            except RuntimeError:  # shut down while closing
                return

    def _probe(self, key: ServiceKey, probe: Probe) -> None:
        try:
            ok = probe.run().ok
        except Exception:  # a probe must never kill the prober
            log.exception("%s: probe failed unexpectedly", key)
            ok = False
        with self._cv:
            current = self._tracked.get(key)
            if current is None or current[0] is not probe:
                return  # re-tracked or dropped while probing
            if ok:
                due = time.monotonic() + probe.period
                self._tracked[key] = (probe, due)
                self._seq += 1
                heapq.heappush(self._heap, (due, self._seq, key))
                self._cv.notify()
                return
            del self._tracked[key]
        self._on_failure(key)
