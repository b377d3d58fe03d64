"""Driver run inside ZenML's own venv by bench_zenml.py (not with the project's venv).

    <peers>/zenml/bin/python benchmarks/zenml_driver.py --port P --tag T --runtime DIR
        [--repeats 5] [--observe 10]

Defines a LocalDaemonService whose run() serves benchmarks/tinyhttp.py in-process (the
ZenML way: the daemon is ZenML's entrypoint process calling run()), with a
LocalDaemonServiceEndpoint (HTTP, fixed port) and an HTTPEndpointHealthMonitor, as ZenML
defines them. Measures, and prints one JSON document on stdout:
  - start-to-healthy, --repeats times: seconds until `service.start(timeout=60)` returns
    (ZenML's own view, it polls once a second) and until an external HTTP GET first
    succeeds (polled every 5 ms from a thread);
  - kill -9 of the daemon, then --observe seconds of watching: does anything answer
    again, what ZenML's status says (operational vs admin state).
Anything that fails is reported in the JSON as an error, never as a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from zenml.services import (  # noqa: E402
    HTTPEndpointHealthMonitor,
    HTTPEndpointHealthMonitorConfig,
    LocalDaemonService,
    LocalDaemonServiceConfig,
    LocalDaemonServiceEndpoint,
    LocalDaemonServiceEndpointConfig,
    ServiceEndpointProtocol,
    ServiceType,
)


class TinyHTTPConfig(LocalDaemonServiceConfig):
    port: int
    tag: str = ""


class TinyHTTPService(LocalDaemonService):
    """The benchmarks' tiny HTTP server as a ZenML local daemon service."""

    SERVICE_TYPE = ServiceType(name="tinyhttp", type="benchmark", flavor="local",
                               description="converge benchmark tiny HTTP daemon")
    config: TinyHTTPConfig

    def run(self) -> None:
        import tinyhttp

        # ZenML's daemon SIGTERM handler (zenml.utils.daemon.setup_daemon) terminates
        # children and removes the pid file but returns, so a run() that blocks keeps
        # serving, orphaned, after service.stop(). Chain a handler that also exits.
        zenml_handler = signal.getsignal(signal.SIGTERM)

        def exit_after(signum: int, frame: Any) -> None:
            if callable(zenml_handler):
                zenml_handler(signum, frame)
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, exit_after)
        tinyhttp.serve(self.config.port)


def served_pid(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read(4096).decode()
        return int(body.split()[1]) if resp.status == 200 and body.startswith("ok ") else None
    except (OSError, http.client.HTTPException, ValueError, IndexError):
        return None
    finally:
        conn.close()


def make_service(port: int, tag: str, runtime: str) -> TinyHTTPService:
    endpoint = LocalDaemonServiceEndpoint(
        config=LocalDaemonServiceEndpointConfig(protocol=ServiceEndpointProtocol.HTTP, port=port,
                                                allocate_port=False, ip_address="127.0.0.1"),
        monitor=HTTPEndpointHealthMonitor(config=HTTPEndpointHealthMonitorConfig(healthcheck_uri_path="/")),
    )
    config = TinyHTTPConfig(name=f"tinyhttp-{port}", port=port, tag=tag, root_runtime_path=runtime)
    return TinyHTTPService(uuid=uuid.uuid4(), config=config, endpoint=endpoint)


def start_once(svc: TinyHTTPService, port: int, timeout: int) -> dict[str, Any]:
    first_ok: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            if served_pid(port) is not None:
                first_ok.append(time.monotonic())
                return
            time.sleep(0.005)

    th = threading.Thread(target=poll, daemon=True)
    t0 = time.monotonic()
    th.start()
    svc.start(timeout=timeout)
    t_return = time.monotonic() - t0
    th.join(timeout)
    stop.set()
    return {
        "start_returned_s": t_return,
        "zenml_is_running": svc.is_running,
        "http_healthy_s": (first_ok[0] - t0) if first_ok else None,
        "pid": svc.status.pid,
    }


def observe_kill(svc: TinyHTTPService, port: int, seconds: float) -> dict[str, Any]:
    pid = svc.status.pid
    if pid is None:
        raise RuntimeError("no daemon pid to kill")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    answered_at = None
    states: list[tuple[float, str, str]] = []
    end = t0 + seconds
    while time.monotonic() < end:
        if answered_at is None and served_pid(port) is not None:
            answered_at = time.monotonic() - t0
        svc.update_status()
        state = (str(svc.status.state.value), str(svc.admin_state.value))
        if not states or states[-1][1:] != state:
            states.append((round(time.monotonic() - t0, 3), *state))
        time.sleep(0.05)
    return {
        "killed_pid": pid,
        "observed_s": seconds,
        "answered_again_after_s": answered_at,
        "restarted": answered_at is not None,
        "status_transitions": [{"t": t, "operational_state": s, "admin_state": a} for t, s, a in states],
        "final_operational_state": svc.status.state.value,
        "final_admin_state": svc.admin_state.value,
        "final_last_error": svc.status.last_error,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tag", default="")
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--observe", type=float, default=10.0)
    ap.add_argument("--timeout", type=int, default=60)
    args = ap.parse_args()
    import zenml

    out: dict[str, Any] = {"zenml_version": zenml.__version__, "python": sys.version.split()[0],
                           "starts": [], "kill": None, "error": None}
    svc: TinyHTTPService | None = None
    try:
        for i in range(args.repeats):
            svc = make_service(args.port, args.tag, os.path.join(args.runtime, f"r{i}"))
            res = start_once(svc, args.port, args.timeout)
            out["starts"].append(res)
            if res["http_healthy_s"] is None or not res["zenml_is_running"]:
                raise RuntimeError(f"start {i}: service not healthy after {args.timeout}s: {res}; "
                                   f"status: {svc.get_service_status_message()}")
            if i < args.repeats - 1:
                svc.stop(timeout=30)
                if served_pid(args.port) is not None:
                    raise RuntimeError(f"start {i}: still answering after stop()")
        assert svc is not None
        out["kill"] = observe_kill(svc, args.port, args.observe)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"
    finally:
        if svc is not None:
            with contextlib.suppress(Exception):
                svc.stop(timeout=10, force=True)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(1 if out["error"] else 0)


if __name__ == "__main__":
    # Register the class under its importable module name (not __main__) so the daemon
    # process, which re-creates the service from its JSON, can load it.
    import zenml_driver

    zenml_driver.main()
