"""KubeStore: the Store over the Kubernetes API server (ManagedService custom resources).

The same contract as the FileStore (converge.store), kept by the API server itself:
optimistic concurrency on resourceVersion (a stale one is a Conflict, never an
overwrite), deletion held by finalizers, label selectors evaluated server-side. Status
goes through the status subresource as one JSON patch guarded by `test` operations on
the object's uid and generation, so a writer of metadata (a label, a finalizer) never
makes a status write conflict, while a status planned for an older spec or a deleted
and re-created object is refused (Conflict). `watch` lists, then watches with
bookmarks, and lists again when the API server answers 410 Gone.

Reads: the operator feeds the store kopf's watch events (`seen`) and its own writes'
answers, and `get` answers from them (converge.kubecache) instead of a request; a write
the server refuses makes the next read go to the server. Fed by nobody (the CLI), every
read is a request.

API errors become the store's own at one place (`_error`): 404 NotFound, 409
AlreadyExists/Conflict, 422 Invalid, 401/403 Forbidden, anything unreachable Unavailable.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from converge.api import API_GROUP, API_VERSION, GROUP_VERSION, KIND, ManagedService, ServiceKey
from converge.backends.kubernetes_objects import status_message
from converge.kubecache import ObjectCache
from converge.selector import Selector
from converge.store import (
    AlreadyExists,
    Conflict,
    CorruptObject,
    Forbidden,
    Invalid,
    ListResult,
    NotFound,
    StoreError,
    Unavailable,
)

log = logging.getLogger("converge.kubestore")

PLURAL = "managedservices"
FIELD_MANAGER = "converge"
_META = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
         "creationTimestamp", "deletionTimestamp", "finalizers")
_TIMEOUT = (5.0, 30.0)  # connect, read (seconds) for every request but watches
WATCH_SECONDS = 30  # server-side timeout of one watch request; the loop re-watches
_PATCH_TEST_FAILED = "the server rejected our request due to an error in our request"

def api_client(kubeconfig: str | Path | None = None, context: str | None = None) -> k8s.ApiClient:
    """An API client from a kubeconfig (file, or $KUBECONFIG / ~/.kube/config) and
    context, or the in-cluster service account when there is neither."""
    cfg = k8s.Configuration()
    try:
        if kubeconfig is None and context is None:
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(client_configuration=cfg)
        else:
            k8s_config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context,
                                        client_configuration=cfg)
    except (k8s_config.ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "kubeconfig"
        if isinstance(exc, yaml.YAMLError):
            exc = ValueError("not valid YAML: " + " ".join(str(exc).split()))
        raise Unavailable(f"{where}{f' context {context}' if context else ''}: {exc}") from None
    cfg.retries = False  # an unreachable server is reported at once; callers decide to retry
    return k8s.ApiClient(cfg)


def context_namespace(kubeconfig: str | Path | None = None, context: str | None = None) -> str:
    """The namespace the kubeconfig's context names (kubectl's default), else "default"."""
    try:
        contexts, active = k8s_config.list_kube_config_contexts(str(kubeconfig) if kubeconfig else None)
    except (k8s_config.ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def request_json(api: k8s.ApiClient, method: str, path: str, body: Any = None,
                 content_type: str = "application/json") -> Any:
    """One request through the client's REST layer and authentication, without the
    generated API method around them: its validation of every argument and walks over the
    body cost as much CPU as the request itself, and the operator makes these for every
    object (finalizer, status, Event). The answer's JSON; ApiException for an error status."""
    headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": api.user_agent}
    api.update_params_for_auth(headers, None, ["BearerToken"], path, method, None)
    resp = api.rest_client.request(method, api.configuration.host + path, headers=headers, body=body,
                                   _request_timeout=_TIMEOUT)
    raw = resp.read()
    if not 200 <= resp.status < 300:
        raise ApiException(status=resp.status, reason=resp.reason, body=raw.decode("utf-8", "replace"))
    return json.loads(raw)


def _error(exc: Exception, what: str, creating: bool = False) -> NoReturn:
    """The API's errors as the store's, naming the object."""
    if isinstance(exc, ApiException):
        msg = status_message(exc.body, str(exc.reason or exc))
        match exc.status:
            case 404:
                raise NotFound(what) from None
            case 409 if creating:
                raise AlreadyExists(what) from None
            case 409:
                raise Conflict(f"{what}: {msg}") from None
            case 422:
                raise Invalid(msg) from None
            case 401 | 403:
                raise Forbidden(msg) from None
            case 0 | None:
                raise Unavailable(f"{what}: {msg}") from None
            case _ if exc.status >= 500:
                raise Unavailable(f"{what}: API server error {exc.status}: {msg}") from None
            case _:
                raise StoreError(f"{what}: API error {exc.status}: {msg}") from None
    raise Unavailable(f"{what}: API server unreachable: {exc}") from None


def from_api(data: dict[str, Any]) -> ManagedService:
    """A ManagedService from the API server's JSON (server-only metadata dropped)."""
    meta = data.get("metadata") or {}
    return ManagedService.model_validate({
        "apiVersion": GROUP_VERSION, "kind": KIND,
        "metadata": {k: meta[k] for k in _META if meta.get(k) is not None},
        "spec": data.get("spec") or {},
        "status": data.get("status") or {},
    })


def _json_numbers(value: Any) -> Any:
    """Integral floats as integers: the API server keeps 10 and 10.0 apart (int64 vs
    float64), so sending back 10.0 for a stored 10 would count as a spec change."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    return value


def to_api(obj: ManagedService, *, server_fields: bool) -> dict[str, Any]:
    """The JSON sent to the API server: never status (its own subresource); the server's
    metadata fields only when updating (resourceVersion is the concurrency token)."""
    body: dict[str, Any] = _json_numbers(obj.dump())
    body.pop("status", None)
    meta = body["metadata"]
    drop = ("uid", "generation", "creationTimestamp", "deletionTimestamp")
    for k in (*drop, "resourceVersion") if not server_fields else drop:
        meta.pop(k, None)
    return body


class KubeStore:
    def __init__(self, api: k8s.ApiClient, namespaces: tuple[str, ...] = ()) -> None:
        self.api = api
        self.objects = k8s.CustomObjectsApi(api)
        self.writes = 0  # write requests made by this instance
        # Non-empty: this store sees only these namespaces (an operator with namespaced
        # RBAC): listing "all" lists each of them.
        self.namespaces = namespaces
        # What a watch told (`seen`, the operator's kopf events) and our writes returned:
        # `get` answers from it instead of a request. Nobody feeding it (the CLI), it stays
        # empty and every read goes to the server.
        self.cache: ObjectCache[ManagedService] = ObjectCache(self._read)

    def seen(self, kind: str | None, raw: Mapping[str, Any]) -> ServiceKey | None:
        """A watch event of a ManagedService (kind ADDED/MODIFIED/DELETED, None when
        listed): kept for `get`. Returns the key when it needs a pass, None when it is our
        own write coming back (the pass that wrote it already knows)."""
        return self.cache.seen(kind, raw)

    def _wrote(self, obj: ManagedService, *, created: bool = False) -> ManagedService:
        self.writes += 1
        if not created:  # a new object needs its first pass, whoever made it
            self.cache.wrote(obj.key, obj.metadata.resourceVersion, obj)
        return obj

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | Path | None = None, context: str | None = None) -> KubeStore:
        return cls(api_client(kubeconfig, context))

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, creating: bool = False,
              key: ServiceKey | None = None, **kw: Any) -> Any:
        """One request; the API's error as the store's. `key`: the object it reads or writes,
        read from the server next time when this fails (a Conflict: the cache is behind)."""
        try:
            return fn(*args, _request_timeout=_TIMEOUT, **kw)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            if key is not None:
                self.cache.forget(key)
            _error(exc, what, creating)

    def _patch(self, key: ServiceKey, body: Any, content_type: str, subresource: str = "") -> Any:
        path = (f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{quote(key.namespace)}/{PLURAL}/{quote(key.name)}"
                f"{'/' + subresource if subresource else ''}?fieldManager={FIELD_MANAGER}")
        return self._call(str(key), lambda _request_timeout: request_json(self.api, "PATCH", path, body, content_type),
                          key=key)

    def _read(self, data: Any, what: str | None = None) -> ManagedService:
        try:
            return from_api(data)
        except ValidationError as exc:
            meta = data.get("metadata") or {}
            key = ServiceKey(meta.get("namespace", ""), meta.get("name", "")) if meta.get("name") else None
            raise CorruptObject(what or str(key), str(exc).replace("\n", "; "), key) from None

    # ------------------------------------------------------------------ reads

    def get(self, key: ServiceKey) -> ManagedService:
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        data = self._call(str(key), self.objects.get_namespaced_custom_object,
                          API_GROUP, API_VERSION, key.namespace, PLURAL, key.name, key=key)
        return self._read(data, str(key))

    def list(self, namespace: str | None = None, selector: Selector | None = None) -> ListResult:
        if namespace is None and self.namespaces:
            out = ListResult()
            for ns in self.namespaces:
                part, _ = self._list(ns, selector)
                out.items += part.items
                out.errors += part.errors
            return out
        items, _ = self._list(namespace, selector)
        return items

    def _list(self, namespace: str | None, selector: Selector | None = None) -> tuple[ListResult, str]:
        kw: dict[str, Any] = {}
        if selector is not None and selector.requirements:
            kw["label_selector"] = selector.query()
        data: dict[str, Any]
        if namespace:
            data = self._call(f"{PLURAL} in namespace {namespace}", self.objects.list_namespaced_custom_object,
                              API_GROUP, API_VERSION, namespace, PLURAL, **kw)
        else:
            data = self._call(PLURAL, self.objects.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL, **kw)
        out = ListResult()
        for item in data.get("items") or []:
            meta = item.get("metadata") or {}
            try:
                out.items.append(self._read(item, f"{meta.get('namespace')}/{meta.get('name')}"))
            except CorruptObject as exc:
                out.errors.append(exc)
        out.items.sort(key=lambda o: o.key)
        rv = str((data.get("metadata") or {}).get("resourceVersion") or "")
        if not kw:  # everything there is: what the cache holds and the list lacks is gone
            self.cache.listed(namespace, [o.key for o in out.items] + [e.key for e in out.errors if e.key], rv)
        return out, rv

    # ------------------------------------------------------------------ writes

    def create(self, obj: ManagedService) -> ManagedService:
        data = self._call(str(obj.key), self.objects.create_namespaced_custom_object,
                          API_GROUP, API_VERSION, obj.metadata.namespace, PLURAL, to_api(obj, server_fields=False),
                          creating=True, field_manager=FIELD_MANAGER)
        return self._wrote(self._read(data, str(obj.key)), created=True)

    def update(self, obj: ManagedService) -> ManagedService:
        body = to_api(obj, server_fields=True)
        if obj.metadata.resourceVersion is None:  # unconditional, as the FileStore allows
            body["metadata"]["resourceVersion"] = self.get(obj.key).metadata.resourceVersion
        data = self._call(str(obj.key), self.objects.replace_namespaced_custom_object,
                          API_GROUP, API_VERSION, obj.metadata.namespace, PLURAL, obj.metadata.name, body,
                          field_manager=FIELD_MANAGER, key=obj.key)
        return self._wrote(self._read(data, str(obj.key)))

    def set_finalizers(self, obj: ManagedService, finalizers: Sequence[str]) -> ManagedService:
        body: dict[str, Any] = {"metadata": {"finalizers": [*finalizers],
                                             "resourceVersion": obj.metadata.resourceVersion}}
        if obj.metadata.resourceVersion is None:
            body["metadata"].pop("resourceVersion")
        data = self._patch(obj.key, body, "application/merge-patch+json")
        return self._wrote(self._read(data, str(obj.key)))

    def update_status(self, obj: ManagedService) -> ManagedService:
        patch: list[dict[str, Any]] = []
        if obj.metadata.uid is not None:
            patch.append({"op": "test", "path": "/metadata/uid", "value": obj.metadata.uid})
        if obj.metadata.generation is not None:
            patch.append({"op": "test", "path": "/metadata/generation", "value": obj.metadata.generation})
        status = _json_numbers(obj.status.model_dump(mode="json", exclude_none=True))
        patch.append({"op": "add", "path": "/status", "value": status})
        try:
            data = self._patch(obj.key, patch, "application/json-patch+json", "status")
        except Invalid as exc:
            # A failed `test` operation is a bare 422 without causes; a status the schema
            # refuses names its fields.
            if str(exc) == _PATCH_TEST_FAILED:
                raise Conflict(f"{obj.key}: changed since it was read (generation or uid); read it again") from None
            raise
        return self._wrote(self._read(data, str(obj.key)))

    def delete(self, key: ServiceKey, resource_version: str | None = None) -> None:
        body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version=resource_version)) \
            if resource_version else k8s.V1DeleteOptions()
        self._call(str(key), self.objects.delete_namespaced_custom_object,
                   API_GROUP, API_VERSION, key.namespace, PLURAL, key.name, body=body, key=key)
        self.writes += 1

    # ------------------------------------------------------------------ watch

    def watch(self, stop: object, namespace: str | None = None, resource_version: str = "") -> Iterator[ServiceKey]:
        """Keys of objects that changed, until stop is set: list, then watch from the list's
        resourceVersion with bookmarks; on 410 Gone (or any broken stream) list again and
        report every key of the new list. `resource_version`: watch from there instead of
        listing first."""
        is_set: Callable[[], bool] = getattr(stop, "is_set", lambda: False)
        wait: Callable[[float], object] = getattr(stop, "wait", threading.Event().wait)
        rv = resource_version
        while not is_set():
            if not rv:
                try:
                    listed, rv = self._list(namespace)
                except StoreError as exc:
                    log.warning("watch: list failed: %s; retrying", exc)
                    wait(2.0)
                    continue
                for o in listed.items:
                    yield o.key
                for e in listed.errors:
                    if e.key is not None:
                        yield e.key
            w = k8s_watch.Watch()
            if namespace:
                fn: Callable[..., Any] = self.objects.list_namespaced_custom_object
                args: tuple[Any, ...] = (API_GROUP, API_VERSION, namespace, PLURAL)
            else:
                fn = self.objects.list_cluster_custom_object
                args = (API_GROUP, API_VERSION, PLURAL)
            try:
                for ev in w.stream(fn, *args, resource_version=rv, allow_watch_bookmarks=True,
                                   timeout_seconds=WATCH_SECONDS, _request_timeout=(5.0, WATCH_SECONDS + 10)):
                    kind = ev.get("type")
                    raw = ev.get("raw_object") or ev.get("object") or {}
                    if kind == "ERROR":
                        if raw.get("code") == 410:
                            rv = ""  # too old: list again
                            break
                        raise ApiException(status=raw.get("code"), reason=raw.get("message"))
                    meta = raw.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        rv = str(meta["resourceVersion"])
                    if kind == "BOOKMARK":
                        continue
                    if meta.get("name") and meta.get("namespace"):
                        yield ServiceKey(meta["namespace"], meta["name"])
                    if is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    rv = ""
                    continue
                log.warning("watch: %s; listing again", status_message(exc.body, str(exc.reason or exc)))
                rv = ""
                wait(1.0)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("watch: API server unreachable: %s; retrying", exc)
                rv = ""
                wait(2.0)
            finally:
                w.stop()
