"""Endpoint port allocation, as in ZenML's seeds: the preferred port, else the port the
service had last time, else (allocatePort) any free port.

"Free" means we could bind it just now on the endpoint's host. Ports handed out by this
process are remembered for a while, so two services allocated in the same pass never get
the same port before their processes bind it.
"""

from __future__ import annotations

import heapq
import socket
import threading
import time

from converge.api import Endpoint
from converge.backends.errors import TemporaryError

_RESERVE_SECONDS = 30.0
_reserved: dict[int, tuple[str, float]] = {}  # port -> (owner, reserved until)
_expiry: list[tuple[float, int]] = []  # (until, port), oldest first: expired ones go in O(log N) each
_mu = threading.Lock()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _any_free(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _take(port: int, owner: str) -> bool:
    """Reserve port for owner unless another owner holds it. Amortized O(log N): only the
    reservations that expired are looked at (a heap by expiry), never all of them."""
    now = time.monotonic()
    with _mu:
        while _expiry and _expiry[0][0] < now:
            until, p = heapq.heappop(_expiry)
            held = _reserved.get(p)
            if held is not None and held[1] == until:  # not renewed since
                del _reserved[p]
        held = _reserved.get(port)
        if held is not None and held[0] != owner:
            return False
        until = now + _RESERVE_SECONDS
        _reserved[port] = (owner, until)
        heapq.heappush(_expiry, (until, port))
        return True


def allocate(endpoint: Endpoint, last: int | None, owner: str, owned: bool = False) -> int:
    """The port for a (re)start. `owned`: our own old process still holds `last` and is
    about to be replaced, so `last` counts as free."""
    host = endpoint.host
    if last is not None and owned and (endpoint.allocatePort or last == endpoint.port):
        return last
    candidates = [p for p in (endpoint.port, last if endpoint.allocatePort else None) if p is not None]
    for port in dict.fromkeys(candidates):
        if port_is_free(host, port) and _take(port, owner):
            return port
    if not endpoint.allocatePort:
        raise TemporaryError(f"port {endpoint.port} on {host} is in use (set allocatePort: true to pick "
                             "another)", reason="PortInUse")
    for _ in range(50):
        port = _any_free(host)
        if _take(port, owner):
            return port
    raise TemporaryError(f"no free port on {host}", reason="PortInUse")
