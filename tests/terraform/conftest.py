"""Fixtures of the Terraform tests: the real terraform/tofu CLI, recipes under recipes/.

The recipes use only the built-in `terraform_data` resource with `local-exec`
provisioners, so nothing is downloaded. Each test gets its own runtime dir and "world"
dir (where the recipes make their files); anything left running is killed afterwards.
Without a terraform or tofu binary the tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from converge.api import ServiceKey
from converge.api import TerraformBackend as TerraformSpec
from converge.backends import terraform_runner
from converge.backends.base import Target
from converge.backends.errors import BackendUnavailable
from converge.backends.terraform import TerraformBackend

RECIPES = Path(__file__).resolve().parent / "recipes"


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    try:
        return terraform_runner.find_binary()
    except BackendUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Terraform tests cannot run in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def backend(terraform_bin: str) -> Iterator[TerraformBackend]:
    b = TerraformBackend()
    yield b
    b.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """Where recipes create their files and processes."""
    d = tmp_path / "world"
    d.mkdir()
    yield d
    pidfile = d / "server.pid"
    if pidfile.exists():
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "store" / "_runtime" / "default" / "svc"
    yield d
    for p in terraform_runner.holders(d) if d.exists() else []:
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                c.kill()
            p.kill()


MakeTarget = Callable[..., Target]


@pytest.fixture
def make_target(runtime: Path) -> MakeTarget:
    """A Target for a recipe; the spec hash is derived from the spec, as the core does."""

    def make(recipe: str | Path, **spec: Any) -> Target:
        directory = recipe if isinstance(recipe, Path) else RECIPES / recipe
        config = TerraformSpec.model_validate({"directory": str(directory), **spec})
        digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
        return Target(key=ServiceKey("default", "svc"), uid="uid-1", config=config,
                      spec_hash=digest.hexdigest()[:16], runtime_dir=runtime)

    return make


@pytest.fixture
def recipe_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A private, editable copy of a recipe."""

    def copy(name: str) -> Path:
        dst = tmp_path / "src" / name
        shutil.copytree(RECIPES / name, dst)
        return dst

    return copy


def state_resources(runtime: Path) -> list[str]:
    state = json.loads((runtime / "terraform.tfstate").read_text() or "{}")
    return [f"{r['type']}.{r['name']}" for r in state.get("resources", []) for _ in r["instances"]]
