"""The daemon backend: a service is a local process tree, started detached.

Each daemon runs in its own session (so its process group is its own), with stdin from
/dev/null and stdout+stderr appended to `daemon.log` in the service's runtime dir.
Identity is the pid file (`daemon.json`: pid, start time, argv, spec hash) checked
against the live process's start time and command line, so a reused pid is never taken
for the service; a controller started later adopts what runs instead of starting a
second copy. Stopping signals the whole process group (no orphans); suspending sends
SIGSTOP to it, resuming SIGCONT.

Exit notifications come from pidfds (Linux >= 5.3): `watch()` runs one thread waiting on
every known daemon's pidfd and reports a key the moment its process ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from converge.api import DaemonBackend as DaemonSpec
from converge.api import ServiceKey
from converge.backends.base import Notify, Observation, Phase, Target
from converge.backends.env import expand, resolve_env, scrub, secret_values, secrets_of
from converge.backends.errors import PermanentError, TemporaryError

PID_FILE = "daemon.json"
START_INTENT = "daemon.starting"  # exists only while a start is under way
LOG_FILE = "daemon.log"
LOG_ROTATE_BYTES = 8 * 1024 * 1024
TAIL_LINES = 10
log = logging.getLogger("converge")

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


class DaemonBackend:
    kind = "daemon"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}
        self._mu = threading.Lock()
        self._notify: Notify | None = None
        self._selector: selectors.BaseSelector | None = None
        self._watched: dict[int, tuple[int, ServiceKey]] = {}  # pid -> (pidfd, key)
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ identity

    @staticmethod
    def _pidfile(target: Target) -> Path:
        return target.runtime_dir / PID_FILE

    def _record(self, target: Target) -> dict[str, Any] | None:
        try:
            data = json.loads(self._pidfile(target).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or foreign file is no identity
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

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

    @staticmethod
    def _marked(proc: psutil.Process, rec: Mapping[str, Any]) -> bool:
        """A program that rewrote its argv is still ours if it carries our uid marker."""
        try:
            return bool(rec.get("uid")) and proc.environ().get("CONVERGE_SERVICE_UID") == rec.get("uid")
        except psutil.Error:
            return False

    def _reap(self, pid: int) -> None:
        with self._mu:
            child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            with self._mu:
                self._children.pop(pid, None)
                self._exit_codes[pid] = child.returncode

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
        for proc in psutil.process_iter(["environ"]):
            try:
                env = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if env.get("CONVERGE_SERVICE_UID") != target.uid or proc.pid == known:
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) != proc.pid:
                    continue  # a child: stopping its group leader stops it
                log.warning("%s: stopping pid %d left by an interrupted start", target.key, proc.pid)
                grace = target.config.stopGracePeriodSeconds if isinstance(target.config, DaemonSpec) else 10.0
                self._stop(proc, grace)
        intent.unlink(missing_ok=True)

    def observe(self, target: Target) -> Observation:
        self._recover_interrupted_start(target)
        rec = self._record(target)
        if rec is None:
            return Observation(Phase.absent)
        details = {"pid": rec["pid"], "log": str(target.runtime_dir / LOG_FILE)}
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
                    self._signal_group(proc.pid, signal.SIGCONT)
                return {"pid": proc.pid, "log": str(target.runtime_dir / LOG_FILE)}
            self._stop(proc, spec.stopGracePeriodSeconds)  # replace: never two copies
        return self._start(target, spec)

    def _forget_exit(self, target: Target) -> None:
        rec = self._record(target)
        if rec is not None:
            with self._mu:
                self._exit_codes.pop(int(rec["pid"]), None)

    def _start(self, target: Target, spec: DaemonSpec) -> Mapping[str, Any]:
        self._forget_exit(target)
        env = resolve_env(spec.env, None)
        secrets = secret_values(spec.env, env)
        plain = {v.name: env[v.name] for v in spec.env if v.valueFrom is None}  # never a secret in argv
        variables = {"NAME": target.key.name, "NAMESPACE": target.key.namespace, **plain}
        if target.port is not None:
            variables["PORT"] = str(target.port)
        argv = build_argv(spec, variables)
        full_env = dict(os.environ)
        full_env.update(env)
        if target.port is not None:
            full_env.setdefault("PORT", str(target.port))
        full_env["CONVERGE_SERVICE"] = str(target.key)
        full_env["CONVERGE_SERVICE_UID"] = target.uid
        cwd = Path(spec.workingDir) if spec.workingDir else target.runtime_dir
        log = target.runtime_dir / LOG_FILE
        with contextlib.suppress(FileNotFoundError):
            if log.stat().st_size > LOG_ROTATE_BYTES:
                log.replace(log.with_suffix(".log.1"))
        intent = target.runtime_dir / START_INTENT
        intent.touch(mode=0o600)
        fd = os.open(log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, env=full_env,
                cwd=cwd, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            intent.unlink(missing_ok=True)
            what = f"workingDir {cwd}" if exc.filename == str(cwd) else f"cannot start {argv[0]!r}"
            raise TemporaryError(scrub(f"{what}: {exc.strerror}", secrets), reason="StartFailed") from None
        finally:
            os.close(fd)
        with self._mu:
            self._children[child.pid] = child
        try:
            create_time = psutil.Process(child.pid).create_time()
            cmdline = psutil.Process(child.pid).cmdline()
        except psutil.Error:
            create_time, cmdline = 0.0, argv
        rec = {"pid": child.pid, "createTime": create_time, "argv": cmdline or argv,
               "specHash": target.spec_hash, "uid": target.uid}
        tmp = self._pidfile(target).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.chmod(0o600)
        tmp.replace(self._pidfile(target))
        (target.runtime_dir / START_INTENT).unlink(missing_ok=True)
        self._arm(child.pid, target.key)
        return {"pid": child.pid, "log": str(log)}

    def suspend(self, target: Target) -> None:
        rec = self._record(target)
        proc = self._live(rec) if rec is not None else None
        if proc is not None:
            self._signal_group(proc.pid, signal.SIGSTOP)

    def deprovision(self, target: Target) -> None:
        rec = self._record(target)
        proc = self._live(rec) if rec is not None else None
        if proc is not None:
            grace = target.config.stopGracePeriodSeconds if isinstance(target.config, DaemonSpec) else 10.0
            self._stop(proc, grace)
        self._forget_exit(target)
        with contextlib.suppress(FileNotFoundError):
            self._pidfile(target).unlink()

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _stop(self, proc: psutil.Process, grace: float) -> None:
        """SIGTERM the process group (and any descendant that left it), SIGKILL after grace."""
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            family = [proc]
        self._signal_group(proc.pid, signal.SIGTERM)
        self._signal_group(proc.pid, signal.SIGCONT)  # a stopped group must wake to die
        for p in family[1:]:
            with contextlib.suppress(psutil.Error):
                if os.getpgid(p.pid) != proc.pid:
                    p.terminate()
                    p.resume()
        if not self._wait_gone(proc.pid, family, grace):
            self._signal_group(proc.pid, signal.SIGKILL)
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            self._wait_gone(proc.pid, family, 5.0)

    def _wait_gone(self, pid: int, family: list[psutil.Process], timeout: float) -> bool:
        """Until every process of the family is dead (a zombie counts as dead)."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            self._reap(pid)
            if not any(self._alive(p) for p in family):
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
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="daemon-exits", daemon=True)
        self._thread.start()

    def _arm(self, pid: int, key: ServiceKey) -> None:
        if self._selector is None:
            return
        with self._mu:
            if pid in self._watched:
                return
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return
            self._watched[pid] = (pidfd, key)
            self._selector.register(pidfd, selectors.EVENT_READ, pid)
        os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        assert self._selector is not None
        while not self._stopping.is_set():
            for sk, _ in self._selector.select():
                if sk.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                pid = int(sk.data)
                with self._mu:
                    pidfd, key = self._watched.pop(pid)
                    self._selector.unregister(pidfd)
                os.close(pidfd)
                self._reap(pid)
                if self._notify is not None:
                    self._notify(key)

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._wake_w >= 0:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=2)
        with self._mu:
            for pidfd, _ in self._watched.values():
                with contextlib.suppress(OSError):
                    os.close(pidfd)
            self._watched.clear()
