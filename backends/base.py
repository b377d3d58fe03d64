"""The backend interface: the one seam between the reconcile core and the world.

A backend provisions, deprovisions, suspends and observes the resources of one kind of
service (processes, containers, Terraform recipes, Deployments) and shows their logs.
The reconcile core (converge.core) decides *what* to do from an `Observation`; the
backend only knows *how*. Backends import the API models and their own library, never
each other, the stores, kopf or the CLI.

Errors a backend raises (converge.backends.errors) are our own: each backend maps its library's
exceptions to them at its boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from converge.api import Endpoint, ServiceKey


class Phase(StrEnum):
    """What a backend sees of a service's resources."""

    absent = "absent"  # nothing is provisioned
    running = "running"  # provisioned and running (health decides whether it is ready)
    suspended = "suspended"  # provisioned, kept, not running
    exited = "exited"  # provisioned but it stopped on its own (crash, kill, exit)
    error = "error"  # the backend cannot tell or the resources are broken (message says why)


@dataclass(frozen=True)
class Observation:
    phase: Phase
    message: str = ""
    # What the backend needs to find its resources again; published in status.backend.
    # Never put secrets here.
    details: Mapping[str, Any] = field(default_factory=dict)
    # Hash of the spec the running resources were made from (None: unknown).
    spec_hash: str | None = None
    # The resources exist but differ from the spec (Terraform drift): provision converges.
    drifted: bool = False
    exit_code: int | None = None
    # A backend that judges readiness itself (Kubernetes: the Deployment's rollout) says so
    # here; None leaves it to the endpoint's health probe from this host. With ready False,
    # `failure` (a CamelCase reason, e.g. ImagePullBackOff) says the rollout failed rather
    # than being still in progress.
    ready: bool | None = None
    failure: str = ""


@dataclass(frozen=True)
class ProbeResult:
    """What one health probe of a service's endpoint found (converge.backends.health)."""

    ok: bool
    message: str = ""


@dataclass(frozen=True)
class Target:
    """Everything a backend is told about one service for one call."""

    key: ServiceKey
    uid: str
    config: Any  # the backend's own spec model, e.g. converge.api.DaemonBackend
    spec_hash: str
    runtime_dir: Path  # private to this service; the backend keeps its files here
    host: str = "127.0.0.1"
    port: int | None = None  # the endpoint port allocated for this service, if any
    labels: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)  # status.backend of the last pass
    # The spec's endpoint, for backends that realise it themselves (Kubernetes: the
    # Service's port and the pods' readinessProbe).
    endpoint: Endpoint | None = None


Notify = Callable[[ServiceKey], None]


@runtime_checkable
class Backend(Protocol):
    """One kind of service. Every method is idempotent and safe to call from any thread."""

    kind: str

    def provision(self, target: Target) -> Mapping[str, Any]:
        """Make the service run as `target` says: create it if absent, resume it if
        suspended, replace or update it in place if it runs another spec, nothing if it
        already runs this spec. Returns details for status.backend."""
        ...

    def deprovision(self, target: Target) -> None:
        """Stop the service and remove its resources. Absent is success."""
        ...

    def suspend(self, target: Target) -> None:
        """Stop running but keep the resources, so provision resumes them."""
        ...

    def observe(self, target: Target) -> Observation:
        """Look at the real resources; never changes anything."""
        ...

    def logs(self, target: Target, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """Lines of the service's output, oldest first; with follow, until closed."""
        ...

    def watch(self, notify: Notify) -> None:
        """Start telling `notify` (from any thread) when a service's resources change on
        their own (process exit, container event). Optional: a no-op is valid, the
        runtime then relies on its periodic resync."""
        ...

    def close(self) -> None:
        """Stop watching and release clients."""
        ...


def owns_endpoint(backend: object) -> bool:
    """Whether a backend realises the service's endpoint itself (a Kubernetes Service): then
    no port of this host is allocated for it and it is not probed from this host (its
    observations say `ready`). A backend says so with a class attribute `owns_endpoint = True`."""
    return bool(getattr(backend, "owns_endpoint", False))
