"""Linux inotify, through ctypes on libc (the standard library has no binding).

`Inotify` is the kernel's queue of file events: folders are watched with `add`, the
events are read from one file descriptor that a selector or select() can wait on, so a
watcher sleeps until something changes instead of polling. `parse` (pure) decodes what
read(2) returns. Where inotify is missing (not Linux, no libc symbol, a watch limit
reached) the calls raise OSError and the caller falls back to polling.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_ONESHOT = 0x80000000  # the watch goes after its first event (then IN_IGNORED)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (of the NUL-padded name that follows)
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Event:
    wd: int  # the watch it came from (-1 for a queue overflow)
    mask: int
    name: str  # the entry of the watched folder it is about ("" for the folder itself)


def parse(buf: bytes) -> list[Event]:
    """The events in one read(2) of an inotify descriptor."""
    out = []
    at = 0
    while at + _HEADER.size <= len(buf):
        wd, mask, _cookie, size = _HEADER.unpack_from(buf, at)
        at += _HEADER.size
        raw = buf[at:at + size]
        at += size
        out.append(Event(wd, mask, os.fsdecode(raw.split(b"\0", 1)[0])))
    return out


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc is among them
            self._init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, f"inotify is not available: {exc}") from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = self._init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def fileno(self) -> int:
        return self.fd

    def add(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch path for the events in mask; the watch descriptor (the same one again for a
        path already watched)."""
        wd = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # a watch the kernel already dropped (folder gone): nothing to do

    def read(self) -> list[Event]:
        """The events queued now ([] when none)."""
        try:
            return parse(os.read(self.fd, _READ_SIZE))
        except BlockingIOError:
            return []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
