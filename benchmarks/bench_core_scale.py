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
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from common import BenchError, fail_loudly, print_table, summarize, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converge.api import ManagedService, ServiceKey
from converge.backends.base import Notify, Observation, Phase, Target
from converge.concurrency import RunDelay
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


class Meter:
    """One phase's wall time and what it was made of, to tell the machine's share of a
    figure from converge's own: the process's CPU time, its threads' run-queue delay
    (converge.concurrency.RunDelay: runnable but waiting for a core, i.e. other work on
    the machine), the cyclic GC's time (gc.callbacks) and the machine's steal time
    (/proc/stat: the hypervisor's other guests)."""

    _gc_start = 0.0
    gc_s = 0.0
    gc_runs: ClassVar[list[int]] = [0, 0, 0]

    @classmethod
    def _on_gc(cls, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            cls._gc_start = time.perf_counter()
        else:
            cls.gc_s += time.perf_counter() - cls._gc_start
            cls.gc_runs[info["generation"]] += 1

    def __init__(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(Meter._on_gc)
        self._delay = RunDelay()
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> Meter:
        self._gc, self._runs = Meter.gc_s, list(Meter.gc_runs)
        self._steal = steal_s()
        self._cpu, self._waited = time.process_time(), self._delay()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        self.figures = {"pass_s": wall, "cpu_s": time.process_time() - self._cpu,
                        "run_delay_s": self._delay() - self._waited, "gc_s": Meter.gc_s - self._gc,
                        "gc_collections": [b - a for a, b in zip(self._runs, Meter.gc_runs, strict=True)],
                        "steal_s": steal_s() - self._steal}


def steal_s() -> float:
    """Seconds of steal time of all CPUs so far (0 where /proc/stat has none)."""
    with contextlib.suppress(OSError, IndexError, ValueError), open("/proc/stat") as f:
        return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def converge_all(runtime: Runtime, store: FileStore, timeout: float) -> tuple[float, int, int]:
    """(seconds to list, services settled, total) of one pass over all keys."""
    t0 = time.perf_counter()
    keys = [o.key for o in store.list().items]
    t_list = time.perf_counter() - t0
    outcomes = runtime.converge(keys, timeout)
    settled = sum(1 for o in outcomes.values() if o.settled)
    return t_list, settled, len(keys)


def new_runtime(store: FileStore, backend: NoopBackend, workers: int) -> Runtime:
    return Runtime(Reconciler(store, Backends({KIND: backend}), Host(store.root)), workers=workers)


PHASES = ("first", "warm", "cold", "serial", "serial_planned")
RATIOS = {"warm/planned": ("warm", "serial_planned"), "cold/planned": ("cold", "serial_planned"),
          "warm/serial": ("warm", "serial")}


def steady_round(n: int, runtime: Runtime, backend: NoopBackend,
                 args: argparse.Namespace) -> tuple[dict[str, Any], Runtime]:
    """One round of the steady-state passes (see the module's docstring); the round's
    figures, and the runtime of its cold pass (the next round's warm store)."""
    root = runtime.reconciler.store.root
    res: dict[str, Any] = {}
    for mode in ("first", "warm", "cold"):
        if mode == "cold":
            runtime = new_runtime(FileStore(root), backend, args.workers)
        store = runtime.reconciler.store
        before_sigs = signatures(root)
        before_writes = store.writes
        calls_before = dict(backend.calls)
        with Meter() as m:
            t_list, settled, total = converge_all(runtime, store, args.timeout)
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
        res[mode] = {**m.figures, "list_s": t_list, "per_service_ms": 1000 * m.figures["pass_s"] / n,
                     "store_writes": writes, "files_changed": changed, "backend_calls": actions}
    store = runtime.reconciler.store
    keys = [o.key for o in store.list().items]
    for ref, shortcut in (("serial", True), ("serial_planned", False)):
        runtime.reconciler.shortcut = shortcut
        runtime.reconciler.reconcile(keys[0])  # (the same warm state for both loops)
        before_writes = store.writes
        with Meter() as m:
            for key in keys:
                if not runtime.reconciler.reconcile(key).settled:
                    raise BenchError(f"N={n} {ref} loop: {key} not settled")
        if store.writes != before_writes:
            raise BenchError(f"N={n} {ref} loop wrote {store.writes - before_writes} times")
        res[ref] = {**m.figures, "per_service_ms": 1000 * m.figures["pass_s"] / n}
    runtime.reconciler.shortcut = True
    for name, (a, b) in RATIOS.items():
        res[name] = res[a]["pass_s"] / res[b]["pass_s"]
    res["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return res, runtime


def bench_n(n: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    root = scratch / f"store-{n}"
    store = FileStore(root)
    backend = NoopBackend()
    runtime = new_runtime(store, backend, args.workers)

    t0 = time.perf_counter()
    for i in range(n):
        store.create(service(i))
    t_create = time.perf_counter() - t0

    t0 = time.perf_counter()
    _, settled, total = converge_all(runtime, store, args.timeout)
    t_first = time.perf_counter() - t0
    if settled != n or total != n:
        raise BenchError(f"N={n}: first pass settled {settled} of {total} listed (expected {n})")
    first_writes = store.writes - n
    not_active = [o.metadata.name for o in store.list().items if o.status.state.value != "active"]
    if not_active:
        raise BenchError(f"N={n}: after the first pass {len(not_active)} services are not active: "
                         f"{not_active[:5]}")
    del store  # (from here on each round's controller holds the store it reads: one at a time)

    res: dict[str, Any] = {"n": n, "create_s": t_create, "first_pass_s": t_first,
                           "first_pass_writes": first_writes, "rounds": []}
    for r in range(args.rounds):
        if r:  # a new controller on the warm store: its first pass plans every service again
            runtime = new_runtime(runtime.reconciler.store, backend, args.workers)
        figures, runtime = steady_round(n, runtime, backend, args)
        res["rounds"].append(figures)
        print(f"[N={n}] round {r + 1}: warm {figures['warm']['pass_s']:.3f} s, cold {figures['cold']['pass_s']:.3f} s, "
              f"planned {figures['serial_planned']['pass_s']:.3f} s, load {figures['loadavg_1_5_15'][0]}",
              file=sys.stderr, flush=True)
    rounds = res["rounds"]
    res["median"] = {p: {"pass_s": statistics.median(r[p]["pass_s"] for r in rounds)} for p in PHASES}
    res["median"]["cold"]["list_s"] = statistics.median(r["cold"]["list_s"] for r in rounds)
    res["summary"] = {**{p: summarize([r[p]["pass_s"] for r in rounds]) for p in PHASES},
                      **{q: summarize([r[q] for r in rounds]) for q in RATIOS}}
    return res


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1000,2000,5000,10000", help="comma-separated service counts")
    ap.add_argument("--workers", type=int, default=16,
                    help="most Runtime workers (converge reconcile's default; how many run follows the load)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="timeout of one converging pass")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the steady-state passes per N on the same store (figures: median, min-max)")
    ap.add_argument("--out", default="bench_core_scale", help="results file name (benchmarks/results/OUT.json)")
    args = ap.parse_args()
    args.ns = [int(x) for x in args.n.split(",") if x]
    if not args.ns or min(args.ns) < 1:
        ap.error("--n needs positive counts")
    if args.rounds < 1:
        ap.error("--rounds needs at least 1")
    return args


def spread(s: dict[str, float], digits: int = 3) -> str:
    """median [min-max] of a summary (just the value for one round)."""
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def made_of(p: dict[str, Any]) -> str:
    return f"{p['pass_s']:.3f} ({p['cpu_s']:.2f} {p['run_delay_s']:.2f} {p['gc_s']:.2f})"


def load_range(rounds: list[dict[str, Any]]) -> str:
    loads = [x["loadavg_1_5_15"][0] for x in rounds]
    return f"{min(loads):.2f}-{max(loads):.2f}" if len(loads) > 1 else f"{loads[0]:.2f}"


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
            print(f"partial results: {write_results(args.out, results)}", file=sys.stderr)
            raise
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(scratch)
        path = write_results(args.out, results)
    runs = results["runs"]
    print(f"\nSteady-state reconcile pass over N services (no-op backend, FileStore), seconds, "
          f"{args.rounds} round(s) each: median [min-max]")
    print_table(["N", "create N", "first pass", "first look", "warm pass", "cold pass", "(cold list)", "serial",
                 "serial planned", "warm/planned", "cold/planned", "warm/serial", "writes", "load avg"],
                [[r["n"], r["create_s"], r["first_pass_s"], *(spread(r["summary"][p]) for p in PHASES[:3]),
                  f"{r['median']['cold']['list_s']:.3f}", *(spread(r["summary"][p]) for p in PHASES[3:]),
                  *(spread(r["summary"][q], 2) for q in RATIOS),
                  sum(x[m]["store_writes"] for x in r["rounds"] for m in ("first", "warm", "cold")),
                  load_range(r["rounds"])]
                 for r in runs])
    print("\nEach round (the ratios are to the loops of the same round); in brackets: process CPU s, "
          "run-queue delay s (runnable, waiting for a core), cyclic GC s")
    print_table(["N", "round", "warm pass", "cold pass", "serial planned", "warm/planned", "cold/planned",
                 "steal s", "load avg"],
                [[r["n"], i + 1, *(made_of(x[p]) for p in ("warm", "cold", "serial_planned")),
                  f"{x['warm/planned']:.2f}", f"{x['cold/planned']:.2f}",
                  f"{sum(x[p]['steal_s'] for p in PHASES):.2f}", x["loadavg_1_5_15"][0]]
                 for r in runs for i, x in enumerate(r["rounds"])])
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        f = b["n"] / a["n"]
        warm = b["median"]["warm"]["pass_s"] / a["median"]["warm"]["pass_s"]
        cold = b["median"]["cold"]["pass_s"] / a["median"]["cold"]["pass_s"]
        print(f"\ngrowth N {a['n']} -> {b['n']} (x{f:g}, medians): warm pass x{warm:.1f}, cold pass x{cold:.1f}")
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
