"""converge vs supervisord (and plain subprocess) supervising N small HTTP daemons.

    ~/.cache/converge/venv/bin/python benchmarks/bench_supervise.py [--n 1,50,200] [--kills 30]
        [--idle-seconds 30] [--idle-n 200] [--only subprocess,supervisord,reconcile,run]

Every tool starts the same command (benchmarks/tinyhttp.py, a stdlib HTTP server that
answers with its pid) on distinct free ports of 127.0.0.1; health is judged the same way
for all: HTTP GET from this script.

For each N:
  (a) start to all healthy: plain subprocess (one Popen loop), supervisord (start with a
      written config), `converge apply -f DIR` + `converge reconcile` (until it returns,
      then all Ready is checked), `converge apply -f DIR` + `converge run` in background;
      `run-first`: `converge run` started and idle before `apply` (a controller already
      running when the user applies: its own start-up is not in the figure);
  (b) kill -9 of a random daemon -> answering again from a new pid: median / p95 over
      --kills kills (supervisord autorestart=true startsecs=0; converge run; plain
      subprocess = this script respawning it at once, the floor);
  (c) at N == --idle-n: CPU% of one core and RSS of the controller process at idle
      (supervisord vs `converge run`) over --idle-seconds.
Results: table on stdout, benchmarks/results/bench_supervise.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    ConvergeStatus,
    Reaper,
    converge_bin,
    daemon_command,
    drop_service_cgroups,
    ensure_peer,
    fail_loudly,
    free_ports,
    http_get,
    kill9,
    kill_tagged,
    print_table,
    run_cli,
    run_tag,
    sample_idle,
    served_pid,
    start_spread,
    summarize,
    tagged,
    thread_cpu,
    wait_healthy,
    write_daemon_manifests,
    write_results,
)

TOOLS = ("subprocess", "supervisord", "reconcile", "run", "run-noprobe", "run-first")


class Ctx:
    """What every phase needs: arguments, the run's tag, a scratch dir, the reaper."""

    def __init__(self, args: argparse.Namespace, tag: str, scratch: Path, reaper: Reaper) -> None:
        self.args = args
        self.tag = tag
        self.scratch = scratch
        self.reaper = reaper
        self.rng = random.Random(args.seed)

    def phase(self, tool: str, n: int) -> tuple[str, Path, list[int]]:
        """A tag, an empty work dir and n fresh free ports (nobody answering) for one phase."""
        ptag = f"{self.tag}-{tool}-{n}"
        work = self.scratch / f"{tool}-{n}"
        work.mkdir(parents=True)
        ports = free_ports(n)
        busy = [p for p in ports if http_get(p, timeout=0.2) is not None]
        if busy:
            raise BenchError(f"ports already answering before {tool} started: {busy[:5]}")
        return ptag, work, ports


# --------------------------------------------------------------------------- kills


def kill_loop(ctx: Ctx, ports: list[int], check: Callable[[], None] | None = None,
              restart: Callable[[int], None] | None = None,
              diagnose: Callable[[int], str] | None = None,
              ready: Callable[[int, int], bool] | None = None) -> dict[str, Any]:
    """Kill -9 a random daemon, time until its port answers from a new pid; repeat.
    `restart(index)` is called right after the kill when the harness itself restarts.
    `ready(index, old_pid)`, if given, says whether the tool's own status shows the
    service Ready again (from a new pid): also timed, after the HTTP answer.
    A restart slower than --slow is kept as a sample and also listed, with `diagnose`'s
    snapshot taken the moment it became slow; past --kill-timeout the benchmark fails."""
    kills, settle, slow_after = ctx.args.kills, ctx.args.settle, ctx.args.slow
    if kills == 0:
        return {}  # --kills 0: the idle phase only
    samples: list[float] = []
    ready_samples: list[float] = []
    slow: list[dict[str, Any]] = []
    last = -1
    for k in range(1, kills + 1):
        choices = [i for i in range(len(ports)) if i != last] or [0]
        i = ctx.rng.choice(choices)
        last = i
        old = served_pid(ports[i])
        if old is None:
            raise BenchError(f"kill {k}: daemon on port {ports[i]} not answering before the kill")
        t0 = time.monotonic()
        kill9(old)
        if restart is not None:
            restart(i)
        snapshot = ""
        while True:
            pid = served_pid(ports[i], timeout=0.5)
            elapsed = time.monotonic() - t0
            if pid is not None and pid != old:
                break
            if elapsed > slow_after and not snapshot:
                if check is not None:
                    check()
                snapshot = diagnose(i) if diagnose is not None else "(slow)"
            if elapsed > ctx.args.kill_timeout:
                raise BenchError(f"kill {k}: daemon on port {ports[i]} (killed pid {old}) not healthy again "
                                 f"after {ctx.args.kill_timeout:.0f}s\n{snapshot}".rstrip())
            time.sleep(0.005)
        samples.append(elapsed)
        if snapshot:
            slow.append({"kill": k, "service": f"svc-{i:04d}", "killed_pid": old, "seconds": elapsed,
                         "snapshot_at_slow_threshold": snapshot})
            print(f"  WARNING: kill {k} of svc-{i:04d}: healthy again only after {elapsed:.1f}s",
                  file=sys.stderr, flush=True)
        if ready is not None:
            deadline = t0 + ctx.args.kill_timeout
            while not ready(i, old):
                if time.monotonic() > deadline:
                    raise BenchError(f"kill {k}: svc-{i:04d} answers again but its status is not "
                                     f"Ready with a new pid after {ctx.args.kill_timeout:.0f}s")
                time.sleep(0.005)
            ready_samples.append(time.monotonic() - t0)
        if check is not None:
            check()
        time.sleep(settle)
    res: dict[str, Any] = {"kill_to_healthy_s": summarize(samples), "samples_s": samples,
                           "slow_restarts": slow}
    if ready_samples:
        res["kill_to_ready_in_status_s"] = summarize(ready_samples)
        res["ready_samples_s"] = ready_samples
    return res


# --------------------------------------------------------------------------- plain subprocess


def bench_subprocess(ctx: Ctx, n: int) -> dict[str, Any]:
    tag, work, ports = ctx.phase("subprocess", n)
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(i: int) -> subprocess.Popen[bytes]:
        with (work / f"svc-{i:04d}.log").open("ab") as log:
            p = subprocess.Popen(daemon_command(ports[i], tag), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        return ctx.reaper.track(p)

    try:
        t0, t0_boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        procs.extend(spawn(i) for i in range(n))
        spawned = time.monotonic() - t0
        healthy = wait_healthy(ports, ctx.args.start_timeout, t0=t0)
        res: dict[str, Any] = {"spawn_loop_s": spawned, "start_to_all_healthy_s": max(healthy.values()),
                               "start_to_healthy_per_service_s": summarize(list(healthy.values())),
                               **start_spread(tag, t0_boot)}

        def restart(i: int) -> None:
            procs[i].wait(5)  # reap the killed one
            procs[i] = spawn(i)

        res.update(kill_loop(ctx, ports, restart=restart))
        return res
    finally:
        for p in procs:
            ctx.reaper.stop(p, grace=2)
        kill_tagged(tag)


# --------------------------------------------------------------------------- supervisord


def supervisord_conf(work: Path, ports: list[int], tag: str) -> Path:
    lines = [
        "[unix_http_server]", f"file={work}/supervisor.sock", "",
        "[supervisord]", f"logfile={work}/supervisord.log", f"pidfile={work}/supervisord.pid",
        f"childlogdir={work}/logs", "nodaemon=true", "minfds=4096", "minprocs=1024", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{work}/supervisor.sock", "",
    ]
    (work / "logs").mkdir()
    for i, port in enumerate(ports):
        lines += [
            f"[program:svc-{i:04d}]",
            "command=" + " ".join(daemon_command(port, tag)),
            "autostart=true", "autorestart=true", "startsecs=0", "startretries=3",
            "stopsignal=TERM", "stopwaitsecs=5", "redirect_stderr=true",
            f"stdout_logfile={work}/logs/svc-{i:04d}.log", "",
        ]
    conf = work / "supervisord.conf"
    conf.write_text("\n".join(lines))
    return conf


def bench_supervisord(ctx: Ctx, n: int, sup_bin: Path) -> dict[str, Any]:
    tag, work, ports = ctx.phase("supervisord", n)
    conf = supervisord_conf(work, ports, tag)
    out = (work / "supervisord.out").open("wb")
    proc: subprocess.Popen[bytes] | None = None

    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"supervisord exited {proc.returncode}; see {work}/supervisord.out")

    try:
        t0, t0_boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        proc = ctx.reaper.track(subprocess.Popen([str(sup_bin / "supervisord"), "-c", str(conf)],
                                                 stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True))
        healthy = wait_healthy(ports, ctx.args.start_timeout, t0=t0, check=alive)
        res: dict[str, Any] = {"start_to_all_healthy_s": max(healthy.values()),
                               "start_to_healthy_per_service_s": summarize(list(healthy.values())),
                               **start_spread(tag, t0_boot)}
        res.update(kill_loop(ctx, ports, check=alive))
        if n == ctx.args.idle_n:
            time.sleep(ctx.args.idle_warmup)
            res["idle"] = sample_idle(proc.pid, ctx.args.idle_seconds, ctx.args.idle_window)
            alive()
        return res
    finally:
        if proc is not None:
            ctx.reaper.stop(proc, grace=30)  # SIGTERM: supervisord stops its programs
        out.close()
        kill_tagged(tag)


# --------------------------------------------------------------------------- converge


def write_manifests(work: Path, ports: list[int], tag: str, ctx: Ctx, probe: bool = True) -> Path:
    """probe=False: endpoints without a health check: what converge costs beyond what
    supervisord does."""
    return write_daemon_manifests(work / "manifests", ports, lambda port: daemon_command(port, tag),
                                  labels={"bench": ctx.tag}, probe=probe, backoff=ctx.args.backoff,
                                  reset_after=ctx.args.reset_after)


def converge_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CONVERGE_STORE"] = str(work / "store")
    # As installed for a user: bytecode cached (as in bench_cli). PYTHONDONTWRITEBYTECODE, set
    # on this machine, made `apply` and `reconcile` each compile converge's modules from
    # source inside the timed start (~0.12 s of CPU per command).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def converge_ready(env: dict[str, str], n: int) -> tuple[int, list[str]]:
    """(number of services with Ready=True, names not ready) from `converge get -o json`."""
    out = run_cli([converge_bin(), "get", "-o", "json"], env=env, timeout=120).stdout
    doc = json.loads(out)
    items = doc["items"] if isinstance(doc, dict) and "items" in doc else doc
    if not isinstance(items, list):
        items = [items]
    ready, not_ready = 0, []
    for it in items:
        conds = (it.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            ready += 1
        else:
            not_ready.append(it["metadata"]["name"])
    if len(items) != n:
        raise BenchError(f"`converge get -o json` lists {len(items)} services, expected {n}")
    return ready, not_ready


def wait_converge_ready(env: dict[str, str], n: int, timeout: float) -> float:
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        ready, not_ready = converge_ready(env, n)
        if ready == n:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise BenchError(f"{len(not_ready)} services not Ready after {timeout:.0f}s: {not_ready[:5]}")
        time.sleep(0.5)


def bench_converge_reconcile(ctx: Ctx, n: int) -> dict[str, Any]:
    tag, work, ports = ctx.phase("reconcile", n)
    mdir = write_manifests(work, ports, tag, ctx)
    env = converge_env(work)
    cv = converge_bin()
    try:
        t0, t0_boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        run_cli([cv, "apply", "-f", mdir], env=env, timeout=300)
        t_apply = time.monotonic() - t0
        run_cli([cv, "reconcile", "--timeout", f"{int(ctx.args.start_timeout)}s"], env=env,
                timeout=ctx.args.start_timeout + 60)
        t_done = time.monotonic() - t0
        # Verify rather than trust: every port answers now, every service is Ready.
        unhealthy = [p for p in ports if http_get(p) is None]
        if unhealthy:
            raise BenchError(f"`converge reconcile` returned but {len(unhealthy)} daemons do not answer "
                             f"(e.g. port {unhealthy[0]})")
        ready, not_ready = converge_ready(env, n)
        if ready != n:
            raise BenchError(f"`converge reconcile` returned but {len(not_ready)} services are not Ready: "
                             f"{not_ready[:5]}")
        return {"apply_s": t_apply, "apply_to_reconcile_done_s": t_done,
                "start_to_all_healthy_s": t_done, **start_spread(tag, t0_boot)}
    finally:
        kill_tagged(tag)
        drop_service_cgroups(work / "store")


def bench_converge_run(ctx: Ctx, n: int, probe: bool = True, first: bool = False) -> dict[str, Any]:
    """first: `converge run` is started (on the empty store) and idle before `apply`, as a
    controller that is already running when the user applies; else it starts after apply."""
    tag, work, ports = ctx.phase("run-first" if first else "run" if probe else "run-noprobe", n)
    mdir = write_manifests(work, ports, tag, ctx, probe)
    env = converge_env(work)
    cv = converge_bin()
    out = (work / "converge-run.out").open("wb")
    proc: subprocess.Popen[bytes] | None = None

    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"`converge run` exited {proc.returncode}; see {work}/converge-run.out")
        # This script signals the controller only after the phase; a stop before that came
        # from elsewhere (seen: a stray SIGINT while other test suites ran on the machine).
        stopped = [ln for ln in (work / "converge-run.out").read_text(errors="replace").splitlines()
                   if " received SIG" in ln]
        if stopped:
            raise BenchError(f"`converge run` was stopped by a signal this benchmark did not send: "
                             f"{stopped[0]!r}; results of this phase are void")

    def start_run() -> subprocess.Popen[bytes]:
        return ctx.reaper.track(subprocess.Popen([str(cv), "run"], env=env, stdout=out,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True))

    try:
        if first:
            proc = start_run()
            settle_idle(proc.pid)
            alive()
        t0, t0_boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        run_cli([cv, "apply", "-f", mdir], env=env, timeout=300)
        t_apply = time.monotonic() - t0
        if proc is None:
            proc = start_run()
        healthy = wait_healthy(ports, ctx.args.start_timeout, t0=t0, check=alive)
        t_healthy = max(healthy.values())
        # Status catches up: time (after all answer) until every service shows Ready=True.
        ready_after = wait_converge_ready(env, n, ctx.args.start_timeout)
        res: dict[str, Any] = {"apply_s": t_apply, "start_to_all_healthy_s": t_healthy,
                               "start_to_healthy_per_service_s": summarize(list(healthy.values())),
                               "all_ready_in_status_after_healthy_s": ready_after,
                               **start_spread(tag, t0_boot)}

        def diagnose(i: int) -> str:
            out = subprocess.run([str(cv), "describe", f"svc-{i:04d}"], env=env, capture_output=True,
                                 text=True, timeout=60, check=False)
            return f"`converge describe svc-{i:04d}`:\n{out.stdout[-2500:]}{out.stderr[-500:]}"

        status = ConvergeStatus(work / "store")

        def ready(i: int, old_pid: int) -> bool:
            return status.ready_again(f"svc-{i:04d}", old_pid)

        res.update(kill_loop(ctx, ports, check=alive, diagnose=diagnose, ready=ready))
        if n == ctx.args.idle_n:
            time.sleep(ctx.args.idle_warmup)
            res["idle"] = sample_idle(proc.pid, ctx.args.idle_seconds, ctx.args.idle_window)
            alive()
        n_ready, not_ready = converge_ready(env, n)
        res["ready_at_end"] = n_ready
        if n_ready != n:
            raise BenchError(f"after the kills {len(not_ready)} services are not Ready: {not_ready[:5]}")
        return res
    finally:
        if proc is not None:
            ctx.reaper.stop(proc, grace=30)
        out.close()
        kill_tagged(tag)  # daemons outlive `converge run` by design (adoption); remove them
        drop_service_cgroups(work / "store")


# --------------------------------------------------------------------------- main


def settle_idle(pid: int, timeout: float = 30.0) -> None:
    """Until the process at pid has used under 2 % of a core for half a second (its
    start-up is over; at idle it still wakes now and then)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = sum(ns for ns, _ in thread_cpu(pid).values())
        if 0 <= now - last < 0.01e9:
            return
        last = now
        time.sleep(0.5)
    raise BenchError(f"process {pid} still busy {timeout:.0f} s after it started")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1,50,200", help="comma-separated service counts")
    ap.add_argument("--kills", type=int, default=30,
                    help="kill -9 samples per tool and N (0: none; with --n 200: the start and the idle phase only)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds between kills (default: --reset-after + 0.5, so that converge's "
                    "restart backoff has been reset and each kill measures a first restart)")
    ap.add_argument("--idle-seconds", type=float, default=180.0,
                    help="idle sample length: at least 3 resync periods, so a periodic spike cannot hide")
    ap.add_argument("--idle-window", type=float, default=5.0, help="CPU is also reported per window")
    ap.add_argument("--idle-warmup", type=float, default=5.0, help="seconds before the idle sample")
    ap.add_argument("--idle-n", type=int, default=None, help="N at which idle is sampled (default: max N)")
    ap.add_argument("--only", default=",".join(TOOLS), help=f"subset of {','.join(TOOLS)}")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--kill-timeout", type=float, default=90.0,
                    help="a kill not healthy again after this fails the benchmark")
    ap.add_argument("--slow", type=float, default=5.0,
                    help="a restart slower than this is listed (with a status snapshot) in the results")
    ap.add_argument("--backoff", type=float, default=1.0, help="converge restartPolicy.backoffSeconds")
    ap.add_argument("--reset-after", type=float, default=1.0,
                    help="converge restartPolicy.resetAfterSeconds (1: each kill is a first restart, "
                    "as for supervisord, which has no backoff for a RUNNING program)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench_supervise", help="results file name (benchmarks/results/OUT.json)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, stores)")
    args = ap.parse_args()
    args.ns = [int(x) for x in args.n.split(",") if x]
    args.tools = [t for t in args.only.split(",") if t]
    bad = set(args.tools) - set(TOOLS)
    if bad or not args.ns or min(args.ns) < 1 or args.kills < 0:
        ap.error(f"bad --n/--only/--kills (unknown tools: {sorted(bad)})")
    if args.settle is None:
        args.settle = args.reset_after + 0.5
    if args.idle_n is None:
        args.idle_n = max(args.ns)
    return args


def main() -> None:
    args = parse_args()
    tag = run_tag()
    scratch = Path(tempfile.mkdtemp(prefix="bench-supervise-"))
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items()}, "tag": tag, "runs": {}}
    with fail_loudly("bench_supervise"), Reaper(tag) as reaper:
        try:
            ctx = Ctx(args, tag, scratch, reaper)
            sup_bin = ensure_peer("supervisor") if "supervisord" in args.tools else None
            if {"reconcile", "run", "run-noprobe", "run-first"} & set(args.tools):
                converge_bin()
            for n in args.ns:
                runs: dict[str, Any] = {}
                results["runs"][str(n)] = runs
                for tool in args.tools:
                    print(f"[N={n}] {tool} ...", file=sys.stderr, flush=True)
                    if tool == "subprocess":
                        runs[tool] = bench_subprocess(ctx, n)
                    elif tool == "supervisord":
                        assert sup_bin is not None
                        runs[tool] = bench_supervisord(ctx, n, sup_bin)
                    elif tool == "reconcile":
                        runs[tool] = bench_converge_reconcile(ctx, n)
                    else:
                        runs[tool] = bench_converge_run(ctx, n, probe=tool != "run-noprobe",
                                                        first=tool == "run-first")
                    left = tagged(tag)
                    if left:
                        raise BenchError(f"{len(left)} processes of {tool} still alive after its phase")
        except (BenchError, KeyboardInterrupt) as exc:
            # Keep what was measured, marked failed; the exit status is non-zero.
            results["error"] = f"{type(exc).__name__}: {exc}"
            print(f"partial results: {write_results(args.out, results)}", file=sys.stderr)
            raise
        finally:
            if args.keep:
                print(f"scratch kept: {scratch}", file=sys.stderr)
            else:
                shutil.rmtree(scratch, ignore_errors=True)
        path = write_results(args.out, results)
    report(results)
    print(f"\nJSON: {path}")


LABELS = {"subprocess": "plain subprocess", "supervisord": "supervisord",
          "reconcile": "converge apply+reconcile", "run": "converge apply+run",
          "run-noprobe": "converge apply+run, no health check",
          "run-first": "converge run, then apply"}


def report(results: dict[str, Any]) -> None:
    rows = []
    for n, runs in results["runs"].items():
        for tool, r in runs.items():
            k = r.get("kill_to_healthy_s")
            rd = r.get("kill_to_ready_in_status_s")
            rows.append([n, LABELS[tool], r["start_to_all_healthy_s"],
                         k["median"] if k else None, k["p95"] if k else None, k["n"] if k else None,
                         rd["median"] if rd else None, rd["p95"] if rd else None,
                         len(r.get("slow_restarts", [])) if k else None])
    print("\nStart to all healthy, kill -9 to healthy again (HTTP GET) and to Ready in status (seconds)")
    print_table(["N", "tool", "start->all healthy", "kill->healthy median", "p95", "kills",
                 "kill->Ready median", "p95", f"slow (>{results['params']['slow']:g}s)"], rows)
    spread = [[n, LABELS[t], r.get("apply_s"), r["first_start_s"], r["median_start_s"], r["last_start_s"],
               r["start_to_all_healthy_s"]]
              for n, runs in results["runs"].items() for t, r in runs.items() if "first_start_s" in r]
    if spread:
        print("\nWhen the daemons started (seconds after the start began; /proc start times, 10 ms steps)")
        print_table(["N", "tool", "apply", "first started", "median", "last started", "all healthy"], spread)
    idle = [(n, LABELS[t], r["idle"]) for n, runs in results["runs"].items() for t, r in runs.items()
            if "idle" in r]
    if idle:
        print(f"\nController at idle over {results['params']['idle_seconds']:.0f}s")
        print_table(["N", "tool", "CPU % of a core", f"max {results['params']['idle_window']:g}s window %",
                     "RSS MB", "threads", "load avg"],
                    [[n, t, i["cpu_percent"], i["max_window_cpu_percent"], i["rss_mb"], i["threads"],
                      i["loadavg_1_5_15"][0]] for n, t, i in idle])
    for n, t, i in idle:
        parts = sorted(i.get("thread_cpu", {}).items(), key=lambda kv: -kv[1][0])
        if parts:
            print(f"  {t}, N={n}, per thread (CPU % / wake-ups a second): "
                  + ", ".join(f"{name} {pct:.3f} / {wakes:.1f}" for name, (pct, wakes) in parts if pct >= 0.001))
    slow = [(n, LABELS[t], x) for n, runs in results["runs"].items() for t, r in runs.items()
            for x in r.get("slow_restarts", [])]
    for n, t, x in slow:
        print(f"\nWARNING: N={n} {t}: kill {x['kill']} of {x['service']} (pid {x['killed_pid']}) healthy again "
              f"only after {x['seconds']:.1f}s; snapshot in the JSON")


if __name__ == "__main__":
    main()
