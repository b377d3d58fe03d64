"""Daemons in their own cgroup (cgroup v2, where it can be written): a service whose children
leave the session *and* clear their environment is still stopped whole, on restart, suspend
and delete; a hostile pid record cannot point converge at another cgroup; without cgroups
(`CONVERGE_CGROUPS=off`) the session + marker tracking still catches a double fork."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from converge.backends import cgroups
from tests.conftest import CLI
from tests.helpers import PY, daemon, gone, until, write
from tests.hostile.test_runaway import DOUBLE_FORK, crash_loop

pytestmark = pytest.mark.skipif(cgroups.base() is None, reason="cgroup v2 cannot be written on this host")

# The leader forks a child that leaves the session (setsid) and forks again; the grandchild
# writes its pid to argv[1] and execs `sleep` with an EMPTY environment: no uid marker, no
# session, no process group in common with the leader. The leader sleeps, or exits 1 if argv[2].
ESCAPE = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1], "a") as f:
            f.write(f"{os.getpid()}\\n")
        os.execve("/bin/sleep", ["sleep", "600"], {})
    os._exit(0)
time.sleep(0.3 if len(sys.argv) > 2 else 600)
sys.exit(1)
"""


def _pids(f: Path) -> list[int]:
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def _record(cli: CLI, name: str) -> dict:
    return json.loads((cli.store / "_runtime" / "default" / name / "daemon.json").read_text())


def _cgroup_of(pid: int) -> str:
    return next(line[3:].strip() for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if line.startswith("0::"))


def test_an_escaped_child_with_a_cleared_environment_is_stopped_with_its_service(cli: CLI, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    write(tmp_path / "s.yaml", daemon("escaper", [PY, "-c", ESCAPE, str(pids)], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "20s")
    [escaped] = until(lambda: _pids(pids), what="the escaped pid")
    until(lambda: psutil.Process(escaped).name() == "sleep", what="the exec")
    leader = cli.pid("escaper")
    uid = cli.obj("escaper")["metadata"]["uid"]
    assert os.getsid(escaped) != os.getsid(leader)
    assert "CONVERGE_SERVICE_UID" not in psutil.Process(escaped).environ()  # the marker is gone
    folder = Path(_record(cli, "escaper")["cgroup"])
    assert folder.name == f"svc-{uid}" and _cgroup_of(escaped).endswith(f"/svc-{uid}")

    cli("down", "escaper", "--timeout", "20s")
    until(lambda: psutil.Process(escaped).status() == psutil.STATUS_STOPPED, what="the escaped child stopped")
    cli("up", "escaper", "--timeout", "20s")
    until(lambda: psutil.Process(escaped).status() != psutil.STATUS_STOPPED, what="the escaped child resumed")

    cli("delete", "escaper", "--timeout", "30s")
    until(lambda: gone(escaped) and gone(leader), what="the whole service gone")
    assert not folder.exists(), "the empty cgroup is removed with the service"


def test_a_crash_loop_of_escapers_leaks_nothing(cli: CLI, tmp_path: Path) -> None:
    pids, _ = crash_loop(cli, tmp_path, ESCAPE, check=None)
    until(lambda: all(gone(p) for p in _pids(pids)), what="nothing of the service left")


def test_a_record_naming_another_cgroup_is_not_trusted(cli: CLI, tmp_path: Path) -> None:
    """daemon.json is converge's own file, but a store can be tampered with: a record that
    names another service's cgroup (or the root of the hierarchy) must not make a delete
    kill what runs there."""
    write(tmp_path / "s.yaml", daemon("victim", ["sleep", "600"], check=None),
          daemon("liar", ["sleep", "600"], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "20s")
    victim = cli.pid("victim")
    for forged in (_record(cli, "victim")["cgroup"], str(Path(_record(cli, "victim")["cgroup"]).parent.parent)):
        rec_file = cli.store / "_runtime" / "default" / "liar" / "daemon.json"
        rec = json.loads(rec_file.read_text())
        rec["cgroup"] = forged
        rec_file.write_text(json.dumps(rec))
        assert cgroups.recorded(forged, cli.obj("liar")["metadata"]["uid"]) is None
    liar = cli.pid("liar")
    cli("delete", "liar", "--timeout", "30s")
    until(lambda: gone(liar), what="the liar stopped (it is still its own leader's process)")
    assert not gone(victim), "a forged cgroup path killed another service"
    assert cli.obj("victim")["status"]["state"] == "active"


@pytest.mark.parametrize("path", ["relative/svc-u1", "/sys/fs/cgroup/../../tmp/svc-u1", "/tmp/svc-u1", "/",
                                  "/sys/fs/cgroup/unified", "svc-u1\x00", 42, None])
def test_recorded_refuses_paths_that_are_not_this_services_cgroup(path: object) -> None:
    assert cgroups.recorded(path, "u1") is None


def test_recorded_refuses_a_link_named_like_the_service(tmp_path: Path) -> None:
    base = cgroups.base()
    assert base is not None
    real = cgroups.for_service("u-real")
    assert real is not None
    link = base / "svc-u-link"
    try:
        os.symlink(real.path, link)  # cgroupfs refuses links: then there is nothing to test
    except OSError:
        real.remove()
        pytest.skip("cgroupfs refuses symlinks")
    try:
        assert cgroups.recorded(str(link), "u-link") is None
    finally:
        link.unlink()
        real.remove()


@pytest.mark.parametrize("how", ["launcher", "preexec"])
def test_a_service_cgroup_is_killed_whole_and_removed_when_empty(how: str) -> None:
    """The cgroup primitives on the real kernel: a child that joins before its program runs
    (through /bin/sh, or the preexec_fn fallback), forks more, and all of it ends with one
    cgroup.kill."""
    import subprocess

    cg = cgroups.for_service(f"unit-kill-{how}")
    assert cg is not None
    script = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid(); time.sleep(600)\n"
              "time.sleep(600)\n")
    argv = [PY, "-c", script, "a 'quoted' $(arg); `x`"]
    if how == "launcher":
        launch = cg.launcher(argv)
        assert launch is not None
        p = subprocess.Popen(launch, start_new_session=True, env={})
    else:
        with cg.joining() as join:
            p = subprocess.Popen(argv, start_new_session=True, preexec_fn=join, env={})
    try:
        until(lambda: psutil.Process(p.pid).cmdline() == argv, what="the program's own argv, untouched")
        until(lambda: len(cg.pids()) == 4, what="four processes in the cgroup")
        assert os.getpid() not in cg.pids()
        assert cg.populated() and not cg.remove()
        assert cg.kill()
        p.wait(timeout=10)
        until(lambda: not cg.populated(), what="an empty cgroup")
        assert cg.remove() and not cg.path.exists()
    finally:
        p.kill()
        p.wait()
        cg.kill()
        cg.remove()


def test_without_cgroups_a_marked_double_fork_is_still_tracked(cli: CLI, tmp_path: Path) -> None:
    """CONVERGE_CGROUPS=off: the session + uid-marker fallback of hosts without cgroup v2."""
    cli.env["CONVERGE_CGROUPS"] = "off"
    pids = tmp_path / "pids"
    write(tmp_path / "s.yaml", daemon("forker", [PY, "-c", DOUBLE_FORK, str(pids)], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "20s")
    [grandchild] = until(lambda: _pids(pids), what="grandchild pid")
    assert "cgroup" not in _record(cli, "forker")
    assert _cgroup_of(grandchild) == _cgroup_of(os.getpid())
    cli("delete", "forker", "--timeout", "30s")
    until(lambda: gone(grandchild), what="the double-forked grandchild stopped by its marker")


def test_a_start_that_fails_leaves_no_cgroup(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", daemon("ghost", [str(tmp_path / "no-such-program")], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "2s", check=False)
    assert "cannot start" in cli.obj("ghost")["status"]["lastError"]
    base = cgroups.base()
    assert base is not None and not (base / f"svc-{cli.obj('ghost')['metadata']['uid']}").exists()


def test_sweep_removes_only_old_empty_service_cgroups() -> None:
    """What a killed controller and a removed store leave: empty svc-* cgroups. The sweep
    (run once when a controller starts watching) removes those untouched for a while, and
    never a populated one or one a start has just touched."""
    import subprocess

    old_empty, fresh, busy = (cgroups.for_service(f"sweep-{n}") for n in ("old", "fresh", "busy"))
    assert old_empty is not None and fresh is not None and busy is not None
    launch = busy.launcher(["sleep", "600"])
    assert launch is not None
    p = subprocess.Popen(launch, start_new_session=True)
    try:
        until(lambda: busy.populated(), what="a process in the busy cgroup")
        long_ago = time.time() - 3600
        for cg in (old_empty, busy):
            os.utime(cg.path, (long_ago, long_ago))
        cgroups.sweep(min_age=300)
        assert not old_empty.path.exists()
        assert fresh.path.exists() and busy.path.exists()
    finally:
        busy.kill()
        p.wait()
        for cg in (fresh, busy):
            until(lambda cg=cg: not cg.populated(), what="empty")
            cg.remove()


BENCH_RUN = """
import shutil, subprocess, sys
sys.path.insert(0, sys.argv[1])
from common import Reaper, run_tag
tag = run_tag()
print(tag, flush=True)
with Reaper(tag):
    subprocess.run([sys.argv[2], "apply", "-f", sys.argv[3]], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.argv[2], "reconcile", "--timeout", "20s"], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(sys.argv[4])  # the store is gone: no controller can deprovision now
"""


def test_a_benchmark_run_ends_what_its_controllers_daemons_left(tmp_path: Path) -> None:
    """benchmarks/common.py's Reaper runs the benchmark in a cgroup of its own: a daemon's
    escaped grandchild (new session, empty environment, no run tag on its command line),
    whose controller and store are gone, is still killed when the run ends, and the run's
    cgroups are removed."""
    import subprocess
    import sys

    from tests.conftest import CONVERGE

    pids, store = tmp_path / "pids", tmp_path / "store"
    write(tmp_path / "s.yaml", daemon("escaper", [PY, "-c", ESCAPE, str(pids)], check=None))
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    env = {**os.environ, "CONVERGE_STORE": str(store)}
    run = subprocess.run([sys.executable, "-c", BENCH_RUN, str(bench), CONVERGE, str(tmp_path / "s.yaml"), str(store)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [grandchild] = _pids(pids)
    until(lambda: gone(grandchild), what="the escaped grandchild killed with the run's cgroup")
    assert "killed" in run.stderr and "left in the run's cgroup" in run.stderr
    own = cgroups.own_folder()
    tag = run.stdout.split()[0]
    assert tag.startswith("cvbench-") and own is not None and not (own / tag).exists()


@pytest.mark.parametrize("then", ["reconcile", "delete"])
def test_a_start_interrupted_before_its_pid_file_leaves_no_duplicate_and_no_orphan(
        cli: CLI, tmp_path: Path, then: str) -> None:
    """A controller killed between fork and pid file, where cgroups are used (no start intent
    file then): the stray is in the service's cgroup; the next reconcile stops it and starts
    exactly one, a delete stops it and removes the cgroup."""
    import subprocess

    write(tmp_path / "s.yaml", daemon("cut", ["sleep", "600"], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    uid = cli.obj("cut")["metadata"]["uid"]
    cg = cgroups.for_service(uid)  # what the interrupted start had made
    assert cg is not None
    launch = cg.launcher(["sleep", "600"])
    assert launch is not None
    stray = subprocess.Popen(launch, start_new_session=True)
    try:
        until(lambda: stray.pid in cg.pids() and psutil.Process(stray.pid).name() == "sleep", what="the stray joined")
        if then == "reconcile":
            cli("reconcile", "--timeout", "30s")
            until(lambda: stray.poll() is not None, what="the stray stopped", timeout=15)
            assert cg.pids() == [cli.pid("cut")] and cli.obj("cut")["status"]["state"] == "active"
        else:
            cli("delete", "cut", "--timeout", "30s")
            until(lambda: stray.poll() is not None, what="the stray stopped", timeout=15)
            assert not cg.path.exists() and cli("get", "-o", "name").stdout.strip() == ""
    finally:
        stray.kill()
        stray.wait()
