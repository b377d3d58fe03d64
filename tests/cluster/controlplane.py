"""A real Kubernetes control plane on loopback for the cluster tests and benchmarks.

`ControlPlane` starts etcd, kube-apiserver (TLS, RBAC authorization, a static token
file) and kube-controller-manager (garbage collection, namespace deletion, Deployments
and ReplicaSets) from the binaries .ci/setup.d/kube.sh builds into
$CONVERGE_CACHE/bin, on free loopback ports in a temp folder of its own, writes an
admin kubeconfig and waits for /readyz. Every process is started in its own session
with a parent-death signal, so nothing outlives the test run, even a killed one;
`close()` stops them and removes the folder. No pytest here (tests/cluster/conftest.py
wraps it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.helpers import die_with_parent, free_port, stop_group

CACHE = Path(os.environ.get("CONVERGE_CACHE", Path.home() / ".cache" / "converge"))
BIN = CACHE / "bin"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager")


class ControlPlaneError(RuntimeError):
    """A binary is missing or a component did not come up; the message says why."""


def missing_tools() -> list[str]:
    out = [str(BIN / t) for t in TOOLS if not (BIN / t).is_file()]
    if shutil.which("openssl") is None:
        out.append("openssl")
    return out


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class ControlPlane:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="cvg-kube-"))
        self.root.chmod(0o700)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.kcm_token = secrets.token_hex(16)
        self.nobody_token = secrets.token_hex(16)  # authenticated, no RBAC grants: everything is forbidden
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.ca = self.root / "ca.crt"

    # ------------------------------------------------------------------ set-up

    def _certs(self) -> None:
        d = self.root
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", "2", "-subj", "/CN=converge-test-ca", cwd=d)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
                 "-subj", "/CN=kube-apiserver", cwd=d)
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n")
        _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "apiserver.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
        (d / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            f'{self.kcm_token},system:kube-controller-manager,kcm-uid,"system:masters"\n'
            f'{self.nobody_token},nobody,nobody-uid\n')
        for f in d.iterdir():
            f.chmod(0o600)

    def write_kubeconfig(self, path: Path, token: str, user: str = "admin", namespace: str = "default") -> Path:
        path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {self.server}
    certificate-authority: {self.ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: test
  context: {{cluster: test, user: {user}, namespace: {namespace}}}
current-context: test
""")
        path.chmod(0o600)
        return path

    def _start(self, name: str, argv: Sequence[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.root, start_new_session=True, preexec_fn=die_with_parent)
        log.close()

    def start(self, timeout: float = 60.0) -> None:
        missing = missing_tools()
        if missing:
            raise ControlPlaneError("missing: " + ", ".join(missing) + " (run .ci/bootstrap: .ci/setup.d/kube.sh)")
        self._certs()
        d = self.root
        self._start("etcd", [
            str(BIN / "etcd"), "--name", "default", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{self.etcd_peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(2 * 1024**3),
        ])
        self._start("kube-apiserver", [
            str(BIN / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.port), "--cert-dir", str(d / "certs"),
            "--tls-cert-file", str(d / "apiserver.crt"), "--tls-private-key-file", str(d / "apiserver.key"),
            "--client-ca-file", str(d / "ca.crt"),
            "--token-auth-file", str(d / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(d / "sa.pub"),
            "--service-account-signing-key-file", str(d / "sa.key"),
            "--api-audiences", "https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--allow-privileged=true", "--profiling=false", "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type", "none",
        ])
        self.write_kubeconfig(self.kubeconfig, self.admin_token)
        kcm_config = self.write_kubeconfig(d / "kcm.kubeconfig", self.kcm_token, user="kcm")
        self._wait(lambda: self._get("/readyz") == 200, timeout, "kube-apiserver /readyz")
        self._start("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), "--kubeconfig", str(kcm_config),
            "--authentication-kubeconfig", str(kcm_config), "--authorization-kubeconfig", str(kcm_config),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--leader-elect=false", "--use-service-account-credentials=false",
            "--service-account-private-key-file", str(d / "sa.key"), "--root-ca-file", str(d / "ca.crt"),
            "--controllers", "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route,"
                             "-persistentvolume-binder,-attachdetach,-pv-protection,-ttl",
            "--concurrent-gc-syncs", "5", "--namespace-sync-period", "10s",
        ])

    def _get(self, path: str) -> int:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ssl.SSLError):
            return 0

    def _wait(self, ok: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise ControlPlaneError(f"{name} exited {p.returncode}:\n{self.log_tail(name)}")
            if ok():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{what} not ready after {timeout:g}s:\n{self.log_tail('kube-apiserver')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ use

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def write_requests(self) -> dict[str, float]:
        """apiserver_request_total of write verbs by resource, from /metrics (admin token)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(self.server + "/metrics", headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            fields = dict(kv.split("=", 1) for kv in labels[len("apiserver_request_total{"):-1].split(","))
            verb = fields.get("verb", "").strip('"')
            if verb in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
                key = f"{verb} {fields.get('group', '').strip(chr(34))}/{fields.get('resource', '').strip(chr(34))}"
                out[key] = out.get(key, 0.0) + float(value)
        return out

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            p = self.procs.get(name)
            if p is not None:
                stop_group(p)
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
