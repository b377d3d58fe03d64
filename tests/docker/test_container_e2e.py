"""End to end: the real `converge` CLI with a container service on the private dockerd.

apply -> reconcile to Ready -> logs -> `converge run` heals a killed and a removed
container -> suspend/resume through `down`/`up` -> delete removes the container.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from converge.api import ServiceKey
from converge.backends import container_args as ca
from converge.backends.health import probe_http
from tests.conftest import CLI
from tests.docker.engine import TEST_IMAGE, Engine
from tests.helpers import free_port, until

pytestmark = pytest.mark.docker


def wait_for(cond: Callable[[], Any], timeout: float = 30.0) -> Any:
    return until(cond, timeout=timeout, interval=0.05)


def manifest(path: Path, name: str, port: int, secret_file: Path) -> Path:
    path.write_text(f"""\
apiVersion: converge.dev/v1alpha1
kind: ManagedService
metadata:
  name: {name}
  labels: {{stack: e2e}}
spec:
  backend:
    container:
      image: {TEST_IMAGE}
      command: [sh, -c, 'echo "hello from $NAME token=$TOKEN"; exec busybox httpd -f -p 8080 -h /www']
      env:
        NAME: {name}
        TOKEN: {{valueFrom: {{file: {secret_file}}}}}
      ports: [{{containerPort: 8080}}]
      stopGracePeriodSeconds: 2
  endpoint:
    protocol: http
    port: {port}
    healthCheck:
      http: {{path: /healthz, timeoutSeconds: 1}}
      periodSeconds: 1
  restartPolicy: {{backoffSeconds: 0.2, maxBackoffSeconds: 2}}
""")
    return path


def test_cli_lifecycle_with_self_heal(engine: Engine, cli: CLI, tmp_path: Path) -> None:
    assert cli.env["DOCKER_HOST"] == engine.host
    client = engine.client()
    key = ServiceKey("default", "web")
    port = free_port()
    secret = tmp_path / "token"
    secret.write_text("tok-s3cr3t-value\n")
    m = manifest(tmp_path / "web.yaml", "web", port, secret)

    def containers() -> list[Any]:
        return list(client.containers.list(all=True, filters=ca.identity_filter(key)))

    def serving() -> bool:
        return probe_http(False, "127.0.0.1", port, "/healthz", 200, 0.5).ok

    run: subprocess.Popen[str] | None = None
    out = ""
    try:
        cli("apply", "-f", str(m))
        cli("reconcile", "--timeout", "60s")
        obj = cli("get", "web", "-o", "json")
        status = json.loads(obj.stdout)["status"]
        assert status["state"] == "active", status
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
        [c] = containers()
        assert status["backend"]["containerId"] == c.id[:12]
        assert serving()
        assert "tok-s3cr3t" not in obj.stdout
        logs = cli("logs", "web", "--tail", "5").stdout
        assert "hello from web token=***" in logs and "tok-s3cr3t" not in logs
        described = cli("describe", "web").stdout
        assert "tok-s3cr3t" not in described

        # `converge run` heals a container killed (restarted in place) and one removed by hand
        run = cli.popen("run", "--resync", "60s")
        time.sleep(1.0)
        c.kill()
        killed = time.monotonic()
        wait_for(lambda: not serving(), timeout=5)
        wait_for(serving, timeout=30)
        healed = time.monotonic() - killed
        print(f"killed container serving again after {healed:.2f}s")
        assert healed < 10, healed  # Docker events, not the 60 s resync
        assert [x.id for x in containers()] == [c.id]

        c.remove(force=True)
        removed = time.monotonic()
        wait_for(serving, timeout=30)
        assert time.monotonic() - removed < 10
        [c2] = wait_for(lambda: [x for x in containers() if x.status == "running"], timeout=10)
        assert c2.id != c.id and c2.name == ca.container_name(key)
    finally:
        if run is not None:
            run.send_signal(signal.SIGINT)
            try:
                out, _ = run.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                out, _ = run.communicate()
    assert "tok-s3cr3t" not in out  # the controller's log

    # suspend keeps the container, stopped; up resumes the same container
    cli("down", "-l", "stack=e2e", "--timeout", "60s")
    [c3] = containers()
    assert c3.status == "exited" and c3.id == c2.id
    state = json.loads(cli("get", "web", "-o", "json").stdout)["status"]["state"]
    assert state == "scaled_to_zero"
    cli("up", "-l", "stack=e2e", "--timeout", "60s")
    [c4] = containers()
    assert c4.id == c2.id and c4.status == "running"
    wait_for(serving, timeout=10)

    # delete deprovisions: the container is gone, then the object
    cli("delete", "web", "--timeout", "60s")
    assert containers() == []
    assert cli("get", "web", check=False).returncode != 0
    client.close()
