"""Prometheus metrics and the health endpoints of a controller process.

`Metrics` counts what the runtime does (prometheus-client): reconciles by result, their
duration, the work queue's depth, services by state and restarts. `serve_metrics`
exposes them on /metrics (`converge run --metrics-port`, `converge operator`);
`HealthServer` answers /healthz (the process and its threads are alive) and /readyz
(ready to work: for a leader-elected operator, also while standing by).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from converge.api import ManagedService, ManagedServiceStatus, State
from converge.outcome import Outcome
from converge.runtime import Runtime


def result_of(o: Outcome) -> str:
    if o.error:
        return "error"
    if o.gone:
        return "deleted"
    return "settled" if o.settled else "requeued"


class _ServicesByState(Collector):
    def __init__(self, states: Callable[[], dict[str, int]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("converge_services", "Services by observed state.", labels=["state"])
        counts = self._states()
        for state in State:
            g.add_metric([state.value], counts.get(state.value, 0))
        yield g


class Metrics:
    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("converge_reconcile_total", "Reconcile passes by result.", ["result"], registry=r)
        self.duration = Histogram("converge_reconcile_duration_seconds", "Duration of one reconcile pass.",
                                  registry=r, buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.restarts = Counter("converge_restarts_total", "Restarts of services after a crash.", registry=r)
        self.transitions = Counter("converge_transitions_total", "Status transitions by new state.", ["state"],
                                   registry=r)
        depth = Gauge("converge_workqueue_depth", "Keys due in the work queue.", registry=r)
        depth.set_function(runtime.queue_depth)
        self._states: dict[object, str] = {}
        self._mu = threading.Lock()
        r.register(_ServicesByState(self.states))

    def states(self) -> dict[str, int]:
        with self._mu:
            out: dict[str, int] = {}
            for s in self._states.values():
                out[s] = out.get(s, 0) + 1
            return out

    def observe(self, o: Outcome, seconds: float) -> None:
        self.reconciles.labels(result_of(o)).inc()
        self.duration.observe(seconds)
        with self._mu:
            if o.gone:
                self._states.pop(o.key, None)
            elif o.state:
                self._states[o.key] = o.state

    def transition(self, before: ManagedService, after: ManagedServiceStatus | None) -> None:
        if after is None:
            return
        self.transitions.labels(after.state.value).inc()
        if after.restarts > before.status.restarts:
            self.restarts.inc(after.restarts - before.status.restarts)


def serve_metrics(metrics: Metrics, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's port
    start_http_server(port, addr=addr, registry=metrics.registry)


class HealthServer:
    """/healthz and /readyz from two callables, on a port of its own (a daemon thread)."""

    def __init__(self, port: int, alive: Callable[[], bool], ready: Callable[[], bool],
                 addr: str = "0.0.0.0") -> None:  # noqa: S104 - probed by the kubelet
        checks = {"/healthz": alive, "/livez": alive, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?", 1)[0])
                ok = check is not None and check()
                body = b"ok\n" if ok else (b"not found\n" if check is None else b"not ready\n")
                self.send_response(200 if ok else 404 if check is None else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:  # probes are not news
                return

        self.server = ThreadingHTTPServer((addr, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="health")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
