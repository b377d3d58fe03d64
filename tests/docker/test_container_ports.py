"""A container endpoint without `ports`, through the real CLI on the private dockerd:
the image's single EXPOSEd port, `$(PORT)` in the command, or a clear error at apply."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI
from tests.docker.engine import TEST_IMAGE, Engine, busybox_rootfs_tar

pytestmark = pytest.mark.docker

EXPOSED_IMAGE = "converge-test-exposed:1"


@pytest.fixture(scope="module")
def exposed_image(engine: Engine) -> Iterator[str]:
    """busybox httpd on 8080, EXPOSE 8080: an image that says where it listens."""
    client = engine.client(timeout=120)
    try:
        repo, _, tag = EXPOSED_IMAGE.rpartition(":")
        client.api.import_image_from_data(busybox_rootfs_tar(), repository=repo, tag=tag, changes=[
            "EXPOSE 8080", 'CMD ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]', "WORKDIR /"])
        client.images.get(EXPOSED_IMAGE)
    finally:
        client.close()
    yield EXPOSED_IMAGE


def service(name: str, image: str, command: list[str] | None = None) -> dict:
    container: dict = {"image": image, "stopGracePeriodSeconds": 1}
    if command is not None:
        container["command"] = command
    return {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService", "metadata": {"name": name},
            "spec": {"backend": {"container": container},
                     "endpoint": {"protocol": "http", "port": 18080, "allocatePort": True,
                                  "healthCheck": {"http": {"path": "/healthz"}, "periodSeconds": 1}}}}


def body(uri: str) -> str:
    with urllib.request.urlopen(uri + "/healthz", timeout=5) as r:
        return r.read().decode()


@pytest.mark.parametrize(("name", "command"), [
    ("exposed", None),  # the image's single EXPOSEd port
    ("told", ["sh", "-c", "exec busybox httpd -f -p $(PORT) -h /www"]),  # an image without EXPOSE, told the port
])
def test_endpoint_without_ports_is_reached(engine: Engine, exposed_image: str, cli: CLI, tmp_path: Path, name: str,
                                           command: list[str] | None) -> None:
    m = tmp_path / "s.yaml"
    m.write_text(yaml.safe_dump(service(name, exposed_image if command is None else TEST_IMAGE, command)))
    cli("apply", "-f", str(m))
    cli("reconcile", "--timeout", "60s")
    assert body(cli.obj(name)["status"]["endpoint"]["uri"]) == "ok\n"
    cli("delete", name)


def test_no_port_to_reach_is_rejected_at_apply(engine: Engine, cli: CLI, tmp_path: Path) -> None:
    m = tmp_path / "s.yaml"
    m.write_text(yaml.safe_dump(service("portless", TEST_IMAGE, ["busybox", "httpd", "-f", "-p", "8080"])))
    p = cli("apply", "-f", str(m), check=False)
    assert p.returncode == 1, p.stdout
    assert 'ManagedService "portless"' in p.stderr and "exposes no port" in p.stderr
    assert "ports: [{containerPort: N}]" in p.stderr and "nothing was applied" in p.stderr
    assert cli("get", "-o", "name").stdout == ""
