"""The prober against real sockets: endpoints that accept and never answer must not
starve the other services' probes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from converge.api import HealthCheck, ServiceKey
from converge.backends.base import ProbeResult
from converge.backends.health import probe
from converge.prober import Prober
from converge.reconciler import Probe


class Counting:
    """An HTTP endpoint on 127.0.0.1 answering 200 and counting the requests."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.hits += 1


@pytest.fixture
def hung() -> Iterator[list[int]]:
    """Ten listening sockets that never accept: connects succeed, requests hang."""
    socks = []
    for _ in range(10):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


def test_hung_endpoints_do_not_starve_other_probes(hung: list[int]) -> None:
    check = HealthCheck.model_validate({"http": {"path": "/healthz", "timeoutSeconds": 5}, "periodSeconds": 0.2})
    failed: list[ServiceKey] = []
    prober = Prober(failed.append)
    ok = Counting()
    try:
        for i, port in enumerate(hung):
            prober.track(ServiceKey("default", f"hung-{i}"), Probe(check, "http", "127.0.0.1", port, 0.2))
        prober.track(ServiceKey("default", "ok"), Probe(check, "http", "127.0.0.1", ok.port, 0.2))
        time.sleep(2.0)  # the hung probes are all in flight for 5 s
        assert failed == []
        assert ok.hits >= 4, f"the healthy endpoint was probed {ok.hits} times in 2 s (period 0.2 s)"
    finally:
        prober.close()
        ok.sock.close()


def test_answers_after_the_pause_and_tcp_probes_are_judged_like_the_blocking_ones() -> None:
    """An endpoint slower than the prober's pause is waited for in the selector; a TCP probe
    of a listening port passes, of a closed one fails: as the blocking probe() judges them."""
    slow = socket.socket()
    slow.bind(("127.0.0.1", 0))
    slow.listen(8)
    slow_port = slow.getsockname()[1]

    def serve_slowly() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = slow.accept()
                with conn:
                    conn.recv(1024)
                    time.sleep(0.1)  # far longer than COALESCE_SECONDS
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")

    threading.Thread(target=serve_slowly, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    http = HealthCheck.model_validate({"http": {"path": "/", "timeoutSeconds": 2}, "periodSeconds": 0.3})
    tcp = HealthCheck.model_validate({"tcp": {}, "periodSeconds": 0.3})
    cases = {"slow": (http, slow_port, True), "tcp-up": (tcp, slow_port, True), "tcp-down": (tcp, closed_port, False)}
    first: dict[str, ProbeResult] = {}
    done = threading.Event()

    def recorder(name: str) -> Callable[[ProbeResult], None]:
        def record(r: ProbeResult) -> None:
            first.setdefault(name, r)
            if len(first) == len(cases):
                done.set()
        return record

    failed: list[ServiceKey] = []
    prober = Prober(failed.append)
    try:
        for name, (check, port, _) in cases.items():
            probe_it = Probe(check, "http", "127.0.0.1", port, 0.3, record=recorder(name))
            prober.track(ServiceKey("default", name), probe_it)
        assert done.wait(5), first
        for name, (check, port, ok) in cases.items():
            assert first[name].ok is ok, (name, first[name])
            assert probe(check, "http", "127.0.0.1", port).ok is ok, name
        assert failed == [ServiceKey("default", "tcp-down")]
    finally:
        prober.close()
        slow.close()


def test_a_start_up_watch_wakes_its_key_as_soon_as_the_endpoint_answers() -> None:
    """While a service starts, the prober probes it every few ms (its reconcile's looks come
    rarer and rarer); the refusals wake nothing, the first answer wakes the key at once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # bound, not listening yet: connects are refused, as before a start
    port = srv.getsockname()[1]
    check = HealthCheck.model_validate({"http": {"path": "/"}, "periodSeconds": 10})
    woke: list[float] = []
    prober = Prober(lambda key: woke.append(time.monotonic()))
    try:
        key = ServiceKey("default", "starting")
        prober.track(key, Probe(check, "http", "127.0.0.1", port, 10, startup=True))
        time.sleep(0.3)
        assert woke == []  # refused all along: nothing to tell
        prober.track(key, Probe(check, "http", "127.0.0.1", port, 10, startup=True))  # a pass again: same watch
        srv.listen(8)
        listening = time.monotonic()

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")

        threading.Thread(target=serve, daemon=True).start()
        deadline = time.monotonic() + 2
        while not woke and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(woke) == 1
        # Waited 0.3 s: probes are ~40 ms apart by now (an eighth of the wait), not a period.
        assert woke[0] - listening < 0.2, woke[0] - listening
        time.sleep(0.1)
        assert len(woke) == 1  # done: the watch ended with the answer
    finally:
        prober.close()
        srv.close()


def test_a_start_up_watchs_answer_is_taken_without_the_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Periodic probes' answers are read after a pause (COALESCE_SECONDS, several answers in one
    wake-up); a start-up watch's answer is the Ready being waited for: taken when it comes."""
    import converge.prober

    monkeypatch.setattr(converge.prober, "COALESCE_SECONDS", 2.0)  # a pause nobody could miss
    srv = Counting()
    check = HealthCheck.model_validate({"http": {"path": "/"}, "periodSeconds": 10})
    woke: list[float] = []
    prober = Prober(lambda key: woke.append(time.monotonic()))
    try:
        tracked = time.monotonic()
        prober.track(ServiceKey("default", "starting"), Probe(check, "http", "127.0.0.1", srv.port, 10, startup=True))
        deadline = time.monotonic() + 5
        while not woke and time.monotonic() < deadline:
            time.sleep(0.005)
        assert woke and woke[0] - tracked < 1.0, "the answer waited for the pause"
    finally:
        prober.close()
        srv.sock.close()
