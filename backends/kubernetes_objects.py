"""Pure part of the kubernetes backend: a service's Deployment and Service, and what their
status means.

From a `Target` (the `spec.backend.kubernetes` model, the service's key/uid/spec hash and
its endpoint) this module builds the two manifests converge server-side applies, tells
whether the live objects drifted from them, and maps a Deployment's status (and its pods'
waiting reasons) to an `Observation`. No I/O, no client: unit tested in
tests/unit/test_kubernetes_objects.py; converge.backends.kubernetes does the calls.

Identity: both objects are named after the service (`object_name`), carry the labels
`converge.dev/service` (also the pods' selector), `converge.dev/uid` and
`app.kubernetes.io/managed-by: converge`, and the Deployment carries the spec hash it was
made from. In the cluster the ManagedService also owns them (ownerReferences), so the
garbage collector removes them with it; in local mode (no ManagedService object in that
cluster) labels alone identify them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from converge.api import Endpoint, KubernetesBackend
from converge.backends.base import Observation, Phase, Target

MANAGER = "converge"  # the server-side apply field manager
LABEL_SERVICE = "converge.dev/service"
LABEL_UID = "converge.dev/uid"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_SPEC_HASH = "converge.dev/spec-hash"
ANNOTATION_SUSPENDED = "converge.dev/suspended"
CONTAINER = "service"
DEFAULT_PROGRESS_DEADLINE = 600

# Container waiting reasons that mean the rollout cannot finish without a change.
FAILING_WAIT_REASONS = (
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
)


def object_name(name: str) -> str:
    """The Deployment's and Service's name. A Service name must start with a letter
    (DNS-1035); a ManagedService name (DNS-1123) may start with a digit."""
    if name[:1].isalpha():
        return name
    return ("s-" + name)[:63].rstrip("-")


def selector(target: Target) -> dict[str, str]:
    """The pods' selector; its value is the ManagedService's name (a watch event on any of
    the objects maps back to the service by it)."""
    return {LABEL_SERVICE: target.key.name}


def identity_labels(target: Target) -> dict[str, str]:
    return {**selector(target), LABEL_UID: target.uid, LABEL_MANAGED_BY: MANAGER}


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService", "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def endpoint_port(cfg: KubernetesBackend, endpoint: Endpoint | None) -> int | None:
    """The port the endpoint (and the readinessProbe) uses: the endpoint's, else the first
    container port."""
    if endpoint is not None and endpoint.port is not None:
        return endpoint.port
    return cfg.ports[0] if cfg.ports else None


def service_ports(cfg: KubernetesBackend, endpoint: Endpoint | None) -> list[int]:
    ports = list(cfg.ports)
    ep = endpoint_port(cfg, endpoint)
    if ep is not None and ep not in ports:
        ports.append(ep)
    return ports


def endpoint_uri(target: Target) -> str | None:
    """The Service's cluster DNS name and port."""
    cfg: KubernetesBackend = target.config
    endpoint = target.endpoint
    port = endpoint_port(cfg, endpoint)
    if port is None:
        return None
    protocol = endpoint.protocol if endpoint is not None else "tcp"
    return f"{protocol}://{object_name(target.key.name)}.{target.key.namespace}.svc:{port}"


def _port_name(port: int) -> str:
    return f"p{port}"


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def readiness_probe(cfg: KubernetesBackend, endpoint: Endpoint | None) -> dict[str, Any] | None:
    """The endpoint's health check as the pods' readinessProbe (the kubelet probes it)."""
    if endpoint is None or endpoint.healthCheck is None:
        return None
    port = endpoint_port(cfg, endpoint)
    if port is None:
        return None
    check = endpoint.healthCheck
    probe: dict[str, Any]
    if check.http is not None:
        probe = {"httpGet": {"path": check.http.path, "port": port,
                             "scheme": "HTTPS" if endpoint.protocol == "https" else "HTTP"},
                 "timeoutSeconds": _seconds(check.http.timeoutSeconds)}
    else:
        timeout = check.tcp.timeoutSeconds if check.tcp is not None else 2.0
        probe = {"tcpSocket": {"port": port}, "timeoutSeconds": _seconds(timeout)}
    probe["periodSeconds"] = _seconds(check.periodSeconds)
    probe["failureThreshold"] = check.failureThreshold
    return probe


def _env(cfg: KubernetesBackend) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for var in cfg.env:
        if var.valueFrom is None:
            out.append({"name": var.name, "value": var.value or ""})
            continue
        ref_kind = "secretKeyRef" if var.valueFrom.secretKeyRef is not None else "configMapKeyRef"
        ref = var.valueFrom.secretKeyRef or var.valueFrom.configMapKeyRef
        assert ref is not None
        out.append({"name": var.name, "valueFrom": {ref_kind: {"name": ref.name, "key": ref.key,
                                                               "optional": ref.optional}}})
    return out


def _resources(cfg: KubernetesBackend) -> dict[str, Any] | None:
    if cfg.resources is None:
        return None
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        rl = getattr(cfg.resources, part)
        if rl is not None:
            values = rl.model_dump(exclude_none=True)
            if values:
                out[part] = values
    return out or None


def _meta(target: Target, owner: bool, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": object_name(target.key.name), "namespace": target.key.namespace,
                            "labels": identity_labels(target)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner:
        meta["ownerReferences"] = [owner_reference(target.key.name, target.uid)]
    return meta


def deployment(target: Target, *, owner: bool, suspended: bool = False) -> dict[str, Any]:
    """The Deployment converge applies. `suspended`: scaled to 0 and marked, so observe
    tells a suspended service from one asked for 0 replicas."""
    cfg: KubernetesBackend = target.config
    endpoint = target.endpoint
    container: dict[str, Any] = {"name": CONTAINER, "image": cfg.image}
    if cfg.imagePullPolicy is not None:
        container["imagePullPolicy"] = cfg.imagePullPolicy
    if cfg.command is not None:
        container["command"] = list(cfg.command)
    if cfg.args is not None:
        container["args"] = list(cfg.args)
    env = _env(cfg)
    if env:
        container["env"] = env
    ports = service_ports(cfg, endpoint)
    if ports:
        container["ports"] = [{"name": _port_name(p), "containerPort": p, "protocol": "TCP"} for p in ports]
    resources = _resources(cfg)
    if resources:
        container["resources"] = resources
    probe = readiness_probe(cfg, endpoint)
    if probe is not None:
        container["readinessProbe"] = probe
    pod: dict[str, Any] = {"containers": [container], "enableServiceLinks": False}
    if cfg.serviceAccountName is not None:
        pod["serviceAccountName"] = cfg.serviceAccountName
    check = endpoint.healthCheck if endpoint is not None else None
    deadline = (max(_seconds(check.startupTimeoutSeconds), 10) if check is not None
                else DEFAULT_PROGRESS_DEADLINE)
    annotations = {ANNOTATION_SPEC_HASH: target.spec_hash}
    if suspended:
        annotations[ANNOTATION_SUSPENDED] = "true"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(target, owner, annotations),
        "spec": {
            "replicas": 0 if suspended else cfg.replicas,
            "selector": {"matchLabels": selector(target)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": deadline,
            "template": {"metadata": {"labels": identity_labels(target)}, "spec": pod},
        },
    }


def service(target: Target, *, owner: bool) -> dict[str, Any] | None:
    """The ClusterIP Service in front of the pods; None when the service has no port."""
    ports = service_ports(target.config, target.endpoint)
    if not ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(target, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(target),
            "ports": [{"name": _port_name(p), "port": p, "targetPort": p, "protocol": "TCP"} for p in ports],
        },
    }


# --------------------------------------------------------------------------- drift

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
           "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10),
           "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50),
           "Ei": Decimal(2**60)}


def _quantity(value: Any) -> Decimal | None:
    m = _QUANTITY.match(str(value))
    if m is None or m.group(2) not in _SUFFIX:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        return None


def drift(desired: Any, actual: Any, path: str = "") -> str | None:
    """The first place where the live object differs from what converge applied, or None.

    Only what converge sets is compared (the API server adds defaults); resource
    quantities compare by value (the server writes 0.5 as 500m)."""
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return path or "."
        for k, v in desired.items():
            found = drift(v, actual.get(k), f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return path
        for i, (d, a) in enumerate(zip(desired, actual, strict=True)):
            found = drift(d, a, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if desired == actual:
        return None
    if ".resources." in f".{path}":
        q_d, q_a = _quantity(desired), _quantity(actual)
        if q_d is not None and q_d == q_a:
            return None
    return path


# --------------------------------------------------------------------------- status


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return None


def pod_failure(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the first pod whose container waits for a reason that will not
    pass on its own (ImagePullBackOff, CrashLoopBackOff ...)."""
    for pod in pods:
        statuses = list((pod.get("status") or {}).get("containerStatuses") or ())
        statuses += list((pod.get("status") or {}).get("initContainerStatuses") or ())
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason in FAILING_WAIT_REASONS:
                name = (pod.get("metadata") or {}).get("name", "?")
                msg = f"pod {name}: {reason}"
                if waiting.get("message"):
                    msg += f": {waiting['message']}"
                return reason, msg
    return None


def rollout_complete(dep: Mapping[str, Any]) -> bool:
    """kubectl rollout status's test: the newest spec is observed, every replica is updated,
    no old replica is left, and every updated one is available."""
    spec, st = dep.get("spec") or {}, dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    generation = int((dep.get("metadata") or {}).get("generation", 0))
    if int(st.get("observedGeneration", 0)) < generation:
        return False
    updated = int(st.get("updatedReplicas", 0))
    return (updated >= want and int(st.get("replicas", 0)) <= updated
            and int(st.get("availableReplicas", 0)) >= updated)


def observe(target: Target, dep: Mapping[str, Any] | None,
            svc: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]] = (), *,
            owner: bool = False) -> Observation:
    """What the live Deployment and Service say about the service."""
    if dep is None:
        return Observation(Phase.absent)
    meta = dep.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec_hash = annotations.get(ANNOTATION_SPEC_HASH)
    st = dep.get("status") or {}
    details: dict[str, Any] = {"deployment": meta.get("name", ""), "namespace": meta.get("namespace", "")}
    want_svc = service(target, owner=owner)
    if want_svc is not None:
        details["service"] = want_svc["metadata"]["name"]
        uri = endpoint_uri(target)
        if uri is not None:
            details["endpoint"] = uri
            details["endpointPort"] = endpoint_port(target.config, target.endpoint)
    replicas = int((dep.get("spec") or {}).get("replicas", 1))
    if annotations.get(ANNOTATION_SUSPENDED) == "true":
        still = int(st.get("replicas", 0))
        msg = "scaled to 0" if still == 0 else f"scaling to 0: {still} replicas left"
        return Observation(Phase.suspended, msg, details, spec_hash)
    details["replicas"] = replicas
    details["availableReplicas"] = int(st.get("availableReplicas", 0))

    if spec_hash == target.spec_hash:
        # Edited or deleted by hand: converge applies its spec again.
        where = drift(deployment(target, owner=owner), dep)
        if where is None and want_svc is not None:
            if svc is None:
                where = "Service (deleted)"
            else:
                found = drift(want_svc, svc)
                where = None if found is None else f"Service {found}"
        elif where is None and svc is not None:
            where = "Service (not wanted)"
        if where is not None:
            return Observation(Phase.running, f"changed outside converge: {where}", details, spec_hash,
                               drifted=True, ready=False)

    progressing = _condition(dep, "Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        msg = f"rollout failed: {progressing.get('message', 'progress deadline exceeded')}"
        failing = pod_failure(pods)
        if failing is not None:
            msg += f" ({failing[1]})"
        return Observation(Phase.running, msg, details, spec_hash, ready=False, failure="ProgressDeadlineExceeded")
    failing = pod_failure(pods)
    if failing is not None:
        return Observation(Phase.running, failing[1], details, spec_hash, ready=False, failure=failing[0])
    if rollout_complete(dep):
        return Observation(Phase.running, f"{details['availableReplicas']}/{replicas} replicas available",
                           details, spec_hash, ready=True)
    updated = int(st.get("updatedReplicas", 0))
    return Observation(Phase.running, f"rolling out: {updated} of {replicas} updated, "
                       f"{details['availableReplicas']} available", details, spec_hash, ready=False)


def status_message(body: object, fallback: str) -> str:
    """The message of an API error: its Status body's `message`, else `fallback` (the
    HTTP reason). For the backend's errors and KubeStore's alike."""
    try:
        doc = json.loads(body) if isinstance(body, str | bytes) and body else None
    except ValueError:
        doc = None
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message) if message else fallback
