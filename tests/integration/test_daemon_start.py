"""What a daemon start leaves the next look (real FileStore, daemon backend, processes):
the started child is trusted by the exit watcher's quick look at once."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from converge.api import ManagedService, ServiceKey, State
from converge.backends.daemon import DaemonBackend
from converge.client import Client
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


def test_a_started_child_gets_the_quick_look_and_its_death_is_still_seen(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = client.reconciler.backends.get("daemon")
    assert isinstance(backend, DaemonBackend)
    backend.watch(lambda key: None)  # as `converge run`: pidfds armed
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
