"""A private Docker engine for the Docker tests and benchmarks/bench_container.py.

`Engine` starts Debian's dockerd in a temp dir of its own (data-root, exec-root, unix
socket, pidfile), without touching iptables, on a bridge of its own (so several engines,
e.g. a test run and a benchmark, can run side by side), in a new session. Published ports
work through Docker's userland proxy. `build_busybox_image` makes the test image without
a registry: a rootfs of /bin/busybox (busybox-static) with its applet links, imported
with `docker import`. `close()` removes every container, stops the engine and removes
its files and bridge. Used by tests/docker/conftest.py and the benchmark; no pytest here.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from tests.helpers import die_with_parent

BUSYBOX = Path("/bin/busybox")
TEST_IMAGE = "converge-test/busybox:1"


class EngineError(RuntimeError):
    """dockerd is missing or did not come up; the message says why."""


def missing_tools() -> list[str]:
    """What this machine lacks to run an engine (empty: all there)."""
    missing = [t for t in ("dockerd", "containerd", "runc", "docker-init") if shutil.which(t) is None]
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    return missing


def _free_subnet() -> ipaddress.IPv4Network:
    used: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                used.append(ipaddress.IPv4Network(parts[parts.index("inet") + 1], strict=False))
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise EngineError("no free 10.x.y.0/24 subnet for the engine's bridge")


class Engine:
    """One dockerd. `start()` / `stop()` may be repeated (the data-root is kept);
    `close()` ends it for good."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="cvg-dockerd-"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bridge: str | None = None
        self._bridge_net: ipaddress.IPv4Network | None = None

    # ------------------------------------------------------------------ lifecycle

    def _make_bridge(self) -> None:
        """A bridge of our own, so two engines never share docker0's addresses."""
        if self.bridge is not None or shutil.which("ip") is None:
            return
        name = f"cvg{os.getpid() % 100000}{random.randint(0, 999)}"[:15]
        net = _free_subnet()
        gw = f"{next(net.hosts())}/{net.prefixlen}"
        for argv in (["ip", "link", "add", "name", name, "type", "bridge"],
                     ["ip", "addr", "add", gw, "dev", name],
                     ["ip", "link", "set", name, "up"]):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            if res.returncode != 0:
                subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
                raise EngineError(f"{' '.join(argv)}: {res.stderr.strip()}")
        self.bridge, self._bridge_net = name, net

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        missing = missing_tools()
        if missing:
            raise EngineError("missing " + ", ".join(missing) + " (run .ci/setup.d/docker.sh)")
        self._make_bridge()
        argv = [
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "-H", self.host,
            "--pidfile", str(self.root / "docker.pid"),
            "--iptables=false",
            "--ip-masq=false",
            "--userland-proxy=true",
            "--log-level=warn",
        ]
        if self.bridge is not None:
            argv.append(f"--bridge={self.bridge}")
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.1)
        self.stop()
        raise EngineError(f"dockerd did not answer within {timeout:.0f}s: {self.log_tail()}")

    def ping(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in s.recv(64)
            except OSError:
                return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM dockerd (it stops its containerd), wait; SIGKILL its session if stuck."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Anything of its session left (containerd, shims) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def remove_all_containers(self) -> None:
        if not self.ping():
            return
        client = self.client()
        try:
            for c in client.containers.list(all=True):
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True)
        finally:
            client.close()

    def close(self) -> None:
        """Remove every container, stop the engine, remove its files and bridge."""
        try:
            with contextlib.suppress(Exception):
                self.remove_all_containers()
        finally:
            self.stop()
            self._unmount_leftovers()
            shutil.rmtree(self.root, ignore_errors=True)
            if self.bridge is not None:
                subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
                self.bridge = None

    def _unmount_leftovers(self) -> None:
        root = str(self.root)
        with contextlib.suppress(OSError):
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            for mnt in sorted((m for m in mounts if m.startswith(root)), key=len, reverse=True):
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10)

    # ------------------------------------------------------------------ helpers

    def client(self, timeout: int = 30) -> Any:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def busybox_rootfs_tar() -> bytes:
    """A tar of a minimal rootfs: busybox, its applet links, /etc/passwd, and /www for
    `busybox httpd -h /www`: index.html, healthz and cgi-bin/instance."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()

    def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))

    def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        tar.addfile(info)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "www", "data", "proc", "sys", "dev"):
            add_dir(tar, d)
        add_dir(tar, "tmp", 0o1777)
        add_file(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for a in applets:
            if a != "busybox":
                link = tarfile.TarInfo(f"bin/{a}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_file(tar, "www/index.html", b"ok\n")
        add_file(tar, "www/healthz", b"ok\n")
        # GET /cgi-bin/instance: the start time (clock ticks since boot) of the container's
        # init, so a client can tell a restarted container from the one it killed.
        add_dir(tar, "www/cgi-bin")
        add_file(tar, "www/cgi-bin/instance",
                 b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\ncut -d' ' -f22 /proc/1/stat\n", 0o755)
    return buf.getvalue()


def build_busybox_image(engine: Engine, tag: str = TEST_IMAGE) -> str:
    """`docker import` of the busybox rootfs as `tag` (no registry involved)."""
    client = engine.client(timeout=120)
    try:
        repo, _, version = tag.rpartition(":")
        client.api.import_image_from_data(
            busybox_rootfs_tar(), repository=repo, tag=version,
            changes=['CMD ["/bin/sh"]', "WORKDIR /"],
        )
        client.images.get(tag)  # raises if the import did not produce it
    finally:
        client.close()
    return tag
