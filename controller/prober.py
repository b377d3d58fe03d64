"""The prober: health probes of healthy services, apart from reconciling (kubelet's split).

A healthy service's next look is only a probe (core.Plan.probe_after). Probing it alone
costs a fraction of a full reconcile, so the runtime hands such keys here: each is
probed every period, and only a failed probe sends the key back to the work queue, where
the reconcile counts the failure and decides. Process exits and store changes still go
straight to the queue; a periodic resync still re-observes everything.

One thread drives every plain-HTTP and TCP probe at once on non-blocking sockets and one
selector (converge.backends.health.Pending): no thread hand-off per probe, which at
hundreds of services is most of an idle controller's CPU. Probes that block (HTTPS, a
host name to resolve) run on a small pool of threads. Either way at most `concurrency`
probes are in flight: one endpoint that accepts and never answers holds one of those
places for at most its probe's timeout, never the others' probes (a key is probed once
at a time). Only `concurrency` endpoints hung at once can delay the rest, and only by
their timeout.

A key's first probe is due at its own phase within the period (a hash of the key), so
services that became healthy together are not probed together ever after; later passes
over a tracked key keep its schedule.

Probes run in slots: every due time is rounded down to a multiple of a tenth of the
period (at most BATCH_SECONDS), so the keys of one slot start in one wake-up, a probe
comes early by less than a slot and never late, and a key keeps its slot round after
round. Each wake-up of a thread costs about as much CPU as a probe's own work on this
kind of machine (~0.1 ms), so 200 services probed every 10 s cost one wake-up a second
to start their probes and one to take the answers, not one or more per probe. The
answers are read straight after a short pause (COALESCE_SECONDS): a loopback endpoint has
answered by then, and only the probes still waiting are put in the selector.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import selectors
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from converge.api import ServiceKey
from converge.backends.base import ProbeResult
from converge.backends.health import Pending
from converge.reconciler import Probe
from converge.supervise import supervised

log = logging.getLogger("converge")

STARTUP_FIRST = 0.003  # a start-up watch's first probe, this long after it is tracked
STARTUP_GROWTH = 0.125  # then every this much of the time it has waited (a few probes per doubling)
STARTUP_MOST = 16  # start-up watches at once (a mass start: the rest wait for their reconciles' looks)
BATCH_SECONDS = 1.0  # the longest slot: probes due in one slot start in one wake-up
BATCH_FRACTION = 0.1  # a slot is this much of the period (when shorter than BATCH_SECONDS)
CONCURRENCY = 64  # probes in flight at once
COALESCE_SECONDS = 0.005  # after starting probes, before taking their answers
THREADS = 8  # at most this many of them blocking probes (HTTPS, host names), on threads


def first_delay(key: ServiceKey, period: float, now: float) -> float:
    """Seconds until a newly tracked key's first probe: its fixed phase in the period, at
    most one period away (a probe may come early, never late)."""
    phase = (zlib.crc32(str(key).encode()) / 2**32) * period
    return (phase - now) % period


def slot(due: float, period: float) -> float:
    """The start of the slot `due` falls in: due rounded down to a multiple of the period's
    slot length (BATCH_FRACTION of it, at most BATCH_SECONDS). A key rescheduled one period
    after its probe (which starts at its slot and ends within it) stays in the same slot."""
    width = min(BATCH_SECONDS, period * BATCH_FRACTION)
    if width <= 0:
        return due
    return math.floor(due / width) * width


class Prober:
    def __init__(self, on_failure: Callable[[ServiceKey], None], concurrency: int = CONCURRENCY) -> None:
        """on_failure(key): a failed probe of a healthy service, or a passed one of a
        start-up watch: the key's reconcile must look (the runtime queues it)."""
        self._on_failure = on_failure
        self._most = max(1, concurrency)
        self._pool: ThreadPoolExecutor | None = None  # made on the first blocking probe
        self._mu = threading.Lock()
        self._tracked: dict[ServiceKey, tuple[Probe, float]] = {}  # key -> (probe, due)
        self._phased: set[ServiceKey] = set()  # keys whose first probe was put at their phase
        self._since: dict[ServiceKey, float] = {}  # start-up watches: when each began
        self._heap: list[tuple[float, int, ServiceKey]] = []
        self._seq = 0
        self._inflight: dict[ServiceKey, tuple[Probe, float]] = {}  # key -> (probe, the turn it is for)
        self._pending: dict[ServiceKey, Pending] = {}  # the non-blocking ones among them
        self._registered: set[ServiceKey] = set()  # those of them waiting in the selector
        self._finished: list[tuple[ServiceKey, Probe, ProbeResult]] = []  # from the pool's threads
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = supervised("prober", self._loop, lambda: self._closed)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side

    def track(self, key: ServiceKey, probe: Probe) -> bool:
        """Probe key every probe.period from now on (a key tracked with the same check
        keeps its schedule). A start-up watch (probe.startup) is probed at once and then
        more and more rarely (STARTUP_GROWTH of the time waited) until a probe passes, which
        wakes the key (its reconcile takes it from there); its failures wake nothing.
        False: not tracked (too many start-up watches at once)."""
        now = time.monotonic()
        with self._mu:
            cur = self._tracked.get(key)
            if cur is not None and cur[0] == probe:
                self._tracked[key] = (probe, cur[1])  # this pass's recorder, the same schedule
                return True
            if probe.startup:
                if len(self._since) >= STARTUP_MOST and key not in self._since:
                    self._tracked.pop(key, None)  # many starting at once: their reconciles' looks will do
                    return False
                self._since[key] = now
                due = now + STARTUP_FIRST
            elif key in self._phased:
                due = now + probe.period
            else:
                self._phased.add(key)
                due = now + first_delay(key, probe.period, now)
            self._schedule(key, probe, due)
        self._wake()
        return True

    def untrack(self, key: ServiceKey) -> None:
        with self._mu:
            self._tracked.pop(key, None)
            self._phased.discard(key)
            self._since.pop(key, None)

    def close(self) -> None:
        with self._mu:
            self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # a hung probe ends at its timeout
        for pending in self._pending.values():
            pending.close()
        self._selector.close()
        with self._mu:  # a pool thread may still end a probe: never write to a reused fd number
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1

    # ------------------------------------------------------------------ the prober's thread

    def _schedule(self, key: ServiceKey, probe: Probe, due: float) -> None:
        """Under self._mu."""
        if not probe.startup:
            due = slot(due, probe.period)
        self._tracked[key] = (probe, due)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))

    def _wake(self) -> None:
        with self._mu, contextlib.suppress(BlockingIOError):  # full: it wakes anyway
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _due(self, now: float) -> tuple[list[tuple[ServiceKey, Probe]], float | None]:
        """Keys to probe now (up to the places free) and the seconds until the next one."""
        out: list[tuple[ServiceKey, Probe]] = []
        with self._mu:
            free = self._most - len(self._inflight)
            while self._heap and free > 0:
                due, _, key = self._heap[0]
                entry = self._tracked.get(key)
                if entry is None or entry[1] != due:
                    heapq.heappop(self._heap)  # untracked or rescheduled since
                    continue
                if due > now:
                    break
                heapq.heappop(self._heap)
                if key in self._inflight:
                    continue  # rescheduled when the probe in flight ends
                self._inflight[key] = entry
                out.append((key, entry[0]))
                free -= 1
            wait = None if not self._heap or free <= 0 else max(0.0, self._heap[0][0] - now)
        return out, wait

    def _loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            starting, wait = self._due(now)
            ended: list[tuple[ServiceKey, Probe, ProbeResult]] = []
            started = [(key, probe) for key, probe in starting if self._start(key, probe, ended)]
            with self._mu:
                if self._finished:
                    ended += self._finished
                    self._finished = []
            if started:
                # Let the endpoints answer, then take the answers in the same wake-up, with
                # no selector round for a probe that is done by then. Start-up watches alone:
                # to the selector at once (their answer is the Ready being waited for).
                if not all(probe.startup for _, probe in started):
                    time.sleep(COALESCE_SECONDS)
                for key, _ in started:
                    self._step(key, ended)
            if ended:
                self._end(ended)
            if ended or starting:
                continue  # places freed, probes rescheduled, time passed: more may be due before sleeping
            if self._pending:
                soonest = max(0.0, min(p.deadline for p in self._pending.values()) - now)
                wait = soonest if wait is None else min(wait, soonest)
            for sk, _ in self._selector.select(wait):
                if sk.data is None:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                else:
                    self._step(sk.data, ended)
            now = time.monotonic()
            for key in [k for k, p in self._pending.items() if p.deadline <= now]:
                self._settle(key, self._pending[key].expire(), ended)
            if ended:
                self._end(ended)

    def _start(self, key: ServiceKey, probe: Probe, ended: list[tuple[ServiceKey, Probe, ProbeResult]]) -> bool:
        """Start a probe; True when it is a non-blocking one now waiting for its endpoint
        (in self._pending, not yet in the selector: see _step). One decided at once goes
        to `ended`."""
        try:
            started = probe.start()
        except Exception:  # a probe must never kill the prober
            log.exception("%s: probe failed unexpectedly", key)
            started = ProbeResult(False, "probe failed unexpectedly")
        if isinstance(started, ProbeResult):
            ended.append((key, probe, started))
        elif started is not None:
            self._pending[key] = started
            return True
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(THREADS, self._most), thread_name_prefix="probe")
            with contextlib.suppress(RuntimeError):  # shut down while closing
                self._pool.submit(self._blocking, key, probe)
        return False

    def _blocking(self, key: ServiceKey, probe: Probe) -> None:
        """On a pool thread: a probe that can only block; its end is the prober thread's."""
        try:
            result = probe.blocking()
        except Exception:
            log.exception("%s: probe failed unexpectedly", key)
            result = ProbeResult(False, "probe failed unexpectedly")
        with self._mu:
            self._finished.append((key, probe, result))
        self._wake()

    def _step(self, key: ServiceKey, ended: list[tuple[ServiceKey, Probe, ProbeResult]]) -> None:
        """Go on with a probe whose socket may be ready; one still waiting is (re)registered
        with the selector for what it waits on, one decided goes to `ended`."""
        pending = self._pending[key]
        events = pending.events
        try:
            result = pending.step()
        except Exception:
            log.exception("%s: probe failed unexpectedly", key)
            result = ProbeResult(False, "probe failed unexpectedly")
        if result is not None:
            self._settle(key, result, ended)
        elif key not in self._registered:
            self._selector.register(pending.sock, pending.events, key)
            self._registered.add(key)
        elif pending.events != events:
            self._selector.modify(pending.sock, pending.events, key)

    def _settle(self, key: ServiceKey, result: ProbeResult, ended: list[tuple[ServiceKey, Probe, ProbeResult]]) -> None:
        """A non-blocking probe's end: its socket closed, its result to `ended`."""
        pending = self._pending.pop(key)
        if key in self._registered:
            self._registered.discard(key)
            self._selector.unregister(pending.sock)
        pending.close()
        ended.append((key, self._inflight[key][0], result))  # (_inflight changes on this thread only)

    def _end(self, ended: list[tuple[ServiceKey, Probe, ProbeResult]]) -> None:
        """Probes ended (those of one wake-up, in one lock turn): each recorded, then probed
        again after its period, or its key woken (a failure; a start-up watch's pass)."""
        for _, probe, result in ended:
            probe.finish(result)
        woken: list[ServiceKey] = []
        with self._mu:
            now = time.monotonic()
            for key, probe, result in ended:
                turn = self._inflight.pop(key, (probe, -1.0))[1]
                cur = self._tracked.get(key)
                if cur is None or (cur[0] is not probe and cur[0] != probe):
                    continue  # untracked, or tracked with another check while probing
                if probe.startup:
                    if not result.ok:  # not up yet: look again soon, more rarely the longer it takes
                        if cur[1] == turn:
                            waited = now - self._since.get(key, now)
                            self._schedule(key, cur[0], now + max(STARTUP_FIRST, waited * STARTUP_GROWTH))
                        continue
                    self._since.pop(key, None)  # up: its reconcile goes on from here
                elif result.ok:
                    if cur[1] == turn:  # not given another turn while probing
                        self._schedule(key, cur[0], now + cur[0].period)
                    continue
                del self._tracked[key]
                woken.append(key)
        for key in woken:
            self._on_failure(key)
