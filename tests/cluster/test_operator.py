"""`converge operator` against a real API server (+ kube-controller-manager): kubectl apply
converges through kopf, status tells the truth, drift heals, deletion deprovisions first,
events on transitions, nothing written at rest, disabled backends, leader election,
health and metrics, graceful stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, free_port
from tests.helpers import HTTP_SERVER, PY

CONVERGE = str(Path(sys.executable).parent / "converge")


class Operator:
    def __init__(self, proc: subprocess.Popen[str], health: int, metrics: int, log: Path) -> None:
        self.proc, self.health, self.metrics, self.log = proc, health, metrics, log

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), ""
        except OSError:
            return 0, ""


StartOperator = Callable[..., Operator]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    yield d
    for pidfile in d.glob("_runtime/*/*/daemon.json"):  # whatever a failed test left running
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGKILL)


@pytest.fixture
def start_operator(kubeconfig: Path, namespace: str, state_dir: Path, tmp_path: Path) -> Iterator[StartOperator]:
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str, backends: tuple[str, ...] = ("daemon",), watch: str | None = None) -> Operator:
        health, metrics = free_port(), free_port()
        log = tmp_path / f"operator-{len(procs)}.log"
        args = [CONVERGE, "operator", "--kubeconfig", str(kubeconfig), "-n", watch or namespace,
                "--health-port", str(health), "--metrics-port", str(metrics), "--state-dir", str(state_dir),
                "--resync", "30s", *(a for b in backends for a in ("--enable-backend", b)), *extra]
        with log.open("w") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(p)
        op = Operator(p, health, metrics, log)
        _until(lambda: op.get(health, "/healthz")[0] == 200 or p.poll() is not None, 30, "operator /healthz")
        assert p.poll() is None, log.read_text()
        return op

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _until(cond: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def web(name: str, namespace: str, **spec: Any) -> str:
    port = free_port()
    obj = {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
           "metadata": {"name": name, "namespace": namespace, "labels": {"stack": "demo"}},
           "spec": {"backend": {"daemon": {"command": [PY, HTTP_SERVER, "$(PORT)"]}},
                    "endpoint": {"protocol": "http", "port": port, "allocatePort": True,
                                 "healthCheck": {"http": {"path": "/healthz"}, "periodSeconds": 1}},
                    "restartPolicy": {"backoffSeconds": 0.2, "maxBackoffSeconds": 1},
                    **spec}}
    return yaml.safe_dump(obj)


def msvc(cp: ControlPlane, name: str, namespace: str) -> dict[str, Any]:
    return json.loads(cp.kubectl("get", "msvc", name, "-n", namespace, "-o", "json").stdout)


def pid_of(cp: ControlPlane, name: str, namespace: str) -> int:
    return int(msvc(cp, name, namespace)["status"]["backend"]["pid"])


def wait_ready(cp: ControlPlane, name: str, namespace: str, timeout: int = 60) -> None:
    cp.kubectl("wait", "--for=condition=Ready", f"--timeout={timeout}s", "-n", namespace, f"msvc/{name}",
               timeout=timeout + 10)


def events(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(cp.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "ManagedService"]


def copies(cp: ControlPlane, name: str, namespace: str) -> int:
    """How many processes run this service's program (its port is on the command line)."""
    port = str(msvc(cp, name, namespace)["status"]["endpoint"]["port"])
    return sum(1 for p in psutil.process_iter(["cmdline"])
               if HTTP_SERVER in (p.info["cmdline"] or []) and port in (p.info["cmdline"] or []))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kubectl_apply_converges_heals_updates_and_deletes(control_plane: ControlPlane, namespace: str,
                                                           start_operator: StartOperator) -> None:
    cp = control_plane
    start_operator()
    cp.kubectl("apply", "-f", "-", input=web("web", namespace))
    wait_ready(cp, "web", namespace)
    obj = msvc(cp, "web", namespace)
    st = obj["status"]
    assert st["state"] == "active" and st["restarts"] == 0 and st.get("lastError", "") == ""
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert st["endpoint"]["uri"].startswith("http://127.0.0.1:")
    assert {c["type"] for c in st["conditions"]} >= {"Ready"}
    assert obj["metadata"]["finalizers"] == ["converge.dev/deprovision"]
    assert not [k for k in obj["metadata"].get("annotations", {}) if "kopf" in k]  # kopf keeps off the object
    _until(lambda: "Provisioned" in {e["reason"] for e in events(cp, namespace, "web")}, 20, "Provisioned event")

    # drift: a killed daemon comes back, counted
    pid = pid_of(cp, "web", namespace)
    os.kill(pid, signal.SIGKILL)
    _until(lambda: msvc(cp, "web", namespace)["status"].get("restarts") == 1, 30, "restart counted")
    wait_ready(cp, "web", namespace)
    assert pid_of(cp, "web", namespace) != pid
    _until(lambda: "Restarted" in {e["reason"] for e in events(cp, namespace, "web")}, 20, "Restarted event")

    # a spec edit replaces in place; observedGeneration follows
    pid = pid_of(cp, "web", namespace)
    cp.kubectl("patch", "msvc", "web", "-n", namespace, "--type=merge",
               "-p", json.dumps({"spec": {"backend": {"daemon": {"env": [{"name": "X", "value": "2"}]}}}}))
    _until(lambda: (o := msvc(cp, "web", namespace))["status"].get("observedGeneration")
           == o["metadata"]["generation"] == 2 and o["status"]["backend"].get("pid") != pid, 30, "replaced")
    wait_ready(cp, "web", namespace)
    assert not alive(pid)

    # suspended, then active again
    cp.kubectl("patch", "msvc", "web", "-n", namespace, "--type=merge", "-p", '{"spec":{"adminState":"suspended"}}')
    _until(lambda: msvc(cp, "web", namespace)["status"]["state"] == "scaled_to_zero", 30, "scaled_to_zero")
    cp.kubectl("patch", "msvc", "web", "-n", namespace, "--type=merge", "-p", '{"spec":{"adminState":"active"}}')
    wait_ready(cp, "web", namespace)

    # kubectl delete: deprovisioned first, then gone
    pid = pid_of(cp, "web", namespace)
    cp.kubectl("delete", "msvc", "web", "-n", namespace, "--timeout=60s", timeout=70)
    assert not alive(pid)
    assert "Deprovisioned" in {e["reason"] for e in events(cp, namespace, "web")}


def test_at_rest_the_operator_writes_nothing_and_events_are_not_repeated(
        control_plane: ControlPlane, namespace: str, start_operator: StartOperator) -> None:
    cp = control_plane
    op = start_operator("--resync", "2s")
    for name in ("a", "b", "c"):
        cp.kubectl("apply", "-f", "-", input=web(name, namespace))
    for name in ("a", "b", "c"):
        wait_ready(cp, name, namespace)
    time.sleep(3)  # let the last status write and its watch event settle
    ours = ("/managedservices", "/events")

    def writes() -> float:
        return sum(v for k, v in cp.write_requests().items() if k.endswith(ours))

    n_events = len(events(cp, namespace, "a"))
    before = writes()
    time.sleep(12)  # six resyncs
    assert writes() - before == 0
    assert len(events(cp, namespace, "a")) == n_events
    code, text = op.get(op.metrics, "/metrics")
    assert code == 200
    assert 'converge_services{state="active"} 3.0' in text
    assert "converge_reconcile_total" in text and "converge_workqueue_depth" in text
    assert "converge_reconcile_duration_seconds_bucket" in text
    assert op.get(op.health, "/readyz")[0] == 200


def test_disabled_backend_is_stalled_and_runs_nothing(control_plane: ControlPlane, namespace: str,
                                                     start_operator: StartOperator, state_dir: Path) -> None:
    cp = control_plane
    start_operator(backends=())
    cp.kubectl("apply", "-f", "-", input=web("web", namespace))

    def stalled() -> bool:
        st = msvc(cp, "web", namespace).get("status", {})
        conds = {c["type"]: c for c in st.get("conditions", [])}
        return (st.get("state") == "error" and conds.get("Stalled", {}).get("status") == "True"
                and conds["Stalled"]["reason"] == "BackendDisabled")
    _until(stalled, 30, "Stalled BackendDisabled")
    assert not list(state_dir.glob("_runtime/*/*/daemon.json"))
    cp.kubectl("delete", "msvc", "web", "-n", namespace, "--timeout=30s", timeout=40)  # nothing to clean up


def test_graceful_stop_keeps_services_and_a_delete_while_down_finishes_later(
        control_plane: ControlPlane, namespace: str, start_operator: StartOperator) -> None:
    cp = control_plane
    op = start_operator()
    cp.kubectl("apply", "-f", "-", input=web("web", namespace))
    wait_ready(cp, "web", namespace)
    pid = pid_of(cp, "web", namespace)
    op.proc.send_signal(signal.SIGTERM)
    assert op.proc.wait(30) == 0
    assert alive(pid)  # stopping the operator stops no service
    start_operator()  # a new operator adopts what runs: no second copy
    time.sleep(2)
    assert pid_of(cp, "web", namespace) == pid and alive(pid)
    assert copies(cp, "web", namespace) == 1
    # down during a delete: the finalizer holds the object until an operator is back
    for p in psutil.process_iter(["cmdline"]):
        if "operator" in (p.info["cmdline"] or []) and str(namespace) in (p.info["cmdline"] or []):
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    cp.kubectl("delete", "msvc", "web", "-n", namespace, "--wait=false")
    time.sleep(1)
    assert msvc(cp, "web", namespace)["metadata"].get("deletionTimestamp") and alive(pid)
    start_operator()
    _until(lambda: cp.kubectl("get", "msvc", "web", "-n", namespace, check=False).returncode != 0, 60, "gone")
    assert not alive(pid)


def test_deleting_the_namespace_deprovisions_everything_in_it(control_plane: ControlPlane, namespace: str,
                                                             start_operator: StartOperator) -> None:
    cp = control_plane
    start_operator()
    for name in ("a", "b"):
        cp.kubectl("apply", "-f", "-", input=web(name, namespace))
    for name in ("a", "b"):
        wait_ready(cp, name, namespace)
    pids = [pid_of(cp, n, namespace) for n in ("a", "b")]
    cp.kubectl("delete", "namespace", namespace, "--wait=false")
    _until(lambda: not any(alive(p) for p in pids), 90, "services deprovisioned")
    _until(lambda: cp.kubectl("get", "namespace", namespace, check=False).returncode != 0, 90, "namespace gone")


def test_leader_election_one_reconciles_and_a_standby_takes_over(control_plane: ControlPlane, namespace: str,
                                                                start_operator: StartOperator) -> None:
    cp = control_plane
    lease = ("--leader-elect", "--lease-name", f"lease-{namespace}", "--lease-namespace", namespace,
             "--lease-duration", "6s")
    first = start_operator(*lease)
    _until(lambda: cp.kubectl("get", "lease", f"lease-{namespace}", "-n", namespace, check=False).returncode == 0,
           30, "lease")
    second = start_operator(*lease)
    cp.kubectl("apply", "-f", "-", input=web("a", namespace))
    wait_ready(cp, "a", namespace)
    holder = json.loads(cp.kubectl("get", "lease", f"lease-{namespace}", "-n", namespace, "-o", "json").stdout)
    leader, standby = (first, second) if str(first.proc.pid) in holder["spec"]["holderIdentity"] else (second, first)
    assert str(leader.proc.pid) in holder["spec"]["holderIdentity"]
    assert standby.get(standby.health, "/readyz")[0] == 200  # a standby is healthy and ready
    os.killpg(leader.proc.pid, signal.SIGKILL)
    t = time.monotonic()
    cp.kubectl("apply", "-f", "-", input=web("b", namespace))
    wait_ready(cp, "b", namespace, timeout=60)
    took = time.monotonic() - t
    assert took < 6 + 10, took  # the lease duration, plus start-up
    assert copies(cp, "a", namespace) == 1 and copies(cp, "b", namespace) == 1  # no duplicate


def test_depends_on_across_objects_and_inactive(control_plane: ControlPlane, namespace: str,
                                                start_operator: StartOperator) -> None:
    cp = control_plane
    start_operator()
    cp.kubectl("apply", "-f", "-", input=web("api", namespace, dependsOn=["db"]))
    time.sleep(2)
    st = msvc(cp, "api", namespace)["status"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "DependencyNotReady" and "db" in ready["message"]
    assert not st.get("backend", {}).get("pid")  # nothing started before what it depends on
    cp.kubectl("apply", "-f", "-", input=web("db", namespace))
    wait_ready(cp, "db", namespace)
    wait_ready(cp, "api", namespace)
    pid = pid_of(cp, "api", namespace)
    cp.kubectl("patch", "msvc", "api", "-n", namespace, "--type=merge", "-p", '{"spec":{"adminState":"inactive"}}')
    _until(lambda: msvc(cp, "api", namespace)["status"]["state"] == "inactive", 30, "inactive")
    assert not alive(pid)


def test_ready_before_any_object_exists(start_operator: StartOperator) -> None:
    op = start_operator()  # its namespace holds no ManagedService
    _until(lambda: op.get(op.health, "/readyz")[0] == 200, 30, "/readyz")
