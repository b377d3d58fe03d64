"""Running the terraform CLI for the Terraform backend: binary, environment, processes, run logs.

converge.backends.terraform calls `find_binary` and `run`. Each run is a child process in its own
session whose output goes straight to a log file in the service's runtime dir (so the
output survives a controller killed mid-run, and `converge logs` shows the last runs);
a run past its timeout is interrupted (terraform then stops and writes its state), and its
process tree is killed after a grace period. State files are never touched here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from converge.backends.errors import BackendUnavailable

BIN_ENV = "CONVERGE_TERRAFORM_BIN"
NAMES = ("terraform", "tofu")
KEEP_RUNS = 20
MAX_READ = 256 * 1024  # bytes of a run's output read back for parsing
INTERRUPT_GRACE = 10.0  # seconds between SIGINT and SIGKILL on a timeout


def cache_bin_dir() -> Path:
    cache = os.environ.get("CONVERGE_CACHE") or str(Path.home() / ".cache" / "converge")
    return Path(cache) / "bin"


def find_binary() -> str:
    """$CONVERGE_TERRAFORM_BIN, else terraform, else tofu on PATH or in $CONVERGE_CACHE/bin."""
    wanted = os.environ.get(BIN_ENV)
    if wanted:
        found = shutil.which(wanted)
        if not found:
            raise BackendUnavailable(f"{BIN_ENV}={wanted} is not an executable terraform/tofu binary")
        return found
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    for name in NAMES:
        candidate = cache_bin_dir() / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise BackendUnavailable(
        "neither terraform nor tofu was found on PATH or in "
        f"{cache_bin_dir()}; install one (.ci/setup.d/terraform.sh builds tofu) or set {BIN_ENV}"
    )


def child_env(log_level: str | None) -> dict[str, str]:
    """The controller's environment, made fit for unattended runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CLI_ARGS")}
    env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
    env.pop("TF_DATA_DIR", None)  # .terraform stays in the runtime dir
    env.pop("TF_WORKSPACE", None)
    config = env.get("TF_CLI_CONFIG_FILE")
    if config and not Path(config).exists():
        env.pop("TF_CLI_CONFIG_FILE")  # a dangling one only makes every run print a warning
    if log_level:
        env["TF_LOG"] = log_level
    else:
        env.pop("TF_LOG", None)
    return env


@dataclass(frozen=True)
class RunResult:
    label: str
    returncode: int
    output: str  # stdout and stderr as they were interleaved (the tail, if long)
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float, log_dir: Path, label: str
) -> RunResult:
    """Run one terraform command in cwd; its output goes to a new run log in log_dir."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _new_log_path(log_dir, label)
    start = time.monotonic()
    timed_out = False
    with _private_append(path) as f:
        f.write(f"# {_now()} {label}: {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(  # no umask of ours: what the recipe makes for others stays readable
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=f,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
        seconds = time.monotonic() - start
        rc = proc.returncode
        note = f"timed out after {timeout:g}s, stopped" if timed_out else f"exit {rc}"
        f.write(f"# {_now()} {label}: {note} ({seconds:.2f}s)\n".encode())
    _tighten_state(cwd)
    output = _read_tail(path)
    _prune(log_dir, path, label, rc == 0 and not timed_out)
    return RunResult(label, rc, output, seconds, timed_out)


def capture(argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float) -> RunResult:
    """Run a quick read-only command (e.g. `output -json`) and return its stdout, logging
    nothing: its output may hold sensitive values. stderr is appended on failure."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout, start_new_session=True, check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult("capture", -1, "", time.monotonic() - start, timed_out=True)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        out += proc.stderr.decode("utf-8", "replace")
    return RunResult("capture", proc.returncode, out, time.monotonic() - start)


def _tighten_state(cwd: Path) -> None:
    """The state (it holds every value of the recipe, sensitive ones too) is made 0600 after
    each run; the runtime folder around it is 0700 in any case."""
    for name in ("terraform.tfstate", "terraform.tfstate.backup"):
        p = cwd / name
        with contextlib.suppress(OSError):
            if not p.is_symlink() and p.stat().st_mode & 0o077:
                p.chmod(0o600)


def _private_append(path: Path) -> Any:
    """A run log: 0600 (a run may print sensitive values), never through a link."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "ab", buffering=0)


def note(log_dir: Path, text: str) -> None:
    """Add a line of our own to the run logs (e.g. a stale lock that was found)."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _private_append(_new_log_path(log_dir, "note")) as f:
        f.write(f"# {_now()} converge: {text}\n".encode())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Interrupt terraform (it stops its provisioners and writes state), then kill the tree."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=INTERRUPT_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait()


def holders(runtime_dir: Path) -> list[psutil.Process]:
    """terraform/tofu processes working in runtime_dir (e.g. left running by a killed controller)."""
    target = str(runtime_dir.resolve())
    out: list[psutil.Process] = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] in NAMES and p.cwd() == target:
                out.append(p)
        except psutil.Error:
            continue
    return out


# --------------------------------------------------------------------------- run logs


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_logs(log_dir: Path) -> list[Path]:
    """The run log files, oldest first."""
    if not log_dir.is_dir():
        return []
    return sorted(p for p in log_dir.iterdir() if p.suffix == ".log" and p.name[:6].isdigit())


def _new_log_path(log_dir: Path, label: str) -> Path:
    logs = run_logs(log_dir)
    n = int(logs[-1].name[:6]) + 1 if logs else 1
    return log_dir / f"{n % 1_000_000:06d}-{label}.log"


def _read_tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - MAX_READ))
        return f.read().decode("utf-8", "replace")


def _prune(log_dir: Path, current: Path, label: str, ok: bool) -> None:
    """Keep the last KEEP_RUNS runs; a clean read-only run replaces the clean one before it,
    so periodic observes do not push the interesting runs out."""
    logs = run_logs(log_dir)
    if ok and label == "plan" and len(logs) >= 2:
        prev = logs[-2]
        if prev.name.endswith(f"-{label}.log") and _ended_ok(prev):
            prev.unlink(missing_ok=True)
            logs.remove(prev)
    for old in logs[:-KEEP_RUNS]:
        old.unlink(missing_ok=True)


def _ended_ok(path: Path) -> bool:
    try:
        last = _read_tail(path).rstrip().rsplit("\n", 1)[-1]
    except OSError:
        return False
    return ": exit 0 (" in last


def read_lines(log_dir: Path, follow: bool, tail: int | None, poll: float = 0.5) -> Iterator[str]:
    """Lines of the run logs as they are now, oldest first; with follow, then the new lines
    as they come, until the iterator is closed."""
    lines: list[str] = []
    for p in run_logs(log_dir):
        with contextlib.suppress(OSError):
            lines.extend(p.read_text(errors="replace").splitlines())
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    if not follow:
        return iter(lines)
    logs = run_logs(log_dir)
    current, offset = (logs[-1], logs[-1].stat().st_size) if logs else (None, 0)
    return _follow(lines, log_dir, current, offset, poll)


def _follow(lines: list[str], log_dir: Path, current: Path | None, offset: int, poll: float) -> Iterator[str]:
    yield from lines
    pending = ""
    while True:
        if current is not None and current.exists():
            with open(current, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            pending += chunk.decode("utf-8", "replace")
            *done, pending = pending.split("\n")
            yield from done
        newer = [p for p in run_logs(log_dir) if current is None or p.name > current.name]
        if newer:
            if pending:
                yield pending
            current, offset, pending = newer[0], 0, ""
            continue
        time.sleep(poll)
