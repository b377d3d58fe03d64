"""The operator image (Dockerfile): built for real on the tests' private dockerd from the
project's own base (debootstrap'd bookworm minbase, `docker import`) and host-made wheels,
with no network in the build; it runs as non-root on a read-only root filesystem."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.docker.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    tag = f"converge-test/operator:{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DOCKER_HOST": engine.host, "CONVERGE_VENV_BIN": str(BIN)}
    p = subprocess.run([str(ROOT / ".ci" / "build-image"), tag], capture_output=True, text=True, env=env,
                       timeout=900)
    assert p.returncode == 0, f"build-image failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return tag


def run(client: Any, image: str, argv: list[str] | None, **kw: Any) -> tuple[int, str]:
    c = client.containers.create(image, argv, read_only=True, network_disabled=True, cap_drop=["ALL"],
                                 security_opt=["no-new-privileges"], tmpfs={"/tmp": "rw,noexec,nosuid"}, **kw)
    try:
        c.start()
        code = int(c.wait(timeout=120)["StatusCode"])
        return code, c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)


def test_image_metadata(docker_client: Any, image: str) -> None:
    cfg = docker_client.images.get(image).attrs["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["converge", "operator"]
    size_mb = docker_client.images.get(image).attrs["Size"] / 1e6
    assert size_mb < 400, f"image is {size_mb:.0f} MB"


def test_runs_as_non_root_on_read_only_root(docker_client: Any, image: str) -> None:
    code, out = run(docker_client, image, ["--help"])  # the image's entrypoint: converge operator
    assert code == 0, out
    assert "Usage: converge operator" in out and "--leader-elect" in out
    code, out = run(docker_client, image, ["-c", "import os; print(os.getuid(), os.getgid())"],
                    entrypoint=["python3"])
    assert (code, out.strip()) == (0, "65532 65532")
    # The root filesystem is really read-only, and no pip is left in the image's venv.
    code, out = run(docker_client, image, ["-c", "open('/opt/converge/x', 'w')"], entrypoint=["python3"])
    assert code != 0 and "Read-only file system" in out
    code, out = run(docker_client, image, ["-c", "import converge.backends.daemon, kopf, kubernetes; import pip"],
                    entrypoint=["/opt/converge/bin/python"])
    assert code != 0 and "No module named 'pip'" in out
