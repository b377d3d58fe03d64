"""`converge run`: the continuous controller self-heals, backs off, adopts, follows the store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from converge.api import ManagedServiceStatus, ServiceKey
from converge.filestore import FileStore
from tests.conftest import CLI
from tests.helpers import PY, daemon, gone, http_service, stop_controller, until, write


def state(cli: CLI, name: str) -> str:
    return str(cli.obj(name)["status"]["state"])


def ready(cli: CLI, name: str) -> bool:
    conds = cli.obj(name)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


@pytest.fixture
def controller(cli: CLI) -> Iterator[list[subprocess.Popen[str]]]:
    """Start `converge run` processes with controller.append(cli.popen(...)); stopped at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        stop_controller(p)
        if p.stdout:
            p.stdout.close()


def status_of(store: FileStore, name: str) -> ManagedServiceStatus:
    """The stored status, read straight from the file store: one consistent read, cheap
    enough to poll (a `converge get` per poll takes a second on a loaded machine)."""
    return store.get(ServiceKey("default", name)).status


def ready_pid(st: ManagedServiceStatus) -> int | None:
    """The pid the status shows Ready=True for, if it does."""
    ok = any(c.type == "Ready" and c.status == "True" for c in st.conditions)
    pid = st.backend.get("pid")
    return pid if ok and isinstance(pid, int) else None


def test_sigkill_is_noticed_by_exit_event_and_restarted(cli: CLI, tmp_path: Path,
                                                        controller: list[subprocess.Popen[str]]) -> None:
    # Resync and probe periods far beyond the test: only the exit notification can heal it in time.
    write(tmp_path / "s.yaml", http_service("heal", health={"periodSeconds": 300}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    controller.append(cli.popen("run", "--resync", "600s"))
    store = FileStore(cli.store)
    until(lambda: ready_pid(status_of(store, "heal")), timeout=20, what="Ready")
    latencies = []
    for _ in range(3):
        pid = ready_pid(status_of(store, "heal"))
        assert pid is not None and pid == cli.pid("heal")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Healed: the status itself shows Ready for a new pid (the pid file alone changes
        # before the status does: reading both could see a new pid next to the old Ready).
        until(lambda pid=pid: ready_pid(status_of(store, "heal")) not in (None, pid), timeout=10, what="healed")
        latencies.append(time.monotonic() - t0)
    assert max(latencies) < 5.0, latencies  # generous: CI may be loaded; benchmarks/ measures it
    st = cli.obj("heal")["status"]
    assert st["restarts"] == 3
    assert st["lastExitCode"] == -9


def test_crash_loop_backs_off_and_reports(cli: CLI, tmp_path: Path, controller: list[subprocess.Popen[str]]) -> None:
    cmd = [PY, "-c", "import sys; print('boom: cannot open config', flush=True); sys.exit(3)"]
    write(tmp_path / "s.yaml", daemon("crash", cmd, check=None,
                                      restart={"backoffSeconds": 0.2, "maxBackoffSeconds": 0.8}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    controller.append(cli.popen("run"))
    store = FileStore(cli.store)
    # Each failure's retry time, by consecutive failures, as the controller set it (its own
    # clock: a loaded machine makes the gaps longer, never shorter).
    retry: dict[int, datetime] = {}

    def failures() -> int:
        st = status_of(store, "crash")
        if st.nextRetryTime is not None:
            retry.setdefault(st.consecutiveFailures, st.nextRetryTime)
        return st.consecutiveFailures

    until(lambda: failures() >= 7, timeout=60, interval=0.01, what="7 failures")
    st = cli.obj("crash")["status"]
    # 0 + 0.2 + 0.4 + 0.8 + 0.8 ... : about 2.2 s for 5 restarts, then one per 0.8 s; never a hot loop.
    assert 4 <= st["restarts"] <= 10, st["restarts"]
    assert st["lastExitCode"] == 3
    assert "exited with code 3" in st["lastError"] and "boom: cannot open config" in st["lastError"]
    assert st["consecutiveFailures"] >= 4
    # A retry is never sooner than the backoff after the one before: each failure comes
    # after the previous retry, and its retry a full delay after it (0.2, 0.4, 0.8, 0.8 s).
    gaps = {f: (retry[f] - retry[f - 1]).total_seconds() for f in retry if f - 1 in retry and f >= 3}
    assert len(gaps) >= 2, retry  # a failure's retry time is shown for its whole backoff (>= 0.4 s)
    for f, gap in gaps.items():
        assert gap >= min(0.8, 0.2 * 2 ** (f - 2)) - 0.001, (f, gaps)


def test_restarted_controller_adopts_and_starts_no_duplicate(cli: CLI, tmp_path: Path,
                                                             controller: list[subprocess.Popen[str]]) -> None:
    write(tmp_path / "s.yaml", http_service("adopt"))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    controller.append(cli.popen("run"))
    until(lambda: ready(cli, "adopt"), timeout=20, what="Ready")
    pid = cli.pid("adopt")
    first = controller.pop()
    first.send_signal(signal.SIGINT)
    first.wait(10)
    assert psutil.pid_exists(pid)
    controller.append(cli.popen("run"))
    time.sleep(2.0)
    assert cli.pid("adopt") == pid and ready(cli, "adopt")
    argv = psutil.Process(pid).cmdline()
    assert [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == argv] == [pid]
    # kill -9 of the controller itself changes nothing either
    controller[-1].kill()
    controller[-1].wait()
    controller.append(cli.popen("run"))
    time.sleep(1.5)
    assert cli.pid("adopt") == pid


def test_health_error_past_threshold_then_recovery(cli: CLI, tmp_path: Path,
                                                   controller: list[subprocess.Popen[str]]) -> None:
    gate = tmp_path / "health"
    write(tmp_path / "s.yaml", http_service("sick", env={"HEALTH_FILE": str(gate)},
                                            health={"periodSeconds": 0.2, "failureThreshold": 3}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    controller.append(cli.popen("run"))
    until(lambda: ready(cli, "sick"), timeout=20, what="Ready")
    gate.write_text("500")
    until(lambda: state(cli, "sick") == "error", timeout=10, what="error")
    st = cli.obj("sick")["status"]
    assert "status 500, want 200" in st["lastError"]
    cond = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert cond["status"] == "False" and cond["reason"] == "HealthCheckFailed"
    gate.write_text("200")
    until(lambda: ready(cli, "sick"), timeout=10, what="recovered")


def test_run_follows_the_store(cli: CLI, tmp_path: Path, controller: list[subprocess.Popen[str]]) -> None:
    controller.append(cli.popen("run"))
    write(tmp_path / "s.yaml", http_service("late", labels={"stack": "l"}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    until(lambda: ready(cli, "late"), timeout=20, what="Ready after apply")
    pid = cli.pid("late")
    cli("down", "-l", "stack=l")
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    time.sleep(1.0)  # the running controller must not resume it
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    write(tmp_path / "s.yaml", http_service("late", labels={"stack": "l"}, admin="inactive"))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    until(lambda: state(cli, "late") == "inactive", timeout=10, what="deprovisioned by run")
    until(lambda: gone(pid))


def test_failure_threshold_is_paced_by_the_period(cli: CLI, tmp_path: Path,
                                                  controller: list[subprocess.Popen[str]]) -> None:
    """A realistic period: 3 failures 5 s apart, however often the service is woken (its own
    status writes, the prober, the resync); not 3 probes in a row within a second."""
    period = 5.0
    gate = tmp_path / "health"
    write(tmp_path / "s.yaml", http_service("paced", env={"HEALTH_FILE": str(gate)},
                                            health={"periodSeconds": period, "failureThreshold": 3}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    controller.append(cli.popen("run"))
    until(lambda: ready(cli, "paced"), timeout=20, what="Ready")
    gate.write_text("500")
    t_gate = time.monotonic()
    first_seen: dict[int, float] = {}  # healthFailures -> when first seen
    store = FileStore(cli.store)  # read the status file directly: a CLI call per poll is too coarse
    while time.monotonic() - t_gate < 5 * period:
        st = store.get(ServiceKey("default", "paced")).status
        first_seen.setdefault(st.healthFailures, time.monotonic())
        if st.state.value == "error":
            first_seen.setdefault(-1, time.monotonic())
            break
        time.sleep(0.05)
    assert -1 in first_seen, f"never reached error in {5 * period:g}s: {first_seen}"
    assert 1 in first_seen and 2 in first_seen, first_seen
    # The prober may run a probe up to 0.25 s early (batched wake-ups); a loaded machine delays.
    assert first_seen[2] - first_seen[1] >= period - 1.0, first_seen
    assert first_seen[-1] - first_seen[1] >= 2 * period - 1.0, first_seen
    assert first_seen[-1] - t_gate >= 2 * period - 1.0, first_seen
    assert "health check failed 3 times" in cli.obj("paced")["status"]["lastError"]
