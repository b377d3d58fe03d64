"""cgroup v2 process tracking for the daemon backend.

Each daemon runs in a cgroup of its own, `<base>/svc-<uid>`, where `<base>` is a `converge`
folder inside the controller's own cgroup (systemd's delegation model: a process manages the
subtree below itself). The program is in it from its first instruction: created there by the
compiled helper converge-spawn (clone3 CLONE_INTO_CGROUP: `converge.backends.spawn`), or where
that is not installed, joined by /bin/sh before it execs the program in the same process
(`launcher`), so whatever the program does
afterwards (fork twice, setsid, clear its environment, rewrite its argv) every process it
starts stays in it: the kernel, not a scan of /proc, says what belongs to the service.
`cgroup.kill` then ends all of it at once, forks racing the kill included, and an empty
cgroup is removed when the service is deprovisioned.

Where cgroup v2 cannot be written (no cgroup2 mount, not root and not delegated, a read-only
/sys in a container, `CONVERGE_CGROUPS=off`), `for_service` answers None and the daemon
backend falls back to tracking the session, the process group and the uid marker.

A recorded path is trusted only if it lies under a cgroup2 mount and is named for the very
service asking: a hostile record cannot make converge signal another cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("converge")

SWITCH = "CONVERGE_CGROUPS"  # "off" disables cgroup tracking
SH = "/bin/sh"
# Run by /bin/sh ahead of a service's program: move this very process ("0") into the cgroup
# whose cgroup.procs is $0, then become the program: "$@" is the service's argv, passed as
# positional parameters (never part of the script, never parsed by the shell).
JOIN_AND_EXEC = 'echo 0 >"$0" && exec "$@"'
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


@functools.cache
def _mounts() -> tuple[Path, ...]:
    """Mount points of the cgroup2 filesystem (hybrid hosts have it at /sys/fs/cgroup/unified);
    read once per process: every pid record's cgroup is checked against them."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    found.append(Path(left.split(" ")[4].replace("\\040", " ")))
    except OSError:
        pass
    return tuple(found)


def _own_cgroup() -> str | None:
    """This process's cgroup v2 path ("0::/path" in /proc/self/cgroup)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


_base_lock = threading.Lock()


def base() -> Path | None:
    """The folder service cgroups are made in, or None when cgroups cannot be used here
    (found once per process; the first starts may race for it)."""
    with _base_lock:
        return _find_base()


def own_folder() -> Path | None:
    """This process's cgroup v2 folder under the cgroup2 mount, or None without one."""
    own = _own_cgroup()
    mounts = _mounts()
    if own is None or not own.startswith("/") or not mounts:
        return None
    return mounts[0] / own.lstrip("/")


@functools.cache
def _find_base() -> Path | None:
    if os.environ.get(SWITCH, "").lower() in ("off", "0", "false", "no"):
        return None
    own = own_folder()
    if own is None:
        return None
    folder = own / "converge"
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
        probe = folder / f"probe-{os.getpid()}-{uuid.uuid4().hex}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        log.info("cgroup tracking unavailable (%s: %s); daemons are tracked by session and marker",
                 folder, exc.strerror)
        return None
    return folder


def _within_mount(path: Path) -> bool:
    return any(path.is_relative_to(m) and path != m for m in _mounts())


@dataclass(frozen=True)
class ServiceCgroup:
    """One service's cgroup: who is in it, kill all of it, remove it when empty."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def launcher(self, argv: Sequence[str]) -> list[str] | None:
        """The argv that runs `argv` inside this cgroup from its first instruction: /bin/sh
        moves its own process into the cgroup, then execs the program in that same process.
        The program's argv reaches exec untouched, as positional parameters the shell never
        parses. Popen keeps its vfork fast path this way; a preexec_fn would make a large
        controller fork(), measured at ~9 ms per start at 50 MB and ~40 ms at 300 MB plus
        the copy-on-write faults after it. The move waits for an RCU grace period of the
        kernel's cgroup lock after an idle spell (~7-15 ms; `AttachWarmer`): the spawn helper,
        where installed, avoids it and this is its fallback. None where it cannot be used (no
        /bin/sh, or an argv[0] the shell's exec would read as an option): then `joining` does it."""
        if not argv or argv[0].startswith("-") or not os.access(SH, os.X_OK):
            return None
        return [SH, "-c", JOIN_AND_EXEC, str(self.path / "cgroup.procs"), *argv]

    @contextlib.contextmanager
    def joining(self) -> Iterator[Callable[[], object]]:
        """A preexec_fn that moves the forked child into this cgroup before it execs: a C call
        writing "0" (= the writing process) to a descriptor opened here in the parent, so no
        Python bytecode runs between fork and exec. Correct but slow (fork, not vfork): only
        where `launcher` cannot be used."""
        fd = os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            yield functools.partial(os.write, fd, b"0")
        finally:
            os.close(fd)

    def _folders(self) -> list[Path]:
        """This cgroup and every cgroup below it (a delegated service may make its own)."""
        out = []
        for root, dirs, _ in os.walk(self.path, followlinks=False):
            out.append(Path(root))
            dirs.sort()
        return out

    def pids(self) -> list[int]:
        """Every live process in the cgroup or below it (zombies are not listed)."""
        found: list[int] = []
        for folder in self._folders():
            with contextlib.suppress(OSError, ValueError):
                found.extend(int(x) for x in (folder / "cgroup.procs").read_text().split())
        return found

    def populated(self) -> bool:
        try:
            for line in (self.path / "cgroup.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
        except OSError:
            return False
        return bool(self.pids())

    def kill(self) -> bool:
        """SIGKILL everything in the cgroup, forks racing the kill included (cgroup.kill,
        Linux >= 5.14). False when the kernel has no cgroup.kill: the caller signals pids."""
        if os.getpid() in self.pids():
            return False  # never the controller itself
        try:
            fd = os.open(self.path / "cgroup.kill", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            os.write(fd, b"1")
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def remove(self) -> bool:
        """Remove the (empty) cgroup and any below it; False while a process is still in one."""
        for folder in reversed(self._folders()):
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
        return True


class AttachWarmer:
    """Shortens the wait of a restart's cgroup join (`launcher`). The kernel lock that moving
    a process between cgroups takes for writing (cgroup_threadgroup_rwsem) first waits out an
    RCU grace period when no move happened for a while (measured ~5-14 ms on this kind of
    machine, more than /bin/sh's own exec), and needs none for a grace period after a move.
    `poke()` (when a daemon's exit is seen: its restart joins a few ms later) starts that
    grace period at once, on a thread of its own that blocks in the kernel meanwhile: it
    moves this very process into the cgroup it is already in, which changes nothing (no
    process changes cgroups, no controller is asked). The joiner then waits only for what
    is left of the grace period. Off for good after a failed write (no permission, a
    threaded cgroup), and where this process's cgroup is not a plain domain. The cgroup is
    looked up again before each move (something else, e.g. systemd or a benchmark, may have
    moved this process since: a move into the one it was in before would undo that).
    Only for the joiner: where the spawn helper starts daemons straight into their cgroup
    there is no move to warm up for, and the warm-up's own move would hold the cgroup mutex
    through its grace period, which a clone3 into a cgroup takes too."""

    def __init__(self, own: Path | None = None) -> None:
        self._own = own  # fixed (tests); None: this process's cgroup, read before each move
        self._procs = self._find()
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.moves = 0  # done so far (tests)

    def _find(self) -> Path | None:
        """cgroup.procs of this process's cgroup now, None where a move could change anything."""
        folder = self._own if self._own is not None else own_folder()
        kind = _read_text(folder / "cgroup.type") if folder is not None else None
        # The root cgroup has no cgroup.type; a threaded one would move every thread.
        return folder / "cgroup.procs" if folder is not None and kind in (None, "domain") else None

    @property
    def active(self) -> bool:
        return self._procs is not None

    def poke(self) -> None:
        if self._procs is None or self._stopping:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cgroup-warm", daemon=True)
            self._thread.start()
        self._due.set()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping or self._procs is None:
                return
            procs = self._find()
            if procs is None:
                continue  # (moved into a cgroup where a move is not a no-op: not this time)
            try:
                fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    os.write(fd, b"0")  # "0": the writing process, into the cgroup it is in
                finally:
                    os.close(fd)
            except OSError as exc:
                log.debug("cgroup lock warm-up off (%s: %s)", procs, exc.strerror)
                self._procs = None
                return
            self.moves += 1


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def name_for(uid: str) -> str | None:
    return f"svc-{uid}" if _UID.fullmatch(uid) else None


@functools.lru_cache(maxsize=16384)
def _service_path(folder: Path, uid: str) -> Path | None:
    """folder/svc-<uid>, or None for a uid that cannot name one (once per service: every
    look at a service without a pid record asks)."""
    name = name_for(uid)
    return None if name is None else folder / name


def for_service(uid: str, create: bool = True) -> ServiceCgroup | None:
    """The service's cgroup under this controller's base (made if `create`), or None when
    cgroups are not usable here or the uid cannot name one."""
    if create:
        return claim(uid)[0]
    folder = base()
    path = _service_path(folder, uid) if folder is not None else None
    return ServiceCgroup(path) if path is not None and path.is_dir() else None


def claim(uid: str) -> tuple[ServiceCgroup | None, ServiceCgroup | None]:
    """For a start: (the service's cgroup to start it in, as `for_service(uid)` gives it:
    made if missing and touched, or None; the cgroup as `for_service(uid, create=False)`
    found it just before, None where it was not there). A service whose cgroup is not there
    costs one mkdir and the touch (a new cgroup holds nothing: nothing left in it to look
    for), where a look first took one system call more."""
    folder = base()
    path = _service_path(folder, uid) if folder is not None else None
    if path is None:
        return None, None
    existed: ServiceCgroup | None = None
    try:
        try:
            path.mkdir(0o755)
        except FileExistsError:
            if not path.is_dir():
                raise
            existed = ServiceCgroup(path)
        os.utime(path)  # in use from now: `sweep` leaves it alone
    except OSError as exc:
        log.warning("cannot create cgroup %s: %s; tracking by session and marker", path, exc.strerror)
        return None, existed
    return ServiceCgroup(path), existed


def recorded(path: object, uid: str) -> ServiceCgroup | None:
    """The cgroup a pid record names, if it is a cgroup of this very service (named for its
    uid, under a cgroup2 mount, not a link) and still exists."""
    name = name_for(uid)
    if not isinstance(path, str) or name is None or "\x00" in path:
        return None
    p = Path(path)
    if not p.is_absolute() or p.name != name or ".." in p.parts or not _within_mount(p):
        return None
    if p.is_symlink() or not p.is_dir():
        return None
    return ServiceCgroup(p)


def sweep(min_age: float = 300.0) -> int:
    """Remove the empty service cgroups under this controller's base that nothing touched for
    `min_age` seconds: what services leave when their controller was killed and their store
    removed before a deprovision could remove them. A service between a crash and its
    restart may lose its empty cgroup too; its next start makes a new one (and touches it, so
    a start never races this). Returns how many were removed."""
    folder = base()
    if folder is None:
        return 0
    removed = 0
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith("svc-") or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                    continue
                cg = ServiceCgroup(Path(entry.path))
                if not cg.populated() and cg.remove():
                    removed += 1
    if removed:
        log.info("removed %d empty service cgroups left under %s", removed, folder)
    return removed
