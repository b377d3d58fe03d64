"""Local mode with the kubernetes backend: the file store holds the ManagedService, the real
`converge` CLI converges it into the cluster the kubeconfig names (a real control plane +
kwok's fake node). No ManagedService exists in that cluster, so the children carry labels,
not ownerReferences (the garbage collector would delete children of a missing owner)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kwok import LOG_LINES, FakeNodes
from tests.conftest import CLI

IMAGE = "registry.invalid/converge/web:1"


def manifest(namespace: str, **backend: Any) -> str:
    return yaml.safe_dump({
        "apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"stack": "k"}},
        "spec": {"backend": {"kubernetes": {"image": IMAGE, "replicas": 2, "ports": [8080], **backend}},
                 "endpoint": {"port": 8080, "healthCheck": {"http": {"path": "/healthz"}, "periodSeconds": 2}}},
    })


def deployment(cp: ControlPlane, ns: str) -> dict[str, Any] | None:
    p = cp.kubectl("get", "deployment", "web", "-n", ns, "-o", "json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def test_local_mode_converges_a_deployment(cli: CLI, control_plane: ControlPlane, fake_nodes: FakeNodes,
                                           namespace: str) -> None:
    cli.env["KUBECONFIG"] = str(control_plane.kubeconfig)  # the backend's cluster; the store stays local
    cli("apply", "-f", "-", input=manifest(namespace))
    cli("reconcile", "--timeout", "120s", timeout=180)
    obj = json.loads(cli("get", "web", "-n", namespace, "-o", "json").stdout)
    st = obj["status"]
    assert st["state"] == "active", st
    assert st["endpoint"]["uri"] == f"http://web.{namespace}.svc:8080"
    assert st["endpoint"]["port"] == 8080  # the Service's port, no port of this host
    assert st["backend"]["deployment"] == "web"
    dep = deployment(control_plane, namespace)
    assert dep is not None
    assert dep["status"]["availableReplicas"] == 2
    assert "ownerReferences" not in dep["metadata"]
    assert dep["metadata"]["labels"]["converge.dev/uid"] == obj["metadata"]["uid"]

    assert cli("logs", "web", "-n", namespace, "--tail", "1").stdout.splitlines()[-1].endswith(LOG_LINES[-1])

    # A spec change rolls the Deployment in place.
    cli("apply", "-f", "-", input=manifest(namespace, image=IMAGE + "-v2"))
    cli("reconcile", "--timeout", "120s", timeout=180)
    dep2 = deployment(control_plane, namespace)
    assert dep2 is not None and dep2["metadata"]["uid"] == dep["metadata"]["uid"]
    assert dep2["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE + "-v2"

    # down: scaled to 0, kept; up: scaled back.
    cli("down", "web", "-n", namespace, "--timeout", "60s", timeout=120)
    obj = json.loads(cli("get", "web", "-n", namespace, "-o", "json").stdout)
    assert obj["status"]["state"] == "scaled_to_zero"
    dep3 = deployment(control_plane, namespace)
    assert dep3 is not None and dep3["spec"]["replicas"] == 0
    cli("up", "web", "-n", namespace, "--timeout", "120s", timeout=180)
    obj = json.loads(cli("get", "web", "-n", namespace, "-o", "json").stdout)
    assert obj["status"]["state"] == "active"

    # delete: the Deployment and Service go first, then the object.
    cli("delete", "web", "-n", namespace, "--timeout", "120s", timeout=180)
    assert deployment(control_plane, namespace) is None
    assert control_plane.kubectl("get", "service", "web", "-n", namespace, check=False).returncode != 0


def test_run_restores_a_deleted_deployment_from_the_watch(cli: CLI, control_plane: ControlPlane,
                                                          fake_nodes: FakeNodes, namespace: str) -> None:
    """`converge run` with the default 60 s resync: a Deployment deleted or scaled by hand comes
    back within seconds, so the watch, not the resync, brought the service back."""
    cli.env["KUBECONFIG"] = str(control_plane.kubeconfig)
    cli("apply", "-f", "-", input=manifest(namespace))
    run = cli.popen("run")
    try:
        def wait(ok: Callable[[], bool], what: str, timeout: float = 40) -> float:
            start = time.monotonic()
            while not ok():
                assert run.poll() is None, run.stdout.read() if run.stdout else ""
                assert time.monotonic() - start < timeout, what
                time.sleep(0.2)
            return time.monotonic() - start

        def available() -> bool:
            dep = deployment(control_plane, namespace)
            return dep is not None and dep["status"].get("availableReplicas") == 2 and dep["spec"]["replicas"] == 2

        wait(available, "first rollout", timeout=90)
        uid = deployment(control_plane, namespace)["metadata"]["uid"]  # type: ignore[index]
        control_plane.kubectl("delete", "deployment", "web", "-n", namespace)
        took = wait(lambda: (d := deployment(control_plane, namespace)) is not None and d["metadata"]["uid"] != uid,
                    "the Deployment was not re-created")
        print(f"restored after {took:.1f}s")
        assert took < 20
        wait(available, "rollout after re-creation")
        control_plane.kubectl("scale", "deployment/web", "--replicas=5", "-n", namespace)
        took = wait(lambda: (d := deployment(control_plane, namespace)) is not None and d["spec"]["replicas"] == 2,
                    "the scale was not reverted")
        print(f"restored after {took:.1f}s")
        assert took < 20
    finally:
        run.terminate()
        run.wait(30)
