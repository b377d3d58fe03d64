"""Fixtures of the cluster tests: one real control plane per test session.

`control_plane` starts etcd + kube-apiserver + kube-controller-manager (tests/cluster/
controlplane.py), installs the CRDs of crds/ and waits until they are Established;
`namespace` gives each test a namespace of its own (deleted afterwards); `kubeconfig` is
the admin kubeconfig's path. The binaries come from .ci/setup.d/kube.sh (run by
.ci/bootstrap): a missing one fails the tests with that message rather than skipping
them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kwok import FakeNodes

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as cp:
        files = sorted(CRDS.glob("*.yaml"))
        assert files, f"no CRD in {CRDS}"
        for f in files:
            cp.kubectl("apply", "--server-side", "-f", str(f))
        # Right after the apply a CRD may have no status.conditions yet, and kubectl wait
        # then fails at once ("accessor error: <nil>") instead of waiting: try again.
        deadline = time.monotonic() + 60
        while cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all",
                         check=False).returncode != 0:
            assert time.monotonic() < deadline, "the CRDs are not Established after 60s"
            time.sleep(0.2)
        yield cp


@pytest.fixture
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    ns = f"{base}-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    yield ns
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="session")
def fake_nodes(control_plane: ControlPlane) -> Iterator[FakeNodes]:
    """kube-scheduler + kwok's fake node: pods are scheduled and become Ready (tests/cluster/kwok.py)."""
    with FakeNodes(control_plane) as nodes:
        yield nodes
