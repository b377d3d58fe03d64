"""Start a daemon straight inside its cgroup, through the compiled helper `converge-spawn`
(helpers/spawn/converge-spawn.c): clone3(CLONE_INTO_CGROUP | CLONE_PARENT), so the program
is in its cgroup from its first instruction without moving there. A move (the /bin/sh
joiner's `echo 0 > cgroup.procs`, `cgroups.ServiceCgroup.launcher`) takes the kernel's
cgroup lock for writing, which first waits for an RCU grace period when no move happened
for a while: the program ran 7-15 ms later than a plain respawn. Python 3.11 has no clone3,
glibc 2.36 no posix_spawnattr_setcgroup_np, and a clone3 of the controller itself without
CLONE_VM copies it (a fork of a large process): the helper is tiny, so Popen's vfork starts
it and its own clone3 is cheap.

The helper is used only where whoever installed converge put it: `converge-spawn` next to
the Python running converge (the virtualenv's bin folder, where `.ci/setup.d/spawn.sh`
builds it), a regular executable file and folder that only root or this user can change.
Nothing a manifest says can choose it. `CONVERGE_SPAWN=off` turns it off. Where it is
missing, or says clone3 cannot be used here (an old kernel, a threaded or non-cgroup2
folder), the daemon backend starts the program through the /bin/sh joiner as before.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("converge")

SWITCH = "CONVERGE_SPAWN"  # "off": always the /bin/sh joiner
NAME = "converge-spawn"
# A kernel without clone3 or CLONE_INTO_CGROUP: no start will do better, the helper stays off.
KERNEL_LACKS = frozenset({errno.ENOSYS, errno.EINVAL, errno.E2BIG})
REPORT_MAX = 64  # bytes: one short line
_REPORT = re.compile(rb"(ok|exec|clone|usage) ([0-9]{1,5})(?: ([1-9][0-9]{0,9}))?\n")

_off = False  # set for good when the kernel cannot do it


@dataclass(frozen=True)
class Report:
    """The helper's one line: outcome, errno (0 for ok), the program's pid (ok, exec)."""

    outcome: str  # ok | exec | clone | usage
    errno: int
    pid: int | None


def parse_report(data: bytes) -> Report | None:
    """The helper's report, or None when it is not one it can write (nothing, torn, extra)."""
    m = _REPORT.fullmatch(data)
    if m is None:
        return None
    outcome = m.group(1).decode()
    pid = int(m.group(3)) if m.group(3) is not None else None
    if (pid is None) != (outcome in ("clone", "usage")):
        return None  # ok and exec name the process made, clone and usage made none
    return Report(outcome, int(m.group(2)), pid)


def argv_for(helper: str, report_fd: int, cgroup: Path, argv: Sequence[str]) -> list[str]:
    """The helper's command line: the program's argv is passed after `--`, untouched."""
    return [helper, str(report_fd), str(cgroup), "--", *argv]


def trusted(path: Path, uid: int | None = None) -> bool:
    """`path` is a regular executable file, and it and its folder are owned by root or
    `uid` (default: this process's) and not writable by group or others: only whoever
    installed converge could have put it there."""
    me = os.geteuid() if uid is None else uid
    try:
        st = os.lstat(path)
        folder = path.parent.stat()
    except OSError:
        return False

    def private(s: os.stat_result) -> bool:
        return s.st_uid in (0, me) and not s.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_IXUSR) and private(st) and private(folder)


@functools.cache
def _installed() -> str | None:
    if os.environ.get(SWITCH, "").lower() in ("off", "0", "false", "no"):
        return None
    path = Path(sys.executable).parent / NAME  # the venv's bin: not resolved (a venv's python is a link)
    if not path.is_absolute() or not trusted(path):
        if path.is_absolute() and os.path.lexists(path):
            log.warning("%s not used: not a regular executable file that only root or its owner can "
                        "change, in such a folder; daemons start through /bin/sh", path)
        return None
    return str(path)


def helper() -> str | None:
    """The helper's path, or None: not installed (or not trusted), turned off, or the kernel
    cannot start a process into a cgroup."""
    return None if _off else _installed()


def forget() -> None:
    """Look for the helper again (tests)."""
    global _off
    _off = False
    _installed.cache_clear()


class Unavailable(Exception):
    """The helper could not start the program in a cgroup here: start it the other way."""


class Spawned:
    """A daemon the helper started: this process's own child (CLONE_PARENT), though not a
    Popen. What the daemon backend asks of its children: pid, poll(), returncode."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()  # one waitpid at a time (two would see ECHILD)

    def poll(self) -> int | None:
        if self.returncode is not None or not self._lock.acquire(blocking=False):
            return self.returncode  # (another thread is looking right now)
        try:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    self.returncode = 0  # reaped elsewhere: as subprocess.Popen says then
                else:
                    if pid == self.pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
        finally:
            self._lock.release()
        return self.returncode


def start(path: str, cgroup: Path, argv: Sequence[str], *, stdout: int,
          env: Mapping[str, str] | Mapping[bytes, bytes], cwd: Path) -> Spawned:
    """Run `argv` in `cgroup` through the helper at `path`, in a session of its own, stdin
    /dev/null, stdout and stderr to `stdout`, with `env` in `cwd`. OSError as Popen raises
    it: the working folder (filename cwd), or the program's exec error (filename argv[0]).
    Unavailable: nothing was started, use the /bin/sh joiner (off for good where the kernel
    lacks it)."""
    global _off
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            starter = subprocess.Popen(
                argv_for(path, w, cgroup, argv), stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, close_fds=True,
                pass_fds=(w,))
        except OSError as exc:
            if exc.filename == path:
                raise Unavailable(f"{path}: {exc.strerror}") from None
            raise
        os.close(w)
        w = -1
        data = b""
        while len(data) <= REPORT_MAX:
            chunk = os.read(r, REPORT_MAX + 1 - len(data))  # EOF: the helper exited, the program exec'd
            if not chunk:
                break
            data += chunk
        starter.wait()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    report = parse_report(data)
    if report is None:  # killed before it said, say: it may have started the program (in the
        # cgroup: the next start stops what is there first); never a second copy by /bin/sh
        raise OSError(errno.EIO, f"{NAME} exited {starter.returncode} without a report", argv[0])
    if report.outcome == "usage":  # it checks its arguments before it makes anything
        raise Unavailable(f"{path} refused its arguments (exit {starter.returncode})")
    if report.outcome == "clone":
        if report.errno in KERNEL_LACKS and not _off:
            _off = True
            log.warning("%s: this kernel cannot start a process into a cgroup (clone3: %s): daemons "
                        "start through /bin/sh", NAME, os.strerror(report.errno))
        raise Unavailable(f"clone3 into {cgroup}: {os.strerror(report.errno)}")
    assert report.pid is not None
    if report.outcome == "exec":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(report.pid, 0)  # the child that could not exec: reaped, nothing left
        raise OSError(report.errno, os.strerror(report.errno), argv[0])
    return Spawned(report.pid)
