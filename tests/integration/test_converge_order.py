"""A one-shot converge (`converge reconcile`) over many services: the look that finds a
started service healthy comes while later services are still being started, not after
every first pass (those looks, and their status writes, were a single-core tail after the
last start). Real FileStore, real daemons, real TCP health checks."""

from __future__ import annotations

import sys

import pytest

from converge.api import ManagedService, ServiceKey, State
from converge.client import Client
from converge.runtime import FEED_AHEAD
from tests.helpers import daemon, free_port

# Listens at once on $PORT, then waits: the cheapest daemon a TCP check finds healthy.
# SO_REUSEADDR: a probe of another service may have left its port in TIME_WAIT as its source.
LISTEN = ("import os, socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); time.sleep(120)")


def test_a_started_services_next_look_comes_before_the_last_first_pass(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    n = FEED_AHEAD + 16
    for i in range(n):
        doc = daemon(f"s{i:03d}", [sys.executable, "-S", "-c", LISTEN], port=free_port(), check="tcp")
        client.store.create(ManagedService.model_validate(doc))
    passes: list[ServiceKey] = []
    real = client.reconciler.reconcile

    def counting(key: ServiceKey) -> object:
        passes.append(key)
        return real(key)

    monkeypatch.setattr(client.reconciler, "reconcile", counting)
    out = client.reconcile(timeout=60)

    assert len(out) == n and not [(o.key, o.message) for o in out.values() if o.state != State.active.value]
    first_key = passes[0]
    second_look = passes.index(first_key, 1)
    last_first_pass = max(passes.index(k) for k in set(passes))
    # Without feeding, every key's first pass came first (all were due before any requeue).
    assert second_look < last_first_pass, (second_look, last_first_pass)
    assert len(set(passes[:FEED_AHEAD])) == FEED_AHEAD  # the first ones start at once, in order
