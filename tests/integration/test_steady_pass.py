"""A pass over a service at rest skips the plan (Reconciler.shortcut) without hiding any
change: real FileStore, real daemon backend, real processes and probes."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from converge import core
from converge.api import ManagedService, ServiceKey, State
from converge.backends.base import ProbeResult
from converge.client import Client
from tests.helpers import gone, http_service, until

KEY = ServiceKey("default", "s")


def _svc(**spec: Any) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"backend": {"daemon": {"command": ["sleep", "60"]}}, **spec},
    })


def _plans(monkeypatch: pytest.MonkeyPatch) -> list[ServiceKey]:
    """The keys core.plan is called for from now on (the reconciler's own calls)."""
    seen: list[ServiceKey] = []
    real = core.plan

    def counting(svc: ManagedService, observed: core.Observed, now: Any) -> core.Plan:
        seen.append(svc.key)
        return real(svc, observed, now)

    monkeypatch.setattr(core, "plan", counting)
    return seen


def _settle(c: Client, key: ServiceKey = KEY) -> None:
    until(lambda: c.reconciler.reconcile(key).settled, what="settled")


def test_a_pass_at_rest_plans_and_writes_nothing_and_a_killed_process_is_started_again(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    client.store.create(_svc())
    _settle(client)
    client.reconciler.reconcile(KEY)  # the first look at rest: planned, remembered
    plans, writes = _plans(monkeypatch), client.store.writes
    for _ in range(3):
        out = client.reconciler.reconcile(KEY)
        assert (out.settled, out.state, out.requeue_after) == (True, State.active.value, None)
    assert plans == [] and client.store.writes == writes  # nothing planned, nothing written

    pid = int(client.store.get(KEY).status.backend["pid"])
    os.kill(pid, signal.SIGKILL)
    until(lambda: gone(pid), what="the process gone")
    out = client.reconciler.reconcile(KEY)  # the same stored object, another world
    assert plans[:2] == [KEY, KEY]  # planned: restarted, then its first look in the same pass
    if out.state != State.active.value:  # that look came before /bin/sh exec'd the program (load)
        _settle(client)
    now = client.store.get(KEY)
    assert now.status.state == State.active and int(now.status.backend["pid"]) != pid
    assert now.status.restarts == 1


def test_a_changed_object_is_planned_again_even_when_edited_by_hand(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    client.store.create(_svc())
    _settle(client)
    client.reconciler.reconcile(KEY)
    before = client.store.get(KEY)
    plans = _plans(monkeypatch)
    path = client.store.path(KEY)  # a hand edit: same resourceVersion and generation
    path.write_text(path.read_text().replace('"60"', '"61"'))
    client.reconciler.reconcile(KEY)
    assert plans and plans[0] == KEY
    _settle(client)
    after = client.store.get(KEY)
    assert after.status.backend["pid"] != before.status.backend["pid"]  # replaced: the spec changed


def test_a_passed_probe_of_a_service_at_rest_needs_no_plan(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resync that finds the prober's newest result passed (fresh, not yet counted) is the
    same look as the one at rest: not planned, nothing written."""
    client.store.create(ManagedService.model_validate(
        http_service("s", check="tcp", health={"periodSeconds": 60, "failureThreshold": 3})))
    _settle(client)
    client.reconciler.reconcile(KEY)
    svc = client.store.get(KEY)
    port = svc.status.endpoint.port if svc.status.endpoint else None
    assert port is not None
    plans, writes = _plans(monkeypatch), client.store.writes
    for _ in range(3):
        client.reconciler.probes.record(KEY, (svc.status.startedAt, port), ProbeResult(True))  # the prober's
        out = client.reconciler.reconcile(KEY)
        assert (out.settled, out.state) == (True, State.active.value)
    assert plans == [] and client.store.writes == writes


def test_a_failed_probe_of_a_service_at_rest_is_counted(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    client.store.create(ManagedService.model_validate(
        http_service("s", check="tcp", health={"periodSeconds": 60, "failureThreshold": 3})))
    _settle(client)
    client.reconciler.reconcile(KEY)  # at rest, with the probe's result (not probed again within 60 s)
    plans = _plans(monkeypatch)
    assert client.reconciler.reconcile(KEY).settled and plans == []
    svc = client.store.get(KEY)
    assert svc.status.healthFailures == 0
    port = svc.status.endpoint.port if svc.status.endpoint else None
    assert port is not None
    run = (svc.status.startedAt, port)
    client.reconciler.probes.record(KEY, run, ProbeResult(False, "refused"))  # the prober's failed probe
    out = client.reconciler.reconcile(KEY)
    assert plans == [KEY] and out.state == State.active.value
    assert client.store.get(KEY).status.healthFailures == 1  # counted once ...
    for _ in range(2):
        client.reconciler.reconcile(KEY)
    assert client.store.get(KEY).status.healthFailures == 1  # ... and only once (now at rest again)
    client.reconciler.probes.record(KEY, run, ProbeResult(False, "refused"))  # the next one
    client.reconciler.reconcile(KEY)
    assert client.store.get(KEY).status.healthFailures == 2


def test_the_client_works_on_after_a_runtime_stopped(client: Client) -> None:
    """Runtime.run closes the backends' exit watchers when it stops; the daemon backend then
    works as before it watched: a look at a running daemon after that is no error (it armed
    a new pidfd, which, given the number of a closed one still registered, raised KeyError
    'already registered' out of reconcile), a kill is still restarted, a delete converges."""
    import threading

    from converge.runtime import Runtime

    keys = [ServiceKey("default", f"s{i}") for i in range(4)]
    for k in keys:
        client.store.create(_svc().model_copy(update={"metadata": _svc().metadata.model_copy(update={"name": k.name})}))
    stop = threading.Event()
    t = threading.Thread(target=Runtime(client.reconciler, workers=2).run, args=(stop,))
    t.start()
    until(lambda: all(client.store.get(k).status.state == State.active for k in keys), what="all active")
    stop.set()
    t.join(timeout=30)
    for k in keys:  # a look at each running daemon arms a pidfd again
        out = client.reconciler.reconcile(k)
        assert out.error in ("", None) and out.state == State.active.value, out.error
    pid = int(client.store.get(keys[1]).status.backend["pid"])
    os.kill(pid, signal.SIGKILL)
    until(lambda: gone(pid), what="the process gone")
    _settle(client, keys[1])
    assert int(client.store.get(keys[1]).status.backend["pid"]) != pid  # restarted, without a watcher
    assert client.delete(keys[0].name).gone
