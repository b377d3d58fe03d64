"""Fixtures of the chart tests: the real helm (built by .ci/setup.d/kube.sh into the cache).

Without helm the tests are skipped locally and fail in CI (CI=true), like the Docker tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "converge"
# helm built with `go install` (.ci/setup.d/kube.sh) has no default cluster version of its
# own (it says v1.20.0): say the one the tests' control plane runs.
KUBE_VERSION = "v1.32.4"


def helm_path() -> str | None:
    cache = Path(os.environ.get("CONVERGE_CACHE", Path.home() / ".cache" / "converge"))
    cached = cache / "bin" / "helm"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_path()
    if path is None:
        reason = "no helm (run .ci/setup.d/kube.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"chart tests cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    """`helm template` of the chart with these values -> the rendered objects."""

    def run(values: dict[str, Any] | None = None, namespace: str = "converge-system",
            release: str = "converge") -> list[dict[str, Any]]:
        p = template(helm, tmp_path, values, namespace=namespace, release=release)
        if p.returncode != 0:
            raise AssertionError(f"helm template failed:\n{p.stderr}")
        return [d for d in yaml.safe_load_all(p.stdout) if d]

    return run


def template(helm: str, tmp_path: Path, values: dict[str, Any] | None, *, namespace: str = "converge-system",
             release: str = "converge", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    argv = [helm, "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *extra]
    if values is not None:
        vf = tmp_path / "values.yaml"
        vf.write_text(yaml.safe_dump(values))
        argv += ["-f", str(vf)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=helm_env(tmp_path))


def helm_env(tmp_path: Path) -> dict[str, str]:
    """helm keeps its caches and config out of the user's home."""
    return {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
            "HELM_CONFIG_HOME": str(tmp_path / "helm-config"), "HELM_DATA_HOME": str(tmp_path / "helm-data")}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
