"""`converge run`'s start-up watch, in process with real parts (FileStore, daemon backend,
a real HTTP daemon): Ready follows the daemon's first answer, and the start writes its
status twice (pending_startup, then active), not once more per look while it starts."""

from __future__ import annotations

import socket
import threading
import time

from converge.api import ManagedService, ServiceKey, State
from converge.client import Client
from converge.conditions import is_ready
from converge.runtime import Runtime
from tests.helpers import HTTP_SERVER, PY, free_port


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def test_ready_follows_the_first_answer_with_no_status_write_in_between(client: Client) -> None:
    port = free_port()
    delay = 0.25  # the daemon listens only after this: a slow start
    command = ["/bin/sh", "-c", f"sleep {delay}; exec {PY} {HTTP_SERVER} {port}"]
    client.apply([ManagedService.model_validate({
        "metadata": {"name": "slow", "namespace": "default"},
        "spec": {"backend": {"daemon": {"command": command}},
                 "endpoint": {"port": port, "healthCheck": {"http": {"path": "/healthz"}, "periodSeconds": 30}}},
    })])  # as `converge apply`: the object comes with converge's finalizer
    key = ServiceKey("default", "slow")
    before = client.store.writes
    stop = threading.Event()
    rt = Runtime(client.reconciler, workers=2)
    t = threading.Thread(target=rt.run, args=(stop,), daemon=True)
    started = time.monotonic()
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not answers(port):  # polled every 5 ms: when the daemon first answers
            assert time.monotonic() < deadline, "the daemon never answered"
            time.sleep(0.005)
        answered = time.monotonic()
        while not is_ready(client.store.get(key).status.conditions):
            assert time.monotonic() < deadline, "never Ready"
            time.sleep(0.005)
        late = time.monotonic() - answered
        st = client.store.get(key).status
        assert st.state == State.active and st.lastState == State.pending_startup
        # The prober probes every few ms while it starts (an eighth of the time waited) and wakes
        # the reconcile at the first answer; the reconcile's own looks come a second apart.
        assert late < 0.25, f"Ready {late:.3f}s after the first answer"
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    if answered - started < 0.9:  # the start took less than the fallback look's 1 s
        assert client.store.writes - before == 2, "pending_startup and active, nothing between"

