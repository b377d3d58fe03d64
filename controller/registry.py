"""Backends by kind, from the `converge.backends` entry point group.

Backends are constructed lazily on first use, so a missing optional library (docker,
python-terraform) only affects the services of that kind, with a clear message.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from converge.backends.base import Backend, Notify
from converge.backends.errors import BackendUnavailable, PermanentError

GROUP = "converge.backends"
BACKEND_DISABLED = "BackendDisabled"
# The backends converge's own pyproject.toml registers in GROUP (a test keeps them equal):
# known and loaded without reading every installed distribution's metadata.
BUILTIN = {
    "container": "converge.backends.container:ContainerBackend",
    "daemon": "converge.backends.daemon:DaemonBackend",
    "kubernetes": "converge.backends.kubernetes:KubernetesBackend",
    "terraform": "converge.backends.terraform:TerraformBackend",
}
BUILTIN_KINDS = frozenset(BUILTIN)
# Those of converge's own backends with apply-time checks (`check_apply`; a test keeps this
# equal to the classes): `apply` loads no other built-in backend (the daemon backend's
# import, psutil and all, was a tenth of applying 200 daemons).
CHECKED_AT_APPLY = frozenset({"container"})


def checked_at_apply(kind: str) -> bool:
    """Whether `apply` asks this kind's backend to check a spec (plug-ins: always)."""
    return kind in CHECKED_AT_APPLY or kind not in BUILTIN_KINDS


if TYPE_CHECKING:
    from importlib.metadata import EntryPoint


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points  # imported when used: costly at start-up

    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_kinds() -> list[str]:
    return sorted(_entry_points())


def _backend_class(kind: str) -> type[Backend]:
    """The class of a kind: converge's own by module path, a plug-in's from its entry point.
    ImportError when its library is missing."""
    target = BUILTIN.get(kind)
    if target is not None:
        module, _, name = target.partition(":")
        cls: type[Backend] = getattr(importlib.import_module(module), name)
        return cls
    eps = _entry_points()
    if kind not in eps:
        raise PermanentError(f"unknown backend {kind!r} (installed: {', '.join(sorted(eps))})",
                             reason="UnknownBackend")
    plugin: type[Backend] = eps[kind].load()
    return plugin


class KnownKinds:
    """The backend kinds a manifest may name. Checking one of converge's own kinds costs
    nothing; only another kind (a plug-in) or listing them scans the entry points, which
    reads the metadata of every installed distribution (most of `apply`'s start-up)."""

    def __contains__(self, kind: object) -> bool:
        return kind in BUILTIN_KINDS or kind in available_kinds()

    def __iter__(self) -> Iterator[str]:
        return iter(available_kinds())

    def __len__(self) -> int:
        return len(available_kinds())


class Backends:
    """The backends of one controller process."""

    def __init__(self, preset: dict[str, Backend] | None = None, enabled: set[str] | None = None) -> None:
        self._made: dict[str, Backend] = dict(preset or {})
        self._mu = threading.Lock()
        self._notify: Notify | None = None
        # None: every installed backend; else only these (the operator: backends that run
        # programs on its own host are off unless enabled).
        self.enabled = enabled

    def get(self, kind: str) -> Backend:
        if self.enabled is not None and kind not in self.enabled:
            raise PermanentError(f"backend {kind!r} is disabled in this controller "
                                 f"(enable it with --enable-backend {kind})", reason=BACKEND_DISABLED)
        with self._mu:
            if kind in self._made:
                return self._made[kind]
            try:
                backend: Backend = _backend_class(kind)()
            except ImportError as exc:
                raise BackendUnavailable(f"backend {kind!r} cannot be loaded: {exc} "
                                         f"(pip install 'converge[{kind}]')") from None
            self._made[kind] = backend
            if self._notify is not None:
                backend.watch(self._notify)
            return backend

    def watch(self, notify: Notify) -> None:
        """Every backend made now or later reports changes to notify."""
        with self._mu:
            self._notify = notify
            made = list(self._made.values())
        for b in made:
            b.watch(notify)

    def close(self) -> None:
        with self._mu:
            made = list(self._made.values())
        for b in made:
            b.close()


def cluster_backends(kubeconfig: str | None, context: str | None, enabled: set[str] | None = None) -> Backends:
    """The backends of a controller working on a cluster: the kubernetes backend talks to
    the same cluster (kubeconfig and context, or in-cluster) as the store."""
    preset: dict[str, Backend] = {}
    if enabled is None or "kubernetes" in enabled:
        try:
            from converge.backends.kubernetes import KubernetesBackend
        except ImportError:  # the kubernetes extra is not installed: reported on use
            pass
        else:
            preset["kubernetes"] = KubernetesBackend.from_kubeconfig(kubeconfig, context)
    return Backends(preset, enabled)
