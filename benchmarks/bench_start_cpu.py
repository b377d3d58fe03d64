"""Where the CPU of "N daemons apply -> all healthy" goes: plain Popen loop vs converge.

    ~/.cache/converge/venv/bin/python benchmarks/bench_start_cpu.py [--n 200] [--rounds 3]

bench_supervise times the start; this says what bounds it on a machine the start saturates.
Rounds alternate the two ways of starting the same N tinyhttp daemons (distinct free ports):
  plain:    this script's Popen loop, then waits until every port answers;
  converge: `converge apply -f DIR`, then `converge reconcile` (returns once all are Ready).
Per round: wall time; the CPU (user+system) of the daemons (summed over them at the end), of
the starter (the loop, or each converge command: children's rusage) and of the whole machine
(/proc/stat) over the start; and when the first, the median and the last daemon started
(their start times in /proc, 10 ms steps). The ratio of the two ways' CPU (daemons + starter)
is a floor under the ratio of their wall times wherever both keep every core busy: no packing
of the work onto the cores does better. A second floor comes from the first start: the
daemons cannot be up before converge has started one and then the plain way's whole time
(first start + plain wall, over plain wall), whatever converge did per service after it.
A third, below that one, is the two commands' own start-up, timed in each round on their
own: `apply` of one manifest (a new store) and `reconcile` of an empty store (Python, pydantic,
converge's modules; no daemon): (both + plain wall) over plain wall, with no work per service.
Under that, the stack's floor: twice (two commands) a bare process of the same Python that
imports pydantic and validates one small model (pydantic's plugin scan off, as converge's
CLI has it), plus the plain wall: what any two-command Python + pydantic tool pays first.
Results: table on stdout, benchmarks/results/<--out>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import (
    BenchError,
    converge_bin,
    daemon_command,
    drop_service_cgroups,
    fail_loudly,
    free_ports,
    kill_tagged,
    print_table,
    run_cli,
    run_tag,
    started_at,
    tagged,
    wait_healthy,
    write_daemon_manifests,
    write_results,
)

HZ = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / HZ


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def daemons_cpu(tag: str) -> float:
    total = 0.0
    for p in tagged(tag):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def startup_round(scratch: Path) -> dict[str, Any]:
    """Wall seconds of `converge apply` of one manifest into a new store and of `converge
    reconcile` of an empty store: what each command costs before any per-service work."""
    work = scratch / f"{run_tag()}-startup"
    mdir = write_daemon_manifests(work / "one", [1], lambda port: ["/bin/true"])
    cv = converge_bin()
    env = dict(os.environ, CONVERGE_STORE=str(work / "store"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.monotonic()
    run_cli([cv, "apply", "-f", mdir], env=env)
    t1 = time.monotonic()
    run_cli([cv, "reconcile"], env=dict(env, CONVERGE_STORE=str(work / "empty")))
    return {"apply_one_s": t1 - t0, "reconcile_empty_s": time.monotonic() - t1}


# What any Python + pydantic command pays before its own work: pydantic's schema machinery
# is imported and a model built on its first validation.
STACK_PROBE = ("from typing import Literal\nfrom pydantic import BaseModel, Field\n"
               "class M(BaseModel):\n    name: str = Field(pattern='^[a-z0-9-]+$')\n"
               "    state: Literal['active', 'inactive'] = 'active'\n"
               "M.model_validate({'name': 'one'})\n")


def stack_round() -> dict[str, Any]:
    """Wall seconds of two bare `python -c STACK_PROBE` processes of converge's interpreter."""
    python = str(Path(converge_bin()).parent / "python")
    env = dict(os.environ, PYDANTIC_DISABLE_PLUGINS="__all__")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.monotonic()
    for _ in range(2):
        subprocess.run([python, "-c", STACK_PROBE], env=env, check=True)
    return {"stack_two_s": time.monotonic() - t0}


def one_round(way: str, n: int, scratch: Path, timeout: float) -> dict[str, Any]:
    tag = run_tag()
    ports = free_ports(n)
    work = scratch / tag
    env = dict(os.environ, CONVERGE_STORE=str(work / "store"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached (as bench_supervise)
    if way == "converge":
        write_daemon_manifests(work / "manifests", ports, lambda port: daemon_command(port, tag))
    else:
        work.mkdir(parents=True)
    time.sleep(1.0)  # what writing the manifests stirred up settles
    row: dict[str, Any] = {"way": way, "load": os.getloadavg()[0]}
    busy0, kids0, self0, t0 = machine_busy(), children_cpu(), time.process_time(), time.monotonic()
    t0_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        if way == "plain":
            for i, port in enumerate(ports):
                with (work / f"svc-{i:04d}.log").open("ab") as log:
                    subprocess.Popen(daemon_command(port, tag), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            row["wall_s"] = max(wait_healthy(ports, timeout, t0=t0).values())
            row["starter_cpu_s"] = time.process_time() - self0
        else:
            cv = converge_bin()
            run_cli([cv, "apply", "-f", work / "manifests"], env=env, timeout=timeout)
            row["apply_wall_s"] = time.monotonic() - t0
            row["apply_cpu_s"] = children_cpu() - kids0
            run_cli([cv, "reconcile", "--timeout", f"{int(timeout)}s"], env=env, timeout=timeout + 60)
            row["wall_s"] = time.monotonic() - t0
            row["reconcile_cpu_s"] = children_cpu() - kids0 - row["apply_cpu_s"]
            row["starter_cpu_s"] = row["apply_cpu_s"] + row["reconcile_cpu_s"]
        row["machine_busy_s"] = machine_busy() - busy0
        row["daemons_cpu_s"] = daemons_cpu(tag)
        procs = tagged(tag)
        if len(procs) != n:
            raise BenchError(f"{way}: {len(procs)} daemons running, expected {n}")
        starts = started_at(procs, t0_boot)
        row["first_start_s"], row["median_start_s"], row["last_start_s"] = (
            starts[0], statistics.median(starts), starts[-1])
    finally:
        kill_tagged(tag)
        drop_service_cgroups(work / "store")
    row["cpu_s"] = row["daemons_cpu_s"] + row["starter_cpu_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", default="bench_start_cpu", help="results file name (benchmarks/results/OUT.json)")
    args = ap.parse_args()
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="bench-start-cpu-"))
    rows: list[dict[str, Any]] = []
    with fail_loudly("bench_start_cpu"):
        for r in range(args.rounds):
            for way in ("plain", "converge"):
                print(f"[round {r + 1}] {way} ...", file=sys.stderr, flush=True)
                rows.append({"round": r + 1, **one_round(way, args.n, scratch, args.timeout)})
            rows[-1].update(startup_round(scratch))
            rows[-1].update(stack_round())
    pairs = [(p, c) for p in rows for c in rows if p["round"] == c["round"] and p["way"] == "plain"
             and c["way"] == "converge"]
    table = [[r["round"], r["way"], r["load"], r["wall_s"], r["daemons_cpu_s"], r.get("apply_cpu_s"),
              r.get("reconcile_cpu_s"), r["starter_cpu_s"], r["cpu_s"], r["machine_busy_s"] / r["wall_s"]]
             for r in rows]
    print(f"\nN={args.n}: wall time and CPU seconds of the start (daemons summed at the end)")
    print_table(["round", "way", "load", "wall", "daemons CPU", "apply CPU", "reconcile CPU", "starter CPU",
                 "CPU total", "machine cores busy"], table)
    print("\nwhen the daemons started (seconds after the start began)")
    print_table(["round", "way", "first", "median", "last"],
                [[r["round"], r["way"], r["first_start_s"], r["median_start_s"], r["last_start_s"]] for r in rows])
    print("\nthe commands' own start-up (seconds): apply of one manifest, reconcile of an empty store; "
          "the stack: two bare Python + pydantic processes (one small model validated)")
    print_table(["round", "apply (1)", "reconcile (0)", "both", "stack (2 processes)"],
                [[c["round"], c["apply_one_s"], c["reconcile_empty_s"], c["apply_one_s"] + c["reconcile_empty_s"],
                  c["stack_two_s"]] for _, c in pairs])
    ratios = [[p["round"], c["wall_s"] / p["wall_s"], c["cpu_s"] / p["cpu_s"],
               (c["first_start_s"] + p["wall_s"]) / p["wall_s"],
               (c["apply_one_s"] + c["reconcile_empty_s"] + p["wall_s"]) / p["wall_s"],
               (c["stack_two_s"] + p["wall_s"]) / p["wall_s"]] for p, c in pairs]
    print("\nconverge / plain, same round; floors: CPU (daemons + starter), first start + plain wall, "
          "start-up + plain wall, the stack's start-up + plain wall")
    print_table(["round", "wall", "CPU floor", "first-start floor", "start-up floor", "stack floor"], ratios)
    summary = {"wall_ratio_median": statistics.median(r[1] for r in ratios),
               "cpu_ratio_median": statistics.median(r[2] for r in ratios),
               "first_start_floor_median": statistics.median(r[3] for r in ratios),
               "startup_floor_median": statistics.median(r[4] for r in ratios),
               "stack_floor_median": statistics.median(r[5] for r in ratios)}
    print(f"median: wall {summary['wall_ratio_median']:.2f}x, CPU {summary['cpu_ratio_median']:.2f}x, "
          f"first-start floor {summary['first_start_floor_median']:.2f}x, "
          f"start-up floor {summary['startup_floor_median']:.2f}x, stack floor {summary['stack_floor_median']:.2f}x")
    path = write_results(args.out, {"params": vars(args), "rounds": rows, "summary": summary})
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
