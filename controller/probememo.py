"""Health probes paced by periodSeconds, whatever wakes a service (kubelet's probe period).

A service is reconciled for many reasons: its own status write, a process event, the
resync, a failed probe of the prober. Probing on every one of those would count one
failing endpoint's failures as fast as the service is woken (failureThreshold 3 reached
in a second instead of three periods) and probe healthy ones more often than asked.

So each service's last probe result is remembered with when it was taken and whether a
reconcile has counted it yet. Once a service has been healthy (activeSince set), a pass
within periodSeconds of the last probe does not probe again:
- a result nobody counted yet (the prober's failed probe that woke the service) is used
  and counted now;
- an already counted result is reused as *not fresh*: the core keeps its failure count.
During start-up (not yet healthy) every pass probes, so Ready is noticed at once, except
the pass a start-up watch's passed probe woke (Prober): it plans with that very result.
Results are tied to one run of the service (startedAt) and port; a restart starts over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from converge.api import ServiceKey
from converge.backends.base import ProbeResult


@dataclass
class _Seen:
    at: float  # monotonic time of the probe
    run: tuple[datetime | None, int]  # (startedAt, port) of the service it probed
    result: ProbeResult
    counted: bool
    watch: bool = False  # a start-up watch's passed probe (record_passed)


@dataclass(frozen=True)
class Health:
    result: ProbeResult
    fresh: bool  # not counted by an earlier pass: the core counts a failure of it


class ProbeMemo:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[ServiceKey, _Seen] = {}
        self._mu = threading.Lock()

    def record(self, key: ServiceKey, run: tuple[datetime | None, int], result: ProbeResult) -> None:
        """A probe taken outside a reconcile (the prober): the next pass counts it."""
        with self._mu:
            self._seen[key] = _Seen(self._clock(), run, result, counted=False)

    def record_passed(self, key: ServiceKey, run: tuple[datetime | None, int], result: ProbeResult) -> None:
        """A start-up watch's probe (converge.prober): only a passed one wakes the service,
        and its pass plans with it instead of probing again (see health)."""
        if result.ok:
            with self._mu:
                self._seen[key] = _Seen(self._clock(), run, result, counted=False, watch=True)

    def forget(self, key: ServiceKey) -> None:
        with self._mu:
            self._seen.pop(key, None)

    def health(self, key: ServiceKey, run: tuple[datetime | None, int], period: float, was_healthy: bool,
               probe: Callable[[], ProbeResult]) -> Health:
        """The health to plan with: a recent result when one is due no new probe, else `probe()`."""
        now = self._clock()
        with self._mu:
            seen = self._seen.get(key)
            if seen is not None and seen.run == run and now - seen.at < period and (
                    was_healthy or (seen.watch and not seen.counted)):  # or a start-up watch's pass
                fresh = not seen.counted
                seen.counted = True
                return Health(seen.result, fresh)
        result = probe()
        with self._mu:
            self._seen[key] = _Seen(self._clock(), run, result, counted=True)
        return Health(result, True)
