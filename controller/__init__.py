"""converge: a declarative reconciler for services (API models, core, stores, adapters).

The `converge` import package is assembled at install time from the folders DESIGN.md
fixes: controller/ is `converge`, backends/ is `converge.backends`.

    from converge import Client

Names are imported lazily, so `import converge` (and the CLI) pays only for what it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from converge.api import ManagedService, ServiceKey
    from converge.client import Client

__all__ = ["Client", "ManagedService", "ServiceKey"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from converge.client import Client

        return Client
    if name in ("ManagedService", "ServiceKey"):
        from converge import api

        return getattr(api, name)
    raise AttributeError(f"module 'converge' has no attribute {name!r}")
