"""What a daemon start leaves the next look (real FileStore, daemon backend, processes and
cgroups): the started child is trusted by the exit watcher's quick look at once, and an
exit seen warms the kernel's cgroup lock for the restart's join without moving anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from converge import rawread
from converge.api import DaemonBackend as DaemonSpec
from converge.api import ManagedService, ServiceKey, State
from converge.backends import cgroups, daemon, spawn
from converge.backends.base import Phase, Target
from converge.backends.daemon import DaemonBackend
from converge.client import Client
from converge.runtime import Runtime
from tests.helpers import gone, until

KEY = ServiceKey("default", "s")


def _svc() -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"backend": {"daemon": {"command": ["sleep", "60"]}}},
    })


def _slow_looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids the daemon backend identifies the slow way (psutil: start time, argv)."""
    seen: list[int] = []
    real = DaemonBackend._live

    def counting(self: DaemonBackend, rec: Any) -> Any:
        seen.append(int(rec["pid"]))
        return real(self, rec)

    monkeypatch.setattr(DaemonBackend, "_live", counting)
    return seen


@pytest.mark.parametrize("watching", [True, False])
def test_a_started_child_gets_the_quick_look_and_its_death_is_still_seen(
        client: Client, monkeypatch: pytest.MonkeyPatch, watching: bool) -> None:
    """Watching: as `converge run`, pidfds armed; not: a one-off `converge reconcile`, whose
    own unreaped child is just as surely the process it started."""
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    if watching:
        backend.watch(lambda key: None)
    try:
        client.store.create(_svc())
        slow = _slow_looks(monkeypatch)
        out = client.reconciler.reconcile(KEY)  # start, and its first look in the same pass
        assert out.state == State.active.value
        assert slow == []  # the child it just started: the pidfd look, no psutil
        pid = int(client.store.get(KEY).status.backend["pid"])
        os.kill(pid, signal.SIGKILL)
        until(lambda: gone(pid), what="the process gone")
        out = client.reconciler.reconcile(KEY)
        again = int(client.store.get(KEY).status.backend["pid"])
        assert again != pid and client.store.get(KEY).status.restarts == 1  # the death was seen
    finally:
        backend.close()


@pytest.mark.skipif(cgroups.base() is None, reason="cgroup v2 cannot be written on this host")
def test_the_warm_up_moves_nothing() -> None:
    before = Path("/proc/self/cgroup").read_text()
    w = cgroups.AttachWarmer()
    assert w.active
    try:
        w.poke()
        until(lambda: w.moves == 1, what="one warm-up")
        w.poke()
        until(lambda: w.moves == 2, what="another")
    finally:
        w.stop()
    assert Path("/proc/self/cgroup").read_text() == before


_MOVED_THEN_POKED = """
import sys, time
from pathlib import Path
from converge.backends import cgroups, spawn
w = cgroups.AttachWarmer()  # made in the cgroup this process starts in
Path(sys.argv[1], "cgroup.procs").write_text("0")  # then moved elsewhere (as systemd or a benchmark may)
w.poke()
end = time.monotonic() + 20
while w.moves == 0 and time.monotonic() < end:
    time.sleep(0.01)
w.stop()
print(w.moves, [ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")][0])
"""


@pytest.mark.skipif(cgroups.base() is None, reason="cgroup v2 cannot be written on this host")
def test_the_warm_up_never_moves_a_process_back_where_it_was(tmp_path: Path) -> None:
    base = cgroups.base()
    assert base is not None
    moved = base / f"test-warm-{os.getpid()}"
    moved.mkdir()
    try:
        out = subprocess.run([sys.executable, "-c", _MOVED_THEN_POKED, str(moved)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
        assert out[0] == "1", out
        assert out[1].endswith("/" + moved.name), out  # still where it was moved, not moved back
    finally:
        until(lambda: not (moved / "cgroup.procs").read_text().strip(), what="the child gone")
        moved.rmdir()


@pytest.mark.parametrize("kind", ["threaded", "domain threaded", None])
def test_the_warm_up_stays_off_where_it_could_move_threads_or_cannot_write(tmp_path: Path, kind: str | None) -> None:
    if kind is not None:
        (tmp_path / "cgroup.type").write_text(kind + "\n")
    w = cgroups.AttachWarmer(own=tmp_path)  # not a cgroup at all: its write fails
    w.poke()
    until(lambda: not w.active or w.moves, what="off", timeout=5)
    w.poke()
    w.stop()
    assert not w.active and w.moves == 0 and not (tmp_path / "cgroup.procs").exists()


@pytest.mark.skipif(cgroups.base() is None, reason="cgroup v2 cannot be written on this host")
def test_a_kill_under_the_runtime_warms_up_and_restarts(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the /bin/sh joiner (the helper that starts straight into the cgroup off: it
    has no move to warm up for, tests/integration/test_spawn.py)."""
    monkeypatch.setenv(spawn.SWITCH, "off")
    spawn.forget()
    client.store.create(_svc())
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    stop = threading.Event()
    t = threading.Thread(target=Runtime(client.reconciler, workers=2).run, args=(stop,))
    t.start()
    try:
        until(lambda: client.store.get(KEY).status.state == State.active, what="active")
        warmer = backend._warmer
        assert warmer is not None and warmer.moves == 0
        pid = int(client.store.get(KEY).status.backend["pid"])
        os.kill(pid, signal.SIGKILL)
        until(lambda: client.store.get(KEY).status.backend.get("pid") not in (None, pid)
              and client.store.get(KEY).status.state == State.active, what="restarted")
        assert warmer.moves >= 1
    finally:
        stop.set()
        t.join(timeout=30)
    assert backend._warmer is None  # closed with the runtime
    monkeypatch.undo()
    spawn.forget()


def test_the_recorded_start_time_is_psutils() -> None:
    """The pid record's createTime is computed from /proc without psutil's Process; `_live`
    compares it with psutil's create_time() (within 0.05 s): it must be the same number."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (os.getpid(), child.pid):
            assert daemon._create_time(pid) == psutil.Process(pid).create_time()
    finally:
        child.kill()
        child.wait()
    with pytest.raises(OSError):
        daemon._create_time(child.pid)  # reaped: gone


def test_the_environment_is_the_controllers_with_the_services_on_top(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the start passes to exec is what os.environ (as it is now) plus the service's
    variables, PORT unless set, CONVERGE_SERVICE and the marker make, as bytes."""
    monkeypatch.setenv("LEAN_TEST_CHANGED", "caf\u00e9")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.delenv("LEAN_TEST_GONE", raising=False)
    want = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    want.update({b"A": b"1", b"LEAN_TEST_CHANGED": b"x", b"CONVERGE_SERVICE": b"ns/s", b"CONVERGE_SERVICE_UID": b"u-1"})
    got = daemon._environment({"A": "1", "LEAN_TEST_CHANGED": "x"}, 8080, "ns/s", "u-1")
    assert got == want and got[b"PORT"] == b"1"  # PORT: the controller's, as setdefault left it
    monkeypatch.delenv("PORT")
    assert daemon._environment({}, 8080, "ns/s", "u-1")[b"PORT"] == b"8080"


def test_a_start_keeps_the_record_it_wrote_and_the_next_look_reads_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pid file is written once per start and not read back by the look after it (its
    stat matches what the start kept); a pid file replaced since is read again."""
    backend = DaemonBackend()
    spec = DaemonSpec.model_validate({"command": ["sleep", "60"]})
    target = Target(key=KEY, uid="lean-record-test", config=spec, spec_hash="h", runtime_dir=tmp_path)
    reads: list[object] = []
    real = rawread.read_all
    monkeypatch.setattr(rawread, "read_all", lambda path: reads.append(path) or real(path))
    try:
        assert backend.observe(target).phase == Phase.absent
        pid = backend.provision(target)["pid"]
        assert backend.observe(target).phase == Phase.running
        assert [p for p in reads if str(p).endswith(daemon.PID_FILE)] == []
        record = json.loads((tmp_path / daemon.PID_FILE).read_text())
        assert record["pid"] == pid and backend._record(target) == record
        (tmp_path / daemon.PID_FILE).write_text(json.dumps({**record, "specHash": "other"}))
        assert backend.observe(target).spec_hash == "other"  # changed on disk: read again
    finally:
        backend.deprovision(replace(target, config=spec.model_copy(update={"stopGracePeriodSeconds": 0})))
        until(lambda: backend._reap(pid) or pid not in backend._children, what="the child reaped")  # no zombie left
    assert gone(pid)


def test_a_stop_leaves_no_zombie_when_the_daemon_dies_just_after_a_reap(tmp_path: Path) -> None:
    """A stopped daemon that ends between the stop's reap and its look (a zombie counts as
    ended) is reaped before the stop returns: no zombie is left in the controller."""
    backend = DaemonBackend()
    spec = DaemonSpec.model_validate({"command": ["sleep", "60"], "stopGracePeriodSeconds": 5})
    target = Target(key=KEY, uid="lean-zombie-test", config=spec, spec_hash="h", runtime_dir=tmp_path)
    pid = int(backend.provision(target)["pid"])
    real = backend._reap
    calls: list[int] = []

    def dies_right_after(p: int) -> None:
        calls.append(p)
        if len(calls) == 2:  # (the first: deprovision's look) the stop's first: finds it alive, then it ends
            os.kill(pid, signal.SIGKILL)
            until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, what="a zombie")
            return
        real(p)

    backend._reap = dies_right_after  # type: ignore[method-assign]
    backend.deprovision(target)
    assert len(calls) > 2 and not psutil.pid_exists(pid)  # reaped: not even a zombie is left
