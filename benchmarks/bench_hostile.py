"""Hostile input through the real `converge apply`: every case of tests/hostile/cases.py
plus the worst inputs found (alias bombs, nesting, the largest files allowed), each in a
fresh store. For each: exit code, whether it was refused cleanly (exit 1, an `error:` line
naming the file, no traceback, the store unchanged), wall time and the process's own peak
RSS (wait4). Prints a table of the slowest / largest and a summary; writes
benchmarks/results/hostile.json.

    $PY benchmarks/bench_hostile.py            # ~1-2 min
    $PY benchmarks/bench_hostile.py --only bomb
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BenchError, converge_bin, fail_loudly, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile.cases import CASES, tf
from tests.hostile.measure import hwm_mib

MIB = 1024 * 1024


def bomb(width: int, levels: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"        a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return tf("\n".join(lines))


def worst_inputs() -> dict[str, str]:
    long_string = "x" * (MIB - 2048)
    return {
        "bomb-9x9 (640 B, ~400 M items)": bomb(9, 9),
        "bomb-just-under-1MiB (valid)": bomb(4, 8),
        "bomb-2x60": bomb(2, 60),
        "nested-[-x100000": tf("deep: " + "[" * 100000 + "]" * 100000),
        "nested-{a:-x60 (65 levels with the spec's own)": tf("deep: " + "{a: " * 60 + "1" + "}" * 60),
        "string-1MiB (over the object limit)": tf(f"s: {long_string}x{'y' * 4096}"),
        "string-0.9MiB (valid)": tf(f"s: {'x' * (MIB * 9 // 10)}"),
        "file-16MiB-comments": "#" + "x" * (16 * MIB - 10) + "\n",
        "file-over-16MiB": "#" + "x" * (16 * MIB + 10) + "\n",
        "5000-documents (each port: true)": "".join(
            CASES["port-bool"][0].replace("name: web", f"name: web{i}") + "---\n" for i in range(5000)),
        "keys-100000": tf("big: {" + ", ".join(f"k{i}: {i}" for i in range(100000)) + "}"),
        "flow-mapping-16MiB": tf("big: {" + ", ".join(f"k{i}: {i}" for i in range(1_200_000)) + "}"),
        "16MiB-of-small-documents (8,000 x 2 KiB, each port: true)": "".join(
            CASES["port-bool"][0].replace("name: web", f"name: w{i}") + "#" + "x" * 1600 + "\n---\n"
            for i in range(8000))[: 16 * MIB - 100],
    }


def run(exe: Path, text: str, work: Path) -> dict[str, Any]:
    store = Path(tempfile.mkdtemp(dir=work))
    f = store.with_suffix(".yaml")
    f.write_text(text)
    env = {**os.environ, "CONVERGE_STORE": str(store / "s")}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        p = subprocess.Popen([str(exe), "apply", "-f", str(f)], stdout=out, stderr=err, env=env, cwd=work)
        peak = 0.0
        while True:  # VmHWM, not wait4's ru_maxrss: that one counts this (big) parent's pages
            peak = max(peak, hwm_mib(p.pid))
            pid, status, _ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.002)
        seconds = time.monotonic() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    written = (store / "s").exists()
    clean = (p.returncode == 1 and "Traceback" not in stderr and stderr.startswith(f"error: {f}")
             and not written)
    f.unlink()
    return {"rc": p.returncode, "refused_cleanly": clean, "accepted": p.returncode == 0, "seconds": seconds,
            "peak_rss_mib": peak, "bytes": len(text.encode()), "first_error": stderr[:160]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run only inputs whose name contains this")
    args = ap.parse_args()
    exe = converge_bin()
    inputs = {f"case {k}": v[0] for k, v in CASES.items()} | worst_inputs()
    inputs = {k: v for k, v in inputs.items() if args.only in k}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as d:
        for name, text in inputs.items():
            results[name] = run(exe, text, Path(d))
    bad = [n for n, r in results.items() if not r["refused_cleanly"] and not r["accepted"]]
    if bad:
        raise BenchError("not refused cleanly: " + "; ".join(f"{n}: {results[n]}" for n in bad))
    worst = sorted(results.items(), key=lambda kv: -kv[1]["seconds"])[:12]
    print_table(["input", "bytes", "rc", "seconds", "peak RSS MiB"],
                [(n, r["bytes"], r["rc"], r["seconds"], round(r["peak_rss_mib"], 1)) for n, r in worst])
    slowest = max(results.items(), key=lambda kv: kv[1]["seconds"])
    biggest = max(results.items(), key=lambda kv: kv[1]["peak_rss_mib"])
    summary = {
        "inputs": len(results),
        "refused_cleanly": sum(r["refused_cleanly"] for r in results.values()),
        "accepted": sum(r["accepted"] for r in results.values()),
        "slowest": {"input": slowest[0], "seconds": slowest[1]["seconds"]},
        "largest_rss": {"input": biggest[0], "peak_rss_mib": biggest[1]["peak_rss_mib"]},
        "load_average": os.getloadavg(),
    }
    print(f"\n{summary['inputs']} inputs through `converge apply`: {summary['refused_cleanly']} refused cleanly, "
          f"{summary['accepted']} accepted (valid); slowest {slowest[1]['seconds']:.2f} s ({slowest[0]}), "
          f"largest peak RSS {biggest[1]['peak_rss_mib']:.0f} MiB ({biggest[0]}); load average "
          f"{' '.join(f'{x:.2f}' for x in summary['load_average'])}")
    print(f"results: {write_results('hostile', {'summary': summary, 'results': results})}")


if __name__ == "__main__":
    with fail_loudly("bench_hostile"):
        main()
