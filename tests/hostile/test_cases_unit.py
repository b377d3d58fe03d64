"""Every hostile case through the real validation path (converge.manifest), in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from converge.manifest import ManifestError, load
from converge.registry import available_kinds
from tests.hostile.cases import CASES, VALID


def test_valid_base_is_valid(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(VALID)
    [obj] = load([str(tmp_path / "ok.yaml")], available_kinds())
    assert obj.metadata.name == "web"


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_manifest_is_refused_naming_file_and_field(case: str, tmp_path: Path) -> None:
    text, field = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load([str(path)], available_kinds())
    problems = info.value.problems
    assert problems and all(str(path) in p for p in problems), problems
    assert any(field in p for p in problems), problems
    assert all("\n" not in p and len(p) < 600 for p in problems), problems


@pytest.mark.parametrize(("spec", "field"), [
    ("container: {image: img:1, volumes: [{hostPath: data, containerPath: /data}]}",
     "spec.backend.container.volumes[0].hostPath"),  # the folder's ':' is no bind mount's
    ("daemon: {command: [x], workingDir: " + "d/" * 2040 + "}",  # 4,080 characters, over 4,096 resolved
     "spec.backend.daemon.workingDir"),
])
def test_a_path_valid_as_written_and_not_once_resolved_is_refused_naming_it(spec: str, field: str,
                                                                           tmp_path: Path) -> None:
    """Paths are made absolute after validation: the result is checked too (manifest.parse
    validates the object again only when one fails)."""
    folder = tmp_path / "a:b"
    folder.mkdir()
    path = folder / "m.yaml"
    path.write_text(f"apiVersion: converge.dev/v1alpha1\nkind: ManagedService\nmetadata: {{name: p}}\n"
                    f"spec:\n  backend: {{{spec}}}\n")
    with pytest.raises(ManifestError) as info:
        load([str(path)], available_kinds())
    assert any(field in p and str(path) in p for p in info.value.problems), info.value.problems
