"""Scale of the reconcile core without backend cost: N services in a FileStore, a
steady-state pass (nothing to change) — wall time and store writes (must be 0).

    $VENV/bin/python benchmarks/bench_core_scale.py [--n 1000,2000,5000,10000] [--workers 16]

In-process, through the lead's Python API: converge.filestore.FileStore,
converge.reconciler.Reconciler, converge.runtime.Runtime (the converging pass that
`converge reconcile` runs) and a no-op backend registered in-process under the kind
"noop" (a plug-in backend: `spec.backend.noop: {}`), which answers provision/observe from
a dict. For each N:
  1. create N services through FileStore.create (timed: the apply cost);
  2. converge them once (provision + status writes; timed, not the figure of interest);
  3. steady state, warm: the same Reconciler/FileStore again converges every key, twice:
     "first look" (the first pass after they settled: every service is planned) and
     "warm" (the next: services this controller has seen at rest, as at every resync
     of `converge run`; a pass over one that is unchanged skips the plan);
  4. steady state, cold: a new FileStore and Reconciler on the same folder (as a fresh
     `converge reconcile` process would: its parse cache is empty);
  5. the references, in the same run: serial loops calling Reconciler.reconcile(key) for
     every key on the warm store, one thread, no work queue (what a pass costs without
     the runtime around it): "serial" with the same reconciles as the warm pass, and
     "serial, planned" with Reconciler.shortcut off (every pass planned: the serial
     loop of issue 13's day, the reference its goals were set against).
Writes are counted twice: FileStore.writes, and an independent check that no object
file's (inode, mtime, size) changed. A write in a steady-state pass fails the script.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from common import BenchError, fail_loudly, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converge.api import ManagedService, ServiceKey
from converge.backends.base import Notify, Observation, Phase, Target
from converge.filestore import FileStore
from converge.host import Host
from converge.reconciler import Reconciler
from converge.registry import Backends
from converge.runtime import Runtime

KIND = "noop"


class NoopBackend:
    """A backend with no cost: state is a dict in memory."""

    kind = KIND

    def __init__(self) -> None:
        self._running: dict[ServiceKey, str] = {}
        self._mu = threading.Lock()
        self.calls: dict[str, int] = {"provision": 0, "deprovision": 0, "suspend": 0, "observe": 0}

    def _count(self, what: str) -> None:
        with self._mu:
            self.calls[what] += 1

    def provision(self, target: Target) -> Mapping[str, Any]:
        self._count("provision")
        with self._mu:
            self._running[target.key] = target.spec_hash
        return {"noop": True}

    def deprovision(self, target: Target) -> None:
        self._count("deprovision")
        with self._mu:
            self._running.pop(target.key, None)

    def suspend(self, target: Target) -> None:
        self._count("suspend")

    def observe(self, target: Target) -> Observation:
        self._count("observe")
        with self._mu:
            h = self._running.get(target.key)
        if h is None:
            return Observation(Phase.absent)
        return Observation(Phase.running, details={"noop": True}, spec_hash=h)

    def logs(self, target: Target, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        return iter(())

    def watch(self, notify: Notify) -> None:
        pass

    def close(self) -> None:
        pass


def service(i: int) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": f"svc-{i:05d}", "labels": {"bench": "core-scale", "shard": str(i % 10)}},
        "spec": {"backend": {KIND: {}}},
    })


def signatures(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every object file under the store root."""
    out = {}
    for ns in os.scandir(root):
        if not ns.is_dir() or ns.name.startswith((".", "_")):
            continue
        for e in os.scandir(ns.path):
            if e.name.endswith(".yaml"):
                st = e.stat()
                out[e.path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def converge_all(runtime: Runtime, store: FileStore, timeout: float) -> tuple[float, float, int, int]:
    """(seconds to list, seconds to converge, services settled, total) of one pass over all keys."""
    t0 = time.perf_counter()
    keys = [o.key for o in store.list().items]
    t_list = time.perf_counter() - t0
    outcomes = runtime.converge(keys, timeout)
    t_all = time.perf_counter() - t0
    settled = sum(1 for o in outcomes.values() if o.settled)
    return t_list, t_all, settled, len(keys)


def bench_n(n: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    root = scratch / f"store-{n}"
    store = FileStore(root)
    backend = NoopBackend()
    runtime = Runtime(Reconciler(store, Backends({KIND: backend}), Host(root)), workers=args.workers)

    t0 = time.perf_counter()
    for i in range(n):
        store.create(service(i))
    t_create = time.perf_counter() - t0

    _, t_first, settled, total = converge_all(runtime, store, args.timeout)
    if settled != n or total != n:
        raise BenchError(f"N={n}: first pass settled {settled} of {total} listed (expected {n})")
    first_writes = store.writes - n
    not_active = [o.metadata.name for o in store.list().items if o.status.state.value != "active"]
    if not_active:
        raise BenchError(f"N={n}: after the first pass {len(not_active)} services are not active: "
                         f"{not_active[:5]}")

    res: dict[str, Any] = {"n": n, "create_s": t_create, "first_pass_s": t_first,
                           "first_pass_writes": first_writes}
    for mode in ("first", "warm", "cold"):
        if mode == "cold":
            store = FileStore(root)
            runtime = Runtime(Reconciler(store, Backends({KIND: backend}), Host(root)), workers=args.workers)
        before_sigs = signatures(root)
        before_writes = store.writes
        calls_before = dict(backend.calls)
        t_list, t_pass, settled, total = converge_all(runtime, store, args.timeout)
        writes = store.writes - before_writes
        changed = sum(1 for k, v in signatures(root).items() if before_sigs.get(k) != v)
        actions = {k: backend.calls[k] - calls_before[k] for k in backend.calls}
        if settled != n:
            raise BenchError(f"N={n} {mode}: steady-state pass settled {settled} of {total}")
        if writes or changed:
            raise BenchError(f"N={n} {mode}: steady-state pass wrote {writes} times "
                             f"({changed} object files changed); expected 0")
        if actions["provision"] or actions["deprovision"] or actions["suspend"]:
            raise BenchError(f"N={n} {mode}: steady-state pass acted on the backend: {actions}")
        res[mode] = {"pass_s": t_pass, "list_s": t_list, "per_service_ms": 1000 * t_pass / n,
                     "store_writes": writes, "files_changed": changed, "backend_calls": actions}
    keys = [o.key for o in store.list().items]
    for ref, shortcut in (("serial", True), ("serial_planned", False)):
        runtime.reconciler.shortcut = shortcut
        runtime.reconciler.reconcile(keys[0])  # (the same warm state for both loops)
        before_writes = store.writes
        t0 = time.perf_counter()
        for key in keys:
            if not runtime.reconciler.reconcile(key).settled:
                raise BenchError(f"N={n} {ref} loop: {key} not settled")
        t_serial = time.perf_counter() - t0
        if store.writes != before_writes:
            raise BenchError(f"N={n} {ref} loop wrote {store.writes - before_writes} times")
        res[ref] = {"pass_s": t_serial, "per_service_ms": 1000 * t_serial / n}
    runtime.reconciler.shortcut = True
    res["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return res


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1000,2000,5000,10000", help="comma-separated service counts")
    ap.add_argument("--workers", type=int, default=16,
                    help="most Runtime workers (converge reconcile's default; how many run follows the load)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="timeout of one converging pass")
    args = ap.parse_args()
    args.ns = [int(x) for x in args.n.split(",") if x]
    if not args.ns or min(args.ns) < 1:
        ap.error("--n needs positive counts")
    return args


def main() -> None:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-core-scale-"))
    results: dict[str, Any] = {"params": vars(args), "runs": []}
    with fail_loudly("bench_core_scale"):
        try:
            for n in args.ns:
                print(f"[N={n}] ...", file=sys.stderr, flush=True)
                results["runs"].append(bench_n(n, args, scratch))
        except BenchError as exc:
            results["error"] = str(exc)
            print(f"partial results: {write_results('bench_core_scale', results)}", file=sys.stderr)
            raise
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(scratch)
        path = write_results("bench_core_scale", results)
    runs = results["runs"]
    print("\nSteady-state reconcile pass over N services (no-op backend, FileStore), seconds")
    print_table(["N", "create N", "first pass", "first look", "warm pass", "warm ms/svc", "cold pass",
                 "cold ms/svc", "(cold list)", "serial", "serial planned", "warm/planned", "cold/planned",
                 "warm/serial", "writes", "load avg"],
                [[r["n"], r["create_s"], r["first_pass_s"], r["first"]["pass_s"], r["warm"]["pass_s"],
                  r["warm"]["per_service_ms"], r["cold"]["pass_s"], r["cold"]["per_service_ms"], r["cold"]["list_s"],
                  r["serial"]["pass_s"], r["serial_planned"]["pass_s"],
                  f"{r['warm']['pass_s'] / r['serial_planned']['pass_s']:.2f}",
                  f"{r['cold']['pass_s'] / r['serial_planned']['pass_s']:.2f}",
                  f"{r['warm']['pass_s'] / r['serial']['pass_s']:.2f}",
                  sum(r[m]["store_writes"] for m in ("first", "warm", "cold")), r["loadavg_1_5_15"][0]]
                 for r in runs])
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        f = b["n"] / a["n"]
        warm = b["warm"]["pass_s"] / a["warm"]["pass_s"]
        cold = b["cold"]["pass_s"] / a["cold"]["pass_s"]
        print(f"\ngrowth N {a['n']} -> {b['n']} (x{f:g}): warm pass x{warm:.1f}, cold pass x{cold:.1f}")
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
