"""Shared fixtures: a private file store per test and the real `converge` CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

BIN = Path(sys.executable).parent


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI runner's stop) ends the run like Ctrl-C, so fixtures still clean up."""
    import signal

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
CONVERGE = str(BIN / "converge")


class CLI:
    """Runs the installed `converge` console script against one store."""

    def __init__(self, store: Path, cwd: Path) -> None:
        self.store = store
        self.cwd = cwd
        self.env = {**os.environ, "CONVERGE_STORE": str(store), "PATH": f"{BIN}:{os.environ['PATH']}"}

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([CONVERGE, *args], input=input, capture_output=True, text=True, env=self.env,
                           cwd=self.cwd, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"converge {' '.join(args)} exited {p.returncode}\n"
                                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([CONVERGE, *args], env=self.env, cwd=self.cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def obj(self, name: str) -> dict:
        return json.loads(self("get", name, "-o", "json").stdout)

    def pid(self, name: str) -> int:
        return int(json.loads((self.store / "_runtime" / "default" / name / "daemon.json").read_text())["pid"])


def _kill_cgroup(cgroup: Path) -> None:
    """Kill what is in a service's cgroup (what left its process group) and remove it."""
    with contextlib.suppress(OSError, ValueError):
        if not cgroup.name.startswith("svc-") or os.getpid() in map(int, (cgroup / "cgroup.procs").read_text().split()):
            return
        (cgroup / "cgroup.kill").write_text("1")
        for _ in range(100):
            if "populated 0" in (cgroup / "cgroup.events").read_text():
                cgroup.rmdir()
                return
            time.sleep(0.02)


def _kill_leftovers(store: Path) -> None:
    """Whatever a failed test left running under this store: kill its process groups and
    cgroups (also of objects whose pid record is gone)."""
    from converge.backends import cgroups

    for pidfile in store.glob("_runtime/*/*/daemon.json"):
        rec = {}
        try:
            rec = json.loads(pidfile.read_text())
            os.killpg(int(rec["pid"]), 9)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if isinstance(rec, dict) and isinstance(rec.get("cgroup"), str):
            _kill_cgroup(Path(rec["cgroup"]))
    base = cgroups.base()
    for obj in store.glob("*/*.yaml") if base is not None else []:
        if obj.is_symlink() or not obj.is_file() or obj.stat().st_size > 1 << 20:
            continue  # a hostile store's fifo, link or bomb: never read
        with contextlib.suppress(OSError, ValueError, AttributeError, KeyError, TypeError, yaml.YAMLError):
            uid = yaml.safe_load(obj.read_text())["metadata"]["uid"]
            if (base / f"svc-{uid}").is_dir():
                _kill_cgroup(base / f"svc-{uid}")
    for proc in psutil.process_iter(["environ"]):
        try:
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get("CONVERGE_STORE") == str(store) and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "store"
    yield root
    _kill_leftovers(root)


@pytest.fixture
def cli(store: Path, tmp_path: Path) -> Iterator[CLI]:
    c = CLI(store, tmp_path)
    yield c
    if store.exists():
        c("down", "--force", "-l", "", "--timeout", "30s", check=False)
    _kill_leftovers(store)


EXAMPLES = Path(__file__).resolve().parent.parent / "manifests" / "examples"


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the example stack with ports moved out of the way of a running demo."""
    dst = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dst)
    from tests.helpers import free_port

    text = (dst / "stack.yaml").read_text()
    db, api, web = free_port(), free_port(), free_port()
    text = text.replace("15432", str(db)).replace("18080", str(api)).replace("18000", str(web))
    (dst / "stack.yaml").write_text(text)
    return dst
