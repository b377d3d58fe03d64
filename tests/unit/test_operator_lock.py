"""requirements-operator.txt (the operator image's lock, made by .ci/lock-operator) pins
every runtime dependency of converge[kubernetes], each with a sha256."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_dependency_with_a_hash() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0])
              for req in project["dependencies"] + project["optional-dependencies"]["kubernetes"]}
    text = (ROOT / "requirements-operator.txt").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", text, re.M)
    pinned = {_norm(name) for name, _, _ in entries}
    assert len(entries) == text.count("=="), "every pin carries a sha256"
    missing = wanted - pinned
    assert not missing, f"requirements-operator.txt lacks {sorted(missing)}: run .ci/lock-operator"
