"""The kubernetes backend: services as a Deployment + Service, through the kubernetes client.

Implements converge.backends.base.Backend for `spec.backend.kubernetes`. The cluster is the
one the operator runs in (in-cluster config), else the one the kubeconfig names
(KUBECONFIG, ~/.kube/config; CONVERGE_KUBE_CONTEXT picks a context), connected lazily.
Manifests, drift and the status -> Observation map are pure and live in
converge.backends.kubernetes_objects.

    provision    server-side apply of the Deployment and Service under the field manager
                 `converge` (force: converge owns those fields), so a spec change rolls the
                 Deployment and a resume scales it back up without re-creating anything.
                 ownerReferences to the ManagedService only when that object exists in this
                 cluster with the service's uid (cluster mode); in local mode there is no such
                 object and the garbage collector would delete children of a missing owner.
    suspend      the Deployment scaled to 0 and marked suspended (the Service stays)
    deprovision  delete both (foreground: the Deployment goes after its pods) and wait
                 until they are gone
    observe      the Deployment's rollout (and, while it is not complete, its pods' waiting
                 reasons) -> pending / available / failed; edits by hand -> drifted
    watch        a thread per namespace in use following converge's Deployments and
                 Services -> notify(key): drift and rollout progress are event-driven
    logs         the pods' container logs

API errors become converge.backends.errors in one place (`_map_error`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from converge.api import ServiceKey
from converge.backends import kubernetes_objects as ko
from converge.backends.base import Notify, Observation, Phase, Target
from converge.backends.errors import BackendError, BackendUnavailable, PermanentError, TemporaryError

log = logging.getLogger(__name__)

TIMEOUT = (5.0, 30.0)  # connect, read seconds of one API call
DELETE_WAIT = 120.0  # seconds deprovision waits for the Deployment and its pods to go
WATCH_SECONDS = 300  # one watch request; then it is renewed from the last resourceVersion
WATCH_BACKOFF = (0.5, 10.0)
LOG_TAIL_LINES = 10
APPLY = "application/apply-patch+yaml"
MANAGED = f"{ko.LABEL_MANAGED_BY}={ko.MANAGER}"

T = TypeVar("T")
ClientFactory = Callable[[], k8s.ApiClient]


_UNSET_HOST = k8s.Configuration().host  # what the client's default configuration says until one is loaded


def default_client() -> k8s.ApiClient:
    """The configuration this process already loaded (the operator loads its --kubeconfig /
    in-cluster config for kopf and the Lease), else in a pod its service account, else the
    kubeconfig ($KUBECONFIG, ~/.kube/config; $CONVERGE_KUBE_CONTEXT picks a context)."""
    if k8s.Configuration.get_default_copy().host != _UNSET_HOST:
        return k8s.ApiClient()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config()
        return k8s.ApiClient()
    api: k8s.ApiClient = k8s_config.new_client_from_config(context=os.environ.get("CONVERGE_KUBE_CONTEXT") or None)
    return api


def _map_error(exc: BaseException, what: str) -> BackendError:
    """The one place client / transport errors become ours."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ApiException):
        msg = f"{what}: {ko.status_message(exc.body, str(exc.reason or exc))}"
        status = exc.status or 0
        if status in (400, 422):
            return PermanentError(msg, reason="InvalidSpec")
        if status in (401, 403):
            return TemporaryError(msg, reason="Forbidden")
        if status == 404:
            return TemporaryError(msg, reason="NotFound")
        if status == 409:
            return TemporaryError(msg, reason="Conflict")
        if status == 0 or status >= 500:
            return BackendUnavailable(msg)
        return TemporaryError(msg, reason="KubernetesError")
    if isinstance(exc, ConfigException):
        return BackendUnavailable(f"{what}: no Kubernetes cluster configured ({exc})")
    return BackendUnavailable(f"{what}: cannot reach the Kubernetes API ({exc})")


_MAPPED = (ApiException, ConfigException, urllib3.exceptions.HTTPError, OSError)


def _json(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.data)
    return data


class KubernetesBackend:
    kind = "kubernetes"
    owns_endpoint = True  # a Service in the cluster: no host port, no probe from this host

    def __init__(self, client_factory: ClientFactory | None = None) -> None:
        self._factory = client_factory or default_client
        self._client: k8s.ApiClient | None = None
        self._mu = threading.Lock()
        self._owned: dict[tuple[ServiceKey, str], bool] = {}
        self._notify: Notify | None = None
        self._watched: set[str] = set()
        self._watches: list[k8s_watch.Watch] = []
        self._stop = threading.Event()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> KubernetesBackend:
        """The backend for the cluster a kubeconfig file (and context) names, e.g. the one
        `--kubeconfig/--context` chose for the store; None: as default_client."""
        if kubeconfig is None and context is None:
            return cls()
        return cls(lambda: k8s_config.new_client_from_config(config_file=kubeconfig, context=context))

    # ------------------------------------------------------------------ plumbing

    def _api(self) -> k8s.ApiClient:
        with self._mu:
            if self._client is None:
                try:
                    self._client = self._factory()
                except _MAPPED as exc:
                    raise _map_error(exc, "connect") from None
            return self._client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except _MAPPED as exc:
            raise _map_error(exc, what) from None

    def _get(self, what: str, fn: Callable[[], Any]) -> dict[str, Any] | None:
        """A GET of one object as plain JSON; None when it does not exist."""
        try:
            return _json(fn())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _map_error(exc, what) from None
        except _MAPPED as exc:
            raise _map_error(exc, what) from None

    def _is_owned(self, target: Target) -> bool:
        """Cluster mode: the ManagedService itself lives in this cluster with this uid."""
        cache_key = (target.key, target.uid)
        if cache_key in self._owned:
            return self._owned[cache_key]
        api = k8s.CustomObjectsApi(self._api())
        try:
            obj = _json(api.get_namespaced_custom_object(
                "converge.dev", "v1alpha1", target.key.namespace, "managedservices", target.key.name,
                _preload_content=False, _request_timeout=TIMEOUT))
            owned = bool(target.uid) and obj.get("metadata", {}).get("uid") == target.uid
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise _map_error(exc, "read the ManagedService") from None
            owned = False  # no such object (local mode) or not ours to read
        except _MAPPED as exc:
            raise _map_error(exc, "read the ManagedService") from None
        self._owned[cache_key] = owned
        return owned

    # ------------------------------------------------------------------ interface

    def provision(self, target: Target) -> Mapping[str, Any]:
        self._ensure_watch(target.key.namespace)
        owner = self._is_owned(target)
        self._apply_deployment(target, ko.deployment(target, owner=owner))
        self._apply_service(target, ko.service(target, owner=owner))
        details: dict[str, Any] = {"deployment": ko.object_name(target.key.name), "namespace": target.key.namespace}
        uri = ko.endpoint_uri(target)
        if ko.service(target, owner=owner) is not None:
            details["service"] = ko.object_name(target.key.name)
        if uri is not None:
            details["endpoint"] = uri
            details["endpointPort"] = ko.endpoint_port(target.config, target.endpoint)
        return details

    def suspend(self, target: Target) -> None:
        self._ensure_watch(target.key.namespace)
        owner = self._is_owned(target)
        self._apply_deployment(target, ko.deployment(target, owner=owner, suspended=True))

    def deprovision(self, target: Target) -> None:
        ns, name = target.key.namespace, ko.object_name(target.key.name)
        apps, core = k8s.AppsV1Api(self._api()), k8s.CoreV1Api(self._api())
        body = k8s.V1DeleteOptions(propagation_policy="Foreground")
        for what, delete in (
            ("delete the Deployment", lambda: apps.delete_namespaced_deployment(
                name, ns, body=body, _request_timeout=TIMEOUT)),
            ("delete the Service", lambda: core.delete_namespaced_service(name, ns, _request_timeout=TIMEOUT)),
        ):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise _map_error(exc, what) from None
            except _MAPPED as exc:
                raise _map_error(exc, what) from None
        deadline = time.monotonic() + DELETE_WAIT
        while True:
            dep = self._get("read the Deployment", lambda: apps.read_namespaced_deployment(
                name, ns, _preload_content=False, _request_timeout=TIMEOUT))
            svc = self._get("read the Service", lambda: core.read_namespaced_service(
                name, ns, _preload_content=False, _request_timeout=TIMEOUT))
            if dep is None and svc is None:
                self._owned.pop((target.key, target.uid), None)
                return
            if time.monotonic() > deadline:
                raise TemporaryError(f"Deployment {ns}/{name} is still being deleted after {DELETE_WAIT:g}s",
                                     reason="Deleting")
            time.sleep(0.2)

    def observe(self, target: Target) -> Observation:
        self._ensure_watch(target.key.namespace)
        ns, name = target.key.namespace, ko.object_name(target.key.name)
        apps, core = k8s.AppsV1Api(self._api()), k8s.CoreV1Api(self._api())
        dep = self._get("read the Deployment", lambda: apps.read_namespaced_deployment(
            name, ns, _preload_content=False, _request_timeout=TIMEOUT))
        if dep is None:
            return Observation(Phase.absent)
        svc = self._get("read the Service", lambda: core.read_namespaced_service(
            name, ns, _preload_content=False, _request_timeout=TIMEOUT))
        if (dep.get("metadata") or {}).get("deletionTimestamp"):
            return Observation(Phase.error, f"Deployment {ns}/{name} is being deleted")
        pods: list[dict[str, Any]] = []
        if not ko.rollout_complete(dep):
            pods = self._pods(target)
        return ko.observe(target, dep, svc, pods, owner=self._is_owned(target))

    def logs(self, target: Target, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        core = k8s.CoreV1Api(self._api())
        pods = sorted(self._pods(target), key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""))
        if not pods:
            return
        if follow:
            pods = pods[-1:]  # the newest pod, followed
        many = len(pods) > 1
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            try:
                resp: Any = core.read_namespaced_pod_log(
                    pod_name, target.key.namespace, container=ko.CONTAINER, follow=follow, tail_lines=tail,
                    _preload_content=False, _request_timeout=None if follow else TIMEOUT)
            except ApiException as exc:
                if exc.status in (400, 404):  # not started yet / gone
                    continue
                raise _map_error(exc, f"logs of pod {pod_name}") from None
            except _MAPPED as exc:
                raise _map_error(exc, f"logs of pod {pod_name}") from None
            try:
                for line in k8s_watch.watch.iter_resp_lines(resp):
                    yield f"[{pod_name}] {line}" if many else line
            finally:
                resp.release_conn()

    def watch(self, notify: Notify) -> None:
        with self._mu:
            self._notify = notify
            namespaces = list(self._watched)
            self._watched.clear()
        for ns in namespaces:
            self._ensure_watch(ns)

    def close(self) -> None:
        self._stop.set()
        with self._mu:
            watches, self._watches = self._watches, []
            client, self._client = self._client, None
        for w in watches:
            w.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------------ parts

    def _apply_deployment(self, target: Target, manifest: dict[str, Any]) -> None:
        apps = k8s.AppsV1Api(self._api())
        self._call("apply the Deployment", lambda: apps.patch_namespaced_deployment(
            manifest["metadata"]["name"], target.key.namespace, manifest, field_manager=ko.MANAGER, force=True,
            _content_type=APPLY, _preload_content=False, _request_timeout=TIMEOUT))

    def _apply_service(self, target: Target, manifest: dict[str, Any] | None) -> None:
        core = k8s.CoreV1Api(self._api())
        name = ko.object_name(target.key.name)
        if manifest is None:  # no port (any more): no Service
            try:
                core.delete_namespaced_service(name, target.key.namespace, _request_timeout=TIMEOUT)
            except ApiException as exc:
                if exc.status != 404:
                    raise _map_error(exc, "delete the Service") from None
            except _MAPPED as exc:
                raise _map_error(exc, "delete the Service") from None
            return
        self._call("apply the Service", lambda: core.patch_namespaced_service(
            name, target.key.namespace, manifest, field_manager=ko.MANAGER, force=True,
            _content_type=APPLY, _preload_content=False, _request_timeout=TIMEOUT))

    def _pods(self, target: Target) -> list[dict[str, Any]]:
        core = k8s.CoreV1Api(self._api())
        selector = ",".join(f"{k}={v}" for k, v in ko.selector(target).items())
        resp = self._call("list the pods", lambda: core.list_namespaced_pod(
            target.key.namespace, label_selector=selector, _preload_content=False, _request_timeout=TIMEOUT))
        items: list[dict[str, Any]] = _json(resp).get("items") or []
        return items

    # ------------------------------------------------------------------ watch

    def _ensure_watch(self, namespace: str) -> None:
        """Follow converge's Deployments and Services in this namespace (once per namespace)."""
        with self._mu:
            if self._notify is None or namespace in self._watched or self._stop.is_set():
                self._watched.add(namespace)
                return
            self._watched.add(namespace)
        for kind in ("deployments", "services"):
            threading.Thread(target=self._watch_loop, args=(namespace, kind), daemon=True,
                             name=f"converge-kube-watch-{namespace}-{kind}").start()

    def _list_func(self, kind: str) -> Callable[..., Any]:
        if kind == "deployments":
            return k8s.AppsV1Api(self._api()).list_namespaced_deployment
        return k8s.CoreV1Api(self._api()).list_namespaced_service

    def _watch_loop(self, namespace: str, kind: str) -> None:
        """List, then watch from the list's resourceVersion, renewing the watch from the last
        one seen; after an error or 410 Gone, list again and notify every object listed
        (whatever changed meanwhile)."""
        delay = WATCH_BACKOFF[0]
        rv: str | None = None
        first = True
        while not self._stop.is_set():
            try:
                list_func = self._list_func(kind)
                if rv is None:
                    listed = _json(list_func(namespace, label_selector=MANAGED, _preload_content=False,
                                             _request_timeout=TIMEOUT))
                    if not first:
                        for item in listed.get("items") or ():
                            self._fire(namespace, (item.get("metadata") or {}).get("labels") or {})
                    first = False
                    rv = str(listed["metadata"]["resourceVersion"])
                w = k8s_watch.Watch()
                with self._mu:
                    self._watches.append(w)
                try:
                    for event in w.stream(list_func, namespace, label_selector=MANAGED, resource_version=rv,
                                          allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                                          _request_timeout=(TIMEOUT[0], WATCH_SECONDS + 30)):
                        if self._stop.is_set():
                            return
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            meta = event["raw_object"].get("metadata") or {}
                            self._fire(namespace, meta.get("labels") or {})
                        rv = w.resource_version or rv
                        delay = WATCH_BACKOFF[0]
                finally:
                    with self._mu, contextlib.suppress(ValueError):
                        self._watches.remove(w)
            except Exception as exc:  # the loop must survive anything the API does
                if self._stop.is_set():
                    return
                rv = None
                log.debug("watch of %s in %s: %s; again in %.1fs", kind, namespace, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, WATCH_BACKOFF[1])

    def _fire(self, namespace: str, labels: Mapping[str, str]) -> None:
        name = labels.get(ko.LABEL_SERVICE)
        notify = self._notify
        if name and notify is not None:
            notify(ServiceKey(namespace, name))
