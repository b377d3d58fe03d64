"""Runaway services: double-forking daemons, SIGTERM ignored, chatty logs, a missing
workingDir, a linked log file."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import CLI
from tests.helpers import PY, daemon, gone, until, write
from tests.hostile.measure import snapshot

# Forks a child that leaves the session (setsid) and forks a grandchild, which sleeps; the
# grandchild's pid goes to argv[1] (appended). The leader then sleeps, or exits 1 if argv[2].
DOUBLE_FORK = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(600)
    os._exit(0)
time.sleep(0.3 if len(sys.argv) > 2 else 600)
sys.exit(1)
"""


def _marked(uid: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["environ"]):
        try:
            if (p.info["environ"] or {}).get("CONVERGE_SERVICE_UID") == uid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def _pids(f: Path) -> list[int]:
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def test_double_forked_children_are_stopped_on_suspend_and_delete(cli: CLI, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    write(tmp_path / "s.yaml", daemon("forker", [PY, "-c", DOUBLE_FORK, str(pids)]))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "20s")
    [grandchild] = until(lambda: _pids(pids), what="grandchild pid")
    leader = cli.pid("forker")
    assert os.getsid(grandchild) != os.getsid(leader)  # it left the service's session
    cli("down", "forker", "--timeout", "20s")
    until(lambda: psutil.Process(grandchild).status() == psutil.STATUS_STOPPED, what="grandchild stopped")
    cli("up", "forker", "--timeout", "20s")
    until(lambda: psutil.Process(grandchild).status() != psutil.STATUS_STOPPED, what="grandchild resumed")
    uid = cli.obj("forker")["metadata"]["uid"]
    cli("delete", "forker", "--timeout", "30s")
    until(lambda: gone(grandchild) and gone(leader), what="the whole tree gone")
    assert _marked(uid) == []


def crash_loop(cli: CLI, tmp_path: Path, program: str, **kw: Any) -> tuple[Path, str]:
    """Run `program` (DOUBLE_FORK or the like: each grandchild's pid goes to the file returned)
    as a crash-looping daemon under `converge run` for four starts, check that only the
    current start's grandchild is alive, then delete the service. (pid file, service uid)."""
    pids = tmp_path / "pids"
    svc = daemon("crasher", [PY, "-c", program, str(pids), "crash"], **kw,
                 restart={"backoffSeconds": 0.2, "maxBackoffSeconds": 0.4, "resetAfterSeconds": 0.1})
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    uid = cli.obj("crasher")["metadata"]["uid"]
    run = cli.popen("run")
    try:
        until(lambda: len(_pids(pids)) >= 4, timeout=60, interval=0.1, what="four starts")
        alive = [p for p in _pids(pids) if not gone(p)]
        assert len(alive) <= 1, f"children of earlier runs still alive: {alive}"  # only the current run's
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=30)
    cli("delete", "crasher", "--timeout", "30s")
    return pids, uid


def test_a_crash_loop_leaks_no_children(cli: CLI, tmp_path: Path) -> None:
    _, uid = crash_loop(cli, tmp_path, DOUBLE_FORK)
    until(lambda: _marked(uid) == [], what="nothing of the service left")


def test_delete_timeout_is_honoured_and_force_kills_before_forgetting(cli: CLI, tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    svc = daemon("stubborn", [PY, "-c", stubborn])
    svc["spec"]["backend"]["daemon"]["stopGracePeriodSeconds"] = 3600
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "20s")
    pid = cli.pid("stubborn")
    start = time.monotonic()
    p = cli("delete", "stubborn", "--timeout", "5s", check=False)
    took = time.monotonic() - start
    assert p.returncode == 1, p
    assert took < 20, f"delete --timeout 5s took {took:.0f}s"  # was 65 s
    assert f"pid {pid}" in p.stderr and "still running" in p.stderr and "SIGKILL in" in p.stderr, p.stderr
    assert not gone(pid)
    p = cli("delete", "stubborn", "--force", "--timeout", "2s", check=False)
    assert p.returncode == 0 and "killed" in p.stdout, p
    until(lambda: gone(pid), timeout=10, what="the stubborn process killed")
    assert cli("get", "-o", "name").stdout == ""


def test_a_chatty_daemon_log_is_rotated_while_it_runs(cli: CLI, tmp_path: Path) -> None:
    chatty = ("import sys, time\nline = 'x' * 1023 + '\\n'\n"
              "while True:\n    sys.stdout.write(line * 256); sys.stdout.flush(); time.sleep(0.05)\n")  # ~5 MB/s
    svc = daemon("chatty", [PY, "-c", chatty])
    svc["spec"]["backend"]["daemon"].update({"logMaxBytes": 1024 * 1024, "logMaxFiles": 2})
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    rt = cli.store / "_runtime" / "default" / "chatty"
    run = cli.popen("run")
    try:
        until(lambda: (rt / "daemon.log.2").exists(), timeout=30, what="two rotations")
        biggest = 0
        for _ in range(20):
            biggest = max(biggest, (rt / "daemon.log").stat().st_size)
            time.sleep(0.1)
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=30)
    assert biggest < 12 * 1024 * 1024, biggest  # checked every second: at most ~a second of output
    assert not (rt / "daemon.log.3").exists()
    assert (rt / "daemon.log.1").stat().st_size <= 1024 * 1024
    assert (rt / "daemon.log.1").stat().st_mode & 0o777 == 0o600


def test_a_missing_working_dir_is_named(cli: CLI, tmp_path: Path) -> None:
    svc = daemon("nowd", ["sleep", "60"])
    svc["spec"]["backend"]["daemon"]["workingDir"] = str(tmp_path / "no" / "such")
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "3s", check=False)
    err = cli.obj("nowd")["status"]["lastError"]
    assert f"workingDir {tmp_path / 'no' / 'such'} does not exist" in err, err


def test_a_linked_log_file_is_never_written_through(cli: CLI, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep\n")
    before = snapshot(outside)
    write(tmp_path / "s.yaml", daemon("linked", [PY, "-c", "print('hello'); import time; time.sleep(60)"]))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    rt = cli.store / "_runtime" / "default" / "linked"
    rt.mkdir(parents=True, mode=0o700)
    (rt / "daemon.log").symlink_to(outside / "victim")
    r = cli("reconcile", "--timeout", "3s", check=False)
    assert "Traceback" not in r.stderr
    assert "link" in cli.obj("linked")["status"]["lastError"]
    assert snapshot(outside) == before
    assert json.loads(cli("get", "linked", "-o", "json").stdout)["status"]["state"] == "error"
