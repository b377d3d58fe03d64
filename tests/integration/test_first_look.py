"""A start's first look in the same pass (Reconciler._first_look): real FileStore, real
daemon backend, real processes."""

from __future__ import annotations

from typing import Any

from converge.api import FINALIZER, ManagedService, ServiceKey, State
from converge.client import Client
from converge.conditions import is_ready


def _svc(name: str, **spec: Any) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"backend": {"daemon": {"command": ["sleep", "60"]}}, **spec},
    })


def test_a_start_without_health_check_is_written_active_in_one_status_write(client: Client) -> None:
    client.store.create(_svc("a"))
    key = ServiceKey("default", "a")
    before = client.store.writes
    out = client.reconciler.reconcile(key)  # one pass: finalizer, start, look, one status
    got = client.store.get(key)
    assert (out.state, out.settled) == (State.active.value, True)
    assert got.status.state == State.active and got.status.lastState == State.pending_startup
    assert is_ready(got.status.conditions) and got.status.backend.get("pid")
    assert client.store.writes - before == 2  # the finalizer and one status (was: two statuses)


def test_a_start_with_a_health_check_still_waits_for_it(client: Client) -> None:
    client.store.create(_svc("b", endpoint={"port": 1, "allocatePort": True,
                                            "healthCheck": {"tcp": {}, "startupTimeoutSeconds": 30}}))
    out = client.reconciler.reconcile(ServiceKey("default", "b"))  # sleep never listens
    assert out.state == State.pending_startup.value and not out.settled


def test_apply_writes_the_finalizer_with_the_object_so_a_start_is_one_write(client: Client) -> None:
    key = ServiceKey("default", "c")
    assert [r.action for r in client.apply([_svc("c")])] == ["created"]
    assert client.store.get(key).metadata.finalizers == [FINALIZER]  # before any reconcile
    before = client.store.writes
    client.reconciler.reconcile(key)  # start and look: one status write, no finalizer write
    assert client.store.writes - before == 1
    assert client.store.get(key).status.backend.get("pid")


def test_a_service_applied_and_deleted_before_any_reconcile_is_gone(client: Client) -> None:
    client.apply([_svc("d")])
    assert client.delete("d").gone  # the finalizer it was created with is released by delete's own pass
    assert client.list() == []
