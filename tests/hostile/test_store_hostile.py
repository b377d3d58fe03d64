"""Hostile store contents: entries that are not object files, links inside the store,
loose modes, leftovers of a crash; and controller threads that must never die silently."""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path

from converge.supervise import supervised
from tests.conftest import CLI
from tests.helpers import PY, daemon, until, write
from tests.hostile.measure import snapshot

SLEEPER = [PY, "-c", "import time; time.sleep(600)"]


def _outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir(exist_ok=True)
    (d / "precious").write_text("keep me\n")
    return d


def test_non_files_where_objects_should_be_are_corrupt_objects_and_the_rest_converges(
        cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "good.yaml", daemon("good", SLEEPER))
    cli("apply", "-f", str(tmp_path / "good.yaml"))
    ns = cli.store / "default"
    (ns / "adir.yaml").mkdir()
    os.mkfifo(ns / "fifo.yaml")
    outside = _outside(tmp_path)
    (outside / "linked.yaml").write_text((ns / "good.yaml").read_text().replace("name: good", "name: linked"))
    (ns / "linked.yaml").symlink_to(outside / "linked.yaml")
    before = snapshot(outside)
    p = cli("get", check=False)
    assert p.returncode == 0 and "good" in p.stdout, p
    for bad in ("adir.yaml", "fifo.yaml", "linked.yaml"):
        assert bad in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    for name in ("adir", "fifo", "linked"):
        d = cli("describe", name, check=False)
        assert d.returncode == 1 and f"{name}.yaml" in d.stderr and "Traceback" not in d.stderr, d.stderr
    r = cli("reconcile", "--timeout", "20s", check=False)
    assert "Traceback" not in r.stderr, r.stderr
    assert cli.obj("good")["status"]["state"] == "active"
    # the controller keeps converging the others, its resync meeting the bad entries every second
    run = cli.popen("run", "--resync", "1s")
    try:
        time.sleep(2.5)
        write(tmp_path / "late.yaml", daemon("late", SLEEPER))
        cli("apply", "-f", str(tmp_path / "late.yaml"))
        until(lambda: cli.obj("late")["status"].get("state") == "active", timeout=30, what="late active")
    finally:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=30)
    assert "Traceback" not in out and "adir.yaml" in out, out
    assert snapshot(outside) == before


def test_links_inside_the_store_are_never_written_through(cli: CLI, tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    before = snapshot(outside)
    write(tmp_path / "a.yaml", daemon("a", SLEEPER))
    cli.store.mkdir(mode=0o700)
    # a namespace folder linked elsewhere
    (cli.store / "evil").symlink_to(outside)
    p = cli("-n", "evil", "apply", "-f", str(tmp_path / "a.yaml"), check=False)
    assert p.returncode == 1 and "link" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "evil" not in cli("get", "-A").stdout
    # the store's lock linked elsewhere
    (cli.store / ".lock").unlink(missing_ok=True)
    (cli.store / ".lock").symlink_to(outside / "precious")
    p = cli("apply", "-f", str(tmp_path / "a.yaml"), check=False)
    assert p.returncode == 1 and ".lock" in p.stderr and "Traceback" not in p.stderr, p.stderr
    (cli.store / ".lock").unlink()
    # a planted temp-file name: writes use unique names created with O_EXCL|O_NOFOLLOW
    (cli.store / "default").mkdir(mode=0o700)
    (cli.store / "default" / ".a.yaml.tmp").symlink_to(outside / "precious")
    cli("apply", "-f", str(tmp_path / "a.yaml"))
    # _runtime linked elsewhere: the service fails to start, nothing is written there
    (cli.store / "_runtime").symlink_to(outside)
    r = cli("reconcile", "--timeout", "5s", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert snapshot(outside) == before


def test_forget_never_removes_through_a_link(cli: CLI, tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    (outside / "a").mkdir()
    (outside / "a" / "precious").write_text("keep me too\n")
    before = snapshot(outside)
    write(tmp_path / "a.yaml", daemon("a", SLEEPER))
    cli("apply", "-f", str(tmp_path / "a.yaml"))
    cli("reconcile", "--timeout", "20s")
    pid = cli.pid("a")
    # swap the namespace's runtime folder for a link to a folder holding an "a"
    runtime_ns = cli.store / "_runtime" / "default"
    os.rename(runtime_ns, cli.store / "_runtime" / "moved")
    runtime_ns.symlink_to(outside)
    cli("delete", "a", "--force", "--timeout", "10s", check=False)
    assert snapshot(outside) == before
    os.kill(pid, signal.SIGKILL)


def test_loose_modes_are_tightened_and_crash_leftovers_removed(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", daemon("a", SLEEPER))
    for d in (cli.store, cli.store / "default", cli.store / "_runtime", cli.store / "_runtime" / "default"):
        d.mkdir()
        d.chmod(0o777)
    leftover = cli.store / "default" / ".a.yaml.4242.deadbeef.tmp"
    leftover.write_text("torn")
    (cli.store / "_runtime" / "default" / "a").mkdir()
    runtime_leftover = cli.store / "_runtime" / "default" / "a" / ".daemon.json.cafe.tmp"
    runtime_leftover.write_text("{")
    cli("apply", "-f", str(tmp_path / "a.yaml"))
    cli("reconcile", "--timeout", "20s")
    assert not leftover.exists() and not runtime_leftover.exists()
    for d in (cli.store, cli.store / "default", cli.store / "_runtime", cli.store / "_runtime" / "default",
              cli.store / "_runtime" / "default" / "a"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE((cli.store / "default" / "a.yaml").stat().st_mode) == 0o600


def test_a_failing_background_thread_is_logged_and_restarted(caplog: object) -> None:
    runs: list[int] = []
    done = threading.Event()

    def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise OSError("boom")
        done.set()

    stop = threading.Event()
    with_log = logging.getLogger("converge")
    with_log.setLevel(logging.INFO)
    t = supervised("flaky", flaky, stop.is_set, delay=0.01)
    t.start()
    assert done.wait(5) and len(runs) == 3
    t.join(5)
    assert "thread flaky failed (restart 2" in caplog.text  # type: ignore[attr-defined]
