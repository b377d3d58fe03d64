"""Start-up of the `converge` command: work a short-lived CLI process can skip.

pydantic looks for plugins in the entry points of every installed distribution the first
time it builds a model: a scan of all the venv's metadata, a large part of a `converge
get`. The converge command uses no pydantic plugin, so it tells pydantic there are none,
in this process only (an environment variable would reach the services it starts).
Set CONVERGE_PYDANTIC_PLUGINS=1 to load them anyway (e.g. an observability plugin);
PYDANTIC_DISABLE_PLUGINS is honoured as pydantic documents it.
"""

from __future__ import annotations

import os


def skip_pydantic_plugins() -> None:
    if os.environ.get("CONVERGE_PYDANTIC_PLUGINS") or "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        return
    try:
        from pydantic.plugin import _loader
    except ImportError:  # pragma: no cover - another pydantic layout: nothing to skip
        return
    if getattr(_loader, "_plugins", ...) is None:  # not scanned yet
        _loader._plugins = {}
