"""The continuous run's resync, in slots (converge.workqueue: one worker passes over the
keys of a slot in one wake-up) still catches what no watch reported: real FileStore,
real daemon backend, real processes; the store's own watch off, so only the resync can
find a hand edit."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from converge.api import ManagedService, ServiceKey, State
from converge.client import Client
from converge.outcome import Outcome
from converge.runtime import Runtime
from tests.helpers import until

RESYNC = 2.0


def _svc(name: str) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"backend": {"daemon": {"command": ["sleep", "60"]}}},
    })


def test_every_key_is_passed_over_each_period_and_a_hand_edit_is_found_without_a_watch(client: Client) -> None:
    keys = [ServiceKey("default", f"s{i}") for i in range(6)]
    for k in keys:
        client.store.create(_svc(k.name))
    runtime = Runtime(client.reconciler, workers=4, resync=RESYNC)
    passes: dict[ServiceKey, list[float]] = defaultdict(list)
    mu = threading.Lock()

    def seen(o: Outcome, _: float) -> None:
        with mu:
            passes[o.key].append(time.monotonic())

    runtime.on_outcome = seen
    stop = threading.Event()
    th = threading.Thread(target=runtime.run, args=(stop,), kwargs={"watch": False})
    th.start()
    try:
        until(lambda: all(client.store.get(k).status.state == State.active for k in keys), timeout=20,
              what="all active")
        with mu:
            before = {k: len(passes[k]) for k in keys}
        t0 = time.monotonic()
        time.sleep(3 * RESYNC)  # the first within 1.5 periods (its phase), then every period
        with mu:
            for k in keys:
                assert len(passes[k]) - before[k] >= 2, (k, passes[k], t0)

        edited = keys[0]
        pid = client.store.get(edited).status.backend["pid"]
        path = client.store.path(edited)  # by hand: no watch tells the controller
        path.write_text(path.read_text().replace('"60"', '"61"'))
        until(lambda: client.store.get(edited).status.backend.get("pid") not in (None, pid)
              and client.store.get(edited).status.state == State.active,
              timeout=RESYNC * 2 + 10, what="the edited service restarted by a resync pass")
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive()
