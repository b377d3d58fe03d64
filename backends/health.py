"""Health monitors: HTTP and TCP probes of a service's endpoint.

One probe is one short blocking check with a timeout; the reconcile core counts
failures and decides the state (converge.core), this module only looks. `Pending` is the
same plain-HTTP or TCP probe without blocking, for a prober that drives many at once
from one thread and one selector (converge.prober): same request, same results.
"""

from __future__ import annotations

import _socket
import errno
import functools
import ipaddress
import os
import selectors
import socket
import time

from converge.api import HealthCheck
from converge.backends.base import ProbeResult


def probe(check: HealthCheck, protocol: str, host: str, port: int) -> ProbeResult:
    if check.http is not None:
        return probe_http(protocol == "https", host, port, check.http.path, check.http.status,
                          check.http.timeoutSeconds)
    timeout = check.tcp.timeoutSeconds if check.tcp is not None else 2.0
    return probe_tcp(host, port, timeout)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected socket; a numeric host skips create_connection's resolver round."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        with _connect(host, port, timeout):
            return ProbeResult(True)
    except OSError as exc:
        return ProbeResult(False, f"tcp {host}:{port}: {exc.strerror or exc}")


def probe_http(tls: bool, host: str, port: int, path: str, status: int, timeout: float) -> ProbeResult:
    if not tls:
        return _probe_plain_http(host, port, path, status, timeout)
    import http.client  # only HTTPS probes need them: ~10 ms of start-up for every command
    import ssl

    url = f"https://{host}:{port}{path}"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a liveness probe, like kubelet's: no verification
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path, headers={"User-Agent": "converge-probe"})
        resp = conn.getresponse()
        resp.read(4096)
        if resp.status != status:
            return ProbeResult(False, f"GET {url}: status {resp.status}, want {status}")
        return ProbeResult(True)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ProbeResult(False, f"GET {url}: {reason}")
    finally:
        conn.close()


def _request(host: str, port: int, path: str) -> bytes:
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: converge-probe\r\n\r\n".encode()


def _judge(url: str, head: bytes, status: int) -> ProbeResult:
    """The probe's result from the response's first bytes (the status line)."""
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return ProbeResult(False, f"GET {url}: not an HTTP response")
    got = int(parts[1])
    if got != status:
        return ProbeResult(False, f"GET {url}: status {got}, want {status}")
    return ProbeResult(True)


def _probe_plain_http(host: str, port: int, path: str, status: int, timeout: float) -> ProbeResult:
    """HTTP/1.0 GET reading only the status line: a tenth of http.client's CPU, which
    matters when a controller probes hundreds of services."""
    url = f"http://{host}:{port}{path}"
    request = _request(host, port, path)
    try:
        with _connect(host, port, timeout) as s:
            s.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = s.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        return ProbeResult(False, f"GET {url}: {exc.strerror or exc}")
    return _judge(url, head, status)


_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_OK_STATUS = {code: b"%d " % code for code in range(100, 600)}  # the status line's code and its space
_PASSED = ProbeResult(True)


@functools.lru_cache(maxsize=256)
def _family(host: str) -> socket.AddressFamily | None:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None  # a name: resolving it blocks


@functools.lru_cache(maxsize=1024)
def _plain(host: str, port: int, path: str | None) -> tuple[tuple[str, int], str, bytes | None]:
    """A non-blocking probe's constant parts: address, URL (for messages), request (None:
    TCP). Made once per endpoint: a prober probes the same endpoints over and over."""
    if path is None:
        return (host, port), f"{host}:{port}", None
    return (host, port), f"http://{host}:{port}{path}", _request(host, port, path)


class Pending:
    """One plain-HTTP or TCP probe in flight on a non-blocking socket: the caller waits
    for `events` on `sock` (a selector) and calls `step()` when they come, until it
    returns the result; `expire()` once `deadline` (time.monotonic) passes. The same
    request and the same results as `probe()`, and one deadline for the whole probe.

    Lean on purpose (slots, the C socket type, the constant parts made once): a prober
    runs this for every probe of every service, and its Python is half of a probe's CPU."""

    __slots__ = ("_connected", "_head", "_out", "_status", "_tcp", "deadline", "events", "sock", "url")

    def __init__(self, sock: _socket.socket, url: str, request: bytes | None, status: int, deadline: float) -> None:
        self.sock = sock
        self.url = url
        self._tcp = request is None
        self._out = request or b""  # what is left to send
        self._connected = False
        self._status = status
        self.deadline = deadline
        self.events = selectors.EVENT_WRITE  # connecting
        self._head = b""

    @classmethod
    def start(cls, check: HealthCheck, protocol: str, host: str, port: int) -> Pending | ProbeResult | None:
        """The probe under way (or already decided: a connect refused at once, or a TCP
        connect done at once); None when it needs a blocking probe() (HTTPS, or a host name
        to resolve)."""
        family = _family(host)
        http = check.http
        if family is None or (http is not None and protocol == "https"):
            return None
        if http is not None:
            addr, url, request = _plain(host, port, http.path)
            status, timeout = http.status, http.timeoutSeconds
        else:
            addr, url, request = _plain(host, port, None)
            status, timeout = 0, check.tcp.timeoutSeconds if check.tcp is not None else 2.0
        s = _socket.socket(family, _NONBLOCKING_STREAM)  # the C type: no socket.py layer, no setblocking()
        pending = cls(s, url, request, status, time.monotonic() + timeout)
        try:
            err = s.connect_ex(addr)
        except OSError as exc:
            s.close()
            return pending._fail(exc.strerror or str(exc))
        if err and err != errno.EINPROGRESS:
            s.close()
            return pending._fail(os.strerror(err))
        if request is None:
            if err == 0:  # connected at once (loopback): that is the whole TCP probe
                s.close()
                return ProbeResult(True)
            return pending
        # On loopback the handshake is done by now: send at once, saving a wake-up for
        # "writable" (a refused connect says so here; not yet connected: wait for it).
        try:
            pending._send()
        except BlockingIOError:
            pass
        except OSError as exc:
            s.close()
            return pending._fail(exc.strerror or str(exc))
        return pending

    def _send(self) -> None:
        self._out = self._out[self.sock.send(self._out):]
        self._connected = True
        if not self._out:
            self.events = selectors.EVENT_READ

    def _fail(self, why: str) -> ProbeResult:
        return ProbeResult(False, f"tcp {self.url}: {why}" if self._tcp else f"GET {self.url}: {why}")

    def step(self) -> ProbeResult | None:
        """Go on once the socket may be ready (a selector said so, or the caller tries before
        asking one); the result once decided (then close()), None while it still waits."""
        try:
            if self.events == selectors.EVENT_WRITE:
                if not self._connected:
                    err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        return self._fail(os.strerror(err))
                    if self._tcp:
                        try:
                            self.sock.getpeername()
                        except OSError:
                            return None  # still connecting (an HTTP probe's send says so itself)
                        return ProbeResult(True)
                self._send()
                return None
            chunk = self.sock.recv(1024)
        except BlockingIOError:
            return None
        except OSError as exc:
            return self._fail(exc.strerror or str(exc))
        head = self._head = self._head + chunk
        if chunk and b"\r\n" not in head and len(head) < 1024:
            return None
        if head[9:13] == _OK_STATUS.get(self._status) and head.startswith(b"HTTP/"):  # "HTTP/1.x 200 "
            return _PASSED
        return _judge(self.url, head, self._status)

    def expire(self) -> ProbeResult:
        """The result when the deadline passed first (then close())."""
        return self._fail("timed out")

    def close(self) -> None:
        self.sock.close()
