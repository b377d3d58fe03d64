"""The reconcile adapter: read desired state, observe, plan, act, write status once.

`Reconciler.reconcile(key)` is one level-triggered pass over one service, the same for
local mode (FileStore) and the cluster (KubeStore): the request is only a key, every
pass re-reads the object and re-observes the world. Decisions are the pure core's
(converge.core); this module only does the I/O around it: store reads and the single
status write, the backend calls, the health probe, the port allocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from converge import core, ports
from converge.api import FINALIZER, AdminState, HealthCheck, ManagedService, ManagedServiceStatus, ServiceKey, State
from converge.backends.base import Backend, Observation, Phase, ProbeResult, Target, owns_endpoint
from converge.backends.env import scrub, secrets_of
from converge.backends.errors import BackendError
from converge.backends.health import Pending, probe
from converge.conditions import is_ready
from converge.host import Host, UnsafeHost
from converge.outcome import Outcome as Outcome  # also converge.reconciler.Outcome, as before
from converge.probememo import Health, ProbeMemo
from converge.registry import BACKEND_DISABLED, Backends
from converge.store import Conflict, CorruptObject, NotFound, Store

Clock = Callable[[], datetime]
Transition = Callable[[ManagedService, ManagedServiceStatus | None], None]  # (before, after; None: gone)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Probe:
    check: HealthCheck
    protocol: str
    host: str
    port: int
    period: float
    record: Callable[[ProbeResult], None] | None = field(default=None, compare=False)
    # A start-up watch (converge.prober): probed every few ms while the service starts;
    # the first probe that passes wakes its reconcile (Ready noticed at once).
    startup: bool = False

    def run(self) -> ProbeResult:
        """Probe now, blocking up to the check's timeout, and record the result."""
        return self.finish(self.blocking())

    def blocking(self) -> ProbeResult:
        """Probe now, blocking up to the check's timeout (not recorded: see finish())."""
        return probe(self.check, self.protocol, self.host, self.port)

    def start(self) -> Pending | ProbeResult | None:
        """The probe without blocking (see converge.backends.health.Pending); None when
        only run() can do it. Its result goes through finish()."""
        return Pending.start(self.check, self.protocol, self.host, self.port)

    def finish(self, result: ProbeResult) -> ProbeResult:
        if self.record is not None:
            self.record(result)  # the reconcile this may trigger uses it instead of probing again
        return result


@dataclass(frozen=True)
class _Steady:
    """A pass that found nothing to do and nothing to write (see Reconciler.shortcut)."""

    svc: ManagedService  # the very stored object it read
    backend: Backend
    target: Target
    observed: core.Observed
    outcome: Outcome


def _ready_reason(st: ManagedServiceStatus) -> str:
    return next((c.reason for c in st.conditions if c.type == "Ready"), "")


def _changed(before: ManagedServiceStatus, after: ManagedServiceStatus) -> bool:
    """A transition worth telling: another state, another Ready reason, another restart."""
    return (before.state != after.state or _ready_reason(before) != _ready_reason(after)
            or before.restarts != after.restarts)


class Reconciler:
    def __init__(self, store: Store, backends: Backends, host: Host, clock: Clock = utcnow) -> None:
        self.store = store
        self.backends = backends
        self.host = host
        self.clock = clock
        self.probes = ProbeMemo()
        self._hashes: dict[ServiceKey, tuple[object, str]] = {}  # key -> (spec object, its hash)
        # A pass over a service at rest (core.at_rest), from the same stored object, that
        # observes the same as then is skipped: its plan would be the same again.
        # False: plan every pass (the reference for benchmarks).
        self.shortcut = True
        self._steady: dict[ServiceKey, _Steady] = {}
        # Called after a status write that changed the state or the Ready reason (and
        # once a deleted service is gone): the operator posts Kubernetes Events from it.
        self.on_transition: Transition | None = None

    # ------------------------------------------------------------------ one pass

    def reconcile(self, key: ServiceKey) -> Outcome:
        try:
            svc = self.store.get(key)
        except NotFound:
            self.probes.forget(key)
            self._hashes.pop(key, None)
            self._steady.pop(key, None)
            return Outcome(key, gone=True, settled=True)
        except CorruptObject as exc:
            return Outcome(key, settled=True, error=str(exc))
        steady = self._steady.get(key) if self.shortcut else None
        if (steady is not None and steady.svc is svc and (steady.observed.health is None or steady.observed.health.ok)
                and core.look_at_rest(self._observe(svc, steady.backend, steady.target,
                                                    steady.target.spec_hash)) == steady.observed):
            # At rest before, the same object, no failed probe to count, the same look:
            # settled without the service's lock (a look acts on nothing; a change found
            # is looked at again under the lock).
            return steady.outcome
        try:
            with self.host.lock(key):
                try:
                    svc = self.store.get(key)  # fresh, now that we hold the service's lock
                except NotFound:
                    return Outcome(key, gone=True, settled=True)
                except CorruptObject as exc:
                    return Outcome(key, settled=True, error=str(exc))
                return self._reconcile(svc)
        except UnsafeHost as exc:  # a link planted in the host folders: refuse, say so, go on
            return Outcome(key, settled=True, error=str(exc))

    def _reconcile(self, svc: ManagedService) -> Outcome:
        steady = self._steady.get(svc.key) if self.shortcut else None
        if steady is not None and steady.svc is svc:  # at rest before: plan only if the world changed
            observed = self._observe(svc, steady.backend, steady.target, steady.target.spec_hash)
            if core.look_at_rest(observed) == steady.observed:
                return steady.outcome
            return self._act(svc, steady.backend, steady.target, observed, self.clock())
        deleting = svc.metadata.deletionTimestamp is not None
        if deleting and FINALIZER not in svc.metadata.finalizers:
            # Nothing of ours is left; other finalizers hold the object.
            return Outcome(svc.key, settled=True, state=svc.status.state.value, message="being deleted")
        if not deleting and FINALIZER not in svc.metadata.finalizers:
            # Before anything is provisioned: a deletion must come back to us.
            try:
                svc = self.store.set_finalizers(svc, [*svc.metadata.finalizers, FINALIZER])
            except (Conflict, NotFound):
                return Outcome(svc.key, requeue_after=0.0, state=svc.status.state.value)
        now = self.clock()
        desired = self._spec_hash(svc)
        try:
            backend = self.backends.get(svc.spec.backend.kind)
        except BackendError as exc:
            p = core.plan(svc, core.Observed(error=exc, desired_hash=desired), now)
            if deleting and exc.reason == BACKEND_DISABLED:
                return self._finalize(svc, p)  # a disabled backend never ran anything
            return self._write(svc, p)
        target = self._target(svc, desired, svc.status.endpoint.port if svc.status.endpoint else None)
        observed = self._observe(svc, backend, target, desired)
        return self._act(svc, backend, target, observed, now)

    def _act(self, svc: ManagedService, backend: Backend, target: Target, observed: core.Observed,
             now: datetime) -> Outcome:
        """Plan from what was observed, carry out the action, write the status."""
        desired = target.spec_hash
        p = core.plan(svc, observed, now)
        if p.action is None:
            out = self._write(svc, p)
            if core.at_rest(svc, p):
                self._steady[svc.key] = _Steady(svc, backend, target, core.look_at_rest(observed), out)
            return out
        self._steady.pop(svc.key, None)
        if p.action == core.Action.forget:
            return self._finalize(svc, p)
        action = p.action
        try:
            status = p.status
            if action == core.Action.provision:
                running = observed.observation is not None and observed.observation.phase in (
                    Phase.running, Phase.suspended)
                port = None if owns_endpoint(backend) else self._port(svc, running)
                target = self._target(svc, desired, port)
                details = dict(backend.provision(target))
                status = core.provisioned(svc, status, details, port, desired)
            elif action == core.Action.deprovision:
                backend.deprovision(target)
            else:
                backend.suspend(target)
            p = core.Plan(action, status, p.requeue_after, p.settled, p.reason, p.message, p.probe_after)
        except BackendError as exc:
            return self._write(svc, core.failed(svc, p.status, action, exc, self.clock()))
        if action == core.Action.provision and self._look_at_once(svc, p):
            p = self._first_look(svc, backend, replace(target, details=dict(p.status.backend)), desired, p)
        return self._write(svc, p)

    @staticmethod
    def _look_at_once(svc: ManagedService, p: core.Plan) -> bool:
        """A start whose first look is due at once, with no health check to wait for."""
        ep = svc.spec.endpoint
        return p.requeue_after is not None and p.requeue_after <= core.FIRST_LOOK and (
            ep is None or ep.healthCheck is None)

    def _first_look(self, svc: ManagedService, backend: Backend, target: Target, desired: str,
                    p: core.Plan) -> core.Plan:
        """The first look after a start, in the same pass: a service that runs at once is
        written active in one status write, not pending_startup and a moment later active
        (a second write, its watch event and a whole pass for every start). If the look
        wants another action (not running yet), the start's own plan stands."""
        started = svc.model_copy(update={"status": p.status})
        observed = self._observe(started, backend, target, desired)
        if observed.error is not None:
            return p
        again = core.plan(started, observed, self.clock())
        return p if again.action is not None else again

    def _finalize(self, svc: ManagedService, p: core.Plan) -> Outcome:
        """Deprovisioned and being deleted: drop the host's files, then our finalizer."""
        self.host.forget(svc.key)
        self.probes.forget(svc.key)
        try:
            after = self.store.set_finalizers(svc, [f for f in svc.metadata.finalizers if f != FINALIZER])
        except NotFound:
            return Outcome(svc.key, settled=True, gone=True, state=State.inactive.value, message="deleted")
        except Conflict:
            return Outcome(svc.key, requeue_after=0.0, state=p.status.state.value)
        if self.on_transition is not None:
            self.on_transition(svc, None)
        if after.metadata.finalizers:  # others' finalizers still hold it: no longer ours
            return Outcome(svc.key, settled=True, state=State.inactive.value,
                           message="deprovisioned; waiting for finalizers " + ", ".join(after.metadata.finalizers))
        return Outcome(svc.key, settled=True, gone=True, state=State.inactive.value, message="deleted")

    # ------------------------------------------------------------------ parts

    def _spec_hash(self, svc: ManagedService) -> str:
        """core.spec_hash, once per stored spec: the store hands out the same (shared,
        unchanged) object until the file changes, so a steady-state pass hashes nothing."""
        hit = self._hashes.get(svc.key)
        if hit is not None and hit[0] is svc.spec:
            return hit[1]
        h = core.spec_hash(svc)
        self._hashes[svc.key] = (svc.spec, h)
        return h

    def kill(self, key: ServiceKey) -> str:
        """Deprovision at once, skipping the grace period (delete --force): what a forced
        deletion forgets must not go on running. Returns what happened, in words."""
        try:
            svc = self.store.get(key)
        except NotFound:
            return "already gone"
        config = svc.spec.backend.config()
        fields = getattr(type(config), "model_fields", {})
        if "stopGracePeriodSeconds" not in fields:
            return f"the {svc.spec.backend.kind} backend was not stopped"
        backend = self.backends.get(svc.spec.backend.kind)
        target = replace(self.target_for(svc), config=config.model_copy(update={"stopGracePeriodSeconds": 0}))
        with self.host.lock(key):
            try:
                backend.deprovision(target)
            except BackendError as exc:
                return f"killing failed: {exc.message}"
        return "killed"

    def target_for(self, svc: ManagedService) -> Target:
        """The backend's view of a service as it is now (for logs and tools)."""
        return self._target(svc, core.spec_hash(svc), svc.status.endpoint.port if svc.status.endpoint else None)

    def _target(self, svc: ManagedService, desired: str, port: int | None) -> Target:
        return Target(
            key=svc.key, uid=svc.metadata.uid or "", config=svc.spec.backend.config(), spec_hash=desired,
            runtime_dir=self.host.runtime_dir(svc.key),
            host=svc.spec.endpoint.host if svc.spec.endpoint else "127.0.0.1", port=port,
            labels=dict(svc.metadata.labels), details=dict(svc.status.backend), endpoint=svc.spec.endpoint,
        )

    def _port(self, svc: ManagedService, running: bool) -> int | None:
        ep = svc.spec.endpoint
        if ep is None:
            return None
        last = svc.status.endpoint.port if svc.status.endpoint else None
        return ports.allocate(ep, last, str(svc.key), owned=running)

    def _observe(self, svc: ManagedService, backend: Backend, target: Target, desired: str) -> core.Observed:
        try:
            obs = backend.observe(target)
        except BackendError as exc:
            return core.Observed(error=exc, desired_hash=desired)
        health = self._probe(svc, obs)
        deps: tuple[str, ...] = ()
        dependents: tuple[str, ...] = ()
        going_down = svc.metadata.deletionTimestamp is not None or svc.spec.adminState != AdminState.active
        if svc.spec.dependsOn and not going_down and obs.phase != Phase.running:
            deps = tuple(self._deps_not_ready(svc))
        if going_down and obs.phase in (Phase.running, Phase.suspended):
            dependents = tuple(self._dependents_running(svc))
        return core.Observed(observation=obs, health=None if health is None else health.result,
                             health_fresh=health is None or health.fresh, deps_not_ready=deps,
                             dependents_running=dependents, desired_hash=desired)

    def _probe(self, svc: ManagedService, obs: Observation) -> Health | None:
        ep = svc.spec.endpoint
        if ep is None or ep.healthCheck is None or obs.phase != Phase.running or obs.ready is not None:
            return None  # obs.ready: the backend judged readiness itself
        if svc.spec.adminState != AdminState.active or svc.metadata.deletionTimestamp is not None:
            return None
        port = svc.status.endpoint.port if svc.status.endpoint else None
        if port is None:
            return Health(ProbeResult(False, "no endpoint port allocated yet"), fresh=True)
        check, protocol, host = ep.healthCheck, ep.protocol, ep.host
        return self.probes.health(svc.key, (svc.status.startedAt, port), check.periodSeconds,
                                  svc.status.activeSince is not None,
                                  lambda: probe(check, protocol, host, port))

    def _deps_not_ready(self, svc: ManagedService) -> list[str]:
        out = []
        for name in svc.spec.dependsOn:
            try:
                dep = self.store.get(ServiceKey(svc.metadata.namespace, name))
            except NotFound:
                out.append(f"{name} (not found)")
                continue
            except CorruptObject:
                out.append(f"{name} (unreadable)")
                continue
            if not is_ready(dep.status.conditions):
                out.append(name)
        return out

    def _dependents_running(self, svc: ManagedService) -> list[str]:
        """Dependents that are going down too but still run: they stop first."""
        out = []
        for other in self.store.list(svc.metadata.namespace).items:
            if svc.metadata.name not in other.spec.dependsOn:
                continue
            other_down = other.metadata.deletionTimestamp is not None or other.spec.adminState != AdminState.active
            if other_down and other.status.state not in (State.inactive, State.scaled_to_zero):
                out.append(other.metadata.name)
        return out

    def _next_probe(self, svc: ManagedService, p: core.Plan) -> Probe | None:
        """The prober's part in what comes next: the periodic probe of a healthy service,
        or the start-up watch of one started and waiting for its health check."""
        ep = svc.spec.endpoint
        port = p.status.endpoint.port if p.status.endpoint is not None else None
        if ep is None or ep.healthCheck is None or port is None:
            return None
        key, run = svc.key, (p.status.startedAt, port)
        if p.probe_after is None:
            starting = (p.status.state == State.pending_startup and p.requeue_after is not None
                        and p.status.startedAt is not None and p.status.activeSince is None
                        and svc.spec.adminState == AdminState.active and svc.metadata.deletionTimestamp is None)
            # Its passed probe is what wakes the reconcile: kept for that pass (not probed again).
            return Probe(ep.healthCheck, ep.protocol, ep.host, port, ep.healthCheck.periodSeconds,
                         record=lambda result: self.probes.record_passed(key, run, result),
                         startup=True) if starting else None
        return Probe(ep.healthCheck, ep.protocol, ep.host, port, p.probe_after,
                     record=lambda result: self.probes.record(key, run, result))

    @staticmethod
    def _scrubbed(svc: ManagedService, p: core.Plan) -> core.Plan:
        """The plan with every valueFrom value replaced by *** in the text it writes and
        logs (lastError, condition messages, the outcome's message), whatever backend
        produced the text (a crashing service that printed its secret, for one)."""
        st = p.status
        if not (p.message or st.lastError or any(c.message for c in st.conditions)):
            return p
        secrets = secrets_of(svc.spec.backend.config())
        if not secrets:
            return p
        status = st.model_copy(deep=True)
        status.lastError = scrub(status.lastError, secrets)
        for c in status.conditions:
            c.message = scrub(c.message, secrets)
        return replace(p, status=status, message=scrub(p.message, secrets))

    def _write(self, svc: ManagedService, p: core.Plan) -> Outcome:
        """The pass's one status write, skipped when nothing changed."""
        p = self._scrubbed(svc, p)
        out = Outcome(svc.key, p.requeue_after, p.settled, state=p.status.state.value,
                      message=p.message, probe=self._next_probe(svc, p))
        if p.status == svc.status:
            return out
        new = svc.model_copy(update={"status": p.status})  # the store copies what it keeps
        try:
            self.store.update_status(new)
        except Conflict:
            return Outcome(svc.key, requeue_after=0.0, state=p.status.state.value)
        except NotFound:
            return Outcome(svc.key, gone=True, settled=True)
        if self.on_transition is not None and _changed(svc.status, p.status):
            self.on_transition(svc, p.status)
        return out

