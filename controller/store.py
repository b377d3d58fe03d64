"""The store interface: where desired state and status live (FileStore, KubeStore).

    StoreError
    ├── NotFound          no such object
    ├── Conflict          resourceVersion (or uid) changed since it was read
    ├── AlreadyExists     create of an existing name
    ├── Invalid           the store refuses the object (e.g. a finalizer added while deleting)
    ├── Forbidden         not allowed (the API server's 401/403)
    ├── Unavailable       the store cannot be reached (API server down, bad kubeconfig)
    └── CorruptObject     an object that cannot be read; names the file/object and why

Persistence only, the same contract as the Kubernetes API server's (FileStore in local
mode, KubeStore in the cluster): writers pass the resourceVersion they read; a stale one
is a Conflict, never an overwrite. `list` returns the readable objects and the
unreadable ones separately, so one corrupt object never stops the others from
reconciling.

Deletion follows the API server: `delete` *requests* it. While the object has
finalizers it stays, with `metadata.deletionTimestamp` set; it is gone once an `update`
removes the last finalizer (and at once if it had none). converge adds its finalizer
(`converge.api.FINALIZER`) before provisioning anything and removes it once the service
is deprovisioned, so the core has one deletion path in both stores. Host-local concerns
(a service's runtime folder, the per-service action lock) are not the store's: see
converge.host.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from converge.names import ServiceKey

if TYPE_CHECKING:  # the errors are pydantic-free: `converge get` on the file store needs no model
    from converge.api import ManagedService
    from converge.selector import Selector


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Invalid(StoreError):
    pass


class Forbidden(StoreError):
    pass


class Unavailable(StoreError):
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
        """Metadata and spec (status untouched); generation +1 when the spec changed.
        uid, creationTimestamp and deletionTimestamp are the store's. While the object is
        being deleted no finalizer may be added; removing the last one deletes it (the
        returned object then has no finalizers)."""
        ...

    def update_status(self, obj: ManagedService) -> ManagedService:
        """Status only."""
        ...

    def set_finalizers(self, obj: ManagedService, finalizers: Sequence[str]) -> ManagedService:
        """metadata.finalizers only (spec untouched, so no new generation), guarded by obj's
        resourceVersion; removing the last finalizer of a deleting object deletes it."""
        ...

    def delete(self, key: ServiceKey, resource_version: str | None = None) -> None:
        """Request deletion: gone now if the object has no finalizers, else marked with
        deletionTimestamp until they are removed. NotFound if there is no such object."""
        ...

    def watch(self, stop: object) -> Iterator[ServiceKey]:
        """Keys of objects that changed (created, updated, deleted), until stop is set."""
        ...


@runtime_checkable
class CreatesMany(Protocol):
    """A store that creates many objects at once, all or none (FileStore)."""

    def create_many(self, objs: Sequence[ManagedService]) -> None:
        """Create all of objs (as `create` each) or none: AlreadyExists if any exists."""
        ...
