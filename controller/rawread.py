"""Small files read through os.open / os.read / os.close, without a Python file object.

A buffered open() adds an fstat, an isatty ioctl and seeks to every read: on the hot paths
that read a small file per service or per thread (a process's /proc stat, a thread's
schedstat, a daemon's pid record) those were most of the system calls.
"""

from __future__ import annotations

import os


def read_once(path: str, size: int = 8192) -> bytes:
    """Up to `size` bytes in one read: a /proc file of one line. OSError as open raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def read_all(path: str | os.PathLike[str]) -> bytes:
    """The whole file (following a link, as Path.read_bytes does). OSError as open raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
