"""`converge operator` against a real control plane, side by side with the floor: a
minimal kopf operator that only patches Ready=True on the objects of a tiny CRD.

    python benchmarks/bench_operator.py [--n 1000] [--idle 60] [--kills 20] [--quiet 5]

One control plane (tests/cluster/controlplane.py: etcd + kube-apiserver +
kube-controller-manager on loopback) serves every phase; write requests are counted
from the API server's apiserver_request_total (verb, resource, subresource):
  1. floor: a kopf operator (a separate process, `kopf run --standalone -n NS`) watches
     floors.bench.converge.dev; N objects in one `kubectl apply` -> all Ready=True;
  2. converge: `converge operator -n NS --enable-backend daemon`; N ManagedServices
     (daemon `sleep infinity`, no endpoint) in one `kubectl apply` -> all Ready; writes
     per object on the way (finalizer = merge PATCH on the object, status = PATCH of
     /status; Events);
  3. backlog: N ManagedServices applied while no operator runs (new namespace, new
     state dir), the operator started -> all Ready; then restarted with all Ready: time
     until idle (no write for --quiet s) and the writes made (goal 0);
  4. idle with those N Ready: operator CPU % and RSS over --idle s, writes on
     managedservices and events in that time (goal 0);
  5. kill -9 of one daemon (status.backend.pid) -> Ready again in status with a new pid
     and the same observedGeneration: median / p95 over --kills kills.
Everything started here (operators, daemons: the process groups of
STATE/_runtime/*/*/daemon.json, the control plane) is stopped on exit, also on errors
and Ctrl-C. Results: tables on stdout, benchmarks/results/bench_operator.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from common import (
    REPO,
    BenchError,
    Reaper,
    converge_bin,
    fail_loudly,
    free_ports,
    print_table,
    run_tag,
    sample_idle,
    summarize,
    write_results,
)

sys.path.insert(0, str(REPO))
from tests.cluster.controlplane import ControlPlane, ControlPlaneError

MSVC = "managedservices"
FLOOR_GROUP = "bench.converge.dev"
FLOOR_CRD = f"""apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: floors.{FLOOR_GROUP}
spec:
  group: {FLOOR_GROUP}
  scope: Namespaced
  names: {{plural: floors, singular: floor, kind: Floor}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""

FLOOR_OPERATOR = f'''"""The floor: a kopf operator that marks every new Floor Ready=True, nothing else."""
import datetime
from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # no Events about handlers
    settings.scanning.disabled = True


@kopf.on.create("{FLOOR_GROUP}", "v1", "floors")
def ready(patch: kopf.Patch, **_: Any) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch.status["conditions"] = [{{"type": "Ready", "status": "True", "reason": "Created",
                                    "lastTransitionTime": now}}]
'''


# --------------------------------------------------------------------------- API server


class Api:
    """Write counts from /metrics and lists of objects, straight over HTTPS (admin token)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.ssl = ssl.create_default_context(cafile=str(cp.ca))

    def get(self, path: str, timeout: float = 30) -> bytes:
        req = urllib.request.Request(self.cp.server + path,
                                     headers={"Authorization": f"Bearer {self.cp.admin_token}"})
        with urllib.request.urlopen(req, context=self.ssl, timeout=timeout) as resp:
            return bytes(resp.read())

    def writes(self, gets: bool = False) -> dict[str, float]:
        """apiserver_request_total of write verbs (and GET with `gets`: the operator's reads
        of single objects; LIST is left out, this script lists), keyed 'VERB resource[/subresource]'."""
        out: dict[str, float] = {}
        for line in self.get("/metrics").decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            fields = {k: v.strip('"') for k, v in
                      (kv.split("=", 1) for kv in labels[len("apiserver_request_total{"):-1].split(","))}
            verb = fields.get("verb", "")
            if verb not in ("POST", "PUT", "PATCH", "DELETE", "APPLY") and not (gets and verb == "GET"):
                continue
            res = fields.get("resource", "")
            if fields.get("subresource"):
                res += "/" + fields["subresource"]
            key = f"{verb} {res}"
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def items(self, group: str, version: str, plural: str, ns: str) -> list[dict[str, Any]]:
        doc = json.loads(self.get(f"/apis/{group}/{version}/namespaces/{ns}/{plural}", timeout=60))
        items: list[dict[str, Any]] = doc["items"]
        return items

    def obj(self, group: str, version: str, plural: str, ns: str, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.get(f"/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}"))
        return doc


def diff(after: dict[str, float], before: dict[str, float], *resources: str) -> dict[str, int]:
    """Write requests made between two snapshots on the given resources (with subresources)."""
    out: dict[str, int] = {}
    for k, v in after.items():
        res = k.split(" ", 1)[1].split("/", 1)[0]
        d = int(v - before.get(k, 0.0))
        if d and (not resources or res in resources):
            out[k] = d
    return dict(sorted(out.items()))


def is_ready(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def wait_all_ready(list_items: Callable[[], list[dict[str, Any]]], n: int, timeout: float, t0: float,
                   check: Callable[[], None] | None = None, interval: float = 0.25) -> float:
    """Seconds from t0 until the list holds n objects, all Ready=True."""
    deadline = time.monotonic() + timeout
    while True:
        items = list_items()
        ready = sum(1 for it in items if is_ready(it))
        if len(items) == n and ready == n:
            return time.monotonic() - t0
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise BenchError(f"{ready} of {n} Ready ({len(items)} exist) after {timeout:.0f}s")
        time.sleep(interval)


class ReadyWatch:
    """Counts the Ready objects of one resource in one namespace from a watch (started
    before the clock, so no change is missed) and notes when all n are Ready. A watch, not
    a LIST every fraction of a second: listing 1,000 objects four times a second costs
    the API server more CPU than the operators under test, and the longer a run lasts the
    more it would steal from it."""

    def __init__(self, api: Api, group: str, version: str, plural: str, ns: str) -> None:
        self.api, self.path = api, f"/apis/{group}/{version}/namespaces/{ns}/{plural}"
        self.ready: dict[str, bool] = {}
        self.all_ready_at: float | None = None
        self.error: str | None = None
        self._n = -1
        self._mu = threading.Condition()
        self._stop = threading.Event()
        doc = json.loads(api.get(self.path, timeout=60))
        for it in doc["items"]:
            self.ready[it["metadata"]["name"]] = is_ready(it)
        self._rv = str(doc["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, daemon=True, name="ready-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            req = urllib.request.Request(
                self.api.cp.server + self.path + f"?watch=1&allowWatchBookmarks=true&timeoutSeconds=60"
                f"&resourceVersion={self._rv}", headers={"Authorization": f"Bearer {self.api.cp.admin_token}"})
            try:
                with urllib.request.urlopen(req, context=self.api.ssl, timeout=90) as resp:
                    for line in resp:
                        if self._stop.is_set():
                            return
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            raise BenchError(f"watch of {self.path}: {obj.get('message')}")
                        self._rv = str((obj.get("metadata") or {}).get("resourceVersion") or self._rv)
                        if ev.get("type") == "BOOKMARK":
                            continue
                        with self._mu:
                            name = obj["metadata"]["name"]
                            if ev.get("type") == "DELETED":
                                self.ready.pop(name, None)
                            else:
                                self.ready[name] = is_ready(obj)
                            self._check()
            except (OSError, ValueError, BenchError) as exc:
                with self._mu:
                    self.error = str(exc)
                    self._mu.notify_all()
                return

    def _check(self) -> None:
        if (self.all_ready_at is None and self._n >= 0 and len(self.ready) == self._n
                and all(self.ready.values())):
            self.all_ready_at = time.monotonic()
            self._mu.notify_all()

    def wait(self, n: int, timeout: float, t0: float, check: Callable[[], None] | None = None) -> float:
        """Seconds from t0 until the namespace holds n objects, all Ready=True."""
        deadline = time.monotonic() + timeout
        with self._mu:
            self._n = n
            self._check()
            while self.all_ready_at is None:
                if self.error is not None:
                    raise BenchError(f"watching {self.path}: {self.error}")
                if time.monotonic() > deadline:
                    ready = sum(self.ready.values())
                    raise BenchError(f"{ready} of {n} Ready ({len(self.ready)} exist) after {timeout:.0f}s")
                self._mu.wait(0.05)
                if check is not None:
                    check()
            return self.all_ready_at - t0

    def close(self) -> None:
        self._stop.set()


def wait_quiet(api: Api, quiet: float, timeout: float, t0: float, resources: tuple[str, ...] = (MSVC, "events"),
               check: Callable[[], None] | None = None) -> tuple[float, dict[str, float]]:
    """Poll the write counts until none changed on `resources` for `quiet` seconds. Returns
    (seconds from t0 to the last write seen, or 0.0 if none; the final snapshot)."""
    def ours(w: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in w.items() if k.split(" ", 1)[1].split("/", 1)[0] in resources}

    last = ours(api.writes())
    last_change: float | None = None
    quiet_since = time.monotonic()
    deadline = quiet_since + timeout
    while time.monotonic() - quiet_since < quiet:
        if time.monotonic() > deadline:
            raise BenchError(f"still writing after {timeout:.0f}s")
        if check is not None:
            check()
        time.sleep(0.2)
        now = ours(api.writes())
        if now != last:
            last, last_change, quiet_since = now, time.monotonic(), time.monotonic()
    return (0.0 if last_change is None else last_change - t0), api.writes()


# --------------------------------------------------------------------------- processes


def daemon_groups(state: Path) -> list[int]:
    pids = []
    for f in state.glob("_runtime/*/*/daemon.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pids.append(int(json.loads(f.read_text())["pid"]))
    return pids


def kill_daemons(state: Path) -> int:
    """SIGKILL the process group of every daemon the operator recorded under `state`."""
    n = 0
    for pid in daemon_groups(state):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            n += 1
    return n


class Operator:
    """One `converge operator` process (health port polled until it answers)."""

    def __init__(self, reaper: Reaper, cp: ControlPlane, ns: str, state: Path, log: Path,
                 resync: str) -> None:
        self.health, metrics = free_ports(2)
        self.log = log
        args = [str(converge_bin()), "operator", "--kubeconfig", str(cp.kubeconfig), "-n", ns,
                "--enable-backend", "daemon", "--health-port", str(self.health), "--metrics-port",
                str(metrics), "--state-dir", str(state), "--resync", resync]
        with log.open("ab") as f:
            self.proc = reaper.track(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL, start_new_session=True))
        self.reaper = reaper
        reaper.on_cleanup(self.stop)  # before the daemons' kill (hooks run last-registered first)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise BenchError(f"converge operator exited {self.proc.returncode}:\n{tail}")

    def answers(self, path: str) -> bool:
        with (contextlib.suppress(OSError),
              urllib.request.urlopen(f"http://127.0.0.1:{self.health}{path}", timeout=2) as r):
            return bool(r.status == 200)
        return False

    def wait_healthy(self, path: str = "/readyz", timeout: float = 60) -> float:
        """Seconds until `path` answers 200. (/readyz waits for kopf's first event: in an
        empty namespace it stays 503, so an operator with nothing to watch uses /healthz.)"""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.alive()
            if self.answers(path):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise BenchError(f"converge operator not ready after {timeout:.0f}s")

    def stop(self) -> None:
        """SIGTERM (graceful: services keep running), SIGKILL after 30 s."""
        self.reaper.stop(self.proc, grace=30)


# --------------------------------------------------------------------------- manifests


def manifest(docs: list[dict[str, Any]], path: Path) -> Path:
    # JSON is YAML: no dependency on a YAML writer here.
    path.write_text("".join("---\n" + json.dumps(d) + "\n" for d in docs))
    return path


def msvc_docs(ns: str, n: int) -> list[dict[str, Any]]:
    return [{"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
             "metadata": {"name": f"svc-{i:04d}", "namespace": ns},
             "spec": {"backend": {"daemon": {"command": ["sleep", "infinity"]}}}} for i in range(n)]


def floor_docs(ns: str, n: int) -> list[dict[str, Any]]:
    return [{"apiVersion": f"{FLOOR_GROUP}/v1", "kind": "Floor",
             "metadata": {"name": f"floor-{i:04d}", "namespace": ns}, "spec": {"i": i}} for i in range(n)]


def kubectl_apply(cp: ControlPlane, path: Path) -> float:
    t0 = time.monotonic()
    p = cp.kubectl("apply", "-f", str(path), check=False, timeout=900)
    if p.returncode != 0:
        raise BenchError(f"kubectl apply -f {path} exited {p.returncode}: {p.stderr[-2000:]}")
    return time.monotonic() - t0


# --------------------------------------------------------------------------- phases


class Bench:
    def __init__(self, args: argparse.Namespace, cp: ControlPlane, reaper: Reaper, work: Path) -> None:
        self.args, self.cp, self.reaper, self.work = args, cp, reaper, work
        self.api = Api(cp)
        self.rng = random.Random(args.seed)

    def namespace(self, name: str) -> str:
        self.cp.kubectl("create", "namespace", name)
        return name

    def cpu(self, operator_pid: int) -> dict[str, float]:
        """CPU seconds (user+system) so far of the operator and of etcd / kube-apiserver
        (what the phase's work costs, next to its wall time on a shared machine)."""
        pids = {"operator": operator_pid, **{k: p.pid for k, p in self.cp.procs.items()
                                             if k in ("etcd", "kube-apiserver")}}
        out: dict[str, float] = {}
        for name, pid in pids.items():
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error as exc:
                raise BenchError(f"cannot read the CPU times of {name} ({pid}): {exc}") from exc
            out[name] = t.user + t.system
        return out

    def msvcs(self, ns: str) -> list[dict[str, Any]]:
        return self.api.items("converge.dev", "v1alpha1", MSVC, ns)

    def floor(self) -> dict[str, Any]:
        n, ns = self.args.n, self.namespace("floor")
        src = self.work / "floor_operator.py"
        src.write_text(FLOOR_OPERATOR)
        log = self.work / "floor-operator.log"
        kopf = Path(sys.executable).parent / "kopf"
        env = dict(os.environ, KUBECONFIG=str(self.cp.kubeconfig))
        with log.open("ab") as f:
            proc = self.reaper.track(subprocess.Popen(
                [str(kopf), "run", "--standalone", "-n", ns, str(src)], env=env, cwd=self.work,
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))

        def alive() -> None:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise BenchError(f"the floor operator exited {proc.returncode}:\n{tail}")

        try:
            # kopf has no health endpoint here: one object made Ready shows that it watches.
            probe = manifest([{**floor_docs(ns, 1)[0], "metadata": {"name": "probe", "namespace": ns}}],
                             self.work / "floor-probe.yaml")
            kubectl_apply(self.cp, probe)
            wait_all_ready(lambda: self.api.items(FLOOR_GROUP, "v1", "floors", ns), 1, 60, time.monotonic(),
                           check=alive)
            self.cp.kubectl("delete", "-f", str(probe))
            path = manifest(floor_docs(ns, n), self.work / "floors.yaml")
            time.sleep(1)
            watch = ReadyWatch(self.api, FLOOR_GROUP, "v1", "floors", ns)
            before = self.api.writes(gets=True)
            cpu0 = self.cpu(proc.pid)
            t0 = time.monotonic()
            try:
                t_apply = kubectl_apply(self.cp, path)
                t_ready = watch.wait(n, self.args.timeout, t0, check=alive)
            finally:
                watch.close()
            at_ready = self.api.writes(gets=True)
            cpu = {k: v - cpu0[k] for k, v in self.cpu(proc.pid).items()}
            _, after = wait_quiet(self.api, self.args.quiet, self.args.timeout, t0, resources=("floors", "events"),
                                  check=alive)
            return {"n": n, "apply_s": t_apply, "apply_to_all_ready_s": t_ready, "cpu_s_to_ready": cpu,
                    **_split(diff(at_ready, before, "floors", "events")),
                    "writes_until_quiet": _split(diff(after, before, "floors", "events"))["writes_to_ready"]}
        finally:
            self.reaper.stop(proc, grace=15)

    def converge(self) -> dict[str, Any]:
        n, ns = self.args.n, self.namespace("converge")
        state = self.work / "state-converge"
        self.reaper.on_cleanup(lambda: _ignore(kill_daemons(state)))
        op = Operator(self.reaper, self.cp, ns, state, self.work / "operator-converge.log", self.args.resync)
        try:
            op.wait_healthy("/healthz")
            path = manifest(msvc_docs(ns, n), self.work / "msvc.yaml")
            time.sleep(2)  # kopf's watch starts
            watch = ReadyWatch(self.api, "converge.dev", "v1alpha1", MSVC, ns)
            before = self.api.writes(gets=True)
            cpu0 = self.cpu(op.proc.pid)
            t0 = time.monotonic()
            try:
                t_apply = kubectl_apply(self.cp, path)
                t_ready = watch.wait(n, self.args.timeout, t0, check=op.alive)
            finally:
                watch.close()
            at_ready = self.api.writes(gets=True)
            cpu = {k: v - cpu0[k] for k, v in self.cpu(op.proc.pid).items()}
            _, after = wait_quiet(self.api, self.args.quiet, self.args.timeout, t0, check=op.alive)
            return {"n": n, "apply_s": t_apply, "apply_to_all_ready_s": t_ready, "cpu_s_to_ready": cpu,
                    **_split(diff(at_ready, before, MSVC, "events")),
                    "writes_until_quiet": _split(diff(after, before, MSVC, "events"))["writes_to_ready"]}
        finally:
            op.stop()
            kill_daemons(state)

    def backlog_idle_kills(self) -> dict[str, Any]:
        """Phases 3-5 on one namespace: backlog, restart at rest, idle, kills."""
        n, ns = self.args.n, self.namespace("backlog")
        state = self.work / "state-backlog"
        self.reaper.on_cleanup(lambda: _ignore(kill_daemons(state)))
        res: dict[str, Any] = {"n": n}
        path = manifest(msvc_docs(ns, n), self.work / "msvc-backlog.yaml")
        res["apply_s"] = kubectl_apply(self.cp, path)
        time.sleep(1)
        op: Operator | None = None
        watch = ReadyWatch(self.api, "converge.dev", "v1alpha1", MSVC, ns)
        try:
            before = self.api.writes()
            t0 = time.monotonic()
            op = Operator(self.reaper, self.cp, ns, state, self.work / "operator-backlog.log", self.args.resync)
            started = op
            healthy: list[float] = []

            def check() -> None:  # also: when the process answers /healthz (its start-up cost)
                started.alive()
                if not healthy and started.answers("/healthz"):
                    healthy.append(time.monotonic() - t0)

            res["start_to_all_ready_s"] = watch.wait(n, self.args.timeout, t0, check=check)
            watch.close()
            res["start_to_healthz_s"] = healthy[0] if healthy else None
            res["writes_to_ready"] = diff(self.api.writes(), before, MSVC, "events")
            _, after = wait_quiet(self.api, self.args.quiet, self.args.timeout, t0, check=op.alive)
            res["writes_until_quiet"] = diff(after, before, MSVC, "events")
            op.stop()
            alive_daemons = sum(1 for pid in daemon_groups(state) if _alive(pid))
            res["daemons_alive_after_sigterm"] = alive_daemons

            # Restart with everything Ready: nothing to do.
            before = self.api.writes()
            t0 = time.monotonic()
            op = Operator(self.reaper, self.cp, ns, state, self.work / "operator-restart.log", self.args.resync)
            t_healthy = op.wait_healthy()
            last_write, after = wait_quiet(self.api, self.args.quiet, self.args.timeout, t0, check=op.alive)
            res["restart"] = {"start_to_readyz_s": t_healthy, "start_to_last_write_s": last_write,
                              "idle_after_s": max(t_healthy, last_write),
                              "writes": diff(after, before, MSVC, "events"),
                              "all_ready": sum(1 for it in self.msvcs(ns) if is_ready(it))}

            # Idle.
            print(f"  idle {self.args.idle:g}s ...", file=sys.stderr, flush=True)
            before = self.api.writes()
            idle: dict[str, Any] = dict(sample_idle(op.proc.pid, self.args.idle, window=min(5.0, self.args.idle)))
            op.alive()
            idle["writes"] = diff(self.api.writes(), before, MSVC, "events")
            res["idle"] = idle

            # Kills.
            print(f"  {self.args.kills} kills ...", file=sys.stderr, flush=True)
            res["kills"] = self.kills(ns, op)
            return res
        finally:
            watch.close()
            if op is not None:
                op.stop()
            kill_daemons(state)

    def kills(self, ns: str, op: Operator) -> dict[str, Any]:
        samples: list[float] = []
        last = -1
        for _ in range(self.args.kills):
            i = self.rng.choice([j for j in range(self.args.n) if j != last] or [0])
            last = i
            name = f"svc-{i:04d}"
            obj = self.api.obj("converge.dev", "v1alpha1", MSVC, ns, name)
            st = obj.get("status") or {}
            old, gen = int(st["backend"]["pid"]), st.get("observedGeneration")
            if not is_ready(obj):
                raise BenchError(f"{name} not Ready before the kill")
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            deadline = t0 + self.args.kill_timeout
            while True:
                obj = self.api.obj("converge.dev", "v1alpha1", MSVC, ns, name)
                st = obj.get("status") or {}
                pid = (st.get("backend") or {}).get("pid")
                if is_ready(obj) and pid is not None and int(pid) != old and st.get("observedGeneration") == gen:
                    break
                if time.monotonic() > deadline:
                    op.alive()
                    raise BenchError(f"{name} (killed pid {old}) not Ready with a new pid after "
                                     f"{self.args.kill_timeout:.0f}s: {json.dumps(st)[:1500]}")
                time.sleep(0.02)
            samples.append(time.monotonic() - t0)
            time.sleep(self.args.settle)
        return {"kill_to_ready_in_status_s": summarize(samples), "samples_s": samples}


def _split(requests: dict[str, int]) -> dict[str, dict[str, int]]:
    """Request counts as {"writes_to_ready": writes, "gets_to_ready": GETs of single objects}."""
    return {"writes_to_ready": {k: v for k, v in requests.items() if not k.startswith("GET ")},
            "gets_to_ready": {k: v for k, v in requests.items() if k.startswith("GET ")}}


def _ignore(_: object) -> None:
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="objects per phase")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle sampling")
    ap.add_argument("--kills", type=int, default=20, help="kill -9 samples")
    ap.add_argument("--quiet", type=float, default=5.0, help="no write for this long = idle")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between kills")
    ap.add_argument("--timeout", type=float, default=900.0, help="limit of each wait for all Ready")
    ap.add_argument("--kill-timeout", type=float, default=60.0)
    ap.add_argument("--resync", default="60s", help="converge operator --resync")
    ap.add_argument("--only", default="floor,converge,backlog", help="comma-separated phases")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench_operator", help="results/<name>.json")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    args = ap.parse_args()
    args.phases = [p for p in args.only.split(",") if p]
    bad = set(args.phases) - {"floor", "converge", "backlog"}
    if bad or args.n < 1 or args.kills < 0 or args.idle <= 0:
        ap.error(f"bad arguments: {sorted(bad) or 'n >= 1, kills >= 0, idle > 0'}")
    return args


def main() -> None:
    args = parse_args()
    tag = run_tag()
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items()}, "tag": tag,
                               "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    with fail_loudly("bench_operator"), Reaper(tag) as reaper:
        (work / "kube").mkdir()
        cp = ControlPlane(work / "kube")
        reaper.on_cleanup(cp.close)  # runs after the operators' own hooks (reverse order)
        try:
            try:
                cp.start()
            except ControlPlaneError as exc:
                raise BenchError(str(exc)) from exc
            for f in sorted((REPO / "crds").glob("*.yaml")):
                cp.kubectl("apply", "--server-side", "-f", str(f))
            cp.kubectl("apply", "--server-side", "-f", "-", input=FLOOR_CRD)
            deadline = time.monotonic() + 60
            while cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all",
                             check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise BenchError("the CRDs are not Established after 60s")
                time.sleep(0.2)
            bench = Bench(args, cp, reaper, work)
            for phase in args.phases:
                print(f"[N={args.n}] {phase} ...", file=sys.stderr, flush=True)
                if phase == "floor":
                    results["floor"] = bench.floor()
                elif phase == "converge":
                    results["converge"] = bench.converge()
                else:
                    results["backlog"] = bench.backlog_idle_kills()
        except (BenchError, KeyboardInterrupt) as exc:
            results["error"] = f"{type(exc).__name__}: {exc}"
            print(f"partial results: {write_results(args.out, results)}", file=sys.stderr)
            raise
        except AssertionError as exc:  # cp.kubectl failed
            results["error"] = f"{type(exc).__name__}: {exc}"
            print(f"partial results: {write_results(args.out, results)}", file=sys.stderr)
            raise BenchError(str(exc)) from exc
        finally:
            reaper.cleanup()
            if args.keep:
                print(f"scratch kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        path = write_results(args.out, results)
    report(results)
    print(f"\nJSON: {path}")


def _sum(writes: dict[str, int], *keys: str) -> int:
    return sum(writes.get(k, 0) for k in keys)


def _cpu(phase: dict[str, Any]) -> list[float | None]:
    c = phase.get("cpu_s_to_ready")
    if not c:
        return [None, None]
    return [c["operator"], c.get("kube-apiserver", 0.0) + c.get("etcd", 0.0)]


def report(r: dict[str, Any]) -> None:
    n = r["params"]["n"]
    print(f"\nN={n}; load average at start {r['loadavg_start']}, at end {r['loadavg_end']}")
    rows: list[list[Any]] = []
    fl, cv = r.get("floor"), r.get("converge")
    if fl:
        w = fl["writes_until_quiet"]
        rows.append(["kopf floor (Ready=True only)", fl["apply_s"], fl["apply_to_all_ready_s"], None,
                     *_cpu(fl),
                     _sum(w, "PATCH floors") / n, _sum(w, "PATCH floors/status", "PUT floors/status") / n,
                     _sum(w, "POST events", "PATCH events") / n, sum(fl.get("gets_to_ready", {}).values()) / n])
    if cv:
        w = cv["writes_until_quiet"]
        ratio = cv["apply_to_all_ready_s"] / fl["apply_to_all_ready_s"] if fl else None
        rows.append(["converge operator", cv["apply_s"], cv["apply_to_all_ready_s"], ratio, *_cpu(cv),
                     _sum(w, "PATCH managedservices", "PUT managedservices") / n,
                     _sum(w, "PATCH managedservices/status", "PUT managedservices/status") / n,
                     _sum(w, "POST events", "PATCH events") / n, sum(cv.get("gets_to_ready", {}).values()) / n])
    if rows:
        print(f"\n1-2. One kubectl apply of {n} objects -> all Ready (seconds; writes per object until quiet)")
        print_table(["operator", "kubectl apply", "apply->all Ready", "x floor", "CPU s operator",
                     "CPU s apiserver+etcd", "object PATCH/obj",
                     "status writes/obj", "events/obj", "GETs/obj to Ready"], rows)
    bl = r.get("backlog")
    if bl:
        w = bl["writes_until_quiet"]
        rs = bl["restart"]
        print(f"\n3. Backlog: {n} objects applied with no operator running")
        print_table(["what", "seconds", "writes (managedservices+events)"], [
            ["start -> /healthz answers", bl.get("start_to_healthz_s"), None],
            ["start -> all Ready", bl["start_to_all_ready_s"], sum(w.values())],
            ["restart, all Ready -> idle (readyz / last write)", rs["idle_after_s"], sum(rs["writes"].values())],
        ])
        idle = bl["idle"]
        print(f"\n4. Idle with {n} Ready objects over {idle['seconds']:.0f}s")
        print_table(["CPU % of a core", "max 5s window %", "RSS MB", "threads", "writes"],
                    [[idle["cpu_percent"], idle["max_window_cpu_percent"], idle["rss_mb"], idle["threads"],
                      sum(idle["writes"].values())]])
        k = bl["kills"]["kill_to_ready_in_status_s"] if r["params"]["kills"] else None
        if k:
            print("\n5. kill -9 of one daemon -> Ready again in status (new pid, same observedGeneration)")
            print_table(["kills", "median s", "p95 s", "max s"], [[k["n"], k["median"], k["p95"], k["max"]]])


if __name__ == "__main__":
    main()
