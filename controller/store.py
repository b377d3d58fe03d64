"""The store interface: where desired state and status live (FileStore, KubeStore).

    StoreError
    ├── NotFound          no such object
    ├── Conflict          resourceVersion (or uid) changed since it was read
    ├── AlreadyExists     create of an existing name
    └── CorruptObject     an object that cannot be read; names the file/object and why

Writers pass the resourceVersion they read; a stale one is a Conflict, never an
overwrite. `list` returns the readable objects and the unreadable ones separately, so
one corrupt object never stops the others from reconciling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from converge.api import ManagedService, ServiceKey
from converge.selector import Selector


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class CorruptObject(StoreError):
    def __init__(self, where: str, reason: str, key: ServiceKey | None = None) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.key = key


@dataclass
class ListResult:
    items: list[ManagedService] = field(default_factory=list)
    errors: list[CorruptObject] = field(default_factory=list)


class Store(Protocol):
    """Objects returned by get and list may be shared with a cache: never change them in
    place, change a `model_copy(deep=True)` and write that."""

    def get(self, key: ServiceKey) -> ManagedService: ...

    def list(self, namespace: str | None = None, selector: Selector | None = None) -> ListResult: ...

    def create(self, obj: ManagedService) -> ManagedService:
        """Sets uid, resourceVersion, generation 1, creationTimestamp."""
        ...

    def update(self, obj: ManagedService) -> ManagedService:
        """Metadata and spec (status untouched); generation +1 when the spec changed."""
        ...

    def update_status(self, obj: ManagedService) -> ManagedService:
        """Status only."""
        ...

    def delete(self, key: ServiceKey, resource_version: str | None = None) -> None: ...

    def lock(self, key: ServiceKey) -> AbstractContextManager[None]:
        """Held while acting on a service's resources, so two controllers never act at once."""
        ...

    def runtime_dir(self, key: ServiceKey) -> Path:
        """A private folder for the backend's files of this service (pid, logs, state)."""
        ...

    def watch(self, stop: object) -> Iterator[ServiceKey]:
        """Keys of objects that changed (created, updated, deleted), until stop is set."""
        ...
