"""The kubernetes backend against a real control plane, with kwok's fake node so pods are
scheduled and become Ready and Deployments roll out for real (no kubelet)."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from converge.api import Endpoint, ServiceKey
from converge.api import KubernetesBackend as KubeSpec
from converge.backends.base import Observation, Phase, Target
from converge.backends.kubernetes import KubernetesBackend
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kwok import LOG_LINES, FakeNodes

IMAGE = "registry.invalid/converge/web:1"  # never pulled: kwok plays the kubelet


@pytest.fixture
def backend(kubeconfig: Path, fake_nodes: FakeNodes) -> Iterator[KubernetesBackend]:
    b = KubernetesBackend.from_kubeconfig(str(kubeconfig))
    yield b
    b.close()


MakeTarget = Callable[..., Target]


@pytest.fixture
def make_target(namespace: str, tmp_path: Path) -> MakeTarget:
    def make(name: str = "web", *, uid: str | None = None, spec_hash: str = "h1",
             endpoint: dict[str, Any] | None = None, **spec: Any) -> Target:
        spec.setdefault("image", IMAGE)
        return Target(key=ServiceKey(namespace, name), uid=uid or uuid.uuid4().hex, spec_hash=spec_hash,
                      config=KubeSpec.model_validate(spec), runtime_dir=tmp_path / name,
                      endpoint=Endpoint.model_validate(endpoint) if endpoint is not None else None)

    return make


def get(cp: ControlPlane, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    p = cp.kubectl("get", kind, name, "-n", ns, "-o", "json", "--show-managed-fields", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def wait_for(backend: KubernetesBackend, t: Target, ok: Callable[[Observation], bool],
             timeout: float = 60) -> Observation:
    deadline = time.monotonic() + timeout
    o = backend.observe(t)
    while not ok(o):
        assert time.monotonic() < deadline, f"still {o}"
        time.sleep(0.3)
        o = backend.observe(t)
    return o


def ready(o: Observation) -> bool:
    return o.phase == Phase.running and o.ready is True


HTTP = {"port": 8080, "healthCheck": {"http": {"path": "/healthz"}, "periodSeconds": 2}}


def test_provision_rolls_out_and_becomes_ready(backend: KubernetesBackend, make_target: MakeTarget,
                                               control_plane: ControlPlane, namespace: str) -> None:
    t = make_target(endpoint=HTTP, replicas=2, env={"MODE": "x"})
    assert backend.observe(t).phase == Phase.absent
    details = backend.provision(t)
    assert details["endpoint"] == f"http://web.{namespace}.svc:8080"
    o = wait_for(backend, t, ready)
    assert o.spec_hash == "h1" and not o.drifted
    assert o.details["availableReplicas"] == 2
    dep = get(control_plane, "deployment", namespace, "web")
    assert dep is not None
    assert dep["metadata"]["labels"]["converge.dev/uid"] == t.uid
    assert "ownerReferences" not in dep["metadata"]  # no ManagedService with this uid in the cluster
    assert {m["manager"] for m in dep["metadata"]["managedFields"] if m["operation"] == "Apply"} == {"converge"}
    probe = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"
    svc = get(control_plane, "service", namespace, "web")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 8080
    # Provisioning again changes nothing (same generation: no roll).
    gen = dep["metadata"]["generation"]
    backend.provision(t)
    again = get(control_plane, "deployment", namespace, "web")
    assert again is not None and again["metadata"]["generation"] == gen


def test_spec_change_rolls_suspend_scales_to_zero_and_resumes(
        backend: KubernetesBackend, make_target: MakeTarget, control_plane: ControlPlane, namespace: str) -> None:
    t = make_target(name="roll", endpoint=HTTP)
    backend.provision(t)
    wait_for(backend, t, ready)
    uid = get(control_plane, "deployment", namespace, "roll")["metadata"]["uid"]  # type: ignore[index]
    t2 = make_target(name="roll", uid=t.uid, spec_hash="h2", endpoint=HTTP, image=IMAGE + "-v2", replicas=2)
    assert backend.observe(t2).spec_hash == "h1"  # the core sees the old hash and provisions
    backend.provision(t2)
    o = wait_for(backend, t2, lambda o: ready(o) and o.spec_hash == "h2")
    assert o.details["availableReplicas"] == 2
    dep = get(control_plane, "deployment", namespace, "roll")
    assert dep is not None and dep["metadata"]["uid"] == uid  # updated in place
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE + "-v2"

    backend.suspend(t2)
    o = backend.observe(t2)
    assert o.phase == Phase.suspended
    wait_for(backend, t2, lambda o: o.phase == Phase.suspended and o.message == "scaled to 0")
    assert get(control_plane, "service", namespace, "roll") is not None  # kept
    backend.provision(t2)
    wait_for(backend, t2, ready)
    dep = get(control_plane, "deployment", namespace, "roll")
    assert dep is not None and dep["metadata"]["uid"] == uid and dep["spec"]["replicas"] == 2


def test_drift_is_seen_through_the_watch(backend: KubernetesBackend, make_target: MakeTarget,
                                         control_plane: ControlPlane, namespace: str) -> None:
    seen: queue.Queue[ServiceKey] = queue.Queue()
    backend.watch(seen.put)
    t = make_target(name="drift", endpoint=HTTP)
    backend.provision(t)
    wait_for(backend, t, ready)

    def notified(within: float = 20) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if seen.get(timeout=0.5) == t.key:
                    return
            except queue.Empty:
                pass
        raise AssertionError(f"no watch event for {t.key}")

    while not seen.empty():
        seen.get_nowait()
    control_plane.kubectl("scale", "deployment/drift", "--replicas=3", "-n", namespace)
    notified()
    o = backend.observe(t)
    assert o.drifted and "spec.replicas" in o.message
    backend.provision(t)
    wait_for(backend, t, lambda o: ready(o) and not o.drifted)

    while not seen.empty():
        seen.get_nowait()
    control_plane.kubectl("delete", "service", "drift", "-n", namespace)
    notified()
    assert "Service (deleted)" in backend.observe(t).message
    backend.provision(t)
    assert get(control_plane, "service", namespace, "drift") is not None

    control_plane.kubectl("delete", "deployment", "drift", "-n", namespace, "--wait=true")
    notified()
    assert wait_for(backend, t, lambda o: o.phase == Phase.absent).phase == Phase.absent


def test_deprovision_removes_both(backend: KubernetesBackend, make_target: MakeTarget,
                                  control_plane: ControlPlane, namespace: str) -> None:
    t = make_target(name="gone", endpoint=HTTP)
    backend.provision(t)
    wait_for(backend, t, ready)
    backend.deprovision(t)
    assert get(control_plane, "deployment", namespace, "gone") is None
    assert get(control_plane, "service", namespace, "gone") is None
    assert control_plane.kubectl("get", "pods", "-n", namespace, "-l", "converge.dev/service=gone",
                                 "-o", "name").stdout.strip() == ""
    backend.deprovision(t)  # absent is success


def test_owned_by_the_managed_service_in_cluster_mode(backend: KubernetesBackend, make_target: MakeTarget,
                                                       control_plane: ControlPlane, namespace: str) -> None:
    manifest = {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
                "metadata": {"name": "owned", "namespace": namespace},
                "spec": {"backend": {"kubernetes": {"image": IMAGE}}, "endpoint": HTTP}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    msvc = get(control_plane, "managedservice", namespace, "owned")
    assert msvc is not None
    t = make_target(name="owned", uid=msvc["metadata"]["uid"], endpoint=HTTP)
    backend.provision(t)
    for kind in ("deployment", "service"):
        obj = get(control_plane, kind, namespace, "owned")
        assert obj is not None
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ManagedService", "owned",
                                                                             t.uid, True)
    wait_for(backend, t, ready)
    assert not backend.observe(t).drifted
    # The garbage collector removes the children with their owner.
    control_plane.kubectl("delete", "managedservice", "owned", "-n", namespace)
    wait_for(backend, t, lambda o: o.phase == Phase.absent, timeout=60)


def test_rollout_failure_is_an_error_with_its_reason(backend: KubernetesBackend, make_target: MakeTarget,
                                                     control_plane: ControlPlane, namespace: str) -> None:
    # More memory than the node has: the pod is never scheduled, the rollout's deadline passes.
    t = make_target(name="stuck", endpoint={**HTTP, "healthCheck": {**HTTP["healthCheck"],
                                                                    "startupTimeoutSeconds": 10}},
                    resources={"requests": {"memory": "1000Gi"}})
    backend.provision(t)
    o = backend.observe(t)
    assert (o.phase, o.ready, o.failure) == (Phase.running, False, "")
    o = wait_for(backend, t, lambda o: o.failure != "", timeout=90)
    assert o.failure == "ProgressDeadlineExceeded"
    assert "rollout failed" in o.message

    # A pod waiting on its image: the reason comes from the pod.
    t = make_target(name="pull", endpoint=HTTP, resources={"requests": {"memory": "1000Gi"}})
    backend.provision(t)
    pod = ""
    deadline = time.monotonic() + 30
    while not pod:
        assert time.monotonic() < deadline
        pod = control_plane.kubectl("get", "pods", "-n", namespace, "-l", "converge.dev/service=pull",
                                    "-o", "jsonpath={.items[0].metadata.name}", check=False).stdout.strip()
        time.sleep(0.2)
    status = {"status": {"containerStatuses": [{
        "name": "service", "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{IMAGE}"'}}}]}}
    control_plane.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps(status))
    o = backend.observe(t)
    assert o.failure == "ImagePullBackOff"
    assert o.message == f'pod {pod}: ImagePullBackOff: Back-off pulling image "{IMAGE}"'


def test_logs_of_the_pods(backend: KubernetesBackend, make_target: MakeTarget, fake_nodes: FakeNodes) -> None:
    t = make_target(name="talk", endpoint=HTTP)
    backend.provision(t)
    wait_for(backend, t, ready)
    assert list(backend.logs(t)) == list(LOG_LINES)
    assert list(backend.logs(t, tail=1)) == [LOG_LINES[-1]]
    t2 = make_target(name="talk", uid=t.uid, spec_hash="h2", endpoint=HTTP, replicas=2)
    backend.provision(t2)
    wait_for(backend, t2, lambda o: ready(o) and o.spec_hash == "h2")
    lines = list(backend.logs(t2))
    assert len(lines) == 4 and all(line.startswith("[talk-") for line in lines)  # one pod's lines, then the other's
    assert list(backend.logs(make_target(name="nobody"))) == []
