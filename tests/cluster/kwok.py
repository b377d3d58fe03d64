"""Fake nodes for the cluster tests: kube-scheduler binds pods, kwok plays their kubelet.

`FakeNodes` starts kube-scheduler and kwok (sigs.k8s.io/kwok; both built by
.ci/setup.d/kube.sh into $CONVERGE_CACHE/bin) against a control plane's admin kubeconfig
with kwok's default stages and creates one Node that kwok manages (annotation kwok.x-k8s.io/node=fake, as kwok's docs
describe), so Deployments roll out for real without a kubelet: the ReplicaSet controller
makes pods, the scheduler binds them, kwok marks them Running and Ready. No pytest here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from tests.cluster.controlplane import BIN, CACHE, ControlPlane, ControlPlaneError, free_port
from tests.helpers import die_with_parent, stop_group

NODE = "kwok-node-0"
LOG_LINES = ("first line from kwok", "second line from kwok")  # every container's log
KWOK_VERSION = "v0.8.0"
STAGES = CACHE / "kwok" / f"stages-{KWOK_VERSION}.yaml"  # kwok's default stages (.ci/setup.d/kube.sh)


def node_manifest(name: str = NODE) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok"}},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
    }


class FakeNodes:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.root = cp.root / "kwok"
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_file = self.root / "container.log"

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        env = {**os.environ, "HOME": str(self.root)}  # no ~/.kwok/kwok.yaml of the user
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.root, env=env, start_new_session=True,
                                            preexec_fn=die_with_parent)
        log.close()

    def start(self, timeout: float = 60.0) -> None:
        missing = [str(p) for p in (BIN / "kube-scheduler", BIN / "kwok", STAGES) if not p.is_file()]
        if missing:
            raise ControlPlaneError("missing: " + ", ".join(missing) + " (run .ci/setup.d/kube.sh)")
        kc = str(self.cp.kubeconfig)
        # The node's "kubelet" is kwok's server on loopback: `kubectl logs` (and the backend's
        # logs) read LOG_LINES for every container through it.
        port = free_port()
        self.log_file.write_text("".join(f"2026-01-01T00:00:0{i}.000000000Z stdout F {line}\n"  # CRI's format
                                         for i, line in enumerate(LOG_LINES)))
        logs_config = self.root / "logs.yaml"
        logs_config.write_text(json.dumps({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs", "metadata": {"name": "all"},
            "spec": {"logs": [{"logsFile": str(self.log_file), "follow": False}]},
        }))
        self._start("kube-scheduler", [
            str(BIN / "kube-scheduler"), "--kubeconfig", kc, "--authentication-kubeconfig", kc,
            "--authorization-kubeconfig", kc, "--leader-elect=false", "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()),
        ])
        self._start("kwok", [
            str(BIN / "kwok"), "--kubeconfig", kc, "--config", str(STAGES), "--config", str(logs_config),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=", "--cidr=10.244.0.0/24", "--node-ip=127.0.0.1",
            "--node-port", str(port), "--node-lease-duration-seconds=40", "--server-address", f"127.0.0.1:{port}",
        ])
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(node_manifest()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise ControlPlaneError(f"{name} exited {p.returncode}:\n{self.log_tail(name)}")
            ready = self.cp.kubectl("get", "node", NODE, "-o",
                                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            if ready.stdout.strip() == "True":
                # The API server taints a new node not-ready; the node lifecycle controller that
                # would lift the taint is not part of the tests' control plane.
                self.cp.kubectl("taint", "node", NODE, "node.kubernetes.io/not-ready:NoSchedule-", check=False)
                return
            time.sleep(0.3)
        raise ControlPlaneError(f"node {NODE} not Ready after {timeout:g}s:\n{self.log_tail('kwok')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        for p in self.procs.values():
            stop_group(p)
        self.procs.clear()
        self.cp.kubectl("delete", "node", NODE, "--wait=false", check=False)

    def __enter__(self) -> FakeNodes:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
