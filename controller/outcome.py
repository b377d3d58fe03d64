"""What one reconcile pass reports to the runtime and the client (converge.reconciler
makes it). Its own module so that a command that only reads the store (get, describe)
need not import the reconciler, the core and the backends' interfaces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from converge.api import ServiceKey

if TYPE_CHECKING:
    from converge.reconciler import Probe


@dataclass(frozen=True)
class Outcome:
    key: ServiceKey
    requeue_after: float | None = None
    settled: bool = False
    gone: bool = False  # no longer in the store
    state: str = ""
    message: str = ""
    error: str = ""  # the object could not be read (corrupt) or written
    probe: Probe | None = None  # healthy: the next look is only this probe (core.Plan.probe_after)
