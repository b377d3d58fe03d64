"""CLI latency: `converge` commands next to `kubectl version --client` and the venv's bare
Python, measured in one run, interleaved (one round runs every command once, so load on
the shared machine hits all of them alike).

    $VENV/bin/python benchmarks/bench_cli.py [--rounds 20] [--big 10000] [--small 200]

Cases (each a fresh process, stdout/stderr to a pipe):
  python -c pass                     the floor of any Python CLI in this venv
  python -c "import click"           the floor of a click CLI (what `converge get` needs at least)
  python -c "import pydantic, click" the floor of a CLI built on converge's two libraries
  python -c "import converge.api"    ... and its API models (27 pydantic classes)
  kubectl version --client           the reference (a Go binary), skipped if absent
  converge get                       empty store
  converge get                       --small services stored
  converge get NAME -o json          --small services stored
  converge get                       --big services stored (table of all)
  converge apply --dry-run -f ONE    one manifest, --big services stored
  converge apply -f DIR              --small JSON manifests (as bench_supervise writes them)
                                     into an empty store (made empty again before each run)
  converge reconcile                 empty store: the start-up of `reconcile` (and of `run`,
                                     which imports the same) with nothing to do
  (--baseline VENV_BIN: the last two with another venv's converge too, interleaved)
`get` on the file store reads the objects converge wrote as JSON, without pydantic (see
converge.storefiles); `apply` validates the manifest with the API models.
Reports median / min / p95 wall seconds and the median as a multiple of `python -c pass`
(and of kubectl), and the median CPU seconds (user+system of the process, from
getrusage): on a machine shared with other work, CPU time is inflated far less than wall
time. Stores are filled in-process through converge.filestore.FileStore.
The commands run with bytecode caching on (PYTHONDONTWRITEBYTECODE removed), as for an
installed converge; one warm-up run of each case first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BenchError, fail_loudly, print_table, summarize, write_daemon_manifests, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converge.api import ManagedService
from converge.filestore import FileStore

MANIFEST = """apiVersion: converge.dev/v1alpha1
kind: ManagedService
metadata: {name: svc-00007, labels: {bench: cli}}
spec:
  backend: {daemon: {command: [python, -m, http.server, "$(PORT)"]}}
  endpoint: {port: 18080, allocatePort: true, healthCheck: {http: {path: /}}}
"""


def fill(root: Path, n: int) -> None:
    store = FileStore(root)
    for i in range(n):
        store.create(ManagedService.model_validate({
            "metadata": {"name": f"svc-{i:05d}", "labels": {"bench": "cli", "shard": str(i % 10)}},
            "spec": {"backend": {"daemon": {"command": ["python", "-m", "http.server", "$(PORT)"]}},
                     "endpoint": {"port": 18080, "allocatePort": True,
                                  "healthCheck": {"http": {"path": "/"}}}},
        }))


def time_once(argv: list[str], env: dict[str, str], cwd: Path, fresh: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of one run; `fresh`: a store folder removed
    before it (not timed)."""
    if fresh is not None:
        shutil.rmtree(fresh, ignore_errors=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=300, check=False)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {out.returncode}: {out.stderr.decode()[-2000:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="runs of every case (interleaved)")
    ap.add_argument("--rounds-big", type=int, default=5, help="runs of the --big cases")
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--big", type=int, default=10000)
    ap.add_argument("--baseline", type=Path, default=None, metavar="VENV_BIN",
                    help="another venv's bin folder (e.g. converge installed from an older commit): its converge "
                         "runs the `apply -f DIR` and `reconcile` cases too, interleaved with this one's")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    venv = Path(sys.executable).parent
    converge = venv / "converge"
    kubectl = shutil.which("kubectl")
    scratch = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    results: dict[str, Any] = {"params": vars(args), "cases": []}
    with fail_loudly("bench_cli"):
        try:
            if not converge.exists():
                raise BenchError(f"{converge} not found: run .ci/bootstrap and use its python")
            (scratch / "one.yaml").write_text(MANIFEST)
            # never started: the command only has to validate
            write_daemon_manifests(scratch / "manifests", range(20000, 20000 + args.small),
                                   lambda port: ["python3", "-S", "tinyhttp.py", str(port)], labels={"bench": "cli"})
            stores = {"empty": scratch / "empty", "small": scratch / "small", "big": scratch / "big",
                      "fresh": scratch / "fresh", "fresh-baseline": scratch / "fresh-baseline"}
            print(f"filling stores ({args.small} and {args.big} services) ...", file=sys.stderr, flush=True)
            fill(stores["small"], args.small)
            fill(stores["big"], args.big)
            env = {**os.environ}
            env.pop("CONVERGE_STORE", None)
            # As installed for a user: bytecode cached. (PYTHONDONTWRITEBYTECODE, set on some CI
            # machines, would recompile converge's own modules from source on every command.)
            env.pop("PYTHONDONTWRITEBYTECODE", None)

            def cv(store: str, *a: str) -> list[str]:
                return [str(converge), "--store", str(stores[store]), *a]

            py = str(venv / "python")
            cases: list[tuple[str, list[str], int]] = [  # (name, argv, rounds)
                ("python -c pass", [py, "-c", "pass"], args.rounds),
                ('python -c "import click"', [py, "-c", "import click"], args.rounds),
                ('python -c "import pydantic, click"', [py, "-c", "import pydantic, click"], args.rounds),
                ('python -c "import converge.api"', [py, "-c", "import converge.api"], args.rounds),
            ]
            if kubectl:
                cases.append(("kubectl version --client", [kubectl, "version", "--client"], args.rounds))
            cases += [
                ("converge get (empty store)", cv("empty", "get"), args.rounds),
                (f"converge get ({args.small} services)", cv("small", "get"), args.rounds),
                (f"converge get NAME -o json ({args.small} services)",
                 cv("small", "get", "svc-00007", "-o", "json"), args.rounds),
                (f"converge get ({args.big} services)", cv("big", "get"), args.rounds_big),
                (f"converge apply --dry-run -f one.yaml ({args.big} services)",
                 cv("big", "apply", "--dry-run", "-f", str(scratch / "one.yaml")), args.rounds_big),
                (f"converge apply -f DIR ({args.small} new services)",
                 cv("fresh", "apply", "-f", str(scratch / "manifests")), args.rounds),
                ("converge reconcile (empty store)", cv("empty", "reconcile"), args.rounds),
            ]
            if args.baseline is not None:
                base = str(args.baseline.resolve() / "converge")
                cases += [
                    (f"baseline: converge apply -f DIR ({args.small} new services)",
                     [base, "--store", str(stores["fresh-baseline"]), "apply", "-f", str(scratch / "manifests")],
                     args.rounds),
                    ("baseline: converge reconcile (empty store)", [base, *cv("empty", "reconcile")[1:]], args.rounds),
                ]
            fresh = {name: stores[key] for name, argv, _ in cases for key in ("fresh", "fresh-baseline")
                     if str(stores[key]) in argv}
            for name, argv, _ in cases:  # warm the page cache and .pyc files
                time_once(argv, env, scratch, fresh.get(name))
            samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
            cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
            load_before = os.getloadavg()
            for r in range(max(c[2] for c in cases)):
                for name, argv, rounds in cases:
                    if r < rounds:
                        wall, used = time_once(argv, env, scratch, fresh.get(name))
                        samples[name].append(wall)
                        cpu[name].append(used)
            load_after = os.getloadavg()
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(scratch)
        base = summarize(samples["python -c pass"])["median"]
        base_cpu = summarize(cpu["python -c pass"])["median"]
        kube = summarize(samples["kubectl version --client"])["median"] if kubectl else None
        for name, argv, _ in cases:
            s = summarize(samples[name])
            c = summarize(cpu[name])["median"]
            results["cases"].append({"case": name, "argv": argv[:1] + argv[3:] if "converge" in name else argv,
                                     **s, "x_python": s["median"] / base,
                                     "x_kubectl": s["median"] / kube if kube else None,
                                     "cpu_median": c, "cpu_x_python": c / base_cpu,
                                     "samples": samples[name], "cpu_samples": cpu[name]})
        results["loadavg_before"] = [round(x, 2) for x in load_before]
        results["loadavg_after"] = [round(x, 2) for x in load_after]
        path = write_results("bench_cli", results)
    print(f"\nCLI latency, wall seconds (load average {load_before[0]:.2f} before, {load_after[0]:.2f} after)")
    print_table(["case", "n", "median", "min", "p95", "x python", "x kubectl", "CPU median", "CPU x python"],
                [[c["case"], c["n"], c["median"], c["min"], c["p95"], f"{c['x_python']:.1f}",
                  "-" if c["x_kubectl"] is None else f"{c['x_kubectl']:.1f}", c["cpu_median"],
                  f"{c['cpu_x_python']:.1f}"] for c in results["cases"]])
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
