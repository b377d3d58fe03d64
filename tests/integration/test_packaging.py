"""Set-up as the README promises it: the demo needs only converge's own dependencies; the
test command installs everything; lint and type tools are pinned; make clean is safe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import CLI

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Nothing the demo runs may import these: they come only with extras or test tools.
NOT_FOR_THE_DEMO = ("docker", "kubernetes", "kopf", "python_terraform", "pytest", "hypothesis", "ruff", "mypy",
                    "importlinter", "prometheus_client")
BLOCKED_CONVERGE = f"""
import sys
BLOCK = {NOT_FOR_THE_DEMO!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"{{name}} is not installed (blocked: the demo must not need it)")
        return None
for name in list(sys.modules):
    if name.split(".")[0] in BLOCK:
        del sys.modules[name]
sys.meta_path.insert(0, Block())
from converge.cli import main
main(sys.argv[1:])
"""


def _bare(cli: CLI, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-c", BLOCKED_CONVERGE, *args], capture_output=True, text=True,
                       env=cli.env, cwd=cli.cwd, timeout=120)
    assert p.returncode == 0, f"converge {' '.join(args)}: {p.stdout}\n{p.stderr}"
    return p


def test_the_demo_runs_without_extras_or_test_tools(cli: CLI, examples: Path) -> None:
    _bare(cli, "apply", "-f", str(examples))
    _bare(cli, "reconcile", "--timeout", "60s")
    rows = _bare(cli, "get", "-o", "wide").stdout.splitlines()[1:]
    assert sorted(r.split()[:3] for r in rows) == [["api", "active", "True"], ["db", "active", "True"],
                                                  ["web", "active", "True"]]
    _bare(cli, "describe", "api")
    _bare(cli, "logs", "api", "--tail", "5")
    _bare(cli, "delete", "-f", str(examples))
    assert cli("get", "-o", "name").stdout == ""


def test_base_dependencies_are_only_what_local_mode_needs() -> None:
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    assert names == {"pydantic", "pyyaml", "click", "psutil"}


def test_make_demo_installs_no_extras_and_no_system_tools() -> None:
    out = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "CONVERGE_SETUP=none CONVERGE_EXTRAS= .ci/bootstrap" in out
    test = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "CONVERGE_EXTRAS=test .ci/bootstrap" in test and "pytest" in test and "ruff check" in test
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_lint_and_type_tools_are_pinned_to_a_minor_series() -> None:
    test_deps = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower(): d for d in
                 PYPROJECT["project"]["optional-dependencies"]["test"]}
    for tool in ("ruff", "mypy", "import-linter", "types-pyyaml", "types-psutil", "pytest"):
        assert "<" in test_deps[tool], f"{tool} has no upper bound: {test_deps[tool]}"


def test_bootstrap_names_the_checkouts_venv_without_installing(tmp_path: Path) -> None:
    env = {**os.environ, "CONVERGE_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([str(ROOT / ".ci" / "bootstrap"), "--print-venv"], env=env, capture_output=True,
                       text=True, check=True, timeout=60)
    venv = Path(p.stdout.strip())
    assert venv.parent == tmp_path / "cache" / "venvs" and venv.name.startswith(ROOT.name + "-")
    assert not venv.exists()


def test_make_clean_stops_the_demo_store_and_removes_it(cli: CLI, examples: Path, tmp_path: Path) -> None:
    """`make clean` in a copy of the checkout's Makefile and .ci (so this checkout's venv and
    caches stay), with DEMO_STORE pointing at a store that runs the example stack."""
    import shutil

    from tests.helpers import gone

    copy = tmp_path / "checkout"
    (copy / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", copy / "Makefile")
    shutil.copy(ROOT / ".ci" / "bootstrap", copy / ".ci" / "bootstrap")
    for d in ("controller", "backends", "tests", "benchmarks", ".pytest_cache"):
        (copy / d / "__pycache__").mkdir(parents=True)
    store = tmp_path / "demo-store"
    demo = CLI(store, tmp_path)
    demo("apply", "-f", str(examples))
    demo("reconcile", "--timeout", "60s")
    pid = demo.pid("api")
    env = {**os.environ, "CONVERGE_CACHE": str(tmp_path / "cache")}
    venv = Path(subprocess.run([str(copy / ".ci" / "bootstrap"), "--print-venv"], capture_output=True, text=True,
                               env=env, check=True).stdout.strip())
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "converge").symlink_to(Path(sys.executable).parent / "converge")
    p = subprocess.run(["make", "-s", "clean", f"DEMO_STORE={store}"], cwd=copy, capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert gone(pid)
    assert not store.exists() and not venv.exists() and not (copy / ".pytest_cache").exists()
    assert not (copy / "controller" / "__pycache__").exists() and (copy / "controller").exists()


def test_readme_matches_the_software(cli: CLI) -> None:
    import yaml

    readme = (ROOT / "README.md").read_text()
    help_text = cli("--help").stdout
    commands = set(re.findall(r"^\| `converge (\w+)", readme, re.MULTILINE))
    assert commands >= {"apply", "diff", "get", "wait", "delete", "logs"}
    for name in commands:
        assert re.search(rf"^\s+{name}\s", help_text, re.MULTILINE), f"README lists `converge {name}`"
    # the resource example's api.py command is the example stack's
    stack = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / "stack.yaml").read_text()) if d]
    api = next(d for d in stack if d["metadata"]["name"] == "api")
    assert f"command: [{', '.join(api['spec']['backend']['daemon']['command'])}]" in readme
    for target in ("make demo ", "make demo-down", "make clean", "make test", "_CONVERGE_COMPLETE=bash_source",
                   "manifests/examples-terraform/"):
        assert target in readme, target
