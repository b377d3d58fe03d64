"""converge vs ZenML's own LocalDaemonService: one HTTP daemon, start and kill -9.

    ~/.cache/converge/venv/bin/python benchmarks/bench_zenml.py [--repeats 5] [--kills 10]
        [--observe 10]

ZenML runs in its own venv (benchmarks/setup_peers.sh zenml) through
benchmarks/zenml_driver.py: a LocalDaemonService whose run() serves benchmarks/tinyhttp.py
in-process, with an HTTP endpoint and HTTPEndpointHealthMonitor; its config lives in a
temporary HOME / ZENML_CONFIG_PATH. converge starts the same server as a daemon command.

Measured, side by side:
  - start to healthy (median of --repeats): first successful HTTP GET (polled every 5 ms),
    and when the blocking call returns (ZenML: service.start(timeout=60); converge:
    `converge apply` + `converge reconcile`);
  - kill -9 of the daemon: converge (under `converge run`) time to healthy again, median /
    p95 of --kills; ZenML: watched for --observe seconds (it does not restart; its status
    turns inactive while the admin state stays active).
If ZenML cannot be installed or run, its column says "not run: <reason>", the JSON
records it, and the script exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    BenchError,
    ConvergeStatus,
    FirstHealthy,
    Reaper,
    converge_bin,
    daemon_command,
    ensure_peer,
    fail_loudly,
    free_ports,
    http_get,
    kill9,
    kill_tagged,
    print_table,
    run_cli,
    run_tag,
    served_pid,
    summarize,
    wait_new_pid,
    write_results,
)

NAME = "web"


# --------------------------------------------------------------------------- ZenML


def run_zenml(args: argparse.Namespace, tag: str, scratch: Path) -> dict[str, Any]:
    """The driver's JSON, or {"not_run": reason} if ZenML is not installable/runnable."""
    try:
        zbin = ensure_peer("zenml")
    except BenchError as exc:
        return {"not_run": str(exc)}
    work = scratch / f"zenml-{tag}"  # the tag ends up on the daemon's command line
    (work / "home").mkdir(parents=True)
    env = dict(os.environ)
    env.update({
        "HOME": str(work / "home"),
        "ZENML_CONFIG_PATH": str(work / "config"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_LOGGING_VERBOSITY": "WARN",
        "PYTHONPATH": str(BENCH_DIR),
    })
    env.pop("VIRTUAL_ENV", None)
    port = free_ports(1)[0]
    cmd = [str(zbin / "python"), str(BENCH_DIR / "zenml_driver.py"), "--port", str(port), "--tag", tag,
           "--runtime", str(work / "runtime"), "--repeats", str(args.repeats),
           "--observe", str(args.observe)]
    budget = args.repeats * 90 + args.observe + 120
    try:
        out = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=budget,
                             check=False)
    except subprocess.TimeoutExpired:
        return {"not_run": f"ZenML driver did not finish within {budget:.0f}s"}
    finally:
        kill_tagged(tag)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"not_run": f"ZenML driver exited {out.returncode} without a result: "
                           f"{(out.stdout + out.stderr)[-1500:]}"}
    res: dict[str, Any] = json.loads(lines[-1])
    if res.get("error"):
        return {"not_run": f"ZenML driver failed: {res['error'][:1500]}", "partial": res}
    return res


# --------------------------------------------------------------------------- converge


def manifest(port: int, tag: str, args: argparse.Namespace) -> str:
    doc = {
        "apiVersion": "converge.dev/v1alpha1",
        "kind": "ManagedService",
        "metadata": {"name": NAME, "labels": {"bench": tag}},
        "spec": {
            "backend": {"daemon": {"command": daemon_command(port, tag)}},
            "endpoint": {"protocol": "http", "port": port, "healthCheck": {"http": {"path": "/"}}},
            "restartPolicy": {"backoffSeconds": args.backoff, "resetAfterSeconds": args.reset_after},
        },
    }
    return json.dumps(doc) + "\n"  # JSON is YAML


def converge_start(args: argparse.Namespace, tag: str, scratch: Path, i: int, mode: str,
                   reaper: Reaper) -> tuple[dict[str, Any], subprocess.Popen[bytes] | None, dict[str, str]]:
    """One start of the service from an empty store. mode "reconcile": apply + reconcile
    (returns with it); mode "run": apply + `converge run` in the background (left running)."""
    work = scratch / f"converge-{mode}-{i}"
    work.mkdir()
    env = dict(os.environ, CONVERGE_STORE=str(work / "store"))
    port = free_ports(1)[0]
    mfile = work / "web.yaml"
    mfile.write_text(manifest(port, tag, args))
    cv = converge_bin()
    proc = None
    t0 = time.monotonic()
    first = FirstHealthy(port, t0)
    run_cli([cv, "apply", "-f", mfile], env=env, timeout=120)
    res: dict[str, Any] = {"port": port, "apply_returned_s": time.monotonic() - t0}
    if mode == "reconcile":
        run_cli([cv, "reconcile", "--timeout", "60s"], env=env, timeout=120)
        res["call_returned_s"] = time.monotonic() - t0
    else:
        with (work / "run.out").open("wb") as out:
            proc = reaper.track(subprocess.Popen([str(cv), "run"], env=env, stdout=out,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True))
    res["http_healthy_s"] = first.wait(60)
    if http_get(port) is None:
        raise BenchError(f"converge {mode}: port {port} answered once, then not")
    return res, proc, env


def converge_delete(env: dict[str, str], port: int) -> None:
    run_cli([converge_bin(), "delete", NAME], env=env, timeout=120)
    deadline = time.monotonic() + 15
    while http_get(port, timeout=0.3) is not None:
        if time.monotonic() > deadline:
            raise BenchError(f"`converge delete {NAME}` returned but port {port} still answers")
        time.sleep(0.05)


def run_converge(args: argparse.Namespace, tag: str, scratch: Path, reaper: Reaper) -> dict[str, Any]:
    starts: dict[str, list[dict[str, Any]]] = {"reconcile": [], "run": []}
    for i in range(args.repeats):
        res, _, env = converge_start(args, tag, scratch, i, "reconcile", reaper)
        starts["reconcile"].append(res)
        converge_delete(env, res["port"])
    kills: list[float] = []
    ready: list[float] = []
    for i in range(args.repeats):
        res, proc, env = converge_start(args, tag, scratch, i, "run", reaper)
        starts["run"].append(res)
        assert proc is not None
        if i == args.repeats - 1:
            port = res["port"]
            status = ConvergeStatus(Path(env["CONVERGE_STORE"]))
            for _ in range(args.kills):
                time.sleep(args.settle)
                old = served_pid(port)
                if old is None:
                    raise BenchError("converge run: daemon not answering before a kill")
                t0 = time.monotonic()
                kill9(old)
                try:
                    kills.append(wait_new_pid(port, old, timeout=30, t0=t0))
                except BenchError as exc:
                    log = (Path(env["CONVERGE_STORE"]).parent / "run.out").read_text(errors="replace")
                    raise BenchError(f"converge run: {exc}; its log ends:\n{log[-1500:]}") from exc
                deadline = t0 + 30
                while not status.ready_again(NAME, old):
                    if time.monotonic() > deadline:
                        raise BenchError("converge run: answers again after kill -9 but status not Ready "
                                         "with a new pid after 30s")
                    time.sleep(0.005)
                ready.append(time.monotonic() - t0)
                if proc.poll() is not None:
                    raise BenchError(f"`converge run` exited {proc.returncode} during the kills")
        converge_delete(env, res["port"])
        reaper.stop(proc, grace=15)
    return {
        "starts": starts,
        "start_http_healthy_reconcile_s": summarize([s["http_healthy_s"] for s in starts["reconcile"]]),
        "start_call_returned_s": summarize([s["call_returned_s"] for s in starts["reconcile"]]),
        "start_http_healthy_run_s": summarize([s["http_healthy_s"] for s in starts["run"]]),
        "kill_to_healthy_s": summarize(kills),
        "kill_samples_s": kills,
        "kill_to_ready_in_status_s": summarize(ready),
        "ready_samples_s": ready,
    }


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="starts per tool")
    ap.add_argument("--kills", type=int, default=10, help="converge kill -9 samples")
    ap.add_argument("--observe", type=float, default=10.0, help="seconds to watch ZenML after kill -9")
    ap.add_argument("--backoff", type=float, default=1.0, help="converge restartPolicy.backoffSeconds")
    ap.add_argument("--reset-after", type=float, default=1.0, help="converge restartPolicy.resetAfterSeconds")
    ap.add_argument("--settle", type=float, default=1.5, help="seconds between converge kills")
    ap.add_argument("--skip-zenml", action="store_true", help="converge side only (ZenML: not run)")
    args = ap.parse_args()
    if args.repeats < 1 or args.kills < 1:
        ap.error("--repeats and --kills must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    tag = run_tag()
    scratch = Path(tempfile.mkdtemp(prefix="bench-zenml-"))
    results: dict[str, Any] = {"params": vars(args), "tag": tag}
    with fail_loudly("bench_zenml"), Reaper(tag) as reaper:
        try:
            results["converge"] = run_converge(args, tag, scratch, reaper)
            results["zenml"] = ({"not_run": "--skip-zenml"} if args.skip_zenml
                                else run_zenml(args, tag, scratch))
        except (BenchError, KeyboardInterrupt) as exc:
            results["error"] = f"{type(exc).__name__}: {exc}"
            print(f"partial results: {write_results('bench_zenml', results)}", file=sys.stderr)
            raise
        finally:
            reaper.cleanup()
            shutil.rmtree(scratch, ignore_errors=True)
        path = write_results("bench_zenml", results)
    report(results)
    print(f"\nJSON: {path}")
    if "not_run" in results["zenml"]:
        print(f"\nbench_zenml: ZenML side NOT RUN: {results['zenml']['not_run']}", file=sys.stderr)
        raise SystemExit(2)


def report(results: dict[str, Any]) -> None:
    c, z = results["converge"], results["zenml"]
    nr = f"not run: {z['not_run'][:60]}" if "not_run" in z else None

    def zmed(key: str) -> Any:
        if nr:
            return nr
        vals = [s[key] for s in z["starts"] if s.get(key) is not None]
        return f"{summarize(vals)['median']:.3f}" if vals else "-"

    if nr:
        zkill = nr
    else:
        k = z["kill"]
        zkill = (f"answered again after {k['answered_again_after_s']:.3f}s" if k["restarted"] else
                 f"never restarted in {k['observed_s']:.0f}s; state {k['final_operational_state']}, "
                 f"admin state {k['final_admin_state']}")
    kc = c["kill_to_healthy_s"]
    print(f"\nOne HTTP daemon, seconds (median of {results['params']['repeats']} starts)")
    print_table(["measure", "converge", "ZenML LocalDaemonService"], [
        ["start -> first HTTP 200 (converge: apply+run)", f"{c['start_http_healthy_run_s']['median']:.3f}",
         zmed("http_healthy_s")],
        ["start -> first HTTP 200 (converge: apply+reconcile)",
         f"{c['start_http_healthy_reconcile_s']['median']:.3f}", zmed("http_healthy_s")],
        ["start call returns (reconcile | start(timeout=60))", f"{c['start_call_returned_s']['median']:.3f}",
         zmed("start_returned_s")],
        [f"kill -9 -> healthy again (median / p95 of {kc['n']})", f"{kc['median']:.3f} / {kc['p95']:.3f}",
         zkill],
        ["kill -9 -> Ready in status again (median / p95)",
         f"{c['kill_to_ready_in_status_s']['median']:.3f} / {c['kill_to_ready_in_status_s']['p95']:.3f}",
         "-"],
    ])


if __name__ == "__main__":
    main()
