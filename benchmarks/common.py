"""Shared helpers of the benchmark scripts: statistics, results JSON with machine info,
the tiny HTTP daemon's command, free ports, HTTP health waits, CPU/RSS sampling, process
clean-up, and locating converge and the peers' virtual environments.

Benchmarks fail loudly: a figure that was not measured raises BenchError (the script
exits non-zero with the message) instead of being printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE = Path(os.environ.get("CONVERGE_CACHE", Path.home() / ".cache" / "converge"))
PEERS = CACHE / "peers"
TINYHTTP = BENCH_DIR / "tinyhttp.py"


class BenchError(Exception):
    """A measurement could not be made; the script reports it and exits non-zero."""


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise BenchError("percentile of no values")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, median, p95, min, max, mean of a sample (seconds stay seconds)."""
    if not values:
        raise BenchError("no samples to summarize")
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


# --------------------------------------------------------------------------- results


def machine_info() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_mb": round(vm.total / 2**20),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other load on the machine
    }


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with machine info and the commit measured."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {"benchmark": name, "machine": machine_info(), "commit": git_commit(), **data}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


# --------------------------------------------------------------------------- daemons


def run_tag() -> str:
    """A token unique to this run, put on every daemon's command line."""
    return f"cvbench-{uuid.uuid4().hex[:10]}"


def daemon_command(port: int | str, tag: str) -> list[str]:
    """The one command every tool starts: the tiny stdlib HTTP server."""
    return [sys.executable, "-S", str(TINYHTTP), str(port), tag]


def write_daemon_manifests(folder: Path, ports: Sequence[int], command: Callable[[int], list[str]], *,
                           labels: dict[str, str] | None = None, probe: bool = True, backoff: float = 1.0,
                           reset_after: float = 1.0) -> Path:
    """A ManagedService manifest a file (svc-0000.yaml ...; JSON, which is YAML: no YAML
    writer needed) per port: a daemon running command(port) behind an HTTP endpoint on that
    port, with an HTTP health check unless `probe` is False (Ready = running, as supervisord
    judges a program). Returns folder (made here)."""
    folder.mkdir(parents=True)
    check = {"healthCheck": {"http": {"path": "/"}}} if probe else {}
    for i, port in enumerate(ports):
        meta: dict[str, Any] = {"name": f"svc-{i:04d}"}
        if labels:
            meta["labels"] = labels
        doc = {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService", "metadata": meta,
               "spec": {"backend": {"daemon": {"command": command(port)}},
                        "endpoint": {"protocol": "http", "port": port, **check},
                        "restartPolicy": {"backoffSeconds": backoff, "resetAfterSeconds": reset_after}}}
        (folder / f"svc-{i:04d}.yaml").write_text(json.dumps(doc) + "\n")
    return folder


def free_ports(n: int) -> list[int]:
    """n distinct ports on 127.0.0.1 that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(port: int, timeout: float = 1.0, path: str = "/") -> str | None:
    """Body of GET http://127.0.0.1:port/ if the answer is 200, else None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read(4096).decode(errors="replace")
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def served_pid(port: int, timeout: float = 1.0) -> int | None:
    """The pid the tiny daemon on `port` reports, None if it does not answer."""
    body = http_get(port, timeout)
    if body is None or not body.startswith("ok "):
        return None
    try:
        return int(body.split()[1])
    except (IndexError, ValueError):
        return None


def wait_healthy(ports: Sequence[int], timeout: float, t0: float | None = None,
                 interval: float = 0.01, check: Callable[[], None] | None = None) -> dict[int, float]:
    """Poll GET on every port until all answer 200. Returns port -> seconds since t0
    (default: now) when it first answered. Raises BenchError on timeout. `check` is
    called each round (e.g. to fail fast if the tool under test died)."""
    start = time.monotonic() if t0 is None else t0
    deadline = time.monotonic() + timeout
    pending = set(ports)
    done: dict[int, float] = {}
    while pending:
        for port in sorted(pending):
            if http_get(port, timeout=0.5) is not None:
                done[port] = time.monotonic() - start
                pending.discard(port)
        if not pending:
            break
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} of {len(ports)} daemons not healthy after {timeout:.0f}s "
                             f"(e.g. port {min(pending)})")
        time.sleep(interval)
    return done


def wait_new_pid(port: int, old_pid: int, timeout: float, t0: float, interval: float = 0.005) -> float:
    """Seconds from t0 until the daemon on `port` answers from a pid other than old_pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = served_pid(port, timeout=0.5)
        if pid is not None and pid != old_pid:
            return time.monotonic() - t0
        time.sleep(interval)
    raise BenchError(f"daemon on port {port} (killed pid {old_pid}) not healthy again after {timeout:.0f}s")


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- CPU / RSS


def thread_cpu(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread name (/proc/PID/task/TID/comm; threads of one name added up, digits
    dropped: reconcile-0..7 -> reconcile-*): (CPU ns, times scheduled), from schedstat."""
    out: dict[str, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip().rstrip("0123456789")
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns, _, runs = f.read().split()
        except (OSError, ValueError):
            continue
        name = name + "*" if name.endswith("-") else name
        cpu, n = out.get(name, (0, 0))
        out[name] = (cpu + int(ns), n + int(runs))
    return out


def sample_idle(pid: int, seconds: float, window: float = 5.0) -> dict[str, Any]:
    """CPU use (percent of one core, user+system) and RSS of one process over `seconds`,
    overall and per `window` seconds (the largest window shows a periodic spike that the
    average hides), and per thread (by name: the threads of a controller that names them)."""
    try:
        proc = psutil.Process(pid)
        per_thread0 = thread_cpu(pid)
        c0 = proc.cpu_times()
        t0 = time.monotonic()
        max_rss = proc.memory_info().rss
        end = t0 + seconds
        windows: list[float] = []
        w_cpu, w_t = c0.user + c0.system, t0
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            max_rss = max(max_rss, proc.memory_info().rss)
            now = time.monotonic()
            if now - w_t >= window or now >= end:
                c = proc.cpu_times()
                windows.append(100.0 * (c.user + c.system - w_cpu) / (now - w_t))
                w_cpu, w_t = c.user + c.system, now
        c1 = proc.cpu_times()
        wall = time.monotonic() - t0
        per_thread1 = thread_cpu(pid)
        rss = proc.memory_info().rss
        threads = proc.num_threads()
    except psutil.Error as exc:
        raise BenchError(f"cannot sample process {pid}: {exc}") from exc
    busy = (c1.user - c0.user) + (c1.system - c0.system)
    return {
        "seconds": wall,
        "cpu_seconds": busy,
        "cpu_percent": 100.0 * busy / wall,
        "window_seconds": window,
        "max_window_cpu_percent": max(windows) if windows else 0.0,
        "window_cpu_percent": [round(w, 3) for w in windows],
        "rss_mb": rss / 2**20,
        "max_rss_mb": max_rss / 2**20,
        "threads": threads,
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        # name -> [CPU % of a core, wake-ups (times scheduled) per second]
        "thread_cpu": {name: [round(100.0 * (ns - per_thread0.get(name, (0, 0))[0]) / 1e9 / wall, 3),
                              round((runs - per_thread0.get(name, (0, 0))[1]) / wall, 1)]
                       for name, (ns, runs) in sorted(per_thread1.items())},
    }


# --------------------------------------------------------------------------- clean-up


class RunCgroup:
    """A cgroup v2 of this run, `<own cgroup>/<tag>`, that the benchmark moves itself into,
    so every process it starts, and every process those start, stays inside: the daemons of
    a controller that was killed, and what left their process group (a converge controller
    puts its daemons in `<its cgroup>/converge/svc-<uid>`, here below this run's cgroup,
    never next to another run's). `end` moves the benchmark back out, kills what is left
    (cgroup.kill) and removes the cgroups. Does nothing where cgroup v2 is not writable."""

    def __init__(self, tag: str) -> None:
        from converge.backends import cgroups

        self.home = cgroups.own_folder()
        self.cg: cgroups.ServiceCgroup | None = None
        if self.home is None or os.environ.get(cgroups.SWITCH, "").lower() in ("off", "0", "false", "no"):
            return
        try:
            (self.home / tag).mkdir(mode=0o755)
            (self.home / tag / "cgroup.procs").write_text("0")
        except OSError:
            with contextlib.suppress(OSError):
                (self.home / tag).rmdir()
            return
        self.cg = cgroups.ServiceCgroup(self.home / tag)

    def end(self) -> int:
        """Kill what is still in the run's cgroup and remove it; returns how many processes."""
        if self.cg is None or self.home is None:
            return 0
        cg, self.cg = self.cg, None
        with contextlib.suppress(OSError):
            (self.home / "cgroup.procs").write_text("0")
        left = [p for p in cg.pids() if p != os.getpid()]
        if left:
            cg.kill()
        deadline = time.monotonic() + 10
        while cg.populated() and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            cg.remove()
        return len(left)


class Reaper:
    """Kills what a benchmark started, also on failure and Ctrl-C/SIGTERM.

    Tracks Popen objects (started with start_new_session=True: their whole process
    group is killed), sweeps any process whose command line carries this run's tag (the
    daemons a tool under test started and may have left behind), and finally kills what is
    left in the run's cgroup (`RunCgroup`: what a killed controller's daemons spawned)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.procs: list[subprocess.Popen[Any]] = []
        self.hooks: list[Callable[[], None]] = []
        self.cgroup: RunCgroup | None = None

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.procs.append(proc)
        return proc

    def on_cleanup(self, hook: Callable[[], None]) -> None:
        """Run `hook` (e.g. a graceful tool shutdown) before the kills; errors are ignored."""
        self.hooks.append(hook)

    def stop(self, proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
        """SIGTERM the process group, wait up to `grace`, then SIGKILL it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group

    def sweep(self) -> int:
        """SIGKILL the processes carrying this run's tag; returns how many."""
        return kill_tagged(self.tag)

    def cleanup(self) -> None:
        for hook in reversed(self.hooks):
            with contextlib.suppress(Exception):
                hook()
        self.hooks.clear()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=5.0)
        self.procs.clear()
        self.sweep()
        if self.cgroup is not None:
            left = self.cgroup.end()
            if left:
                print(f"cleanup: killed {left} processes left in the run's cgroup", file=sys.stderr)

    def __enter__(self) -> Reaper:
        self.cgroup = RunCgroup(self.tag)
        # Also when started with SIGINT ignored (a background job of a script).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGHUP, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def tagged(tag: str) -> list[psutil.Process]:
    """Processes (not this one) with `tag` inside an argument of their command line."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.info["pid"] != me and any(tag in a for a in (p.info["cmdline"] or [])):
                found.append(p)
    return found


def started_at(procs: Sequence[psutil.Process], t0_boot: float) -> list[float]:
    """Seconds after t0_boot (a CLOCK_BOOTTIME reading) at which each process started,
    sorted: the start time in /proc/PID/stat counts clock ticks since boot (10 ms steps)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = []
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                ticks = int(f.read().rpartition(")")[2].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        out.append(ticks / hz - t0_boot)
    return sorted(out)


def start_spread(tag: str, t0_boot: float) -> dict[str, float]:
    """When the first, the median and the last process carrying `tag` started (seconds
    after t0_boot): a starter's own delay before its first start, and how fast it went on."""
    starts = started_at(tagged(tag), t0_boot)
    if not starts:
        return {}
    return {"first_start_s": starts[0], "median_start_s": statistics.median(starts), "last_start_s": starts[-1]}


def drop_service_cgroups(store: Path, timeout: float = 5.0) -> int:
    """Remove the cgroups converge made for the daemons of `store` (named in their pid
    records), once their processes are gone. converge removes a service's cgroup when it
    deprovisions the service; a benchmark that kills the daemons and drops the store
    leaves them behind, and thousands of empty cgroups left by earlier runs slow every
    later cgroup mkdir. Call after kill_tagged; returns how many were removed."""
    paths = []
    for rec in sorted((store / "_runtime").glob("*/*/daemon.json")):
        with contextlib.suppress(OSError, ValueError):
            cg = json.loads(rec.read_text()).get("cgroup")
            if isinstance(cg, str) and Path(cg).name.startswith("svc-") and cg.startswith("/sys/fs/cgroup/"):
                paths.append(Path(cg))
    removed, deadline = 0, time.monotonic() + timeout
    while paths and time.monotonic() < deadline:
        left = []
        for p in paths:
            try:
                p.rmdir()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError:
                left.append(p)  # a killed daemon not reaped yet: its cgroup is still populated
        paths = left
        if paths:
            time.sleep(0.05)
    return removed


def kill_tagged(tag: str) -> int:
    """SIGKILL the processes carrying `tag` (see `tagged`); returns how many."""
    procs = tagged(tag)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def fail_loudly(name: str) -> Iterator[None]:
    """Turn BenchError / Ctrl-C into a clear message and a non-zero exit."""
    try:
        yield
    except BenchError as exc:
        print(f"\n{name}: FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    except KeyboardInterrupt as exc:
        print(f"\n{name}: interrupted, cleaned up", file=sys.stderr)
        raise SystemExit(130) from exc


# --------------------------------------------------------------------------- tools


def venv_bin() -> Path:
    """bin/ of the running interpreter: the checkout's venv (`.ci/bootstrap` prints it)."""
    return Path(sys.executable).parent


def converge_bin() -> Path:
    path = venv_bin() / "converge"
    if not path.exists():
        raise BenchError(f"{path} not found: run `bash .ci/bootstrap` first")
    return path


def ensure_peer(name: str) -> Path:
    """bin/ of a peer's venv, installing it with setup_peers.sh if needed."""
    out = subprocess.run(["bash", str(BENCH_DIR / "setup_peers.sh"), name],
                         capture_output=True, text=True, timeout=3600, check=False)
    for line in out.stdout.splitlines():
        if line.startswith(f"{name} "):
            rest = line[len(name) + 1:]
            if rest.startswith("FAILED"):
                raise BenchError(f"peer {name} not installed: {rest}")
            return Path(rest)
    raise BenchError(f"setup_peers.sh {name} said nothing useful: {out.stdout} {out.stderr[-2000:]}")


def run_cli(args: Sequence[str | Path], env: dict[str, str] | None = None, timeout: float = 600,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, raising BenchError with its output if it fails."""
    try:
        out = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                             timeout=timeout, input=stdin, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`{' '.join(map(str, args))}` timed out after {timeout:.0f}s") from exc
    if out.returncode != 0:
        raise BenchError(f"`{' '.join(map(str, args))}` exited {out.returncode}:\n"
                         f"{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out


class FirstHealthy:
    """Polls GET on one port from a thread (every `interval`) and records when it first
    answers 200, relative to `t0`. Start it before the action being timed."""

    def __init__(self, port: int, t0: float, interval: float = 0.005) -> None:
        import threading

        self.port, self.t0, self.interval = port, t0, interval
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if http_get(self.port, timeout=0.5) is not None:
                self.at = time.monotonic() - self.t0
                return
            time.sleep(self.interval)

    def wait(self, timeout: float) -> float:
        """Seconds from t0 to first healthy; BenchError if not within `timeout`."""
        self._thread.join(timeout)
        self._stop.set()
        if self.at is None:
            raise BenchError(f"port {self.port} not healthy within {timeout:.0f}s")
        return self.at


class ConvergeStatus:
    """Reads a converge FileStore directly (cheap: parse cache keyed by file stat), to
    time when a service's own status shows it Ready again after a kill."""

    def __init__(self, root: Path, namespace: str = "default") -> None:
        from converge.api import ManagedService
        from converge.filestore import FileStore

        self.store = FileStore(root)
        self.namespace = namespace
        # converge's models build their validators on first use (defer_build): built here,
        # not in the first timed read (~60 ms of this script's own in the first kill's sample).
        ManagedService.model_rebuild()

    def ready_again(self, name: str, old_pid: int) -> bool:
        """Ready=True with a pid other than old_pid in status.backend."""
        from converge.api import ServiceKey
        from converge.store import StoreError

        try:
            st = self.store.get(ServiceKey(self.namespace, name)).status
        except StoreError:
            return False
        cond = st.condition("Ready")
        return st.backend.get("pid") not in (None, old_pid) and cond is not None and cond.status == "True"
