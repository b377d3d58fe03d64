"""The prober with hung endpoints: do healthy services keep their probe period while other
endpoints accept connections and never answer?

    $VENV/bin/python benchmarks/bench_prober.py [--healthy 20] [--hung 0,10,40]
        [--period 1] [--timeout 2] [--seconds 12]

In-process, through converge.prober.Prober and converge.reconciler.Probe (HTTP probes
exactly as `converge run` makes them). Healthy endpoints are the tiny HTTP daemon
(tinyhttp.py, one process each); hung ones are sockets of this script that listen and never
accept (the kernel completes the handshake, the request is never answered: each probe
of one waits for its full timeout). For each number of hung endpoints, the prober runs
with its bounded pool (the default) and with concurrency 1 (probes one at a time, as the
prober did before) as the reference in the same run. Reported per healthy service: the
gaps between its completed probes (median, p95, max; the period is the goal) and how
many probes it got against how many the period asks for.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    Reaper,
    daemon_command,
    fail_loudly,
    free_ports,
    percentile,
    print_table,
    run_tag,
    wait_healthy,
    write_results,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from converge.api import HealthCheck, ServiceKey
from converge.backends.health import ProbeResult
from converge.prober import CONCURRENCY, Prober
from converge.reconciler import Probe


def run_case(ports: list[int], hung: list[int], args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    check = HealthCheck.model_validate({"http": {"path": "/", "timeoutSeconds": args.timeout},
                                        "periodSeconds": args.period})
    done: dict[ServiceKey, list[float]] = {}
    failures: list[ServiceKey] = []
    mu = threading.Lock()
    prober = Prober(failures.append, concurrency=concurrency)

    def recorder(key: ServiceKey) -> Any:
        def record(result: ProbeResult) -> None:
            if result.ok:
                with mu:
                    done.setdefault(key, []).append(time.monotonic())
        return record

    try:
        t0 = time.monotonic()
        for i, port in enumerate(hung):
            prober.track(ServiceKey("hung", f"h{i}"), Probe(check, "http", "127.0.0.1", port, args.period))
        healthy = [ServiceKey("ok", f"s{i}") for i in range(len(ports))]
        for key, port in zip(healthy, ports, strict=True):
            prober.track(key, Probe(check, "http", "127.0.0.1", port, args.period, record=recorder(key)))
        time.sleep(args.seconds)
        t1 = time.monotonic()
    finally:
        prober.close()
    bad = [k for k in failures if k.namespace == "ok"]
    if bad:
        raise BenchError(f"healthy endpoints failed their probe: {bad[:3]}")
    gaps, counts = [], []
    for key in healthy:
        times = [t0, *done.get(key, [])]
        gaps += [b - a for a, b in itertools.pairwise(times)]
        gaps.append(t1 - times[-1])  # the open gap at the end counts: a starved service has no probes
        counts.append(len(done.get(key, [])))
    expected = args.seconds / args.period
    return {"hung": len(hung), "concurrency": concurrency, "gap_median_s": percentile(gaps, 50),
            "gap_p95_s": percentile(gaps, 95), "gap_max_s": max(gaps),
            "probes_per_service": sum(counts) / len(counts), "probes_expected": expected,
            "min_probes_of_a_service": min(counts)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--healthy", type=int, default=20)
    ap.add_argument("--hung", default="0,10,40", help="comma-separated counts of hung endpoints")
    ap.add_argument("--period", type=float, default=1.0, help="periodSeconds of every probe")
    ap.add_argument("--timeout", type=float, default=2.0, help="timeoutSeconds of every probe")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of each case")
    args = ap.parse_args()
    args.hungs = [int(x) for x in args.hung.split(",") if x]
    return args


def main() -> None:
    args = parse_args()
    tag = run_tag()
    results: dict[str, Any] = {"params": vars(args), "cases": []}
    with fail_loudly("bench_prober"), Reaper(tag) as reaper:
        ports = free_ports(args.healthy)
        for port in ports:
            reaper.track(subprocess.Popen(daemon_command(port, tag), start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_healthy(ports, 60)
        socks: list[socket.socket] = []
        try:
            for _ in range(max(args.hungs, default=0)):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                s.listen(128)  # never accepted: connect succeeds, the request hangs
                socks.append(s)
            hung_ports = [s.getsockname()[1] for s in socks]
            for h in args.hungs:
                for conc in (CONCURRENCY, 1):
                    print(f"[hung={h} concurrency={conc}] ...", file=sys.stderr, flush=True)
                    results["cases"].append(run_case(ports, hung_ports[:h], args, conc))
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
        path = write_results("bench_prober", results)
    print(f"\nProbes of {args.healthy} healthy services (period {args.period:g}s, timeout {args.timeout:g}s) "
          f"next to hung endpoints, {args.seconds:g}s per case")
    print_table(["hung", "concurrency", "gap median", "gap p95", "gap max", "probes/service", "expected",
                 "fewest"],
                [[c["hung"], c["concurrency"], c["gap_median_s"], c["gap_p95_s"], c["gap_max_s"],
                  f"{c['probes_per_service']:.1f}", f"{c['probes_expected']:.0f}", c["min_probes_of_a_service"]]
                 for c in results["cases"]])
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
