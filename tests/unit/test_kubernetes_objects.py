"""The kubernetes backend's pure part: manifests, drift and the status -> Observation map.
No cluster; tests/cluster/test_kubernetes_backend.py runs the same against a real one."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from converge import core
from converge.api import Endpoint, KubernetesBackend, ManagedService, ServiceKey, State
from converge.backends import kubernetes_objects as ko
from converge.backends.base import Observation, Phase, Target
from converge.conditions import READY, STALLED

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def target(name: str = "web", endpoint: dict[str, Any] | None = None, spec_hash: str = "h1",
           **spec: Any) -> Target:
    spec.setdefault("image", "registry.local/web:1")
    return Target(key=ServiceKey("apps", name), uid="u-1", config=KubernetesBackend.model_validate(spec),
                  spec_hash=spec_hash, runtime_dir=Path("/nonexistent"),
                  endpoint=Endpoint.model_validate(endpoint) if endpoint is not None else None)


HTTP_EP = {"port": 8080, "healthCheck": {"http": {"path": "/healthz", "timeoutSeconds": 1.5},
                                          "periodSeconds": 5, "failureThreshold": 4,
                                          "startupTimeoutSeconds": 90}}


def test_deployment_manifest() -> None:
    t = target(endpoint=HTTP_EP, replicas=2, command=["web"], args=["--port", "8080"], ports=[9090],
               env={"MODE": "prod", "TOKEN": {"valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "t"}}},
                    "LEVEL": {"valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lvl", "optional": True}}}},
               resources={"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}},
               serviceAccountName="web-sa", imagePullPolicy="Never")
    d = ko.deployment(t, owner=False)
    assert d["metadata"] == {
        "name": "web", "namespace": "apps",
        "labels": {"converge.dev/service": "web", "converge.dev/uid": "u-1",
                   "app.kubernetes.io/managed-by": "converge"},
        "annotations": {"converge.dev/spec-hash": "h1"},
    }
    spec = d["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {"converge.dev/service": "web"}}
    assert spec["progressDeadlineSeconds"] == 90  # the health check's startup timeout
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "web-sa"
    assert pod["enableServiceLinks"] is False
    (c,) = pod["containers"]
    assert c["image"] == "registry.local/web:1" and c["imagePullPolicy"] == "Never"
    assert c["command"] == ["web"] and c["args"] == ["--port", "8080"]
    assert c["env"] == [
        {"name": "MODE", "value": "prod"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "t", "optional": False}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lvl", "optional": True}}},
    ]
    assert c["ports"] == [{"name": "p9090", "containerPort": 9090, "protocol": "TCP"},
                          {"name": "p8080", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}}
    assert c["readinessProbe"] == {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                                   "timeoutSeconds": 2, "periodSeconds": 5, "failureThreshold": 4}
    assert "ownerReferences" not in d["metadata"]  # local mode: labels only


def test_owner_reference_in_cluster_and_suspend() -> None:
    d = ko.deployment(target(), owner=True, suspended=True)
    assert d["metadata"]["ownerReferences"] == [{
        "apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService", "name": "web", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}]
    assert d["spec"]["replicas"] == 0
    assert d["metadata"]["annotations"]["converge.dev/suspended"] == "true"
    assert d["spec"]["progressDeadlineSeconds"] == ko.DEFAULT_PROGRESS_DEADLINE


def test_tcp_probe_https_scheme_and_no_probe_without_port() -> None:
    t = target(endpoint={"protocol": "tcp", "allocatePort": True, "healthCheck": {"tcp": {}}}, ports=[5432])
    probe = ko.deployment(t, owner=False)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["tcpSocket"] == {"port": 5432}
    t = target(endpoint={"protocol": "https", "port": 8443, "healthCheck": {"http": {}}})
    probe = ko.deployment(t, owner=False)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["scheme"] == "HTTPS"
    t = target(endpoint={"allocatePort": True, "healthCheck": {"http": {}}})
    assert "readinessProbe" not in ko.deployment(t, owner=False)["spec"]["template"]["spec"]["containers"][0]


def test_service_manifest_and_uri() -> None:
    t = target(endpoint=HTTP_EP, ports=[9090])
    s = ko.service(t, owner=True)
    assert s is not None
    assert s["spec"]["selector"] == {"converge.dev/service": "web"}
    assert s["spec"]["ports"] == [{"name": "p9090", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
                                  {"name": "p8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
    assert s["metadata"]["ownerReferences"][0]["kind"] == "ManagedService"
    assert ko.endpoint_uri(t) == "http://web.apps.svc:8080"
    assert ko.service(target(), owner=False) is None  # no port, no Service
    assert ko.endpoint_uri(target()) is None


def test_names_start_with_a_letter() -> None:
    assert ko.object_name("web") == "web"
    assert ko.object_name("3d-render") == "s-3d-render"
    assert len(ko.object_name("1" + "a" * 62)) <= 63


def live(d: dict[str, Any], *, generation: int = 1, observed: int = 1, replicas: int | None = None,
         updated: int | None = None, available: int | None = None, conditions: list[dict[str, Any]] | None = None,
         ) -> dict[str, Any]:
    """A Deployment as the API server returns it: defaults added, status filled in."""
    out = copy.deepcopy(d)
    out["metadata"].update({"generation": generation, "uid": "d-1", "resourceVersion": "7"})
    c = out["spec"]["template"]["spec"]["containers"][0]
    c.update({"terminationMessagePath": "/dev/termination-log",
              "imagePullPolicy": c.get("imagePullPolicy", "IfNotPresent")})
    if "readinessProbe" in c:
        c["readinessProbe"]["successThreshold"] = 1
    for res in c.get("resources", {}).values():
        if res.get("cpu") == "0.5":
            res["cpu"] = "500m"
    out["spec"]["strategy"] = {"type": "RollingUpdate"}
    want = out["spec"]["replicas"]
    out["status"] = {"observedGeneration": observed, "replicas": want if replicas is None else replicas,
                     "updatedReplicas": want if updated is None else updated,
                     "availableReplicas": want if available is None else available,
                     "conditions": conditions or []}
    return out


def live_service(t: Target) -> dict[str, Any]:
    s = ko.service(t, owner=False)
    assert s is not None
    out = copy.deepcopy(s)
    out["spec"]["clusterIP"] = "10.0.0.12"
    out["spec"]["sessionAffinity"] = "None"
    return out


def test_observe_absent_available_rolling_and_suspended() -> None:
    t = target(endpoint=HTTP_EP, replicas=2)
    assert ko.observe(t, None, None).phase == Phase.absent
    o = ko.observe(t, live(ko.deployment(t, owner=False)), live_service(t))
    assert (o.phase, o.ready, o.failure, o.drifted) == (Phase.running, True, "", False)
    assert o.spec_hash == "h1"
    assert o.details["endpoint"] == "http://web.apps.svc:8080" and o.details["endpointPort"] == 8080
    o = ko.observe(t, live(ko.deployment(t, owner=False), updated=1, available=1, replicas=3), live_service(t))
    assert (o.phase, o.ready, o.failure) == (Phase.running, False, "")
    assert "1 of 2 updated" in o.message
    o = ko.observe(t, live(ko.deployment(t, owner=False), generation=2, observed=1), live_service(t))
    assert o.ready is False
    o = ko.observe(t, live(ko.deployment(t, owner=False, suspended=True)), live_service(t))
    assert o.phase == Phase.suspended


def test_observe_rollout_failures() -> None:
    t = target(endpoint=HTTP_EP)
    dep = live(ko.deployment(t, owner=False), available=0, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "web-5d9" has timed out progressing.'}])
    o = ko.observe(t, dep, live_service(t))
    assert (o.ready, o.failure) == (False, "ProgressDeadlineExceeded")
    assert "timed out progressing" in o.message
    pods = [{"metadata": {"name": "web-5d9-x"}, "status": {"containerStatuses": [
        {"name": "service", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                  "message": 'Back-off pulling image "nope:1"'}}}]}}]
    o = ko.observe(t, live(ko.deployment(t, owner=False), available=0), live_service(t), pods)
    assert (o.ready, o.failure) == (False, "ImagePullBackOff")
    assert o.message == 'pod web-5d9-x: ImagePullBackOff: Back-off pulling image "nope:1"'
    pods[0]["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    o = ko.observe(t, live(ko.deployment(t, owner=False), available=0), live_service(t), pods)
    assert (o.ready, o.failure) == (False, "")  # still starting


@pytest.mark.parametrize(("edit", "where"), [
    (lambda d, s: d["spec"].update(replicas=5), "spec.replicas"),
    (lambda d, s: d["spec"]["template"]["spec"]["containers"][0].update(image="evil:1"),
     "spec.template.spec.containers[0].image"),
    (lambda d, s: d["metadata"]["labels"].pop("converge.dev/uid"), "metadata.labels.converge.dev/uid"),
    (lambda d, s: s["spec"]["ports"][0].update(port=81), "Service spec.ports[0].port"),
])
def test_observe_drift(edit: Any, where: str) -> None:
    t = target(endpoint=HTTP_EP, resources={"requests": {"cpu": "0.5"}})
    dep, svc = live(ko.deployment(t, owner=False)), live_service(t)
    assert not ko.observe(t, dep, svc).drifted  # 0.5 == 500m
    edit(dep, svc)
    o = ko.observe(t, dep, svc)
    assert o.drifted and o.message == f"changed outside converge: {where}"


def test_observe_service_deleted_is_drift_and_other_spec_is_not_checked() -> None:
    t = target(endpoint=HTTP_EP)
    o = ko.observe(t, live(ko.deployment(t, owner=False)), None)
    assert o.drifted and "Service (deleted)" in o.message
    old = live(ko.deployment(target(endpoint=HTTP_EP, spec_hash="h0", image="old:1"), owner=False))
    o = ko.observe(t, old, None)
    assert not o.drifted and o.spec_hash == "h0"  # the core sees the other hash and provisions


# --------------------------------------------------------------------------- the core's side


def msvc(health: bool = True, **status: Any) -> ManagedService:
    s = ManagedService.model_validate({
        "metadata": {"name": "web", "namespace": "apps", "generation": 3},
        "spec": {"backend": {"kubernetes": {"image": "web:1"}},
                 "endpoint": HTTP_EP if health else {"port": 8080}},
    })
    for k, v in status.items():
        setattr(s.status, k, v)
    return s


def run(o: Observation, **status: Any) -> core.Plan:
    s = msvc(startedAt=NOW, **status)
    return core.plan(s, core.Observed(observation=o, desired_hash="h1"), NOW)


def test_core_takes_readiness_from_the_backend() -> None:
    details = {"deployment": "web", "endpoint": "http://web.apps.svc:8080", "endpointPort": 8080}
    p = run(Observation(Phase.running, "1/1 replicas available", details, "h1", ready=True))
    assert (p.action, p.status.state, p.probe_after) == (None, State.active, None)  # no probe from this host
    ready = p.status.condition(READY)
    assert ready is not None and ready.status == "True"
    assert p.status.endpoint is not None
    assert (p.status.endpoint.uri, p.status.endpoint.port) == ("http://web.apps.svc:8080", 8080)

    p = run(Observation(Phase.running, "rolling out: 0 of 1 updated", details, "h1", ready=False))
    assert (p.action, p.status.state, p.settled) == (None, State.pending_startup, False)
    assert p.requeue_after is not None

    p = run(Observation(Phase.running, "pod web-1: ImagePullBackOff", details, "h1", ready=False,
                        failure="ImagePullBackOff"))
    assert (p.action, p.status.state, p.settled) == (None, State.error, True)
    ready = p.status.condition(READY)
    stalled = p.status.condition(STALLED)
    assert ready is not None and ready.reason == "ImagePullBackOff"
    assert stalled is not None and stalled.status == "True"
    assert p.status.lastError == "pod web-1: ImagePullBackOff"


def test_core_rolls_on_spec_change_and_converges_drift() -> None:
    p = run(Observation(Phase.running, spec_hash="h0", ready=True))
    assert p.action == core.Action.provision
    p = run(Observation(Phase.running, "changed outside converge: spec.replicas", spec_hash="h1", ready=False,
                        drifted=True))
    assert p.action == core.Action.provision


def test_status_message_reads_the_status_body_else_the_reason() -> None:
    body = '{"kind": "Status", "message": "managedservices \\"a\\" not found", "code": 404}'
    assert ko.status_message(body, "Not Found") == 'managedservices "a" not found'
    assert ko.status_message(body.encode(), "Not Found") == 'managedservices "a" not found'
    for bad in ("", None, "<html>bad gateway</html>", "[1, 2]", '{"code": 500}'):
        assert ko.status_message(bad, "Bad Gateway") == "Bad Gateway"
