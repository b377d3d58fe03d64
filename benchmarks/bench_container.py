"""Container killed -> serving / Ready again: `converge run` vs Docker's `--restart=always`.

    ~/.cache/converge/venv/bin/python benchmarks/bench_container.py [--kills 10] [--settle 11]

Starts a private dockerd (tests/docker/engine.py: own data-root, socket and bridge,
--iptables=false) and imports the busybox test image (no registry). Two containers of the
same image and command (`busybox httpd`, with --init, a port published on 127.0.0.1):
  - converge: a ManagedService with spec.backend.container, applied to a scratch file
    store and kept by `converge run` (Docker events + reconcile core + HTTP health check);
  - docker:   `docker run --restart=always`, the engine's own restart policy.
Each round SIGKILLs the container's init process from the host (a crash, not a
`docker stop`, which the restart policy would honour), once per side in turn, and
measures, polling every 5 ms from this script:
  - serving:  seconds until GET /cgi-bin/instance answers 200 from a new instance (the
              start time of the container's init differs from the killed one's);
  - ready:    seconds until the service's Ready condition is True again in the store,
              with a transition after the kill (converge only; Docker has no such status).
Rounds are --settle seconds apart so both restart back-offs have reset (Docker doubles
its 100 ms delay unless a container ran 10 s; converge's restartPolicy here is
backoffSeconds 0.1, resetAfterSeconds 10 to match). Results: a table on stdout and
benchmarks/results/bench_container.json. Any figure that cannot be measured fails the run.

Reading the figures: both sides share the engine's restart path (runc, veth, userland
proxy). Right after a start, connections through the proxy to the container often stall
until a TCP SYN retransmission (~1 s after the first try), which makes the samples of both
sides bimodal (~0.4-0.6 s or ~1.2 s); compare the sides, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from common import (
    REPO,
    BenchError,
    converge_bin,
    fail_loudly,
    free_ports,
    http_get,
    print_table,
    run_cli,
    summarize,
    write_results,
)

NAME = "bench_container"
NAMESPACE = "bench"
SERVICE = "web"
HTTPD = ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]


def load_engine_module() -> ModuleType:
    path = REPO / "tests" / "docker" / "engine.py"
    spec = importlib.util.spec_from_file_location("converge_docker_engine", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def manifest(port: int, image: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "converge.dev/v1alpha1",
        "kind": "ManagedService",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "backend": {"container": {"image": image, "command": HTTPD,
                                      "ports": [{"containerPort": 8080}], "stopGracePeriodSeconds": 2}},
            "endpoint": {"protocol": "http", "port": port,
                         "healthCheck": {"http": {"path": "/", "timeoutSeconds": 1}, "periodSeconds": 5}},
            "restartPolicy": {"backoffSeconds": 0.1, "maxBackoffSeconds": 10, "resetAfterSeconds": 10},
        },
    }, sort_keys=False)


def instance(port: int) -> str | None:
    """Which container instance answers on port (its init's start time), None if none."""
    body = http_get(port, timeout=0.2, path="/cgi-bin/instance")
    return body.strip() or None if body is not None else None


def wait_serving(port: int, t0: float, timeout: float, old: str | None = None) -> float:
    """Seconds since t0 until an instance other than `old` answers on port."""
    while time.monotonic() - t0 < timeout:
        now = instance(port)
        if now is not None and now != old:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise BenchError(f"port {port}: no new container instance answering {timeout:.0f}s after the kill")


def ready_since(store: Path, after: datetime) -> bool:
    """Ready=True in the stored status, with its transition after `after`."""
    try:
        doc = yaml.safe_load((store / NAMESPACE / f"{SERVICE}.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    for c in (doc.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            when = c.get("lastTransitionTime")
            if isinstance(when, str):
                when = datetime.fromisoformat(when.replace("Z", "+00:00"))
            return isinstance(when, datetime) and when >= after
    return False


def wait_ready(store: Path, after: datetime, t0: float, timeout: float) -> float:
    while time.monotonic() - t0 < timeout:
        if ready_since(store, after):
            return time.monotonic() - t0
        time.sleep(0.005)
    raise BenchError(f"converge did not report Ready within {timeout:.0f}s after the kill")


def crash(container: Any, port: int) -> tuple[str, float]:
    """SIGKILL the container's init (pid 1 of its namespace) from the host; returns the
    instance that answered before and the monotonic time of the kill."""
    old = instance(port)
    if old is None:
        raise BenchError(f"port {port}: no container instance answering before the kill")
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    if not container.attrs["State"]["Running"] or pid <= 0:
        raise BenchError(f"container {container.name} is not running before the kill")
    t = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return old, t


def measure(args: argparse.Namespace) -> dict[str, Any]:
    engine_mod = load_engine_module()
    missing = engine_mod.missing_tools()
    if missing:
        raise BenchError("missing " + ", ".join(missing) + ": run `bash .ci/bootstrap`")
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews the figures
    scratch = Path(tempfile.mkdtemp(prefix="cvg-bench-container-"))
    store = scratch / "store"
    engine = engine_mod.Engine()
    run: subprocess.Popen[str] | None = None
    try:
        engine.start()
        image = engine_mod.build_busybox_image(engine)
        client = engine.client()
        conv_port, dock_port = free_ports(2)
        env = {**os.environ, "CONVERGE_STORE": str(store), "DOCKER_HOST": engine.host}
        cvg = converge_bin()

        # docker: the engine's own restart policy
        docker_c = client.containers.run(image, HTTPD, name="bench-restart-always", detach=True, init=True,
                                         restart_policy={"Name": "always"},
                                         ports={"8080/tcp": ("127.0.0.1", dock_port)})
        # converge: apply, then the continuous controller
        (scratch / "web.yaml").write_text(manifest(conv_port, image))
        run_cli([cvg, "apply", "-f", scratch / "web.yaml"], env=env)
        run = subprocess.Popen([str(cvg), "run"], env=env, text=True, stdout=subprocess.DEVNULL,
                               stderr=(scratch / "run.log").open("w"), start_new_session=True)
        t0 = time.monotonic()
        wait_serving(conv_port, t0, 60)
        wait_serving(dock_port, t0, 60)
        time.sleep(args.settle)

        def converge_container() -> Any:
            found = client.containers.list(filters={"label": [f"dev.converge.name={SERVICE}"]})
            if len(found) != 1:
                raise BenchError(f"expected one running converge container, found {len(found)}")
            return found[0]

        samples: dict[str, list[float]] = {"converge_serving": [], "converge_ready": [], "docker_serving": []}
        recreated = 0
        for i in range(args.kills):
            before = converge_container()
            after = datetime.now(UTC)
            old, t = crash(before, conv_port)
            samples["converge_serving"].append(wait_serving(conv_port, t, 60, old))
            samples["converge_ready"].append(wait_ready(store, after, t, 60))
            recreated += converge_container().id != before.id

            old, t = crash(docker_c, dock_port)
            samples["docker_serving"].append(wait_serving(dock_port, t, 60, old))
            print(f"  kill {i + 1}/{args.kills}: converge serving {samples['converge_serving'][-1]:.3f}s "
                  f"ready {samples['converge_ready'][-1]:.3f}s, docker serving "
                  f"{samples['docker_serving'][-1]:.3f}s", file=sys.stderr)
            time.sleep(args.settle)
        if run.poll() is not None:
            raise BenchError(f"`converge run` exited with {run.returncode} during the benchmark")
        client.close()
        return {
            "loadavg_1m_before_after": [load_before, round(os.getloadavg()[0], 2)],
            "kills": args.kills,
            "settle_seconds": args.settle,
            "converge_recreated_containers": recreated,
            "engine": "dockerd (Debian docker.io), --iptables=false, userland proxy",
            "results": {k: summarize(v) for k, v in samples.items()},
            "samples": samples,
        }
    finally:
        if run is not None and run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)
        engine.close()
        subprocess.run(["rm", "-rf", str(scratch)], check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--settle", type=float, default=11.0,
                   help="seconds between rounds (Docker resets its restart delay after 10 s up)")
    args = p.parse_args()
    with fail_loudly(NAME):
        data = measure(args)
        r = data["results"]
        print_table(
            ["container killed ->", "n", "median s", "p95 s", "min s", "max s"],
            [[label, r[k]["n"], r[k]["median"], r[k]["p95"], r[k]["min"], r[k]["max"]]
             for label, k in (("converge run: serving", "converge_serving"),
                              ("converge run: Ready in status", "converge_ready"),
                              ("docker --restart=always: serving", "docker_serving"))])
        print(f"results: {write_results(NAME, data)}")


if __name__ == "__main__":
    main()
