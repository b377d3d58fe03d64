"""The daemon backend: a service is a local process tree, started detached.

Each daemon runs in its own session (so its process group is its own), with stdin from
/dev/null and stdout+stderr appended to `daemon.log` in the service's runtime dir.
Identity is the pid file (`daemon.json`: pid, start time, argv, spec hash) checked
against the live process's start time and command line, so a reused pid is never taken
for the service; a controller started later adopts what runs instead of starting a
second copy.

What belongs to a service: where cgroup v2 can be written (`converge.backends.cgroups`),
everything in the service's own cgroup, which the program is in from its first instruction
(created there by the compiled helper `converge-spawn`, `converge.backends.spawn`; where that
is not installed, joined by /bin/sh before the exec), so nothing it starts can leave it
(double fork, setsid, a cleared environment); elsewhere, the leader's
descendants, its session and process group, and every process carrying the service's uid
marker in its environment. Stopping signals all of it (no orphans; SIGKILL by cgroup.kill
where there is one); suspending sends SIGSTOP to it, resuming SIGCONT.

Exit notifications come from pidfds (Linux >= 5.3): `watch()` runs one thread waiting on
every known daemon's pidfd and reports a key the moment its process ends.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import json
import logging
import math
import os
import select
import selectors
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import psutil

from converge import inotify, rawread
from converge.api import DaemonBackend as DaemonSpec
from converge.api import ServiceKey
from converge.backends import cgroups, spawn
from converge.backends.base import Notify, Observation, Phase, Target
from converge.backends.env import expand, resolve_env, scrub, secret_values, secrets_of
from converge.backends.errors import PermanentError, TemporaryError
from converge.supervise import name_os_thread

MARKER = "CONVERGE_SERVICE_UID"  # in every process's environment: finds what left the session
STOPPING_FILE = "daemon.stopping"  # since when a deprovision has been waiting for the process to end
STOP_STEP = 2.0  # the longest one deprovision call waits: timeouts of delete/down are honoured
PID_FILE = "daemon.json"
START_INTENT = "daemon.starting"  # exists only while a start without a cgroup is under way
LOG_FILE = "daemon.log"
LOG_CHECK_SECONDS = 1.0  # a growing log is checked this often
LOG_CHECK_MAX = 4.0  # a quiet one this often where it cannot be watched (no inotify)
LOG_CHECK_BATCH = 0.25  # checks due this close together run in one wake-up
LOG_CHECK_OFFSET = 0.5  # checks fall half a second past whole seconds: not with the prober's slots
TAIL_LINES = 10
_QUIET_LOG_EVENTS = (inotify.IN_MODIFY | inotify.IN_ATTRIB | inotify.IN_MOVE_SELF | inotify.IN_DELETE_SELF
                     | inotify.IN_DONT_FOLLOW | inotify.IN_ONESHOT)  # written, truncated, unlinked, moved
_LOG_EVENTS = "logs"  # the exit watcher's selector: the quiet logs' inotify queue
log = logging.getLogger("converge")


class _Child(Protocol):
    """A daemon this controller started and has not reaped: a subprocess.Popen, or a
    spawn.Spawned (started through the helper, straight into its cgroup)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...


def build_argv(spec: DaemonSpec, variables: Mapping[str, str]) -> list[str]:
    return [expand(a, variables) for a in spec.command]


def tail_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a file, reading only its end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[-n:] if n > 0 else []


def _all_pids() -> list[int]:
    return psutil.pids()


def _has_env(pid: int, entry: bytes) -> bool:
    """The process's environment holds `entry` (NAME=value), read straight from /proc
    (psutil's environ() parses the whole of it: 20x slower over every process)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data.startswith(entry + b"\0") or (b"\0" + entry + b"\0") in data or data.endswith(b"\0" + entry)


def _sweep_temp_files(folder: Path) -> bool:
    """Temp files a crash left (pid file, log rotation): called under the service's lock,
    when none of ours can be in progress. False if the folder could not be listed."""
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        Path(e.path).unlink()
    except OSError:
        return False
    return True


def _check_program(argv0: str, cwd: Path, env: Mapping[bytes, bytes]) -> None:
    """OSError, as exec would raise it, if argv[0] names no program that can run (looked
    up like exec does: relative to cwd with a slash, else along the service's PATH)."""
    found_path = env.get(b"PATH")
    path = os.defpath if found_path is None else os.fsdecode(found_path)
    if "/" in argv0:
        found = cwd / argv0
        runnable = found.is_file() and os.access(found, os.X_OK)
        exists = found.exists()
    else:
        runnable = shutil.which(argv0, path=path) is not None
        exists = runnable or shutil.which(argv0, mode=os.F_OK, path=path) is not None
    if not exists:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
    if not runnable:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv0)


def _create_private(path: Path) -> Any:
    """A new file, 0600, never through a link (O_EXCL | O_NOFOLLOW)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _create_time(pid: int) -> float:
    """The process's start time as psutil.Process(pid).create_time() gives it, computed the
    same way (its start in clock ticks since boot, /proc/PID/stat field 22, plus the boot
    time /proc/stat says now), without psutil's Process: the pid record's createTime, which
    `_live` compares with psutil's. OSError when the process is gone."""
    data = rawread.read_once(f"/proc/{pid}/stat")
    ticks = data[data.rfind(b")") + 2:].split()[19]
    for line in rawread.read_all("/proc/stat").splitlines():
        if line.startswith(b"btime"):
            return float(ticks) / _CLOCK_TICKS + float(line.strip().split()[1])
    raise ValueError("/proc/stat has no btime")


def _environment(env: Mapping[str, str], port: int | None, service: str, uid: str) -> dict[bytes, bytes]:
    """The daemon's environment: the controller's, then the service's variables, PORT
    (unless set), CONVERGE_SERVICE and the uid marker. As bytes, copied from the encoded
    environment os.environ keeps (what exec gets; no decoding of every variable per start)."""
    data = getattr(os.environ, "_data", None)
    full: dict[bytes, bytes] = (dict(data) if isinstance(data, dict) else
                                {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()})
    for k, v in env.items():
        full[os.fsencode(k)] = os.fsencode(v)
    if port is not None:
        full.setdefault(b"PORT", str(port).encode())
    full[b"CONVERGE_SERVICE"] = os.fsencode(service)
    full[MARKER.encode()] = os.fsencode(uid)
    return full


def _read_float(path: Path) -> float | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return float(os.read(fd, 64).decode())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def log_check_delay(size: int, size_then: int | None) -> float:
    """Seconds until a log is checked again: LOG_CHECK_SECONDS after a first look and
    while it grows (or was rotated), LOG_CHECK_MAX while it stays the same size."""
    return LOG_CHECK_MAX if size == size_then else LOG_CHECK_SECONDS


def log_check_at(now: float, delay: float) -> float:
    """When to check a log next: `delay` seconds from now rounded down to a multiple of
    `delay` (plus LOG_CHECK_OFFSET), so every log checked at that pace is due at the same
    moments and the watcher wakes once per LOG_CHECK_SECONDS / LOG_CHECK_MAX for all of
    them, not once per log (a wake-up costs as much as ~20 stat calls), and not at the
    prober's whole-second slots (the GIL). Never later than delay, always after now."""
    return math.floor((now + delay - LOG_CHECK_OFFSET) / delay) * delay + LOG_CHECK_OFFSET


def rotate_log(path: Path, max_bytes: int, files: int) -> bool:
    """copytruncate, while the service writes (O_APPEND, so it goes on at the new end):
    when the log is over max_bytes, daemon.log.N-1 -> .N, the last max_bytes of the log
    -> daemon.log.1, and the log is truncated. Never follows a link. True if rotated.
    A log within its size (or missing, or a link) costs one lstat."""
    try:
        if os.lstat(path).st_size <= max_bytes:  # (a link's own size: it is never opened)
            return False
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= max_bytes:
            return False
        if files > 0:
            for i in range(files - 1, 0, -1):
                older = path.with_name(f"{path.name}.{i}")
                if older.exists() and not older.is_symlink():
                    older.replace(path.with_name(f"{path.name}.{i + 1}"))
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with _create_private(tmp) as out:
                os.lseek(fd, max(0, size - max_bytes), os.SEEK_SET)
                left = min(size, max_bytes)
                while left > 0:
                    chunk = os.read(fd, min(left, 1024 * 1024))
                    if not chunk:
                        break
                    out.write(chunk)
                    left -= len(chunk)
            tmp.replace(path.with_name(f"{path.name}.1"))
        os.ftruncate(fd, 0)
        return True
    finally:
        os.close(fd)


class DaemonBackend:
    kind = "daemon"

    def __init__(self) -> None:
        self._children: dict[int, _Child] = {}
        self._exit_codes: dict[int, int] = {}
        self._mu = threading.Lock()
        self._notify: Notify | None = None
        self._selector: selectors.BaseSelector | None = None
        self._watched: dict[int, tuple[int, ServiceKey]] = {}  # pid -> (pidfd, key)
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._logs: dict[ServiceKey, tuple[Path, int, int]] = {}  # key -> (log, max bytes, files kept)
        self._log_due: dict[ServiceKey, tuple[float, int | None]] = {}  # key -> (next check, size then)
        self._log_heap: list[tuple[float, int, ServiceKey]] = []  # (next check, seq, key); stale ones skipped
        self._log_seq = 0
        self._log_events: inotify.Inotify | None = None  # quiet logs wait for their next write here
        self._quiet: dict[int, ServiceKey] = {}  # inotify watch -> the key of the quiet log it is on
        self._quiet_wd: dict[ServiceKey, int] = {}  # and back
        self._records: dict[Path, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}  # pid file -> (stat, record)
        self._ours: dict[int, float] = {}  # pid -> createTime: checked to be the service's, its pidfd armed
        self._paths: dict[Path, tuple[Path, Path, Path, str]] = {}  # runtime dir -> pid file, intent, log, str(log)
        self._warmer: cgroups.AttachWarmer | None = None  # with the exit watcher, where cgroups are used

    # ------------------------------------------------------------------ identity

    @staticmethod
    def _pidfile(target: Target) -> Path:
        return target.runtime_dir / PID_FILE

    def _files(self, target: Target) -> tuple[Path, Path, Path, str]:
        """The service's pid file, start intent and log (and the log as text), made once:
        pathlib's joins cost more than the rest of a steady-state observe."""
        d = target.runtime_dir
        files = self._paths.get(d)
        if files is None:
            log_path = d / LOG_FILE
            files = self._paths[d] = (d / PID_FILE, d / START_INTENT, log_path, str(log_path))
        return files

    def _record(self, target: Target) -> dict[str, Any] | None:
        """The pid file's record (shared: never changed by callers), parsed again only when
        the file's (inode, mtime, ctime, size) changed: each start replaces it by a rename."""
        path = self._files(target)[0]
        try:
            st = path.stat()
        except OSError:
            self._records.pop(path, None)
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        hit = self._records.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        try:
            data = json.loads(rawread.read_all(path))
        except (OSError, ValueError):
            return None  # gone since, torn or foreign: no identity
        if not (isinstance(data, dict) and isinstance(data.get("pid"), int)):
            return None
        self._records[path] = (sig, data)
        return data

    def _live(self, rec: Mapping[str, Any]) -> psutil.Process | None:
        """The process the record names, if it is still that very process."""
        pid = int(rec["pid"])
        self._reap(pid)
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if abs(proc.create_time() - float(rec.get("createTime", -1))) > 0.05:
                    return None  # pid reused by another process
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
            if proc.cmdline() != rec.get("argv") and not self._marked(proc, rec):
                return None  # same start time, other program: never ours
            return proc
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return None

    def _known_state(self, rec: Mapping[str, Any]) -> str | None:
        """The state letter (/proc/PID/stat: R, S, D, T ...) of the process rec names, if it
        is one observe already found to be the service's (same pid and start time) and
        either its pidfd, armed since, says it has not exited (a pidfd refers to that one
        process) or it is this controller's own child not reaped yet (its pid stays its own
        until we reap it: a one-off `converge reconcile` has no pidfds): no pid reuse can
        fool it. None: look the slow way (psutil, start time, argv)."""
        pid = int(rec["pid"])
        with self._mu:
            if self._ours.get(pid) != rec.get("createTime", -1):
                return None
            watched = self._watched.get(pid)
            if watched is None and pid not in self._children:
                return None
            try:
                exited = watched is not None and bool(select.select([watched[0]], [], [], 0)[0])  # readable: exited
            except (OSError, ValueError):
                exited = True
        if watched is None:
            self._reap(pid)  # exited: reaped now, no longer a child
            with self._mu:
                exited = pid not in self._children
        if exited:
            return None
        try:
            data = rawread.read_once(f"/proc/{pid}/stat")
        except OSError:
            return None
        state = data[data.rfind(b")") + 2:][:1].decode()
        return None if state in ("", "Z", "X") else state

    @staticmethod
    def _marked(proc: psutil.Process, rec: Mapping[str, Any]) -> bool:
        """A program that rewrote its argv is still ours if it carries our uid marker."""
        try:
            return bool(rec.get("uid")) and proc.environ().get(MARKER) == rec.get("uid")
        except psutil.Error:
            return False

    def _reap(self, pid: int) -> None:
        with self._mu:
            child = self._children.get(pid)
        code = child.poll() if child is not None else None
        if code is not None:
            with self._mu:
                self._children.pop(pid, None)
                self._ours.pop(pid, None)
                self._exit_codes[pid] = code

    # ------------------------------------------------------------------ interface

    def _recover_interrupted_start(self, target: Target) -> None:
        """A controller that died between fork and writing the pid file left the intent
        file behind, and maybe a process nobody knows: find it by the uid marker in its
        environment and stop it, so the next start is not a second copy."""
        intent = target.runtime_dir / START_INTENT
        if not intent.exists():
            return
        rec = self._record(target)
        known = rec["pid"] if rec is not None else None
        grace = target.config.stopGracePeriodSeconds if isinstance(target.config, DaemonSpec) else 10.0
        cg = cgroups.for_service(target.uid, create=False)
        if cg is not None and (rec is None or self._live(rec) is None):  # a live leader owns its cgroup
            strays = self._family(target.uid, None, cg)
            if strays:
                log.warning("%s: stopping %s left by an interrupted start", target.key, self._describe(strays))
                self._stop(None, grace, target.uid, cg)
        for proc in psutil.process_iter(["environ"]):
            try:
                env = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if env.get(MARKER) != target.uid or proc.pid == known:
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) != proc.pid:
                    continue  # a child: stopping its group leader stops it
                log.warning("%s: stopping pid %d left by an interrupted start", target.key, proc.pid)
                self._stop(proc, grace, target.uid)
        intent.unlink(missing_ok=True)

    def observe(self, target: Target) -> Observation:
        _, intent, _, log_file = self._files(target)
        if intent.exists():
            self._recover_interrupted_start(target)
        self._watch_log(target)
        rec = self._record(target)
        if rec is None:
            # A start interrupted between fork and pid file (a controller killed) leaves its
            # process in the service's cgroup: not absent, so a restart or a deprovision stops
            # it (both stop what is in the cgroup) and nothing is orphaned or started twice.
            cg = cgroups.for_service(target.uid, create=False)
            if cg is not None and cg.populated():
                return Observation(Phase.exited, f"processes left in cgroup {cg} (an interrupted start?)",
                                   {"log": log_file})
            return Observation(Phase.absent)
        details = {"pid": rec["pid"], "log": log_file}
        state = self._known_state(rec)
        if state is not None:  # the very process checked before, still alive: no psutil look
            if state == "T":
                return Observation(Phase.suspended, "process group stopped (SIGSTOP)", details, rec.get("specHash"))
            return Observation(Phase.running, "", details, rec.get("specHash"))
        proc = self._live(rec)
        if proc is None:
            self._reap(int(rec["pid"]))  # it may have died between _live's poll and its look
            code = self._exit_codes.get(int(rec["pid"]))
            how = f"exited with code {code}" if code is not None and code >= 0 else (
                f"killed by signal {-code}" if code is not None else "exited (exit code unknown: "
                "not started by this controller)")
            log = scrub("\n".join(tail_lines(target.runtime_dir / LOG_FILE, TAIL_LINES)), secrets_of(target.config))
            # First line: what happened (conditions show it); then the log's last lines.
            msg = f"process {rec['pid']} {how}" + (f"\n{log}" if log else "")
            return Observation(Phase.exited, msg, details, rec.get("specHash"), exit_code=code)
        self._arm(proc.pid, target.key)
        self._trust(proc.pid, float(rec.get("createTime", -1)))
        if proc.status() == psutil.STATUS_STOPPED:
            return Observation(Phase.suspended, "process group stopped (SIGSTOP)", details, rec.get("specHash"))
        return Observation(Phase.running, "", details, rec.get("specHash"))

    def provision(self, target: Target) -> Mapping[str, Any]:
        spec = target.config
        if not isinstance(spec, DaemonSpec):
            raise PermanentError("daemon backend needs spec.backend.daemon")
        rec = self._record(target)
        proc = self._live(rec) if rec is not None else None
        if proc is not None and rec is not None:
            if rec.get("specHash") == target.spec_hash:
                if proc.status() == psutil.STATUS_STOPPED:
                    self._signal_all(self._family(target.uid, proc, self._cgroup(target, rec)), signal.SIGCONT)
                return {"pid": proc.pid, "log": self._files(target)[3]}
            self._stop(proc, spec.stopGracePeriodSeconds, target.uid, self._cgroup(target, rec))  # never two copies
        return self._start(target, spec, rec)  # (the stop leaves the pid file as it was)

    def _forget_exit(self, target: Target) -> None:
        self._forget_exit_of(self._record(target))

    def _forget_exit_of(self, rec: Mapping[str, Any] | None) -> None:
        if rec is not None:
            with self._mu:
                self._exit_codes.pop(int(rec["pid"]), None)

    def _start(self, target: Target, spec: DaemonSpec, old: Mapping[str, Any] | None) -> Mapping[str, Any]:
        """Start the program; `old`: the pid file's record now (None: there is none)."""
        self._forget_exit_of(old)
        env = resolve_env(spec.env, None)
        secrets = secret_values(spec.env, env)
        plain = {v.name: env[v.name] for v in spec.env if v.valueFrom is None}  # never a secret in argv
        variables = {"NAME": target.key.name, "NAMESPACE": target.key.namespace, **plain}
        if target.port is not None:
            variables["PORT"] = str(target.port)
        argv = build_argv(spec, variables)
        full_env = _environment(env, target.port, str(target.key), target.uid)
        pid_file, intent, log_path, log_text = self._files(target)
        cwd = Path(spec.workingDir) if spec.workingDir else target.runtime_dir
        # Where the program runs in the runtime folder, the listing that sweeps the temp files
        # a crash left there also says it is a folder (one that cannot be listed is looked at).
        listed = cwd is target.runtime_dir and _sweep_temp_files(cwd)
        if not (listed or cwd.is_dir()):
            raise TemporaryError(f"workingDir {cwd} " + ("is not a folder" if cwd.exists() else "does not exist"),
                                 reason="WorkingDirMissing")
        if not listed:
            _sweep_temp_files(target.runtime_dir)
        # What the previous run left (double-forked children): whatever is in its cgroup (the
        # one its record names and this controller's one for the service); a scan of /proc by
        # session and marker where cgroups are not used, now or when it started. The service's
        # cgroup is made (or touched) first: one mkdir says whether it was there at all.
        usable = cgroups.base() is not None
        cg, mine = cgroups.claim(target.uid) if usable else (None, None)
        try:
            prev = cgroups.recorded(old["cgroup"], target.uid) if old is not None and "cgroup" in old else None
            places = [c for c in dict.fromkeys([prev, mine]) if c is not None]
            for where in [*places, None] if not usable or (old is not None and "cgroup" not in old) else places:
                if where is not None and not where.populated():
                    continue  # nothing left in it (one read, not a walk of its folders)
                leftovers = self._family(target.uid, None, where)
                if leftovers:
                    log.warning("%s: stopping %s left by the previous run", target.key, self._describe(leftovers))
                    self._stop(None, spec.stopGracePeriodSeconds, target.uid, where)
            rotate_log(log_path, spec.logMaxBytes, spec.logMaxFiles)
            intent.unlink(missing_ok=True)
            if cg is None:  # else the cgroup is what an interrupted start leaves behind (see observe)
                _create_private(intent).close()
        except BaseException:
            if cg is not None and mine is None:  # made by this start, which failed: not left behind
                with contextlib.suppress(OSError):
                    cg.remove()
            raise
        try:
            fd = os.open(log_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            intent.unlink(missing_ok=True)
            if cg is not None:
                cg.remove()
            raise TemporaryError(f"{log_path}: {exc.strerror} (a link is never followed)",
                                 reason="StartFailed") from None
        try:
            child, argv_known = self._launch(argv, cg, fd, full_env, cwd)
        except OSError as exc:
            intent.unlink(missing_ok=True)
            if cg is not None:
                cg.remove()  # nothing started: no empty cgroup left behind
            what = (f"workingDir {cwd}" if exc.filename == str(cwd) else
                    f"cgroup {cg}" if cg is not None and str(exc.filename).startswith(str(cg)) else
                    f"cannot start {argv[0]!r}")
            raise TemporaryError(scrub(f"{what}: {exc.strerror}", secrets), reason="StartFailed") from None
        finally:
            os.close(fd)
        with self._mu:
            self._children[child.pid] = child
        try:
            create_time = _create_time(child.pid)  # as psutil says it, without its Process
            cmdline = argv if argv_known else psutil.Process(child.pid).cmdline()  # not the shell's
        except (OSError, ValueError, IndexError, psutil.Error):
            create_time, cmdline = 0.0, argv
        rec = {"pid": child.pid, "createTime": create_time, "argv": cmdline or argv,
               "specHash": target.spec_hash, "uid": target.uid}
        if cg is not None:
            rec["cgroup"] = str(cg.path)
        self._write_record(pid_file, rec)
        if cg is None:
            intent.unlink(missing_ok=True)
        self._watch_log(target, checked=True)  # rotated just before the start
        self._arm(child.pid, target.key)
        if create_time:
            self._trust(child.pid, create_time)  # our own child, not reaped: no pid reuse possible
        return {"pid": child.pid, "log": log_text}

    def _write_record(self, pid_file: Path, rec: dict[str, Any]) -> None:
        """Replace the pid file (a new private file renamed over it: never torn, no planted
        link followed) and keep what it now holds for the next look (`_record`: its stat
        matches, nothing is read back)."""
        data = json.dumps(rec).encode()
        tmp = pid_file.with_name(f".{PID_FILE}.{os.urandom(16).hex()}.tmp")  # unique: no planted link
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            tmp.replace(pid_file)
            st = os.fstat(fd)  # after the rename (it changes the ctime): what a stat of the pid file says
        finally:
            os.close(fd)
        self._records[pid_file] = ((st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size), json.loads(data))

    @staticmethod
    def _launch(argv: Sequence[str], cg: cgroups.ServiceCgroup | None, fd: int, env: Mapping[bytes, bytes],
                cwd: Path) -> tuple[_Child, bool]:
        """Start the program (in its own session, stdin /dev/null, stdout and stderr to fd) and
        say whether the argv it runs is `argv` itself (else read it from /proc: a preexec
        join's child is the program, /bin/sh's is the shell until it execs). Into its cgroup
        straight through the spawn helper where there is one (no move: `converge.backends.spawn`),
        else by the /bin/sh joiner (`ServiceCgroup.launcher`), else a preexec_fn join; without
        a cgroup, plainly. OSError as Popen raises it."""
        helper = spawn.helper() if cg is not None else None
        if cg is not None and helper is not None:
            try:
                return spawn.start(helper, cg.path, argv, stdout=fd, env=env, cwd=cwd), True
            except spawn.Unavailable as exc:
                log.debug("starting %r through /bin/sh instead of %s: %s", argv[0], spawn.NAME, exc)
        launch = cg.launcher(argv) if cg is not None else None
        if launch is not None:  # the shell's exec would only say "not found" in the log
            _check_program(argv[0], cwd, env)
        with cg.joining() if cg is not None and launch is None else contextlib.nullcontext() as join:
            child = subprocess.Popen(
                launch or list(argv), stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, env=env,
                cwd=cwd, start_new_session=True, close_fds=True, preexec_fn=join,
            )
        return child, launch is not None

    def _trust(self, pid: int, create_time: float) -> None:
        """Let observe take the quick look (_known_state) at pid from now on, if its pidfd is
        armed or it is our unreaped child: the caller checked that pid is the process its
        record names."""
        with self._mu:
            if pid in self._watched or pid in self._children:
                self._ours[pid] = create_time

    def suspend(self, target: Target) -> None:
        rec = self._record(target)
        proc = self._live(rec) if rec is not None else None
        if proc is not None and rec is not None:
            self._signal_all(self._family(target.uid, proc, self._cgroup(target, rec)), signal.SIGSTOP)

    def deprovision(self, target: Target) -> None:
        """Stop the whole service. One call waits at most STOP_STEP seconds: a process that
        ignores SIGTERM is reported (TemporaryError naming it) and the next call goes on
        waiting, until stopGracePeriodSeconds after the first SIGTERM, then SIGKILL. So a
        caller's timeout (delete --timeout) is honoured, and grace 0 kills at once."""
        rec = self._record(target)
        proc = self._live(rec) if rec is not None else None
        cg = self._cgroup(target, rec)
        family = self._family(target.uid, proc, cg)
        grace = target.config.stopGracePeriodSeconds if isinstance(target.config, DaemonSpec) else 10.0
        marker = target.runtime_dir / STOPPING_FILE
        if family:
            since = _read_float(marker)
            now = time.time()
            if since is None or since > now:
                since = now
                marker.unlink(missing_ok=True)
                with _create_private(marker) as f:
                    f.write(str(since).encode())
            if now - since < grace:
                self._signal_all(family, signal.SIGTERM)
                self._signal_all(family, signal.SIGCONT)  # a stopped process must wake to die
                pid = proc.pid if proc is not None else family[0].pid
                if not self._wait_gone(pid, family, min(STOP_STEP, grace - (now - since)), cg):
                    left = [p for p in family if self._alive(p)]
                    kill_in = since + grace - time.time()
                    raise TemporaryError(f"still running {now - since + STOP_STEP:.0f}s after SIGTERM: "
                                         f"{self._describe(left)}; SIGKILL in {max(kill_in, 0):.0f}s "
                                         f"(stopGracePeriodSeconds {grace:g})", reason="Stopping")
            else:
                self._kill(family, cg)
                pid = proc.pid if proc is not None else family[0].pid
                if not self._wait_gone(pid, family, 5.0, cg):
                    left = [p for p in family if self._alive(p)]
                    raise TemporaryError(f"still running after SIGKILL: {self._describe(left)}", reason="Stopping")
        if cg is not None and not cg.remove():
            log.warning("%s: cgroup %s is not empty after the stop; left in place", target.key, cg)
        marker.unlink(missing_ok=True)
        self._forget_exit(target)
        with contextlib.suppress(FileNotFoundError):
            self._pidfile(target).unlink()
        self._forget_log(target.key)

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @staticmethod
    def _cgroup(target: Target, rec: Mapping[str, Any] | None) -> cgroups.ServiceCgroup | None:
        """The service's cgroup: the one its pid record names (if that is one of this
        service's), else this controller's one for it if that exists; None for a service
        started without one."""
        named = cgroups.recorded(rec["cgroup"], target.uid) if rec is not None and "cgroup" in rec else None
        return named or cgroups.for_service(target.uid, create=False)

    @staticmethod
    def _family(uid: str, leader: psutil.Process | None,
                cg: cgroups.ServiceCgroup | None = None) -> list[psutil.Process]:
        """Every process of the service: the leader and its descendants, and then everything
        in its cgroup when it has one; without one, whatever runs in its session or process
        group and anything carrying the service's uid marker in its environment (a
        double-forked daemon that called setsid still has it, unless it cleared it)."""
        found: dict[int, psutil.Process] = {}
        if leader is not None:
            found[leader.pid] = leader
            with contextlib.suppress(psutil.Error):
                for c in leader.children(recursive=True):
                    found[c.pid] = c
        me = os.getpid()
        if cg is not None:
            for pid in cg.pids():
                if pid != me and pid not in found:
                    with contextlib.suppress(psutil.Error):
                        found[pid] = psutil.Process(pid)
            return [p for p in found.values() if DaemonBackend._alive(p)]
        wanted = f"{MARKER}={uid}".encode()
        for pid in _all_pids():
            if pid == me or pid in found:
                continue
            try:
                if (leader is not None and os.getsid(pid) == leader.pid) or (uid and _has_env(pid, wanted)):
                    found[pid] = psutil.Process(pid)
            except (psutil.Error, OSError):
                continue
        return [p for p in found.values() if DaemonBackend._alive(p)]

    @staticmethod
    def _describe(family: list[psutil.Process]) -> str:
        parts = []
        for p in family[:5]:
            try:
                parts.append(f"pid {p.pid} ({' '.join(p.cmdline())[:60] or p.name()})")
            except psutil.Error:
                parts.append(f"pid {p.pid}")
        return ", ".join(parts) + (f" and {len(family) - 5} more" if len(family) > 5 else "")

    def _signal_all(self, family: list[psutil.Process], sig: signal.Signals) -> None:
        groups = set()
        for p in family:
            with contextlib.suppress(psutil.Error, OSError):
                groups.add(os.getpgid(p.pid))
                p.send_signal(sig)
        for g in groups:  # threads/children that appeared since the list was made
            if g > 1 and g != os.getpgrp():
                self._signal_group(g, sig)

    def _kill(self, family: list[psutil.Process], cg: cgroups.ServiceCgroup | None) -> None:
        """SIGKILL the service: its cgroup at once (forks racing the kill included), and
        every process of the family by signal (all of it where there is no cgroup)."""
        if cg is not None:
            cg.kill()
        self._signal_all(family, signal.SIGKILL)

    def _stop(self, proc: psutil.Process | None, grace: float, uid: str = "",
              cg: cgroups.ServiceCgroup | None = None) -> None:
        """SIGTERM the whole service (cgroup, or group, session, descendants and marked
        processes), SIGKILL what is left after grace."""
        family = self._family(uid, proc, cg)
        if not family:
            return
        self._signal_all(family, signal.SIGTERM)
        self._signal_all(family, signal.SIGCONT)  # a stopped process must wake to die
        pid = proc.pid if proc is not None else family[0].pid
        if not self._wait_gone(pid, family, grace, cg):
            self._kill(self._family(uid, proc, cg), cg)
            self._wait_gone(pid, family, 5.0, cg)

    def _wait_gone(self, pid: int, family: list[psutil.Process], timeout: float,
                   cg: cgroups.ServiceCgroup | None = None) -> bool:
        """Until every process of the family is dead (a zombie counts as dead) and the
        cgroup, if any, is empty (it also holds what forked since the family was listed)."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            self._reap(pid)
            if not any(self._alive(p) for p in family) and (cg is None or not cg.populated()):
                self._reap(pid)  # a zombie counts as dead: one that died since the reap above is reaped too
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def logs(self, target: Target, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        path = target.runtime_dir / LOG_FILE
        if tail is not None:
            yield from tail_lines(path, tail)
            pos = path.stat().st_size if path.exists() else 0
        else:
            pos = 0
            if path.exists():
                with path.open("rb") as f:
                    data = f.read()
                    pos = len(data)
                yield from data.decode(errors="replace").splitlines()
        while follow:
            time.sleep(0.2)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < pos:  # rotated or truncated
                pos = 0
            if size > pos:
                with path.open("rb") as f:
                    f.seek(pos)
                    data = f.read()
                pos += len(data)
                yield from data.decode(errors="replace").splitlines()

    # ------------------------------------------------------------------ exit notifications

    def watch(self, notify: Notify) -> None:
        if self._thread is not None:
            return
        self._notify = notify
        self._stopping.clear()
        with self._mu:
            self._logs.clear()  # logs met before (one-off reconciles' looks): each is looked at afresh
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # written under the lock: never blocks on a full pipe
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            self._log_events = inotify.Inotify()
            self._selector.register(self._log_events.fd, selectors.EVENT_READ, _LOG_EVENTS)
        except OSError:
            self._log_events = None  # quiet logs are looked at every LOG_CHECK_MAX seconds instead
        # The warmer's move holds the cgroup mutex through its grace period, which a clone3
        # into a cgroup takes too: only for the /bin/sh joiner's moves.
        usable = cgroups.base() is not None
        self._warmer = cgroups.AttachWarmer() if usable and spawn.helper() is None else None
        self._thread = threading.Thread(target=self._loop, name="daemon-exits", daemon=True)
        self._thread.start()
        threading.Thread(target=cgroups.sweep, name="cgroup-sweep", daemon=True).start()  # once per controller

    def _arm(self, pid: int, key: ServiceKey) -> None:
        with self._mu:
            if self._selector is None or pid in self._watched:
                return  # no exit watcher (a one-off reconcile, or closed), or armed already
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return
            self._watched[pid] = (pidfd, key)
            self._selector.register(pidfd, selectors.EVENT_READ, pid)
            with contextlib.suppress(BlockingIOError):  # a wake-up is pending anyway
                os.write(self._wake_w, b"x")

    def _watch_log(self, target: Target, checked: bool = False) -> None:
        """Keep the service's log within its size while it runs: the exit watcher's thread
        checks it (`_rotate_due`); without that thread (a one-off `converge reconcile`),
        each observe checks (`checked`: the caller just did)."""
        if isinstance(target.config, DaemonSpec):
            entry = (self._files(target)[2], target.config.logMaxBytes, target.config.logMaxFiles)
            with self._mu:
                known = self._logs.get(target.key) == entry
                self._logs[target.key] = entry
            if self._thread is None:
                if not checked:
                    rotate_log(*entry)
            elif not known:  # new or changed: the watcher looks at it now
                with self._mu:
                    self._plan_log_check(target.key, 0.0, None)
                self._wake()

    def _wake(self) -> None:
        with self._mu, contextlib.suppress(BlockingIOError):  # not while close() closes it
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _rotate_due(self) -> float | None:
        """Check the logs whose check is due (one stat each; rotated when over their size);
        return the seconds until the next one is due (None: none is). A log is looked at
        again after log_check_delay(): every second while it grows; once it is quiet (the
        same size a second later), at its next write, change of size or unlink (a one-shot
        inotify watch: nothing to do while it stays quiet), or where it cannot be watched,
        every LOG_CHECK_MAX seconds."""
        now = time.monotonic()
        due: list[tuple[ServiceKey, tuple[Path, int, int], int | None]] = []
        with self._mu:
            while self._log_heap and self._log_heap[0][0] <= now + LOG_CHECK_BATCH:
                when, _, key = heapq.heappop(self._log_heap)
                entry, planned = self._logs.get(key), self._log_due.get(key)
                if entry is None:
                    self._log_due.pop(key, None)  # deprovisioned
                elif planned is not None and planned[0] == when:  # else: planned again since
                    due.append((key, entry, planned[1]))
        planned_now: list[tuple[ServiceKey, float, int]] = []
        for key, (path, max_bytes, files), size_then in due:
            try:
                size = os.lstat(path).st_size
            except OSError:
                size = 0
            delay = log_check_delay(size, size_then)
            if size > max_bytes and rotate_log(path, max_bytes, files):
                size = 0
            elif delay == LOG_CHECK_MAX:
                later = self._quiet_until_written(key, path, size)
                if later is None:
                    continue
                delay = later
            planned_now.append((key, log_check_at(now, delay), size))
        with self._mu:  # one lock turn for all of them
            for key, when, size in planned_now:
                self._plan_log_check(key, when, size)
            return max(0.0, self._log_heap[0][0] - now) if self._log_heap else None

    def _quiet_until_written(self, key: ServiceKey, path: Path, size: int) -> float | None:
        """Watch a quiet log (of `size` bytes) for its next write instead of looking at it
        again later (None); else the seconds until the next look: LOG_CHECK_MAX where it
        cannot be watched, LOG_CHECK_SECONDS when it was written meanwhile."""
        if self._log_events is None:
            return LOG_CHECK_MAX
        try:
            wd = self._log_events.add(path, _QUIET_LOG_EVENTS)
            if os.lstat(path).st_size != size:  # written before the watch was in place
                return LOG_CHECK_SECONDS  # (the watch's event, if any, finds it looked at: harmless)
        except OSError:
            return LOG_CHECK_MAX  # gone, or no more watches (fs.inotify.max_user_watches): timed looks
        with self._mu:
            if key not in self._logs:
                self._log_events.remove(wd)  # deprovisioned meanwhile
                return None
            self._quiet[wd] = key
            self._quiet_wd[key] = wd
            self._log_due[key] = (math.inf, size)  # no timed look: its watch's event plans one
        return None

    def _forget_log(self, key: ServiceKey) -> None:
        """A deprovisioned service's log is no longer kept within its size (nor watched)."""
        with self._mu:
            self._logs.pop(key, None)
            wd = self._quiet_wd.pop(key, None)
            if wd is not None:
                del self._quiet[wd]
                if self._log_events is not None:
                    self._log_events.remove(wd)

    def _logs_written(self) -> None:
        """Quiet logs written (or truncated, unlinked, moved) since they were quiet: each is
        looked at again at the next LOG_CHECK_SECONDS moment, then every second while it grows."""
        assert self._log_events is not None
        events = self._log_events.read()
        now = time.monotonic()
        with self._mu:
            if any(ev.mask & inotify.IN_Q_OVERFLOW for ev in events):  # events lost: look at every quiet log
                events = [inotify.Event(wd, inotify.IN_MODIFY, "") for wd in self._quiet]
            for ev in events:
                key = self._quiet.pop(ev.wd, None)  # a one-shot watch: gone with its first event
                if key is None:
                    continue  # its IN_IGNORED
                if self._quiet_wd.get(key) == ev.wd:
                    del self._quiet_wd[key]
                planned = self._log_due.get(key)
                if planned is not None and planned[0] == math.inf:
                    self._plan_log_check(key, log_check_at(now, LOG_CHECK_SECONDS), planned[1])

    def _plan_log_check(self, key: ServiceKey, when: float, size: int | None) -> None:
        """Under self._mu."""
        self._log_due[key] = (when, size)
        self._log_seq += 1
        heapq.heappush(self._log_heap, (when, self._log_seq, key))

    def _loop(self) -> None:
        name_os_thread("daemon-exits")
        while not self._stopping.is_set():
            try:
                self._loop_once()
            except Exception:  # the exit watcher must never die silently
                log.exception("daemon exit watcher failed; going on")
                time.sleep(1)

    def _loop_once(self) -> None:
        assert self._selector is not None
        timeout: float | None = 0.0
        while not self._stopping.is_set():
            events = self._selector.select(timeout=timeout)
            for sk, _ in events:
                if sk.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                if sk.data == _LOG_EVENTS:
                    self._logs_written()
                    continue
                pid = int(sk.data)
                if self._warmer is not None:
                    self._warmer.poke()  # its restart's cgroup join waits less (AttachWarmer)
                with self._mu:
                    entry = self._watched.pop(pid, None)
                    self._ours.pop(pid, None)
                    if entry is None:
                        continue
                    pidfd, key = entry
                    self._selector.unregister(pidfd)
                os.close(pidfd)
                self._reap(pid)
                if self._notify is not None:
                    self._notify(key)
            timeout = self._rotate_due()

    def close(self) -> None:
        """Stop the exit watcher and forget what it watched, so the backend works on as
        before `watch` (a reconcile after a runtime stopped, e.g. the Python client's delete:
        a closed pidfd left registered made the next one with its number fail to arm)."""
        self._stopping.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout=2)
        if self._warmer is not None:
            self._warmer.stop()
            self._warmer = None
        with self._mu:
            for pidfd, _ in self._watched.values():
                with contextlib.suppress(OSError):
                    os.close(pidfd)
            self._watched.clear()
            self._ours.clear()  # the observe fast path trusts an armed pidfd: none is armed now
            if self._log_events is not None:
                self._log_events.close()  # its watches with it
                self._log_events = None
            self._quiet.clear()
            self._quiet_wd.clear()
            self._log_due.clear()  # a later watch() looks at every log afresh
            self._log_heap.clear()
            self._logs.clear()
            if self._selector is not None:
                self._selector.close()
                self._selector = None
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._wake_r, self._wake_w = -1, -1
            self._thread = None
