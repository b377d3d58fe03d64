"""Daemons started straight into their cgroup through the compiled helper converge-spawn
(clone3 CLONE_INTO_CGROUP | CLONE_PARENT), and the /bin/sh joiner that starts them where the
helper is missing or turned off: real processes, real cgroups, the real helper as
.ci/setup.d/spawn.sh built it next to this venv's python. Each behaviour on both paths."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from converge.api import ManagedService, ServiceKey, State
from converge.backends import cgroups, spawn
from converge.backends.daemon import DaemonBackend
from converge.client import Client
from converge.runtime import Runtime
from tests.helpers import PY, gone, until

pytestmark = pytest.mark.skipif(cgroups.base() is None, reason="cgroup v2 cannot be written on this host")

HELPER = spawn.helper()  # as installed, looked for before any test turns it off
KEY = ServiceKey("default", "s")

# What the program sees first thing: its cgroup, parent, session, and any descriptor beyond
# 0-2 it was given (none: the helper's report pipe and cgroup folder are close-on-exec).
FIRST = """
import json, os, sys
cg = open("/proc/self/cgroup").read()
fds = []
for fd in range(3, 256):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(fd)
seen = {"cgroup": cg, "ppid": os.getppid(), "sid": os.getsid(0), "pid": os.getpid(), "fds": fds}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
import time
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 600)
sys.exit(3)
"""


@dataclass
class Path_:
    how: str
    started: list[list[str]] = field(default_factory=list)  # argvs the helper was asked to start


@pytest.fixture(params=["helper", "sh"])
def path_(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path_]:
    """The start path under test: through the helper, or (CONVERGE_SPAWN=off) /bin/sh."""
    if request.param == "helper":
        if HELPER is None:
            pytest.skip("converge-spawn is not built here (.ci/setup.d/spawn.sh)")
        monkeypatch.delenv(spawn.SWITCH, raising=False)
    else:
        monkeypatch.setenv(spawn.SWITCH, "off")
    spawn.forget()
    p = Path_(request.param)
    real = spawn.start

    def recording(*args: Any, **kw: Any) -> spawn.Spawned:
        p.started.append(list(args[2]))
        return real(*args, **kw)

    monkeypatch.setattr(spawn, "start", recording)
    yield p
    monkeypatch.undo()
    spawn.forget()


def _svc(command: list[str], workdir: Path | None = None) -> ManagedService:
    daemon: dict[str, Any] = {"command": command}
    if workdir is not None:
        daemon["workingDir"] = str(workdir)
    return ManagedService.model_validate({
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"backend": {"daemon": daemon}},
    })


def _seen(f: Path) -> dict[str, Any]:
    return until(lambda: json.loads(f.read_text()) if f.exists() else None, what="the program's first look")


def test_a_daemon_is_in_its_cgroup_from_the_start_and_the_controllers_own_child(
        client: Client, store: Path, path_: Path_, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    client.store.create(_svc([PY, "-c", FIRST, str(out)]))
    assert client.reconciler.reconcile(KEY).state == State.active.value
    seen = _seen(out)
    uid = client.store.get(KEY).metadata.uid
    record = json.loads((store / "_runtime" / "default" / "s" / "daemon.json").read_text())
    [line] = [ln for ln in seen["cgroup"].splitlines() if ln.startswith("0::")]
    assert line.endswith(f"/svc-{uid}") and record["cgroup"].endswith(line[3:])
    assert seen["ppid"] == os.getpid()  # the controller's child: it reaps it, sees its exit code
    assert seen["sid"] == seen["pid"] == record["pid"]  # a session (and process group) of its own
    assert seen["fds"] == []
    assert record["argv"] == [PY, "-c", FIRST, str(out)] == psutil.Process(seen["pid"]).cmdline()
    assert path_.started == ([record["argv"]] if path_.how == "helper" else [])
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    assert type(backend._children[seen["pid"]]).__name__ == ("Spawned" if path_.how == "helper" else "Popen")


@pytest.mark.parametrize("how_it_ends", ["kill", "exit"])
def test_the_exit_code_reaches_the_status(client: Client, path_: Path_, tmp_path: Path, how_it_ends: str) -> None:
    out = tmp_path / "seen"
    client.store.create(_svc([PY, "-c", FIRST, str(out), "600" if how_it_ends == "kill" else "0.2"]))
    client.reconciler.reconcile(KEY)
    pid = _seen(out)["pid"]
    if how_it_ends == "kill":
        os.kill(pid, signal.SIGKILL)
    until(lambda: gone(pid), what="the daemon ended")
    client.reconciler.reconcile(KEY)
    st = client.store.get(KEY).status
    said = st.lastError or st.message
    if how_it_ends == "kill":
        assert st.lastExitCode == -signal.SIGKILL and f"process {pid} killed by signal 9" in said
    else:
        assert st.lastExitCode == 3 and f"process {pid} exited with code 3" in said
    until(lambda: not psutil.pid_exists(pid), what="the daemon reaped")


def test_a_program_that_cannot_run_is_a_clear_start_failure(client: Client, path_: Path_, tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    zombies = {p.pid for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE}
    for program, why in ((str(tmp_path / "no-such-program"), "No such file or directory"),
                         ("no-such-program-on-path", "No such file or directory"),
                         (str(plain), "Permission denied")):
        client.store.create(_svc([program, "--token", "x"]))
        out = client.reconciler.reconcile(KEY)
        st = client.store.get(KEY).status
        assert out.state == State.error.value, program
        assert st.lastError == f"provision failed: cannot start {program!r}: {why}"  # as before the helper
        assert st.condition("Ready").reason == "StartFailed"  # type: ignore[union-attr]
        uid = client.store.get(KEY).metadata.uid
        base = cgroups.base()
        assert base is not None and not (base / f"svc-{uid}").exists()  # nothing started: no cgroup left
        client.delete(KEY.name, namespace=KEY.namespace)
    assert {p.pid for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE} <= zombies
    assert len(path_.started) == (3 if path_.how == "helper" else 0)


@pytest.mark.skipif(HELPER is None, reason="converge-spawn is not built here")
def test_the_helper_says_when_it_cannot_start_into_a_cgroup(tmp_path: Path) -> None:
    """Not a cgroup2 folder, a relative path, no helper at all: nothing starts, the caller
    is told to use /bin/sh (Unavailable), and the helper stays on for the next start."""
    assert HELPER is not None
    log = os.open(tmp_path / "log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        for helper, folder in ((HELPER, tmp_path), (HELPER, Path("relative")),
                               (str(tmp_path / "no-helper"), cgroups.base())):
            assert folder is not None
            with pytest.raises(spawn.Unavailable):
                spawn.start(helper, folder, ["sleep", "60"], stdout=log, env=dict(os.environ), cwd=tmp_path)
    finally:
        os.close(log)
    assert not [p for p in psutil.Process().children() if "sleep" in p.name()]
    spawn.forget()
    assert spawn.helper() == HELPER


@pytest.mark.skipif(HELPER is None, reason="converge-spawn is not built here")
def test_the_helper_refuses_bad_arguments(tmp_path: Path) -> None:
    assert HELPER is not None
    base = cgroups.base()
    assert base is not None
    r, w = os.pipe()
    try:
        for args in ([str(w), str(base), "sleep", "1"],        # no --
                     [str(w), str(base / ".." / base.name), "--", "sleep", "1"],
                     ["2", str(base), "--", "sleep", "1"],       # not a descriptor >= 3
                     [str(w), str(base), "--", ""]):
            p = subprocess.run([HELPER, *args], pass_fds=(w,), capture_output=True, text=True, timeout=10)
            assert p.returncode == 2 and p.stderr.startswith("converge-spawn: "), (args, p.stderr)
    finally:
        os.close(w)
        reports = os.read(r, 4096).decode().splitlines()
        os.close(r)
    assert reports == ["usage 22"] * 3  # (the fd 2 one had no pipe to report to)


def test_the_warm_up_is_only_for_the_sh_joiner(client: Client, path_: Path_) -> None:
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    backend.watch(lambda key: None)
    try:
        assert (backend._warmer is None) == (path_.how == "helper")
    finally:
        backend.close()


def test_a_kill_under_the_runtime_restarts_into_the_cgroup(client: Client, path_: Path_, tmp_path: Path) -> None:
    """As `converge run`: the exit seen through the daemon's pidfd, a new one started into
    the same cgroup, again the controller's child."""
    out = tmp_path / "seen"
    client.store.create(_svc([PY, "-c", FIRST, str(out)]))
    stop = threading.Event()
    t = threading.Thread(target=Runtime(client.reconciler, workers=2).run, args=(stop,))
    t.start()
    try:
        first = _seen(out)
        out.unlink()
        os.kill(first["pid"], signal.SIGKILL)
        again = _seen(out)
        until(lambda: client.store.get(KEY).status.state == State.active
              and client.store.get(KEY).status.backend.get("pid") == again["pid"], what="restarted")
        st = client.store.get(KEY).status
        assert st.restarts == 1 and st.lastExitCode == -signal.SIGKILL
        assert again["cgroup"] == first["cgroup"] and again["ppid"] == os.getpid() and again["fds"] == []
        assert len(path_.started) == (2 if path_.how == "helper" else 0)
    finally:
        stop.set()
        t.join(timeout=30)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_setup_script_builds_once_and_installs_next_to_python(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    env = {**os.environ, "CONVERGE_CACHE": str(tmp_path / "cache"), "CONVERGE_VENV": str(venv)}

    def setup() -> None:
        subprocess.run(["bash", str(root / ".ci" / "setup.d" / "spawn.sh")], env=env, check=True, timeout=120)

    setup()
    installed = venv / "bin" / spawn.NAME
    [built] = (tmp_path / "cache" / "build" / "spawn").iterdir()  # one build, named for its source
    assert spawn.trusted(installed) and installed.read_bytes() == built.read_bytes()
    before = (built.stat().st_mtime_ns, installed.stat().st_ino)
    setup()
    assert (built.stat().st_mtime_ns, installed.stat().st_ino) == before  # nothing rebuilt or copied
    assert not subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--ignored", "helpers"],
                              capture_output=True, text=True, check=True).stdout  # nothing built in the repo


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None, reason="installs with apt-get as root")
def test_the_setup_script_without_a_compiler_tries_apt_then_says_so(tmp_path: Path) -> None:
    """CC names no compiler: the script asks apt-get for gcc (already there: nothing to do),
    still finds none by that name, says so and installs nothing: daemons then start
    through /bin/sh. (Its apt helper once shadowed the `install` the script copies with.)"""
    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    env = {**os.environ, "CONVERGE_CACHE": str(tmp_path / "cache"), "CONVERGE_VENV": str(venv),
           "CC": "no-such-cc"}
    out = subprocess.run(["bash", str(root / ".ci" / "setup.d" / "spawn.sh")], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    assert "installing gcc (apt-get)" in out.stderr and "no C compiler" in out.stderr
    assert list((venv / "bin").iterdir()) == [] and not (tmp_path / "cache" / "build" / "spawn").exists()


@pytest.mark.skipif(HELPER is None, reason="converge-spawn is not built here")
def test_a_kernel_without_clone3_turns_the_helper_off_and_a_silent_helper_is_a_failure(tmp_path: Path) -> None:
    """Stand-ins for the helper (shell scripts writing what it would): `clone 38` (ENOSYS, an
    old kernel) falls back and turns the helper off for good; no report at all (a helper
    killed midway, that may have started the program) is a start failure, never a second
    copy through /bin/sh."""
    base = cgroups.base()
    assert base is not None
    log = os.open(tmp_path / "log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        for name, script in (("old-kernel", 'printf "clone 38\\n" >"/dev/fd/$1"; exit 2'), ("silent", "exit 9")):
            fake = tmp_path / name
            fake.write_text(f"#!/bin/sh\n{script}\n")
            fake.chmod(0o755)
            spawn.forget()
            assert spawn.helper() == HELPER
            if name == "old-kernel":
                with pytest.raises(spawn.Unavailable):
                    spawn.start(str(fake), base, ["sleep", "60"], stdout=log, env=dict(os.environ), cwd=tmp_path)
                assert spawn.helper() is None
            else:
                with pytest.raises(OSError, match="converge-spawn exited 9 without a report"):
                    spawn.start(str(fake), base, ["sleep", "60"], stdout=log, env=dict(os.environ), cwd=tmp_path)
                assert spawn.helper() == HELPER
    finally:
        os.close(log)
        spawn.forget()
