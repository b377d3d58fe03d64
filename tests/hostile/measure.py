"""Run the real `converge` CLI and measure that one process: wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import CLI, CONVERGE


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mib: float


def hwm_mib(pid: int) -> float:
    """The process's peak RSS so far (VmHWM: since its exec, unlike wait4's ru_maxrss, which
    counts the forking parent's pages)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(cli: CLI, *args: str, input: str | None = None, timeout: float = 60) -> Run:
    """Like cli(...), with the wall time and the peak RSS of that one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if input is not None:
            inp.write(input.encode())
            inp.seek(0)
        start = time.monotonic()
        p = subprocess.Popen([CONVERGE, *args], stdin=inp, stdout=out, stderr=err, env=cli.env, cwd=cli.cwd)
        deadline = start + timeout
        peak = 0.0
        while True:
            peak = max(peak, hwm_mib(p.pid))  # a zombie has no VmHWM: read before reaping
            pid, status, _ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, _ = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.monotonic() - start
        p.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is reaped
        out.seek(0)
        err.seek(0)
        return Run(p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                   seconds, peak)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under root (links not followed): path -> (size, mtime_ns)."""
    out: dict[str, tuple[int, int]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_size, st.st_mtime_ns)
    return out
