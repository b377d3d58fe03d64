"""The converge command skips pydantic's plugin scan without importing the plugin loader
early (a fresh interpreter each: the state is per process)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from converge.cli import main  # the console script's module
from converge.startup import skip_pydantic_plugins
skip_pydantic_plugins()
import converge.api
assert "pydantic.plugin._loader" not in sys.modules and "importlib.metadata" not in sys.modules
converge.api.ManagedService.model_validate({"metadata": {"name": "a"},
                                            "spec": {"backend": {"daemon": {"command": ["x"]}}}})
import pydantic.plugin._loader as loader
assert loader._plugins == {}, loader._plugins
print("ok")
"""


def test_no_plugin_scan_and_no_early_loader_import() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


COUNTING = """
import importlib.metadata
scans = []
real = importlib.metadata.entry_points
importlib.metadata.entry_points = lambda **kw: scans.append(kw) or real(**kw)
from converge.startup import skip_pydantic_plugins
skip_pydantic_plugins()
import converge.api
converge.api.ManagedService.model_validate({"metadata": {"name": "a"},
                                            "spec": {"backend": {"daemon": {"command": ["x"]}}}})
print(len([s for s in scans if s.get("group") == "pydantic"]))
"""


def test_plugins_are_scanned_only_when_asked() -> None:
    def scans(env: dict[str, str]) -> str:
        out = subprocess.run([sys.executable, "-c", COUNTING], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", **env})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert scans({}) == "0"
    assert scans({"CONVERGE_PYDANTIC_PLUGINS": "1"}) == "1"
