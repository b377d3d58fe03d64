"""The architecture's arrows (DESIGN.md), checked by import-linter's contracts in
pyproject.toml: the core is pure, backends never import each other, the stores, kopf or
the CLI, and nothing imports the CLI.

The `converge` package is assembled at install time from controller/ and backends/;
import-linter reads a package from one folder, so the check runs over a copy with the
installed package's shape.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _package_copy(dest: Path) -> Path:
    pkg = dest / "converge"
    shutil.copytree(ROOT / "controller", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "backends", pkg / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_import_contracts_hold(tmp_path: Path) -> None:
    path = _package_copy(tmp_path / "src")
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(path)}
    p = subprocess.run([str(lint), "--no-cache", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


def test_a_broken_arrow_is_caught(tmp_path: Path) -> None:
    """The check is not vacuous: the core importing a store breaks a contract."""
    path = _package_copy(tmp_path / "src")
    with (path / "converge" / "conditions.py").open("a") as f:
        f.write("\nimport converge.filestore  # noqa\n")
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(path)}
    p = subprocess.run([str(lint), "--no-cache", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    assert "converge.conditions -> converge.filestore" in p.stdout
