"""Fixtures of the in-process integration tests (real FileStore, real backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from converge.api import AdminState, State
from converge.client import Client


@pytest.fixture
def client(store: Path) -> Iterator[Client]:
    """A local-mode client on a fresh store; afterwards every service it holds is stopped
    through the reconciler (and the `store` fixture kills whatever is still left)."""
    c = Client.local(store)
    yield c
    for obj in c.store.list().items:
        spec = obj.spec.model_copy(update={"adminState": AdminState.inactive})
        c.store.update(obj.model_copy(update={"spec": spec}))
        for _ in range(50):
            if c.reconciler.reconcile(obj.key).settled:
                break
        assert c.store.get(obj.key).status.state == State.inactive
