"""The cyclic garbage collector around work that makes many objects and keeps them: a
cold read of the store (converge.storefiles, FileStore.list) and a converging pass over
many services (converge.runtime: the reconciler keeps what it saw of each service at rest,
its target and its spec's hash, for the life of the controller).

While such work runs, every collection would walk every object it made so far again,
although they are all alive (half the CPU of a cold list of 10,000). So the collector is
paused for it (only if it is on: a program, or another thread's work, that paused it
keeps it paused).

Pausing alone only defers that: the first full collections after it walk every object it
kept (~0.5 s after a cold list of 10,000), and when they come depends on everything the
process did before (in one process, a steady-state pass over 10,000 took 0.02 s of
collection or 0.6 s, depending on whether a full collection fell into it). So when the
work kept many (a cold list, a first pass over thousands of services), they are frozen
(`gc.freeze`): moved out of the collector's generations, as a long-lived cache should be.
Frozen objects are still freed when no longer referenced (refcounting: the models and
caches hold no cycles); cyclic garbage not yet collected at that moment is kept for good
(bounded: what the process had left, paid only by work that keeps many objects).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

FREEZE_YOUNG = 50_000  # objects kept (~28 per stored object read, ~16 per service passed): worth freezing


@contextlib.contextmanager
def keeping() -> Iterator[None]:
    """The collector paused for the block; what it kept frozen after, if many."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_count()[0] >= FREEZE_YOUNG:
            gc.freeze()
        gc.enable()
