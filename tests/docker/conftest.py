"""Fixtures of the Docker tests: one private dockerd per test session (tests/docker/engine.py).

The engine runs in a temp dir with its own data-root, exec-root, socket and bridge;
DOCKER_HOST points the backend at it. The test image is imported from busybox-static.
Without dockerd the tests are skipped locally and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from converge.api import ContainerBackend as ContainerSpec
from converge.api import ServiceKey
from converge.backends.base import Target
from converge.backends.container import ContainerBackend
from tests.docker.engine import TEST_IMAGE, Engine, EngineError, build_busybox_image
from tests.helpers import free_port


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Docker tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    eng = Engine()
    try:
        eng.start()
        build_busybox_image(eng)
    except EngineError as exc:
        eng.close()
        _unavailable(str(exc))
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = eng.host
    try:
        yield eng
    finally:
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old
        eng.close()


@pytest.fixture
def docker_client(engine: Engine) -> Iterator[Any]:
    client = engine.client()
    yield client
    client.close()


@pytest.fixture
def backend(engine: Engine) -> Iterator[ContainerBackend]:
    b = ContainerBackend()
    yield b
    b.close()


MakeTarget = Callable[..., Target]


@pytest.fixture
def make_target(engine: Engine, tmp_path: Path, docker_client: Any) -> Iterator[MakeTarget]:
    """Targets for fresh services (unique names); their containers are removed afterwards."""
    made: list[Target] = []

    def make(name: str | None = None, *, port: int | None = None, uid: str | None = None,
             spec_hash: str = "h1", **spec: Any) -> Target:
        spec.setdefault("image", TEST_IMAGE)
        spec.setdefault("command", ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        spec.setdefault("ports", [{"containerPort": 8080}])
        spec.setdefault("stopGracePeriodSeconds", 2)
        name = name or f"svc-{uuid.uuid4().hex[:8]}"
        t = Target(key=ServiceKey("test", name), uid=uid or uuid.uuid4().hex,
                   config=ContainerSpec.model_validate(spec), spec_hash=spec_hash,
                   runtime_dir=tmp_path / name, port=port if port is not None else free_port())
        made.append(t)
        return t

    yield make
    for t in made:
        for c in docker_client.containers.list(all=True, filters={"name": f"converge_test_{t.key.name}"}):
            c.remove(force=True)
