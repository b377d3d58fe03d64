"""The generated CRD in a real kube-apiserver.

The invalid-manifest table (tests/cases/invalid_manifests.yaml) that local `converge apply`
rejects (tests/integration/test_crd_local.py) is rejected by the API server too, naming the
same field; what converge accepts and writes (specs with defaults, third-party backends,
status) the API server accepts; kubectl shows the printer columns.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from converge.api import Condition, EndpointStatus, ManagedServiceSpec, ManagedServiceStatus, State
from tests.cluster.controlplane import ControlPlane
from tests.helpers import api_server_gaps, daemon, invalid_manifests, names_field

CASES = invalid_manifests()
GAPS = api_server_gaps()


@pytest.fixture(scope="module")
def rejected(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One `kubectl create` of every case, each in its own file (kubectl goes on after an
    error, as `converge apply` does): {case: what the API server said of it}."""
    tmp = tmp_path_factory.mktemp("invalid")
    ns = f"crd-invalid-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    for case, _, manifest in CASES:
        (tmp / f"{case}.yaml").write_text(yaml.safe_dump(manifest))
    p = control_plane.kubectl("create", "-n", ns, "-f", str(tmp), check=False)
    assert p.returncode != 0
    created = {n.rsplit("/", 1)[1] for n in control_plane.kubectl("get", "msvc", "-n", ns, "-o", "name").stdout.split()}
    assert created == {m["metadata"]["name"] for c, _, m in CASES if c in GAPS}, "accepted what it should reject"
    out: dict[str, str] = {}
    case = ""
    for line in p.stderr.splitlines():
        m = re.search(r'error when creating "([^"]+\.yaml)": (.*)', line)
        if m:  # a file's error; a list of several may go on over the next lines
            case, line = Path(m.group(1)).stem, m.group(2)
        out[case] = out.get(case, "") + line + "\n"
    yield out
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize(("case", "field", "manifest"), CASES, ids=[c[0] for c in CASES])
def test_api_server_rejects_invalid_manifest(rejected: dict[str, str], case: str, field: str,
                                             manifest: dict[str, Any]) -> None:
    if case in GAPS:
        assert case not in rejected, f"the API server now rejects {case}: drop its apiServerAccepts mark"
        pytest.skip(f"known gap: {GAPS[case]}")
    assert case in rejected, f"{case}: no error from the API server"
    said = rejected[case].split(" is invalid: ", 1)[-1]
    assert names_field(said, field), f"{field} not named in: {rejected[case]}"


def test_third_party_backend_and_defaults(control_plane: ControlPlane, namespace: str) -> None:
    """A plug-in backend's configuration is kept as written; defaults the API server fills
    in are what the models fill in."""
    obj = daemon("plug", ["sleep", "60"], port=8080)
    obj["spec"]["backend"] = {"example.com-thing": {"size": 3, "nested": {"list": [1, "a", None]}}}
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    got = json.loads(control_plane.kubectl("get", "msvc", "plug", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["backend"] == obj["spec"]["backend"]
    local = ManagedServiceSpec.model_validate(got["spec"]).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert within(got["spec"], local), "the API server filled in a default the models do not have"
    assert got["spec"]["endpoint"]["healthCheck"]["http"] == {"path": "/healthz", "status": 200, "timeoutSeconds": 2}


def within(part: Any, whole: Any) -> bool:
    """Every field of part is in whole with the same value (whole may have more fields)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and within(v, whole[k]) for k, v in part.items())
    return bool(part == whole)


def test_status_written_by_converge_is_shown_by_kubectl(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-",
                          input=yaml.safe_dump(daemon("web", ["sleep", "60"], port=8080)))
    now = datetime.now(UTC)
    status = ManagedServiceStatus(
        observedGeneration=1, state=State.active, lastState=State.pending_startup, restarts=2, backendKind="daemon",
        startedAt=now, activeSince=now, specHash="abc", backend={"pid": 4242, "cmdline": ["sleep", "60"]},
        endpoint=EndpointStatus(uri="http://127.0.0.1:8080", port=8080, state=State.active),
        conditions=[Condition(type="Ready", status="True", reason="Healthy", lastTransitionTime=now,
                              observedGeneration=1)])
    body = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    control_plane.kubectl("patch", "msvc", "web", "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps(body))
    got = json.loads(control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o", "json").stdout)
    assert ManagedServiceStatus.model_validate(got["status"]) == status
    wide = control_plane.kubectl("get", "msvc", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "STATE", "READY", "BACKEND", "ENDPOINT", "RESTARTS", "AGE", "REASON"]
    row = wide[1].split()
    assert row[:6] == ["web", "active", "True", "daemon", "http://127.0.0.1:8080", "2"] and row[-1] == "Healthy"
    assert control_plane.kubectl("get", "msvc", "-n", namespace).stdout.split()[:7] == [
        "NAME", "STATE", "READY", "BACKEND", "ENDPOINT", "RESTARTS", "AGE"]
    control_plane.kubectl("wait", "--for=condition=Ready", "msvc/web", "-n", namespace, "--timeout=10s")
    assert "web" in control_plane.kubectl("get", "converge", "-n", namespace, "-o", "name").stdout  # category


def test_example_manifests_apply_to_the_cluster(control_plane: ControlPlane, namespace: str) -> None:
    """What the README tells users to apply locally can be `kubectl apply`-ed as it is."""
    examples = Path(__file__).resolve().parents[2] / "manifests" / "examples"
    p = control_plane.kubectl("apply", "--server-side", "-n", namespace, "-f", str(examples))
    assert p.stdout.count("serverside-applied") == len(list(yaml.safe_load_all((examples / "stack.yaml").read_text())))
