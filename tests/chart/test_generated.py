"""Generated copies stay in step with their sources (`make manifests` refreshes both):
the chart's crds/ is crds/, and manifests/operator/ is the chart rendered."""

from __future__ import annotations

import os
import subprocess

import yaml

from tests.chart.conftest import CHART, ROOT

OPERATOR_MANIFEST = ROOT / "manifests" / "operator" / "converge-operator.yaml"


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert in_chart.keys() == generated.keys(), "charts/converge/crds/ is stale: run `make manifests`"
    for name, text in generated.items():
        assert in_chart[name] == text, f"charts/converge/crds/{name} is stale: run `make manifests`"


def test_operator_manifests_are_rendered_from_the_chart(helm: str) -> None:
    p = subprocess.run([str(ROOT / ".ci" / "render-manifests"), "--stdout"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "HELM": helm})
    assert p.returncode == 0, p.stderr
    assert OPERATOR_MANIFEST.read_text() == p.stdout, "manifests/operator/ is stale: run `make manifests`"
    objs = [d for d in yaml.safe_load_all(p.stdout) if d]
    assert objs[0]["kind"] == "Namespace"  # kubectl apply creates it before the objects in it
    namespaced = [o for o in objs if o["kind"] in ("ServiceAccount", "Deployment")]
    assert namespaced and all(o["metadata"]["namespace"] == "converge-system" for o in namespaced)
