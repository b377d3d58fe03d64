"""The generated CRD through the CLI, and the invalid-manifest table against local `converge apply`.

The same table (tests/cases/invalid_manifests.yaml) drives tests/cluster/test_crd.py against
a real API server: both must reject each case and name the same field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CLI
from tests.helpers import invalid_manifests, names_field

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "managedservices.converge.dev.yaml"


def test_converge_crds_prints_the_committed_crd(cli: CLI) -> None:
    out = cli("crds").stdout
    assert out == CRD_FILE.read_text(), "crds/ is stale: run `make crds`"
    crd = yaml.safe_load(out)
    assert crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == "managedservices.converge.dev"


CASES = invalid_manifests()


@pytest.fixture(scope="module")
def rejected(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLI, dict[str, list[str]]]:
    """One `converge apply` of every case, each in its own file: every file must be reported
    (validation goes on after the first bad file), and nothing at all is applied."""
    tmp = tmp_path_factory.mktemp("invalid")
    files = []
    for case, _, manifest in CASES:
        files += ["-f", str(tmp / f"{case}.yaml")]
        (tmp / f"{case}.yaml").write_text(yaml.safe_dump(manifest))
    cli = CLI(tmp / "store", tmp)
    p = cli("apply", *files, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.rstrip().endswith("error: nothing was applied")
    assert not (tmp / "store").exists(), "an invalid apply wrote something"
    lines: dict[str, list[str]] = {}
    case = ""
    for line in p.stderr.splitlines():
        if line.startswith("error: "):  # a file's first problem; more follow indented
            case = Path(line.removeprefix("error: ").split(":", 1)[0]).stem
        lines.setdefault(case, []).append(line)
    return cli, lines


@pytest.mark.parametrize(("case", "field", "manifest"), CASES, ids=[c[0] for c in CASES])
def test_local_apply_rejects_invalid_manifest(rejected: tuple[CLI, dict[str, list[str]]], case: str, field: str,
                                               manifest: dict[str, Any]) -> None:
    cli, lines = rejected
    assert lines.get(case), f"{case}: not rejected"
    where = f'error: {cli.cwd / case}.yaml: ManagedService "{manifest["metadata"]["name"]}" (document 1): '
    assert lines[case][0].startswith(where), lines[case]  # one line naming file and object ...
    assert names_field(lines[case][0].removeprefix(where), field), f"{field} not named in {lines[case]}"


def test_table_exercises_every_cel_rule(rejected: tuple[CLI, dict[str, list[str]]]) -> None:
    """Each cross-field rule (a model_validator here, a CEL rule in the CRD) has a case, so the
    cluster test checks the API server enforces it too."""
    from converge.crd import openapi_schema

    def messages(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [r["message"] for r in node.get("x-kubernetes-validations", [])]
            return own + [m for v in node.values() for m in messages(v)]
        return [m for v in node for m in messages(v)] if isinstance(node, list) else []

    said = "\n".join(line for lines in rejected[1].values() for line in lines)
    for message in messages(openapi_schema()):
        assert message in said, f"no case of the table breaks the rule: {message}"
