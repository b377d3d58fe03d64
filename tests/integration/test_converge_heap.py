"""A converging pass over many services is work that keeps many objects (converge.heap):
the cyclic collector is paused while it runs and on again after; a smaller pass leaves it
as it was, and a program that paused it keeps it paused. Real FileStore, real daemon
backend, real processes, real worker threads (`bulk_pass` lowered so three services count
as many)."""

from __future__ import annotations

import gc
import os
import signal
import threading

import pytest

from converge.api import ManagedService, ServiceKey, State
from converge.client import Client
from converge.outcome import Outcome
from converge.runtime import Runtime
from tests.helpers import gone, until

KEYS = [ServiceKey("default", f"s{i}") for i in range(3)]


def _svc(name: str) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"backend": {"daemon": {"command": ["sleep", "60"]}}},
    })


def _pass(client: Client, bulk_pass: int) -> tuple[dict[ServiceKey, Outcome], set[bool]]:
    """One converging pass over KEYS; the outcomes, and whether the collector was on at
    the end of each reconcile (seen from the worker threads)."""
    runtime = Runtime(client.reconciler, workers=4)
    runtime.bulk_pass = bulk_pass
    seen: set[bool] = set()
    mu = threading.Lock()

    def record(o: Outcome, _: float) -> None:
        with mu:
            seen.add(gc.isenabled())

    runtime.on_outcome = record
    return runtime.converge(KEYS, timeout=60), seen


@pytest.fixture
def started(client: Client) -> Client:
    for k in KEYS:
        client.store.create(_svc(k.name))
    return client


def test_a_pass_over_many_pauses_the_collector_and_still_starts_everything_again(started: Client) -> None:
    assert gc.isenabled()
    out, seen = _pass(started, bulk_pass=3)
    assert seen == {False} and gc.isenabled()
    assert all(o.settled and o.state == State.active.value for o in out.values()), out
    pid = int(started.store.get(KEYS[1]).status.backend["pid"])
    os.kill(pid, signal.SIGKILL)  # the pass still acts on what it finds
    until(lambda: gone(pid), what="the process gone")
    out, seen = _pass(started, bulk_pass=3)
    assert seen == {False} and gc.isenabled()
    now = started.store.get(KEYS[1])
    assert now.status.state == State.active and int(now.status.backend["pid"]) != pid
    assert now.status.restarts == 1


def test_a_smaller_pass_leaves_the_collector_on_and_a_paused_one_stays_paused(started: Client) -> None:
    out, seen = _pass(started, bulk_pass=4)
    assert seen == {True} and gc.isenabled() and all(o.settled for o in out.values())
    gc.disable()
    try:
        _, seen = _pass(started, bulk_pass=3)
        assert seen == {False} and not gc.isenabled()
    finally:
        gc.enable()
