"""The CLI against a real cluster: the same commands, output and exit codes as on the file
store; kubectl sees what converge wrote (printer columns, describe, wait)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster.controlplane import ControlPlane, free_port
from tests.conftest import CLI
from tests.helpers import HTTP_SERVER, PY, daemon, write


class ClusterCLI(CLI):
    """`converge` with $KUBECONFIG naming the test cluster (no file store)."""

    def __init__(self, kubeconfig: Path, state: Path, cwd: Path, namespace: str) -> None:
        super().__init__(state, cwd)
        self.env.pop("CONVERGE_STORE", None)
        self.env.update({"KUBECONFIG": str(kubeconfig), "CONVERGE_STATE_DIR": str(state)})
        self.namespace = namespace


@pytest.fixture
def kcli(kubeconfig: Path, tmp_path: Path, namespace: str) -> Iterator[ClusterCLI]:
    c = ClusterCLI(kubeconfig, tmp_path / "state", tmp_path, namespace)
    yield c
    for proc in psutil.process_iter(["environ"]):  # whatever this test's controllers started
        with contextlib.suppress(psutil.Error):
            if (proc.info["environ"] or {}).get("CONVERGE_STATE_DIR") == str(c.store) and proc.pid != os.getpid():
                proc.kill()
    for pidfile in (tmp_path / "state").glob("_runtime/*/*/daemon.json"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(__import__("json").loads(pidfile.read_text())["pid"]), signal.SIGKILL)


def _web(name: str, namespace: str) -> dict[str, object]:
    port = free_port()
    svc = daemon(name, [PY, HTTP_SERVER, "$(PORT)"], port=port, labels={"stack": "demo"})
    svc["metadata"]["namespace"] = namespace  # type: ignore[index]
    return svc


def test_apply_get_describe_and_kubectl_sees_the_same(kcli: ClusterCLI, control_plane: ControlPlane,
                                                      tmp_path: Path, namespace: str) -> None:
    m = write(tmp_path / "s.yaml", _web("web", namespace))
    p = kcli("apply", "-f", str(m))
    assert "managedservice/web created" in p.stdout
    assert "managedservice/web unchanged" in kcli("apply", "-f", str(m)).stdout  # the context's namespace
    assert kcli("get", "-o", "name", "-n", namespace).stdout.split() == ["managedservice/web"]
    out = control_plane.kubectl("get", "msvc", "-n", namespace).stdout
    assert out.split()[:6] == ["NAME", "STATE", "READY", "BACKEND", "ENDPOINT", "RESTARTS"], out
    # one converging pass on this host (the operator's job in a cluster): status via the subresource
    kcli("reconcile", "-n", namespace, "--timeout", "60s")
    control_plane.kubectl("wait", "--for=condition=Ready", "--timeout=30s", "-n", namespace, "msvc/web")
    row = control_plane.kubectl("get", "msvc", "web", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:4] == ["active", "True", "daemon"], row
    assert row[4].startswith("http://127.0.0.1:")
    assert "Ready" in control_plane.kubectl("describe", "msvc", "web", "-n", namespace).stdout
    assert "active" in kcli("get", "web", "-n", namespace).stdout
    desc = kcli("describe", "web", "-n", namespace).stdout
    assert "Ready" in desc and "daemon" in desc
    kcli("wait", "web", "-n", namespace, "--for", "condition=Ready", "--timeout", "10s")
    # a second pass with nothing to do writes nothing
    before = control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o",
                                   "jsonpath={.metadata.resourceVersion}").stdout
    kcli("reconcile", "-n", namespace, "--timeout", "30s")
    assert control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o",
                                 "jsonpath={.metadata.resourceVersion}").stdout == before
    kcli("down", "--force", "-n", namespace, "--timeout", "1s", check=False)
    kcli("reconcile", "-n", namespace, "--timeout", "30s")


def test_invalid_input_is_refused_before_the_cluster_sees_it(kcli: ClusterCLI, control_plane: ControlPlane,
                                                             tmp_path: Path, namespace: str) -> None:
    good = _web("good", namespace)
    bad = _web("bad", namespace)
    bad["spec"]["restartPolicy"] = {"backoffSeconds": -1}  # type: ignore[index]
    p = kcli("apply", "-f", str(write(tmp_path / "s.yaml", good, bad)), check=False)
    assert p.returncode == 1 and "backoffSeconds" in p.stderr and "Traceback" not in p.stderr
    assert control_plane.kubectl("get", "msvc", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_delete_waits_for_the_controller_and_run_finishes_it(kcli: ClusterCLI, control_plane: ControlPlane,
                                                             tmp_path: Path, namespace: str) -> None:
    kcli("apply", "-f", str(write(tmp_path / "s.yaml", _web("web", namespace))))
    kcli("reconcile", "-n", namespace, "--timeout", "60s")
    pid = int(control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o",
                                    "jsonpath={.status.backend.pid}").stdout)
    assert psutil.pid_exists(pid)
    fins = control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o", "jsonpath={.metadata.finalizers}")
    assert "converge.dev/deprovision" in fins.stdout
    # No controller runs: deletion is requested, the finalizer holds the object, the CLI says so.
    p = kcli("delete", "web", "-n", namespace, "--timeout", "2s", check=False)
    assert p.returncode == 1 and "not deleted" in p.stderr
    assert control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o",
                                 "jsonpath={.metadata.deletionTimestamp}").stdout
    assert psutil.pid_exists(pid)  # nothing deprovisioned behind the controller's back
    # `converge run` over the cluster is the controller: it deprovisions, then the object goes.
    run = kcli.popen("run", "--resync", "600s")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if control_plane.kubectl("get", "msvc", "web", "-n", namespace, check=False).returncode != 0:
                break
            time.sleep(0.3)
        else:
            pytest.fail("not deleted by the controller")
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        # up / down / delete wait for the controller's status
        kcli("apply", "-f", str(write(tmp_path / "s.yaml", _web("web", namespace))))
        kcli("wait", "web", "-n", namespace, "--timeout", "60s")
        p = kcli("down", "web", "-n", namespace, "--timeout", "60s")
        assert control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o",
                                     "jsonpath={.status.state}").stdout == "scaled_to_zero", p.stdout
        kcli("up", "web", "-n", namespace, "--timeout", "60s")
        assert control_plane.kubectl("get", "msvc", "web", "-n", namespace, "-o",
                                     "jsonpath={.status.state}").stdout == "active"
        p = kcli("delete", "web", "-n", namespace, "--timeout", "60s")
        assert "managedservice/web deleted" in p.stdout
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()


def test_api_errors_are_one_line(kcli: ClusterCLI, control_plane: ControlPlane, tmp_path: Path,
                                 namespace: str) -> None:
    nobody = control_plane.write_kubeconfig(tmp_path / "nobody", control_plane.nobody_token)
    p = kcli("get", "-n", namespace, "--kubeconfig", str(nobody), check=False)
    assert p.returncode == 1 and "forbidden" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    down = tmp_path / "down"
    down.write_text(control_plane.kubeconfig.read_text().replace(control_plane.server,
                                                                 f"https://127.0.0.1:{free_port()}"))
    p = kcli("get", "--kubeconfig", str(down), check=False, timeout=30)
    assert p.returncode == 1 and "unreachable" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = kcli("get", "nope", "-n", namespace, check=False)
    assert p.returncode == 1 and 'managedservices "nope" not found' in p.stderr


def test_the_kubernetes_example_is_accepted_by_the_api_server(control_plane: ControlPlane, namespace: str) -> None:
    example = Path(__file__).resolve().parents[2] / "manifests" / "examples-kubernetes"
    p = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example))
    assert "managedservice.converge.dev/web created (server dry run)" in p.stdout
