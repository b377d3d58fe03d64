"""Background threads that never die silently.

A thread of the controller (store watch, resync, reconcile workers, prober) that raises is
logged with its traceback and started again after a short pause, until the controller
stops: one bad object or one bug in a rare path must not leave the other services
without a watch, a resync or a worker for good.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("converge")

RESTART_DELAY = 1.0
_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the kernel too (/proc/PID/task/TID/comm, 15
    bytes), so top -H, perf and per-thread CPU figures say which thread is which."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)  # the process's own symbols: libc is among them
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass  # only a label


def supervised(name: str, target: Callable[[], None], stopping: Callable[[], bool],
               delay: float = RESTART_DELAY) -> threading.Thread:
    """A daemon thread running target; if it raises, log and run it again (after `delay`),
    unless the controller is stopping. Returning normally ends the thread."""
    pause = threading.Event()

    def run() -> None:
        name_os_thread(name)
        restarts = 0
        while True:
            try:
                target()
                return
            except Exception:
                if stopping():
                    return
                restarts += 1
                log.exception("thread %s failed (restart %d in %.0fs)", name, restarts, delay)
                pause.wait(delay)
                if stopping():
                    return

    return threading.Thread(target=run, name=name, daemon=True)
