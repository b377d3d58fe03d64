"""Manifest builders and small waits for the tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

PY = sys.executable
HTTP_SERVER = str(Path(__file__).resolve().parent / "programs" / "httpd.py")


def die_with_parent() -> None:
    """preexec_fn of a test's background daemon (dockerd, etcd, kube-apiserver): SIGKILL it
    when the test process goes away, even killed, so nothing outlives an interrupted run."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_group(p: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a background daemon's process group, SIGKILL after the grace period."""
    import contextlib
    import signal

    if p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(grace)


def stop_controller(p: subprocess.Popen[str], grace: float = 10.0) -> None:
    """Stop a `converge run` as Ctrl-C does (SIGINT), its process group SIGKILLed after the grace period."""
    import signal

    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _below_ephemeral() -> Iterator[int]:
    """Ports from 20000 up to the kernel's ephemeral range, once each, starting at a place
    of this process's own; none where that range leaves no room."""
    try:
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        top = 32768
    width = top - 20000
    if width >= 2000:
        start = os.getpid() % width
        for i in range(width):
            yield 20000 + (start + i) % width


_candidates = _below_ephemeral()
_handed_out: set[int] = set()  # by bind(0), where there is no room below the range


def free_port() -> int:
    """A loopback port no socket holds now, for a test's daemon to bind later.

    Never one this test session handed out before, and, where the kernel's ephemeral range
    leaves room, from below it: the kernel picks outgoing connections' source ports (a health
    probe's, the machine's) from that range, and a bind(0) port came from it too, so one could
    be taken between now and the daemon's bind (CI once saw "port ... is in use")."""
    for port in _candidates:  # each once
        if _bindable(port):
            return port
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def daemon(name: str, command: list[str], *, port: int | None = None, allocate: bool = False,
           check: str | None = "http", labels: dict[str, str] | None = None, depends: list[str] | None = None,
           admin: str = "active", env: dict[str, str] | None = None, restart: dict[str, Any] | None = None,
           health: dict[str, Any] | None = None, namespace: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"adminState": admin, "backend": {"daemon": {"command": command}}}
    if env:
        spec["backend"]["daemon"]["env"] = env
    if depends:
        spec["dependsOn"] = depends
    if port is not None or allocate:
        ep: dict[str, Any] = {"protocol": "tcp" if check == "tcp" else "http"}
        if port is not None:
            ep["port"] = port
        if allocate:
            ep["allocatePort"] = True
        if check == "http":
            ep["healthCheck"] = {"http": {"path": "/healthz"}, "periodSeconds": 1, **(health or {})}
        elif check == "tcp":
            ep["healthCheck"] = {"tcp": {}, "periodSeconds": 1, **(health or {})}
        spec["endpoint"] = ep
    if restart:
        spec["restartPolicy"] = restart
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService", "metadata": meta, "spec": spec}


def http_service(name: str, port: int | None = None, **kw: Any) -> dict[str, Any]:
    """An HTTP daemon answering /healthz on $(PORT)."""
    return daemon(name, [PY, HTTP_SERVER, "$(PORT)"], port=port if port is not None else free_port(), **kw)


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def until(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def gone(pid: int) -> bool:
    """The process is dead (a zombie not yet reaped by its parent counts as dead)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


CASES = Path(__file__).resolve().parent / "cases"


def invalid_manifests() -> list[tuple[str, str, dict[str, Any]]]:
    """(case, field, manifest) of tests/cases/invalid_manifests.yaml: one table, two tests."""
    out = []
    for c in yaml.safe_load((CASES / "invalid_manifests.yaml").read_text()):
        manifest: dict[str, Any] = {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
                                    "metadata": c.get("metadata", {"name": c["case"]})}
        if "spec" in c:
            manifest["spec"] = c["spec"]
        out.append((c["case"], c["field"], manifest))
    return out


def api_server_gaps() -> dict[str, str]:
    """{case: why} of the table's cases the API server is known to accept."""
    return {c["case"]: c["apiServerAccepts"] for c in yaml.safe_load((CASES / "invalid_manifests.yaml").read_text())
            if "apiServerAccepts" in c}


def names_field(text: str, field: str) -> bool:
    """The error text names this field path itself (or an item of it), not only a parent or
    another child: `spec.endpoint` is named by `spec.endpoint: ...`, not `spec.endpoint.port: ...`."""
    return re.search(rf'(?<![\w.]){re.escape(field)}(?=[:\["\s]|$)', text, re.MULTILINE) is not None
