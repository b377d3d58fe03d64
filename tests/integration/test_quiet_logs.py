"""A running daemon's log kept within logMaxBytes by the exit watcher (real FileStore,
daemon backend, processes, inotify): a quiet log is not looked at again on a timer but at
its next write, so an idle controller does nothing for it and a burst after a long
silence is still rotated within about a second."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from converge.api import AdminState, ManagedService, ServiceKey, State
from converge.backends import daemon
from converge.backends.daemon import DaemonBackend
from converge.client import Client
from tests.helpers import until

KEY = ServiceKey("default", "quiet")
BURST = "import sys, time\nprint('up', flush=True)\ntime.sleep({quiet})\n" \
        "sys.stdout.write(('x' * 1023 + '\\n') * 3 * 1024); sys.stdout.flush()\ntime.sleep(60)\n"


def _svc(quiet: float) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": KEY.name, "namespace": KEY.namespace},
        "spec": {"backend": {"daemon": {"command": [sys.executable, "-c", BURST.format(quiet=quiet)],
                                        "logMaxBytes": 1024 * 1024, "logMaxFiles": 1}}},
    })


def _log_watches(backend: DaemonBackend) -> int:
    """The inotify watches the backend holds (the kernel's list, /proc/self/fdinfo)."""
    events = backend._log_events
    assert events is not None
    return Path(f"/proc/self/fdinfo/{events.fd}").read_text().count("inotify wd:")


def test_a_quiet_log_is_watched_and_rotated_at_its_next_burst(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """No timed look at a quiet log (LOG_CHECK_MAX made an hour here): its write wakes
    the check. The watch goes with the service."""
    monkeypatch.setattr(daemon, "LOG_CHECK_MAX", 3600.0)
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    backend.watch(lambda key: None)
    try:
        client.store.create(_svc(quiet=4.0))
        assert client.reconciler.reconcile(KEY).state in (State.pending_startup.value, State.active.value)
        rt = client.store.get(KEY).status.backend["log"]
        log = Path(rt)
        until(lambda: _log_watches(backend) == 1, timeout=10, what="the quiet log watched")
        assert not log.with_name("daemon.log.1").exists()  # the burst is seconds away
        until(lambda: log.with_name("daemon.log.1").exists() and log.stat().st_size <= 1024 * 1024,
              timeout=15, what="the burst rotated")
        assert log.with_name("daemon.log.1").stat().st_size <= 1024 * 1024
        until(lambda: _log_watches(backend) == 1, timeout=10, what="quiet again: watched again")
        obj = client.store.get(KEY)
        client.store.update(obj.model_copy(update={"spec": obj.spec.model_copy(
            update={"adminState": AdminState.inactive})}))
        until(lambda: client.reconciler.reconcile(KEY).settled, what="stopped")
        assert client.store.get(KEY).status.state == State.inactive
        assert _log_watches(backend) == 0
    finally:
        backend.close()


def test_a_log_too_big_already_is_rotated_at_the_first_look(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first look is not skipped for a watch: a log over its size when the controller
    starts watching is rotated then."""
    monkeypatch.setattr(daemon, "LOG_CHECK_MAX", 3600.0)
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    client.store.create(_svc(quiet=0.0))
    client.reconciler.reconcile(KEY)  # no exit watcher: a one-off reconcile's looks only
    log = Path(client.store.get(KEY).status.backend["log"])
    until(lambda: log.stat().st_size >= 3 * 1024 * 1024, what="the burst written")
    backend.watch(lambda key: None)
    try:
        client.reconciler.reconcile(KEY)
        until(lambda: log.with_name("daemon.log.1").exists(), timeout=10, what="rotated at the first look")
    finally:
        backend.close()
