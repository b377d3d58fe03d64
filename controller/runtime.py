"""The local runtime: workers pulling keys from one queue and reconciling them.

Two ways to drive it:
- `converge(keys, timeout)`: one converging pass (`converge reconcile`, `up`, `down`,
  `delete`): every key is reconciled and requeued as the core asks until all are settled.
- `run(stop)`: the continuous controller (`converge run`): keys come from the store's
  watch, from backends' change notifications (process exits, Docker events), from the
  core's requeue times, from failed health probes (converge.prober probes healthy
  services on its own) and from a periodic resync that catches any other drift.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable

from converge import heap
from converge.api import ServiceKey
from converge.concurrency import Gate, Limit
from converge.outcome import Outcome
from converge.prober import Prober
from converge.reconciler import Reconciler
from converge.stopsignal import StopSignal
from converge.store import StoreError
from converge.supervise import supervised
from converge.workqueue import WorkQueue

log = logging.getLogger("converge")

RESYNC_SECONDS = 60.0
RESYNC_SLOT = 10.0  # resync keys due within one slot are passed over by one worker in one wake-up
FEED_AHEAD = 32  # a one-shot converge queues this many keys ahead of their first pass (see converge)
BULK_PASS = 2_000  # keys: a converging pass over this many makes and keeps many objects (see converge)
STARTUP_LOOK = 1.0  # a start watched by the prober: the reconcile looks again after this at the soonest


def resync_delay(key: ServiceKey, period: float, now: float) -> float:
    """Seconds until key's next resync. Each key has its own fixed phase in the period (a
    hash of the key), so N services resync evenly spread over it, N/period per second,
    instead of in one burst every period; the next slot is at least half a period away.
    (The queue hands them out in slots: see resync_slot.)"""
    phase = (zlib.crc32(str(key).encode()) / 2**32) * period
    delay = (phase - now) % period
    return delay + period if delay < period / 2 else delay


def resync_slot(period: float) -> float:
    """The work queue's slot for resync keys (converge.workqueue: one worker passes over the
    keys of a slot in one wake-up): RESYNC_SLOT, a sixth of a shorter period. A pass at
    rest costs ~0.3 ms, and most of it is the first passes of a wake-up (cold caches): 2 s
    slots cost ~0.13 % of a core at 200 services, 10 s slots ~0.11 %. Its slots start a
    quarter of a slot past the prober's (whole seconds for periods of 10 s and more), so
    the resync's worker and the prober do not wake at the same moment and contend for the
    GIL."""
    return min(RESYNC_SLOT, period / 6)


class Runtime:
    def __init__(self, reconciler: Reconciler, workers: int = 8, resync: float = RESYNC_SECONDS) -> None:
        self.reconciler = reconciler
        self.workers = workers
        self.resync = resync
        self.bulk_pass = BULK_PASS
        self._last: dict[ServiceKey, tuple[str, str]] = {}
        self._mu = threading.Lock()
        # Told of every pass (outcome, seconds): the operator's metrics.
        self.on_outcome: Callable[[Outcome, float], None] | None = None
        self._queue: WorkQueue[ServiceKey] | None = None  # the continuous run's queue


    def _report(self, o: Outcome) -> None:
        """Log a line when a service's state or message changes (the event stream)."""
        now = (o.state, o.error or o.message)
        if not o.gone and self._last.get(o.key) == now:
            return  # nothing new (most passes): no lock taken
        with self._mu:
            before = self._last.pop(o.key, None) if o.gone else self._last.get(o.key)
            if not o.gone:
                self._last[o.key] = now
        if o.gone:
            if before is not None:
                log.info("%s: deleted", o.key)
        elif o.error and (before is None or before[1] != o.error):
            log.error("%s: %s", o.key, o.error)
        elif before != now and o.state:
            log.info("%s: %s%s", o.key, o.state, f" ({o.message})" if o.message else "")

    def enqueue(self, key: ServiceKey) -> None:
        """Ask the continuous run for a pass over key (from any thread; e.g. kopf's watch)."""
        if self._queue is not None:
            self._queue.add(key)

    def queue_depth(self) -> int:
        return self._queue.depth() if self._queue is not None else 0

    def _reconcile(self, key: ServiceKey) -> Outcome:
        started = time.monotonic()
        try:
            o = self.reconciler.reconcile(key)
        except StoreError as exc:  # the store is unreachable or refuses: said once, retried
            o = Outcome(key, requeue_after=5.0, error=f"store: {exc}")
        except Exception as exc:  # a bug must not kill the controller: report, retry later
            log.exception("%s: reconcile failed", key)
            o = Outcome(key, requeue_after=5.0, error=f"internal error: {exc}")
        self._report(o)
        if self.on_outcome is not None:
            self.on_outcome(o, time.monotonic() - started)
        return o

    def _start_workers(self, queue: WorkQueue[ServiceKey], handle: Callable[[ServiceKey], None],
                       most: int, stopping: Callable[[], bool]) -> tuple[list[threading.Thread], Gate]:
        """Up to `most` worker threads (converge.supervise: one that raises is started
        again); how many may work at once follows what the work waits on
        (converge.concurrency): one for work that only computes, more while it waits."""
        limit = Limit(most)
        gate = Gate(limit.value)

        def work() -> None:
            # A worker keeps its place from one key to the next: giving it up after each
            # key woke a waiting worker only to find the place taken again (a futile thread
            # wake-up and GIL hand-off per key, most of the runtime's cost around a no-op
            # reconcile). It gives the place up only when the limit drops below the count.
            # A handled key is marked done by the get of the next (one lock, not two).
            done: ServiceKey | None = None
            inside = gate.enter()
            try:
                while inside:
                    key, done = queue.get(done=done), None
                    if key is None:
                        return
                    done = key
                    handle(key)
                    if not gate.stay(limit.update(queue.ready)):
                        inside, done = False, None
                        queue.done(key)
                        inside = gate.enter()
            finally:
                if done is not None:
                    queue.done(done)
                if inside:
                    gate.leave()

        threads = [supervised(f"reconcile-{i}", work, stopping) for i in range(most)]
        for t in threads:
            t.start()
        return threads, gate

    # ------------------------------------------------------------------ one converging pass

    def converge(self, keys: Iterable[ServiceKey], timeout: float) -> dict[ServiceKey, Outcome]:
        """Reconcile `keys` until each is settled or `timeout` passes; the last outcome of each.

        Keys are queued FEED_AHEAD at a time, the next as a first pass ends: the queue hands
        out by due time, so with every key queued at once each started service's next look
        (due a few ms after its start) waited for every other first pass, and those looks
        and their status writes ran after the last start, on one core while the other idled
        (~0.7 s of a 200-daemon start). Fed, they run among the starts still to come."""
        queue: WorkQueue[ServiceKey] = WorkQueue()
        results: dict[ServiceKey, Outcome] = {}
        waiting = set(keys)
        mu = threading.Condition()
        fresh = sorted(waiting, reverse=True)  # keys not queued yet (the next one last)
        for _ in range(min(len(fresh), FEED_AHEAD)):
            queue.add(fresh.pop())

        def handle(key: ServiceKey) -> None:
            o = self._reconcile(key)
            with mu:
                if fresh and key not in results:  # a first pass done: the next key's turn
                    queue.add(fresh.pop())
                results[key] = o
                if o.settled:
                    waiting.discard(key)
                    if not waiting:  # the waiter only cares about the last one
                        mu.notify_all()
                else:
                    queue.add_after(key, o.requeue_after if o.requeue_after is not None else 0.5)

        finished = threading.Event()
        # A pass over thousands of services keeps a few objects for each for the life of
        # the controller (the reconciler's look at rest, target, hash): the collector is
        # paused for it and what it kept frozen after (converge.heap), as for a cold list.
        with heap.keeping() if len(waiting) >= self.bulk_pass else contextlib.nullcontext():
            threads, gate = self._start_workers(queue, handle, min(self.workers, max(1, len(waiting))),
                                                finished.is_set)
            deadline = time.monotonic() + timeout
            with mu:
                while waiting and time.monotonic() < deadline:
                    mu.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            finished.set()
            queue.close()
            gate.close()
            for t in threads:
                t.join(timeout=60)
        return results

    # ------------------------------------------------------------------ continuous

    def run(self, stop: threading.Event, watch: bool = True) -> None:
        """Until stop is set. watch=False: keys come from `enqueue` (the operator's kopf
        watch) instead of the store's own watch."""
        store = self.reconciler.store
        slot = resync_slot(self.resync)
        queue: WorkQueue[ServiceKey] = WorkQueue(slot=slot, offset=slot / 4)
        self._queue = queue
        self.reconciler.backends.watch(queue.add)

        known: set[ServiceKey] = set()  # keys that requeue themselves (every resync at least)

        def relist() -> None:
            """Catch keys the watch missed; known keys already have their next pass queued."""
            listed = store.list()
            keys = [o.key for o in listed.items] + [e.key for e in listed.errors if e.key is not None]
            for key in keys:
                if key not in known:
                    queue.add(key)
            for err in listed.errors:
                if err.key is None:
                    log.error("%s", err)

        watch_stop = StopSignal()  # set with `stop`; the store's watch sleeps on it with its events

        def watch_store() -> None:
            if not watch:
                return
            for key in store.watch(watch_stop):
                queue.add(key)

        def resync() -> None:
            while not stop.wait(self.resync):
                relist()

        prober = Prober(queue.add)

        def handle(key: ServiceKey) -> None:
            try:
                o = self._reconcile(key)
                requeue = o.requeue_after
                if o.probe is not None:
                    if prober.track(key, o.probe) and o.probe.startup and requeue is not None:
                        # The prober watches the start-up and wakes the key at the first answer
                        # (an exit wakes it too): the reconcile's own looks are only a fallback.
                        requeue = max(requeue, STARTUP_LOOK)
                else:
                    prober.untrack(key)
                if o.gone:
                    known.discard(key)
                else:
                    known.add(key)
                    resync = resync_delay(key, self.resync, time.monotonic())
                    if requeue is None or requeue >= resync:  # the resync: with the keys of its slot
                        queue.add_after(key, resync, batch=True)
                    else:
                        queue.add_after(key, requeue)
            except BaseException:
                queue.add_after(key, 5.0)  # never lose the key: look again soon
                raise

        relist()
        helpers = [supervised(n, f, stop.is_set) for f, n in ((watch_store, "store-watch"), (resync, "resync"))]
        for t in helpers:
            t.start()
        workers, gate = self._start_workers(queue, handle, self.workers, stop.is_set)
        log.info("controller running with up to %d workers; Ctrl-C to stop", self.workers)
        stop.wait()
        watch_stop.set()
        queue.close()
        gate.close()
        prober.close()
        for t in workers:
            t.join(timeout=30)
        self.reconciler.backends.close()
        for t in helpers:
            t.join(timeout=5)
        if not any(t.is_alive() for t in helpers):
            watch_stop.close()  # else left to the process's end: never close a descriptor still waited on
