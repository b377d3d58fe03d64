"""The chart installed into the real control plane: its ServiceAccount's rights are enough for
what the operator does with the kubernetes backend, and no more (kubectl auth can-i).

The ServiceAccount's token comes from the TokenRequest API (`kubectl create token`); the
kubernetes backend runs out of cluster with it and converges a service in a watched
namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from converge.api import Endpoint, ServiceKey
from converge.api import KubernetesBackend as KubeSpec
from converge.backends.base import Phase, Target
from converge.backends.errors import BackendError
from converge.backends.kubernetes import KubernetesBackend
from tests.chart.conftest import CHART, helm_env, helm_path
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kwok import FakeNodes
from tests.helpers import free_port

IMAGE = "registry.invalid/converge/web:1"


@pytest.fixture(scope="module")
def helm() -> str:
    path = helm_path()
    assert path is not None, "no helm (run .ci/setup.d/kube.sh)"
    return path


@pytest.fixture
def installed(control_plane: ControlPlane, helm: str, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(operator namespace, watched namespace, other namespace) with the chart installed to
    watch only the watched one, kubernetes backend on, one Secret named in values."""
    suffix = uuid.uuid4().hex[:6]
    ops, watched, other = f"ops-{suffix}", f"apps-{suffix}", f"other-{suffix}"
    for ns in (watched, other):
        control_plane.kubectl("create", "namespace", ns)
    p = subprocess.run([helm, "install", "converge", str(CHART), "--kubeconfig", str(control_plane.kubeconfig),
                        "--namespace", ops, "--create-namespace", "--set", f"watchNamespaces={{{watched}}}",
                        "--set", "secretNames={db-password}", "--set", "leaderElection.enabled=true"],
                       capture_output=True, text=True, timeout=120, env=helm_env(tmp_path))
    assert p.returncode == 0, p.stderr
    yield ops, watched, other
    subprocess.run([helm, "uninstall", "converge", "--kubeconfig", str(control_plane.kubeconfig), "--namespace",
                    ops], capture_output=True, timeout=120, env=helm_env(tmp_path))
    for ns in (ops, watched, other):
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def can_i(cp: ControlPlane, sa: str, *args: str) -> bool:
    p = cp.kubectl("auth", "can-i", f"--as={sa}", *args, check=False)
    return p.stdout.strip() == "yes"


def test_service_account_has_exactly_enough(control_plane: ControlPlane, installed: tuple[str, str, str]) -> None:
    ops, watched, other = installed
    sa = f"system:serviceaccount:{ops}:converge"
    allowed = [
        ("watch", "managedservices.converge.dev", "-n", watched),
        ("patch", "managedservices.converge.dev", "-n", watched),
        ("update", "managedservices.converge.dev/status", "-n", watched),
        ("create", "events", "-n", watched),
        ("patch", "deployments.apps", "-n", watched),
        ("delete", "services", "-n", watched),
        ("list", "pods", "-n", watched),
        ("get", "secret/db-password", "-n", watched),
        ("update", "leases.coordination.k8s.io/converge", "-n", ops),
    ]
    denied = [
        ("get", "secrets", "-n", watched),                   # only the named one
        ("get", "secret/other", "-n", watched),
        ("list", "secrets", "-n", watched),
        ("create", "pods/exec", "-n", watched),
        ("create", "pods", "-n", watched),
        ("list", "managedservices.converge.dev", "-n", other),  # not a watched namespace
        ("patch", "deployments.apps", "-n", other),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io", "-n", watched),
        ("delete", "namespaces"),
        ("impersonate", "serviceaccounts", "-n", watched),
        ("update", "leases.coordination.k8s.io/someone-else", "-n", ops),
        ("*", "*"),
    ]
    for args in allowed:
        assert can_i(control_plane, sa, *args), f"denied: {' '.join(args)}"
    for args in denied:
        assert not can_i(control_plane, sa, *args), f"allowed: {' '.join(args)}"


def test_backend_converges_with_the_service_account_token(control_plane: ControlPlane, fake_nodes: FakeNodes,
                                                          installed: tuple[str, str, str], tmp_path: Path) -> None:
    ops, watched, other = installed
    token = control_plane.kubectl("create", "token", "converge", "-n", ops, "--duration=10m").stdout.strip()
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "sa.kubeconfig", token, user="converge")
    backend = KubernetesBackend.from_kubeconfig(str(kubeconfig), "test")
    endpoint = Endpoint.model_validate({"port": 8080, "healthCheck": {"http": {"path": "/healthz"}}})

    def target(ns: str) -> Target:
        return Target(key=ServiceKey(ns, "web"), uid=uuid.uuid4().hex, spec_hash="h1", endpoint=endpoint,
                      config=KubeSpec.model_validate({"image": IMAGE}), runtime_dir=tmp_path / ns)

    try:
        t = target(watched)
        backend.provision(t)
        deadline = time.monotonic() + 60
        while not backend.observe(t).ready:
            assert time.monotonic() < deadline, backend.observe(t)
            time.sleep(0.3)
        backend.suspend(t)
        assert backend.observe(t).phase == Phase.suspended
        backend.deprovision(t)
        assert backend.observe(t).phase == Phase.absent
        # Nothing outside the watched namespaces.
        with pytest.raises(BackendError, match="forbidden"):
            backend.provision(target(other))
    finally:
        backend.close()


MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "operator"


def test_plain_manifests_apply_and_pass_pod_security(control_plane: ControlPlane, fake_nodes: FakeNodes) -> None:
    """`kubectl apply -f manifests/operator/` as the README says; its namespace enforces the
    restricted Pod Security Standard, so the operator pod is only created if it complies."""
    cp = control_plane
    try:
        cp.kubectl("apply", "--server-side", "-f", str(MANIFESTS))
        cp.kubectl("rollout", "status", "deployment/converge", "-n", "converge-system", "--timeout=90s", timeout=120)
        pods = cp.kubectl("get", "pods", "-n", "converge-system", "-o", "name").stdout.split()
        assert len(pods) == 1
        events = cp.kubectl("get", "events", "-n", "converge-system", "-o",
                            "jsonpath={.items[*].message}").stdout
        assert "violates PodSecurity" not in events
        # ... and the namespace really enforces it: a root pod is refused there.
        bad = cp.kubectl("run", "bad", "--image=x", "-n", "converge-system", "--restart=Never", check=False)
        assert bad.returncode != 0 and "violates PodSecurity" in bad.stderr
    finally:
        cp.kubectl("delete", "namespace", "converge-system", "--wait=false", check=False)
        cp.kubectl("delete", "clusterrolebinding,clusterrole", "converge", check=False)


@pytest.fixture
def converge_operator() -> str:
    converge = str(Path(sys.executable).parent / "converge")
    if subprocess.run([converge, "operator", "--help"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("no `converge operator` yet")
    return converge


def test_operator_converges_with_the_chart_rights(converge_operator: str, control_plane: ControlPlane,
                                                  fake_nodes: FakeNodes, installed: tuple[str, str, str],
                                                  tmp_path: Path) -> None:
    """`converge operator` out of cluster with the chart's ServiceAccount token and the flags the
    chart gives it: a ManagedService applied with kubectl becomes Ready."""
    converge = converge_operator
    ops, watched, _ = installed
    token = control_plane.kubectl("create", "token", "converge", "-n", ops, "--duration=10m").stdout.strip()
    kubeconfig = control_plane.write_kubeconfig(tmp_path / "sa.kubeconfig", token, user="converge")

    argv = [converge, "operator", "--kubeconfig", str(kubeconfig), f"--namespace={watched}",
            "--enable-backend=kubernetes", "--leader-elect", "--lease-name=converge", f"--lease-namespace={ops}",
            f"--health-port={free_port()}", f"--metrics-port={free_port()}", f"--state-dir={tmp_path / 'state'}"]
    log = (tmp_path / "operator.log").open("wb")
    op = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        manifest = {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
                    "metadata": {"name": "web", "namespace": watched},
                    "spec": {"backend": {"kubernetes": {"image": IMAGE, "ports": [8080]}},
                             "endpoint": {"port": 8080, "healthCheck": {"http": {"path": "/healthz"}}}}}
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        p = control_plane.kubectl("wait", "--for=condition=Ready", "msvc/web", "-n", watched, "--timeout=120s",
                                  check=False, timeout=150)
        assert p.returncode == 0, p.stderr + (tmp_path / "operator.log").read_text()[-3000:]
        control_plane.kubectl("delete", "msvc/web", "-n", watched, "--timeout=120s", timeout=150)
        assert control_plane.kubectl("get", "deployment", "web", "-n", watched, check=False).returncode != 0
        # Nothing the operator does was refused (kopf's optional cluster-wide looks aside).
        used = ("managedservices", "deployments", "services", "pods", "leases", "events", "secrets")
        refused = [line for line in (tmp_path / "operator.log").read_text().lower().splitlines()
                   if "forbidden" in line and any(r in line for r in used)]
        assert not refused, "\n".join(refused[:10])
    finally:
        op.terminate()
        try:
            op.wait(30)
        except subprocess.TimeoutExpired:
            op.kill()
        log.close()
