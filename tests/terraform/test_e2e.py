"""A Terraform service end to end through the real `converge` CLI and file store: apply,
reconcile, outputs in status, drift converged back, a variable change, a broken recipe
next to it, logs, delete (destroy); and `converge run` healing drift on its resync."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI

from .conftest import RECIPES

pytestmark = pytest.mark.terraform

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples-terraform"
SECRET = "tok-e2e-secret-value"

BROKEN = """\
apiVersion: converge.dev/v1alpha1
kind: ManagedService
metadata:
  name: broken
spec:
  backend:
    terraform:
      directory: ./syntax
  restartPolicy: {backoffSeconds: 30, maxBackoffSeconds: 60}
"""


@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, Path]:
    """The example, its site moved into the test's tmp dir, plus a broken recipe."""
    src = tmp_path / "example"
    shutil.copytree(EXAMPLE, src)
    site = tmp_path / "site"
    manifest = src / "site.yaml"
    text = manifest.read_text().replace("/tmp/converge-site", str(site))
    token = f"title: Hello from converge\n        api_token: {SECRET}"
    text = text.replace("title: Hello from converge", token)
    manifest.write_text(text)
    shutil.copytree(RECIPES / "syntax", src / "syntax")
    (src / "broken.yaml").write_text(BROKEN)
    return src, site


def test_terraform_service_through_the_cli(cli: CLI, stack: tuple[Path, Path], terraform_bin: str) -> None:
    src, site = stack
    index = site / "index.html"
    cli("apply", "-f", str(src))
    cli("reconcile", "--timeout", "6s", check=False)  # `broken` never settles

    obj = cli.obj("site")
    st = obj["status"]
    assert st["state"] == "active", st
    outputs = {"index": str(index), "url": f"file://{index}", "api_token": "(sensitive)"}
    assert st["backend"]["outputs"] == outputs
    assert st["backend"]["endpoint"] == f"file://{index}"
    assert index.read_text() == "<h1>Hello from converge</h1>\n"
    runtime = Path(st["backend"]["runtimeDir"])
    assert (runtime / "terraform.tfstate").exists()

    # a broken recipe is an error with terraform's own words; the other service is unaffected
    broken = cli.obj("broken")["status"]
    assert broken["state"] == "error"
    assert "Error: Invalid expression" in broken["lastError"] and "main.tf line 2" in broken["lastError"]
    cli("delete", "broken", "--force", check=False)

    # drift: the page is deleted by hand; a pass applies it back
    index.unlink()
    cli("reconcile", "--timeout", "20s")
    assert index.read_text() == "<h1>Hello from converge</h1>\n"
    assert cli.obj("site")["status"]["state"] == "active"

    # a variable change applies in place, in the same runtime dir
    manifest = src / "site.yaml"
    manifest.write_text(manifest.read_text().replace("title: Hello from converge", "title: Changed"))
    cli("apply", "-f", str(manifest))
    cli("reconcile", "--timeout", "20s")
    st = cli.obj("site")["status"]
    assert index.read_text() == "<h1>Changed</h1>\n"
    assert (st["state"], st["backend"]["runtimeDir"]) == ("active", str(runtime))

    logs = cli("logs", "site").stdout
    assert "apply" in logs and "Apply complete!" in logs
    assert SECRET not in logs
    assert SECRET not in json.dumps(cli.obj("site")["status"])
    assert SECRET not in cli("describe", "site").stdout.split("Spec:")[0]

    cli("delete", "site")
    assert not index.exists()
    assert not (runtime / "terraform.tfstate").exists()
    assert "site" not in cli("get").stdout


def test_run_heals_terraform_drift_on_resync(cli: CLI, stack: tuple[Path, Path], terraform_bin: str) -> None:
    src, site = stack
    index = site / "index.html"
    cli("apply", "-f", str(src / "site.yaml"))
    run = cli.popen("run", "--resync", "1s")
    try:
        _wait_for(index.exists, 30, "the first apply")
        index.unlink()
        _wait_for(index.exists, 30, "drift to be applied back")
        # The file appears while terraform apply still runs; the status follows when it ends.
        _wait_for(lambda: cli.obj("site")["status"]["state"] == "active", 30, "active again after the repair")
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(15)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    cli("delete", "site")
    assert not index.exists()


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
