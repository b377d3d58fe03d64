"""The typed Python client: what the CLI does, callable from pipeline code.

    from converge.client import Client
    c = Client.local()                                   # the FileStore in ./.converge
    c.apply(Client.load("manifests/examples/"))          # create or update in place
    svc = c.wait("web", timeout=30)                      # Ready
    [s.metadata.name for s in c.list(selector="stack=demo")]
    c.down(selector="stack=demo"); c.up(selector="stack=demo"); c.delete("web")

Apply is deploy-with-replace: an existing service of the same name is updated, never
duplicated. In local mode `up`, `down`, `delete` and `reconcile` converge the services
they touch before returning (like docker compose), so they work without a `converge
run`. Against a cluster (`Client.cluster`) the operator converges: `up`, `down` and
`delete` change the desired state and wait until the operator's status shows it done
(like `kubectl delete`, which waits for finalizers).
"""

from __future__ import annotations

import builtins
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from converge.api import FINALIZER, AdminState, ManagedService, ServiceKey, check_name
from converge.backends.env import scrub, secrets_of
from converge.backends.errors import BackendError
from converge.conditions import READY
from converge.filestore import FileStore, default_root
from converge.host import Host, default_state_dir
from converge.outcome import Outcome
from converge.registry import Backends, KnownKinds, checked_at_apply, cluster_backends
from converge.selector import Selector, parse_selector
from converge.store import AlreadyExists, Conflict, CreatesMany, NotFound, Store, StoreError
from converge.waiting import WaitFor, parse_wait_for

if TYPE_CHECKING:
    from converge.reconciler import Reconciler
    from converge.runtime import Runtime

APPLY_RETRIES = 20


class WaitTimeout(Exception):
    pass


def _why(svc: ManagedService | None, want: WaitFor) -> str:
    if svc is None or want.condition is None:
        return ""
    cond = next((c for c in svc.status.conditions if c.type.lower() == want.condition.lower()), None)
    if cond is None:
        return f": no {want.condition} condition yet (not reconciled)"
    return f": {cond.type}={cond.status} {cond.reason}" + (f": {cond.message}" if cond.message else "")


def observed_outcome(svc: ManagedService) -> Outcome:
    """What a service's status says of it, as an Outcome: settled when the controller has
    acted on the latest spec and reached its admin state (or is stuck for good)."""
    st = svc.status
    ready = next((c for c in st.conditions if c.type == READY), None)
    stalled = next((c for c in st.conditions if c.type == "Stalled" and c.status == "True"), None)
    message = (ready.message or ready.reason) if ready is not None else "not reconciled yet"
    state = st.state.value
    if svc.metadata.deletionTimestamp is not None:
        return Outcome(svc.key, state=state, message=f"being deleted: {message}")
    if st.observedGeneration != svc.metadata.generation:
        return Outcome(svc.key, state=state, message=f"generation {svc.metadata.generation} not observed yet "
                       f"(observed: {st.observedGeneration or 'none'})")
    done = {AdminState.active: ready is not None and ready.status == "True",
            AdminState.suspended: state == "scaled_to_zero",
            AdminState.inactive: state == "inactive"}[svc.spec.adminState]
    if stalled is not None:
        return Outcome(svc.key, settled=True, state=state, message=stalled.message or stalled.reason)
    return Outcome(svc.key, settled=done, state=state, message=message)


class NotStarted(Exception):
    """Logs of a service that never ran."""


@dataclass(frozen=True)
class ApplyResult:
    key: ServiceKey
    action: str  # created | configured | unchanged (+ " (dry run)")


class Client:
    def __init__(self, store: Store, host: Host, backends: Backends | None = None, workers: int = 16,
                 converges: bool = True, default_namespace: str = "default") -> None:
        self.store = store
        self.host = host
        self.backends = backends or Backends()
        self._reconciler: Reconciler | None = None
        self.workers = workers
        self._runtime: Runtime | None = None
        # True: up/down/delete converge here (local mode). False: a controller elsewhere
        # (the operator) converges; they wait for its status instead.
        self.converges = converges
        self.default_namespace = default_namespace

    @classmethod
    def local(cls, root: str | Path | None = None) -> Client:
        """The file store at root (default $CONVERGE_STORE or ./.converge), made absolute so
        every path written in status (a daemon's log) means the same from anywhere; the same
        folder holds this host's runtime files."""
        store = FileStore((Path(root) if root is not None else default_root()).absolute())
        return cls(store, Host(store.root))

    @classmethod
    def cluster(cls, kubeconfig: str | Path | None = None, context: str | None = None,
                state_dir: str | Path | None = None) -> Client:
        """The ManagedServices of a cluster (kubeconfig file or $KUBECONFIG, context); the
        operator converges them. `reconcile` still converges on this host, keeping its
        files in state_dir (default $XDG_STATE_HOME/converge)."""
        from converge.kubestore import KubeStore, context_namespace

        store = KubeStore.from_kubeconfig(kubeconfig, context)
        backends = cluster_backends(str(kubeconfig) if kubeconfig else None, context)
        return cls(store, Host(state_dir or default_state_dir()), backends, converges=False,
                   default_namespace=context_namespace(kubeconfig, context))

    @property
    def reconciler(self) -> Reconciler:
        """Made on first use, like the runtime: `get` and `describe` only read the store."""
        if self._reconciler is None:
            from converge.reconciler import Reconciler

            self._reconciler = Reconciler(self.store, self.backends, self.host)
        return self._reconciler

    @property
    def runtime(self) -> Runtime:
        """Made on first use: commands that only read (get, describe) never import it."""
        if self._runtime is None:
            from converge.runtime import Runtime

            self._runtime = Runtime(self.reconciler, workers=self.workers)
        return self._runtime

    @staticmethod
    def load(*sources: str, existing: Iterable[ManagedService] = (),
             namespace: str | None = None) -> list[ManagedService]:
        """Read and validate manifests (files, folders, "-"); raises manifest.ManifestError.
        `namespace` replaces the manifests' namespaces before any check."""
        from converge import manifest  # YAML and validation: only commands that read manifests

        return manifest.load(sources, KnownKinds(), existing, namespace)

    def load_for_apply(self, *sources: str, namespace: str | None = None) -> list[ManagedService]:
        """Like load, with the stored services taking part in the dependsOn cycle check
        (those the new objects reach, read one by one: not the whole store), and the
        backends' apply-time checks (e.g. a container endpoint without a port)."""
        from converge import manifest

        objs = manifest.load(sources, KnownKinds(), namespace=namespace, stored_deps=self._stored_deps)
        problems = []
        for o in objs:
            if not checked_at_apply(o.spec.backend.kind):
                continue
            try:
                check = getattr(self.backends.get(o.spec.backend.kind), "check_apply", None)
            except BackendError:
                continue  # an unavailable backend is reported when the service is reconciled
            if check is not None:
                problems += [f'ManagedService "{o.metadata.name}" (namespace {o.metadata.namespace}): {p}'
                             for p in check(o.spec)]
        if problems:
            raise manifest.ManifestError(problems)
        return objs

    def _stored_deps(self, namespace: str, name: str) -> builtins.list[str] | None:
        try:
            return builtins.list(self.store.get(ServiceKey(namespace, name)).spec.dependsOn)
        except StoreError:
            return None

    # ------------------------------------------------------------------ desired state

    def apply(self, objs: Iterable[ManagedService], dry_run: bool = False) -> list[ApplyResult]:
        """All or nothing as far as this client can tell: every object is checked against
        the store (e.g. not being deleted) before the first one is written."""
        objs = list(objs)
        planned = [self._apply_one(obj, dry_run=True) for obj in objs]
        if dry_run:
            return planned
        new = [o for o, p in zip(objs, planned, strict=True) if p.action.startswith("created")]
        created = {o.key for o in new} if self._create_all(new) else set()
        return [ApplyResult(o.key, "created") if o.key in created else self._apply_one(o, False) for o in objs]

    def _create_all(self, objs: builtins.list[ManagedService]) -> bool:
        """Create the new objects of an apply in one batch where the store can (the file
        store: one lock hold, about half the fsyncs; all of them or none). False: not
        done, each goes its own way (one at a time, or another writer made one since)."""
        if len(objs) < 2 or len({o.key for o in objs}) != len(objs) or not isinstance(self.store, CreatesMany):
            return False
        try:
            self.store.create_many([self._with_finalizer(o) for o in objs])
        except AlreadyExists:
            return False
        return True

    def _apply_one(self, obj: ManagedService, dry_run: bool) -> ApplyResult:
        suffix = " (dry run)" if dry_run else ""
        for _ in range(APPLY_RETRIES):
            try:
                cur = self.store.get(obj.key)
            except NotFound:
                if dry_run:
                    return ApplyResult(obj.key, "created" + suffix)
                try:
                    self.store.create(self._with_finalizer(obj))
                except AlreadyExists:
                    continue  # another writer was first: apply over theirs
                return ApplyResult(obj.key, "created")
            new = cur.model_copy(deep=True)
            new.metadata.labels = dict(obj.metadata.labels)
            new.metadata.annotations = dict(obj.metadata.annotations)
            new.spec = obj.spec.model_copy(deep=True)
            if new.metadata == cur.metadata and new.spec == cur.spec:
                return ApplyResult(obj.key, "unchanged" + suffix)
            if cur.metadata.deletionTimestamp is not None:
                raise Conflict(f"{obj.key} is being deleted; apply again once it is gone")
            if dry_run:
                return ApplyResult(obj.key, "configured" + suffix)
            try:
                self.store.update(new)
            except (Conflict, NotFound):
                continue  # changed under us: read again
            return ApplyResult(obj.key, "configured")
        raise Conflict(f"{obj.key}: gave up after {APPLY_RETRIES} concurrent modifications")

    def _with_finalizer(self, obj: ManagedService) -> ManagedService:
        """In local mode a new object is created with converge's finalizer, which the
        reconciler would otherwise add in a write of its own before provisioning (one write
        fewer per start). Safe only here: `delete` converges itself in local mode, so the
        finalizer never holds an object that no controller will release. Against a cluster
        the operator adds it (a delete without an operator must not hang)."""
        if not self.converges or FINALIZER in obj.metadata.finalizers:
            return obj
        meta = obj.metadata.model_copy(update={"finalizers": [*obj.metadata.finalizers, FINALIZER]})
        return obj.model_copy(update={"metadata": meta})

    @staticmethod
    def key(name: str, namespace: str = "default") -> ServiceKey:
        """The key of a service named by a user; raises api.InvalidName for anything that
        is not a DNS-1123 label (a name is never a path)."""
        return ServiceKey(check_name(namespace, "namespace"), check_name(name))

    def get(self, name: str, namespace: str = "default") -> ManagedService:
        return self.store.get(self.key(name, namespace))

    def list(self, namespace: str | None = None, selector: str | Selector | None = None) -> list[ManagedService]:
        sel = parse_selector(selector) if isinstance(selector, str) or selector is None else selector
        return self.store.list(namespace, sel).items

    def _set_admin_state(self, key: ServiceKey, state: AdminState) -> ManagedService | None:
        """Set spec.adminState, retrying on conflicts."""
        for _ in range(APPLY_RETRIES):
            try:
                cur = self.store.get(key)
            except NotFound:
                return None
            new = cur.model_copy(deep=True)
            new.spec.adminState = state
            if new == cur:
                return cur
            try:
                return self.store.update(new)
            except Conflict:
                continue
        raise Conflict(f"{key}: gave up after {APPLY_RETRIES} concurrent modifications")

    # ------------------------------------------------------------------ converging

    def reconcile(self, keys: Iterable[ServiceKey] | None = None, timeout: float = 60.0) -> dict[ServiceKey, Outcome]:
        """One converging pass over keys (default: every service) until settled or timeout."""
        if keys is None:
            listed = self.store.list()
            keys = [o.key for o in listed.items] + [e.key for e in listed.errors if e.key is not None]
        return self.runtime.converge(list(keys), timeout)

    def _select(self, selector: str | None, names: Iterable[str], namespace: str | None) -> builtins.list[ServiceKey]:
        names = list(names)
        if names:
            return [self.key(n, namespace or "default") for n in names]
        return [o.key for o in self.list(namespace, selector)]

    def set_admin_state(self, state: AdminState, selector: str | None = None, names: Iterable[str] = (),
                        namespace: str | None = None, timeout: float = 60.0,
                        converge: bool = True) -> dict[ServiceKey, Outcome]:
        keys = self._select(selector, names, namespace)
        for key in keys:
            if self._set_admin_state(key, state) is None:
                raise NotFound(str(key))
        if not converge:
            return {}
        # Dependents of what goes down must stop first; the core orders that, but they
        # must be in this pass: include every service of the touched namespaces.
        scope = keys if state == AdminState.active else [
            o.key for o in self.store.list().items if o.key.namespace in {k.namespace for k in keys}]
        out = self.reconcile(scope, timeout) if self.converges else self.await_operator(keys, timeout)
        return {k: out[k] for k in keys if k in out}

    def up(self, selector: str | None = None, names: Iterable[str] = (), namespace: str | None = None,
           timeout: float = 60.0) -> dict[ServiceKey, Outcome]:
        return self.set_admin_state(AdminState.active, selector, names, namespace, timeout)

    def down(self, selector: str | None = None, names: Iterable[str] = (), namespace: str | None = None,
             force: bool = False, timeout: float = 60.0) -> dict[ServiceKey, Outcome]:
        state = AdminState.inactive if force else AdminState.suspended
        return self.set_admin_state(state, selector, names, namespace, timeout)

    def delete(self, name: str, namespace: str = "default", force: bool = False, timeout: float = 60.0) -> Outcome:
        """Request deletion, then converge: deprovisioned first (converge's finalizer), then
        gone. force: forget even if deprovisioning did not finish."""
        key = self.key(name, namespace)
        done, missing = self.delete_many([key], force, timeout)
        if missing:
            raise NotFound(str(key))
        return done[key]

    def delete_many(self, keys: Iterable[ServiceKey], force: bool = False, timeout: float = 60.0,
                    ) -> tuple[dict[ServiceKey, Outcome], builtins.list[ServiceKey]]:
        """delete for several services at once: every deletion is requested before any
        converging, so dependents stop before what they depend on. (outcomes, not found)."""
        requested, missing = [], []
        for key in dict.fromkeys(keys):
            try:
                self.store.delete(self.key(key.name, key.namespace))
                requested.append(key)
            except NotFound:
                missing.append(key)
        if not requested:
            return {}, missing
        done = self.reconcile(requested, timeout) if self.converges else self.await_operator(requested, timeout)
        out = {}
        for key in requested:
            o = done.get(key, Outcome(key))
            if not o.gone and force:
                killed = self.reconciler.kill(key) if self.converges else "not stopped (the operator's host)"
                self._drop_finalizer(key)
                self.host.forget(key)
                o = Outcome(key, gone=True, settled=True, message=f"forced, {killed}; deprovisioning had not "
                            f"finished: {o.message or o.state}")
            out[key] = o
        return out, missing

    def await_operator(self, keys: Iterable[ServiceKey], timeout: float, poll: float = 0.2,
                       ) -> dict[ServiceKey, Outcome]:
        """Until the controller's status shows each service settled (or it is gone)."""
        deadline = time.monotonic() + timeout
        pending = list(dict.fromkeys(keys))
        out: dict[ServiceKey, Outcome] = {}
        while True:
            for key in list(pending):
                try:
                    o = observed_outcome(self.store.get(key))
                except NotFound:
                    o = Outcome(key, settled=True, gone=True, state="inactive", message="deleted")
                out[key] = o
                if o.settled:
                    pending.remove(key)
            if not pending or time.monotonic() >= deadline:
                return out
            time.sleep(poll)

    def _drop_finalizer(self, key: ServiceKey) -> None:
        for _ in range(APPLY_RETRIES):
            try:
                cur = self.store.get(key)
            except NotFound:
                return
            if FINALIZER not in cur.metadata.finalizers:
                return
            try:
                self.store.set_finalizers(cur, [f for f in cur.metadata.finalizers if f != FINALIZER])
                return
            except NotFound:
                return
            except Conflict:
                continue
        raise Conflict(f"{key}: gave up after {APPLY_RETRIES} concurrent modifications")

    def wait(self, name: str, namespace: str = "default", condition: str | WaitFor = "Ready",
             timeout: float = 60.0, poll: float = 0.1) -> ManagedService | None:
        """Until the condition has the wanted status (a string: "Ready" means Ready=True;
        or a WaitFor, see converge.waiting), or for deletion until the object is gone
        (returns None then, at once if it never existed). WaitTimeout says why not."""
        return self.wait_all([self.key(name, namespace)], condition, timeout, poll)[0]

    def wait_all(self, keys: Iterable[ServiceKey], condition: str | WaitFor = "Ready", timeout: float = 60.0,
                 poll: float = 0.1, on_met: Callable[[ServiceKey], None] | None = None,
                 ) -> builtins.list[ManagedService | None]:
        """wait for each key, within one timeout for all; on_met(key) as each is met."""
        want = condition if isinstance(condition, WaitFor) else (
            parse_wait_for("delete" if condition.lower() == "delete" else f"condition={condition}"))
        deadline = time.monotonic() + timeout
        out = []
        for key in keys:
            last: ManagedService | None = None
            while True:
                try:
                    cur: ManagedService | None = self.store.get(key)
                except NotFound:
                    if not want.delete:
                        raise
                    cur = None
                if want.met(cur):
                    break
                last = cur or last
                if time.monotonic() >= deadline:
                    raise WaitTimeout(f"timed out after {timeout:g}s waiting for {key} {want}{_why(last, want)}")
                time.sleep(poll)
            out.append(cur)
            if on_met is not None:
                on_met(key)
        return out

    def logs(self, name: str, namespace: str = "default", follow: bool = False,
             tail: int | None = None) -> Iterator[str]:
        """The service's output; NotStarted if it never ran (nothing to show)."""
        svc = self.get(name, namespace)
        backend = self.backends.get(svc.spec.backend.kind)
        secrets = secrets_of(svc.spec.backend.config())
        lines = backend.logs(self.reconciler.target_for(svc), follow=follow, tail=tail)
        if secrets:  # a service may print its secrets: converge never shows them
            lines = (scrub(line, secrets) for line in lines)
        if svc.status.backend or svc.status.startedAt is not None:
            return lines
        first = None if follow else next(lines, None)
        if first is None:
            ready = svc.status.condition(READY)
            why = f", {ready.reason}" + (f": {ready.message}" if ready.message else "") if ready else ""
            raise NotStarted(f"managedservice {svc.key} has not started (state {svc.status.state.value}{why}): "
                             "no logs yet")
        return itertools.chain([first], lines)
