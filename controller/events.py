"""Kubernetes Events for a ManagedService's transitions (the operator's recorder).

The reconciler tells of every status write that changed the state, the Ready reason or
the restart count (`Reconciler.on_transition`), and of a finished deletion; this module
names the transition (Provisioned, Healthy, Unhealthy, BackOff, Restarted, Suspended,
Deprovisioned, BackendDisabled, ...; the pending states on the way get none) and posts
a core/v1 Event on the object. A resync
that changes nothing writes no status, so it posts nothing; the same event again within
ten minutes raises the count of the first (like client-go's correlator) instead of
adding one. Posting runs on a thread of its own with a bounded queue: a slow or failing
API server never holds up reconciling (events are best effort, as in Kubernetes).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from converge.api import GROUP_VERSION, KIND, ManagedService, ManagedServiceStatus, State
from converge.kubestore import request_json

log = logging.getLogger("converge.events")

COMPONENT = "converge-operator"
AGGREGATE_SECONDS = 600.0
MESSAGE_MAX = 1024


def describe(before: ManagedService, after: ManagedServiceStatus | None) -> tuple[str, str, str] | None:
    """(type, reason, message) of a transition, or None when it is not worth an event. Pure."""
    if after is None:
        return "Normal", "Deprovisioned", "deprovisioned; the object is deleted"
    ready = next((c for c in after.conditions if c.type == "Ready"), None)
    reason = ready.reason if ready is not None else ""
    message = (ready.message if ready is not None else "") or after.lastError
    if after.restarts > before.status.restarts:
        return "Warning", "Restarted", f"restart {after.restarts}: {after.lastError or message}"
    match after.state:
        case State.active:
            was_bad = before.status.state == State.error
            return "Normal", "Healthy" if was_bad else "Provisioned", message or "running"
        case State.error:
            if reason == "HealthCheckFailed":
                return "Warning", "Unhealthy", message
            if "backoff" in reason.lower() or "back-off" in message.lower():
                return "Warning", "BackOff", message
            return "Warning", reason or "Failed", message
        case State.scaled_to_zero:
            return "Normal", "Suspended", message or "adminState is suspended"
        case State.inactive:
            return "Normal", "Deprovisioned", message or "deprovisioned"
    return None  # pending_startup / pending_shutdown: the event comes with where they lead


class EventRecorder:
    def __init__(self, api: k8s.ApiClient, instance: str | None = None) -> None:
        self.api = api
        self.instance = instance or socket.gethostname()
        self._queue: queue.Queue[tuple[ManagedService, str, str, str] | None] = queue.Queue(maxsize=1000)
        self._recent: OrderedDict[tuple[str, str, str], tuple[str, int, float]] = OrderedDict()
        self._thread = threading.Thread(target=self._run, daemon=True, name="events")
        self._thread.start()
        self.posted = 0

    def transition(self, before: ManagedService, after: ManagedServiceStatus | None) -> None:
        what = describe(before, after)
        if what is None:
            return
        try:
            self._queue.put_nowait((before, *what))
        except queue.Full:
            log.warning("%s: event %s dropped (too many pending)", before.key, what[1])

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._post(*item)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("%s: cannot post event %s: %s", item[0].key, item[2], exc)
            except Exception:  # never let the recorder die silently
                log.exception("%s: posting event %s failed", item[0].key, item[2])

    def _post(self, obj: ManagedService, type_: str, reason: str, message: str) -> None:
        message = message[:MESSAGE_MAX]
        ns = obj.metadata.namespace
        now = datetime.now(UTC)
        key = (obj.metadata.uid or str(obj.key), reason, message)
        seen = self._recent.get(key)
        if seen is not None and time.monotonic() - seen[2] < AGGREGATE_SECONDS:
            name, count, first = seen
            request_json(self.api, "PATCH", f"/api/v1/namespaces/{quote(ns)}/events/{quote(name)}",
                         {"count": count + 1, "lastTimestamp": now.isoformat()}, "application/merge-patch+json")
            self._recent[key] = (name, count + 1, first)
            self._recent.move_to_end(key)
            self.posted += 1
            return
        body: dict[str, Any] = {
            "metadata": {"generateName": f"{obj.metadata.name}.", "namespace": ns},
            "involvedObject": {"apiVersion": GROUP_VERSION, "kind": KIND, "name": obj.metadata.name,
                               "namespace": ns, "uid": obj.metadata.uid,
                               "resourceVersion": obj.metadata.resourceVersion},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": COMPONENT, "host": self.instance},
            "reportingComponent": f"converge.dev/{COMPONENT}", "reportingInstance": self.instance,
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        }
        made = request_json(self.api, "POST", f"/api/v1/namespaces/{quote(ns)}/events", body)
        self.posted += 1
        self._recent[key] = (str(made["metadata"]["name"]), 1, time.monotonic())
        while len(self._recent) > 2000:
            self._recent.popitem(last=False)
