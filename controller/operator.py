"""`converge operator`: the runtime of `converge run`, over the API server, with kopf.

The same Runtime, Reconciler, core and backends as local mode; this module adds only the
Kubernetes plumbing around them:
- kopf watches the ManagedServices (namespaces or the whole cluster) and hands every
  event's key to the runtime's queue (level-triggered: the key, never the event), and the
  object to KubeStore's cache, which the passes read instead of asking the server. Its
  own bookkeeping stays off the objects: event-watching handlers only, no progress or
  diff-base annotations, no kopf finalizer, no peering objects, no handler events.
  Our own status writes coming back as events are recognised and dropped.
- KubeStore reads (from that cache) and writes (status through the status subresource,
  only on change; its resourceVersion/generation guards still refuse a stale write).
- Events on the objects for transitions (converge.events), Prometheus metrics and
  /healthz, /readyz (converge.metrics).
- Leader election on a coordination.k8s.io Lease (the kubernetes client's LeaseLock):
  only the leader reconciles; a standby takes over once the lease expires; a leader
  that cannot renew exits non-zero (its pod restarts as a standby).
- Backends that run programs on the operator's own host (daemon, container, terraform)
  are disabled unless enabled: their services get Stalled, reason BackendDisabled.
SIGTERM stops gracefully: in-flight passes finish, services keep running, and the next
operator adopts them.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from converge.api import API_GROUP, API_VERSION
from converge.events import EventRecorder
from converge.host import Host
from converge.kubestore import PLURAL, KubeStore, api_client
from converge.metrics import HealthServer, Metrics, serve_metrics
from converge.reconciler import Reconciler
from converge.registry import cluster_backends
from converge.runtime import Runtime

log = logging.getLogger("converge.operator")

DEFAULT_BACKENDS = frozenset({"kubernetes"})
HOST_BACKENDS = ("daemon", "container", "terraform")  # they run programs on the operator's host
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    enabled: frozenset[str] = DEFAULT_BACKENDS
    leader_elect: bool = False
    lease_name: str = "converge-operator"
    lease_namespace: str | None = None  # default: the pod's namespace, else "default"
    lease_seconds: float = 15.0
    health_port: int = 8080  # 0: none
    metrics_port: int = 9090  # 0: none
    state_dir: Path = field(default_factory=lambda: Path("/tmp/converge"))  # noqa: S108 - an emptyDir in the pod
    workers: int = 8
    resync: float = 60.0
    kubeconfig: str | None = None
    context: str | None = None
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


def _load_global_config(opts: Options) -> None:
    """kopf's login and the LeaseLock use the kubernetes client's default configuration."""
    if opts.kubeconfig is None and opts.context is None:
        try:
            k8s_config.load_incluster_config()
            return
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(config_file=opts.kubeconfig, context=opts.context)


def _connection_info() -> kopf.ConnectionInfo:
    """kopf's credentials from the kubernetes client's loaded configuration (kubeconfig
    file and context, or in-cluster): the same identity for watching and writing."""
    cfg = k8s_client.Configuration.get_default_copy()
    auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken") or ""
    scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        username=cfg.username or None, password=cfg.password or None,
        scheme=scheme if token else None, token=token or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file)


def _lease_namespace(opts: Options) -> str:
    if opts.lease_namespace:
        return opts.lease_namespace
    try:
        return SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection (a deep copy and a diff of every event's object, for
    on.create/on.update handlers) has nobody to tell here: event handlers only. Skipped."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class Operator:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        _load_global_config(opts)
        api = api_client(opts.kubeconfig, opts.context)
        self.store = KubeStore(api, namespaces=opts.namespaces)
        self.reconciler = Reconciler(self.store, cluster_backends(opts.kubeconfig, opts.context, set(opts.enabled)),
                                     Host(opts.state_dir))
        self.runtime = Runtime(self.reconciler, workers=opts.workers, resync=opts.resync)
        self.metrics = Metrics(self.runtime)
        self.events = EventRecorder(api, instance=opts.identity)

        def transition(before: Any, after: Any) -> None:
            self.metrics.transition(before, after)
            self.events.transition(before, after)

        self.reconciler.on_transition = transition
        self.runtime.on_outcome = self.metrics.observe
        self.stop = threading.Event()
        self.leading = threading.Event()
        self.lost = threading.Event()
        self.watching = threading.Event()  # kopf's ready flag: its watches are up
        self._runtime_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ health

    def alive(self) -> bool:
        t = self._runtime_thread
        return not self.lost.is_set() and (t is None or t.is_alive() or self.stop.is_set())

    def ready(self) -> bool:
        """A standby is ready (it is healthy and waits); a leader once kopf watches."""
        return self.alive() and (not self.leading.is_set() or self.watching.is_set())

    # ------------------------------------------------------------------ kopf

    def _registry(self) -> kopf.OperatorRegistry:
        reg = kopf.OperatorRegistry()
        store, runtime = self.store, self.runtime

        @kopf.on.startup(registry=reg)
        def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.peering.standalone = True  # leader election is ours (a Lease)
            # Our namespaces are names, not globs, and our resource is known: no cluster-wide
            # scanning of namespaces or CRDs (RBAC on those is not ours to ask for).
            settings.scanning.disabled = True
            settings.posting.enabled = False  # our Events are about services, not handlers
            settings.persistence.diffbase_storage = _NoDiffBase()
            settings.watching.server_timeout = 300
            settings.networking.request_timeout = 60

        @kopf.on.login(registry=reg)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return _connection_info()

        @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=reg)
        async def on_event(event: kopf.RawEvent, **_: Any) -> None:
            # The object as the event brings it is what the passes read (no GET of their
            # own); our own writes coming back need no pass.
            key = store.seen(event.get("type"), event.get("object") or {})
            if key is not None:
                runtime.enqueue(key)

        return reg

    # ------------------------------------------------------------------ leader election

    def _elect(self) -> None:
        try:
            lock = LeaseLock(self.opts.lease_name, _lease_namespace(self.opts), self.opts.identity)
            lease = max(3, round(self.opts.lease_seconds))  # whole seconds: the Lease's own unit
            config = electionconfig.Config(lock, lease_duration=lease, renew_deadline=max(2, lease * 2 // 3),
                                           retry_period=max(1, lease // 5), onstarted_leading=self._lead,
                                           onstopped_leading=self._lose)
            leaderelection.LeaderElection(config).run()
        except Exception:  # never stand by forever behind a dead elector
            log.exception("%s: leader election failed", self.opts.identity)
            self.lost.set()
            self.stop.set()
            os.kill(os.getpid(), signal.SIGTERM)

    def _lead(self) -> None:
        log.info("%s: leading (lease %s)", self.opts.identity, self.opts.lease_name)
        self.leading.set()
        self.stop.wait()  # returning would not end leadership; the renew loop runs meanwhile

    def _lose(self) -> None:
        if self.stop.is_set():
            return
        log.error("%s: lost the lease %s: stopping", self.opts.identity, self.opts.lease_name)
        self.lost.set()
        self.stop.set()
        os.kill(os.getpid(), signal.SIGTERM)  # ends kopf's loop in the main thread

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        opts = self.opts
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: every thread's stack
        # kopf says "Handler ... succeeded" for every watch event: not news at 1,000 objects.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        health = HealthServer(opts.health_port, self.alive, self.ready) if opts.health_port else None
        if health is not None:
            health.start()
        if opts.metrics_port:
            serve_metrics(self.metrics, opts.metrics_port)
        disabled = [b for b in HOST_BACKENDS if b not in opts.enabled]
        log.info("operator %s: namespaces %s; backends enabled: %s%s", opts.identity,
                 ", ".join(opts.namespaces) or "all", ", ".join(sorted(opts.enabled)),
                 f" (disabled: {', '.join(disabled)})" if disabled else "")
        try:
            if opts.leader_elect and not self._wait_for_leadership():
                return 1 if self.lost.is_set() else 0
            self.leading.set()
            self._runtime_thread = threading.Thread(target=self.runtime.run, args=(self.stop,),
                                                    kwargs={"watch": False}, daemon=True, name="runtime")
            self._runtime_thread.start()
            # kopf stops on SIGTERM/SIGINT (its own handlers in this, the main thread); a lost
            # lease sends this process a SIGTERM. (A threading.Event as kopf's stop flag would
            # be waited for in an executor thread that asyncio.run then waits for in turn.)
            asyncio.run(kopf.operator(registry=self._registry(), clusterwide=not opts.namespaces,
                                      namespaces=list(opts.namespaces), standalone=True,
                                      ready_flag=self.watching))
        finally:
            self.stop.set()
            if self._runtime_thread is not None:
                self._runtime_thread.join(timeout=60)
            self.events.close()
            if health is not None:
                health.close()
        return 1 if self.lost.is_set() else 0

    def _wait_for_leadership(self) -> bool:
        """Stand by until this process holds the lease (True) or is told to stop (False)."""
        previous = {sig: signal.signal(sig, lambda *_: self.stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            threading.Thread(target=self._elect, daemon=True, name="leader-election").start()
            log.info("%s: standing by for the lease %s/%s", self.opts.identity, _lease_namespace(self.opts),
                     self.opts.lease_name)
            while not self.leading.wait(0.2):
                if self.stop.is_set():
                    return False
            return not self.stop.is_set()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(opts: Options) -> int:
    return Operator(opts).run()
