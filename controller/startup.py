"""Start-up of the `converge` command: work a short-lived CLI process can skip.

pydantic looks for plugins in the entry points of every installed distribution the first
time it builds a validator (importing importlib.metadata and reading all the venv's
metadata: a large part of a short command). The converge command uses no pydantic
plugin, so it tells pydantic there are none, in this process only (an environment
variable would reach the services it starts): pydantic's plugin loader module is replaced
by one that knows no plugins, so importlib.metadata is never imported for it. Set
CONVERGE_PYDANTIC_PLUGINS=1 to load plugins anyway (e.g. an observability plugin);
PYDANTIC_DISABLE_PLUGINS is honoured as pydantic documents it.
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


class _NoPluginsLoader:
    """Loads pydantic's plugin loader as a module that knows no plugins: the real one
    imports importlib.metadata (and email, zipfile, csv ...) at its top, before it is
    asked anything, which is most of what plugin discovery costs a short command."""

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        plugins: dict[str, Any] = {}
        module.__dict__.update(
            PYDANTIC_ENTRY_POINT_GROUP="pydantic", _plugins=plugins, _loading_plugins=False,
            get_plugins=plugins.values,  # empty: pydantic builds plain validators
        )


class _SkipPluginScan:
    """A meta-path finder that steps in once, when pydantic imports its plugin loader,
    and gives it the loader above."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _LOADER:
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, _NoPluginsLoader())  # type: ignore[arg-type] # a loader by protocol (importlib.abc is costly to import)


def skip_pydantic_plugins() -> None:
    if os.environ.get("CONVERGE_PYDANTIC_PLUGINS") or "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        return
    loaded = sys.modules.get(_LOADER)
    if loaded is not None:
        _no_plugins(loaded)
    elif not any(isinstance(f, _SkipPluginScan) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipPluginScan())
