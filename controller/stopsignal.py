"""A stop flag that a poll can wait on.

`StopSignal` is a threading.Event whose `fileno()` (an eventfd, or a pipe where there is
none) turns readable when it is set, so a thread sleeping in select()/poll() on its own
descriptors sees the stop in the same wait, instead of waking every so often only to
look at the flag (a wake-up a second per watch at idle).
"""

from __future__ import annotations

import contextlib
import os
import threading


class StopSignal(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        try:
            self._r = self._w = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except (AttributeError, OSError):  # no eventfd (not Linux): a pipe does the same
            self._r, self._w = os.pipe()
            os.set_blocking(self._r, False)
            os.set_blocking(self._w, False)
        self._fd_mu = threading.Lock()

    def fileno(self) -> int:
        """Readable while the flag is set (-1 once closed)."""
        return self._r

    def set(self) -> None:
        super().set()
        with self._fd_mu, contextlib.suppress(BlockingIOError):  # already readable
            if self._w >= 0:
                os.write(self._w, (1).to_bytes(8, "little"))

    def clear(self) -> None:
        super().clear()
        with self._fd_mu, contextlib.suppress(BlockingIOError):  # nothing to take
            if self._r >= 0:
                while os.read(self._r, 4096):
                    pass

    def close(self) -> None:
        """Release the descriptor: only once nothing waits on it any more."""
        with self._fd_mu:
            for fd in {self._r, self._w}:
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1
