"""Start-up of the `converge` command: work a short-lived CLI process can skip.

pydantic looks for plugins in the entry points of every installed distribution the first
time it builds a validator (importing importlib.metadata and reading all the venv's
metadata: a large part of a `converge get`). The converge command uses no pydantic
plugin, so it tells pydantic there are none, in this process only (an environment
variable would reach the services it starts), and without importing pydantic's plugin
loader before pydantic itself needs it (a command that validates nothing never pays for
importlib.metadata). Set CONVERGE_PYDANTIC_PLUGINS=1 to load plugins anyway (e.g. an
observability plugin); PYDANTIC_DISABLE_PLUGINS is honoured as pydantic documents it.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

_LOADER = "pydantic.plugin._loader"


def _no_plugins(module: ModuleType) -> None:
    if getattr(module, "_plugins", ...) is None:  # not scanned yet: there are none
        setattr(module, "_plugins", {})  # noqa: B010 - a private attribute of pydantic


class _SkipPluginScan:
    """A meta-path finder that steps in once, when pydantic imports its plugin loader, and
    lets the normal finders load it before marking its plugin cache filled."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _LOADER:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        exec_module = getattr(loader, "exec_module", None)
        if spec is None or exec_module is None:
            return spec

        def exec_then_skip(module: ModuleType) -> None:
            exec_module(module)
            _no_plugins(module)

        setattr(loader, "exec_module", exec_then_skip)  # noqa: B010 - this import's own loader object
        return spec


def skip_pydantic_plugins() -> None:
    if os.environ.get("CONVERGE_PYDANTIC_PLUGINS") or "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        return
    loaded = sys.modules.get(_LOADER)
    if loaded is not None:
        _no_plugins(loaded)
    elif not any(isinstance(f, _SkipPluginScan) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipPluginScan())
