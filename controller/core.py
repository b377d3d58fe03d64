"""The reconcile core: plan(service, observed, now) -> one action + the new status. Pure.

Everything the world told us this pass (the backend's Observation, a health probe, which
dependencies are not Ready, which dependents still run) comes in as `Observed`; the core
decides the one next step and the status that describes it. Level-triggered: the caller
carries out the action and asks again (`requeue_after`); nothing here sleeps, reads a
file or calls a backend. All retry rules live here: a failed start backs off
exponentially (converge.backoff), success after a healthy period resets the count.

The adapters (converge.reconciler for both local and cluster modes) do the I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from converge.api import AdminState, EndpointStatus, ManagedService, ManagedServiceStatus, State
from converge.backends.base import Observation, Phase, ProbeResult
from converge.backends.errors import BackendError, BackendUnavailable, PermanentError
from converge.backoff import restart_delay
from converge.conditions import READY, RECONCILING, STALLED, mark_progress, set_condition

UNAVAILABLE_RETRY = 2.0  # seconds between looks while a backend's engine is unreachable
WAIT_RETRY = 0.5  # seconds between looks while waiting on another service
BACKEND_PROGRESS_RETRY = 5.0  # a backend that watches its resources reports progress itself;
BACKEND_FAILED_RETRY = 30.0  # these looks are only a fallback
# Start-up is watched closely, then less and less: the first look soon after the start (a
# small daemon listens within ~25 ms), then after a quarter of the time waited so far, so
# Ready is noticed within ~25 % of the start time while a slow start costs few passes.
FIRST_LOOK = 0.01
LOG_TAIL_CHARS = 2000


class Action(StrEnum):
    provision = "provision"
    deprovision = "deprovision"
    suspend = "suspend"
    forget = "forget"  # deprovisioned and being deleted: remove from the store


@dataclass(frozen=True)
class Observed:
    """What the adapter learned this pass, before planning."""

    observation: Observation | None = None
    error: BackendError | None = None  # observe() raised
    health: ProbeResult | None = None  # probed only when running with a health check
    health_fresh: bool = True  # False: a result an earlier pass already counted (probes are paced)
    deps_not_ready: tuple[str, ...] = ()
    dependents_running: tuple[str, ...] = ()  # dependents also going down, still running
    desired_hash: str = ""


@dataclass(frozen=True)
class Plan:
    action: Action | None
    status: ManagedServiceStatus
    requeue_after: float | None = None  # None: only an event brings this key back
    settled: bool = False  # desired state reached (or terminally stuck): `reconcile` may stop
    reason: str = ""
    message: str = ""
    # Healthy and probed: the next look due for this service is only a health probe, in
    # this many seconds; a runtime with a prober probes it alone and reconciles only when
    # the probe fails (kubelet's split), others just reconcile then.
    probe_after: float | None = None


def spec_hash(svc: ManagedService) -> str:
    """Hash of what the backend runs: the backend spec and the endpoint's port choice."""
    ep = svc.spec.endpoint
    payload = {
        "backend": svc.spec.backend.model_dump(mode="json", by_alias=True, exclude_none=True),
        "endpoint": None if ep is None else [ep.protocol, ep.host, ep.port, ep.allocatePort],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def endpoint_uri(svc: ManagedService, port: int | None) -> str | None:
    ep = svc.spec.endpoint
    if ep is None or port is None:
        return None
    return f"{ep.protocol}://{ep.host}:{port}"


# --------------------------------------------------------------------------- helpers


def first_line(text: str) -> str:
    """What happened, without the log lines that follow it in lastError."""
    return text.strip().splitlines()[0] if text.strip() else ""


def copy_status(st: ManagedServiceStatus) -> ManagedServiceStatus:
    """A copy that is safe to change here: the core replaces conditions and backend
    details wholesale and changes only the endpoint in place, so copy just those
    (a deep copy of every pass costs more than the rest of a steady-state pass)."""
    out = st.model_copy()
    out.conditions = list(st.conditions)
    out.backend = dict(st.backend)
    out.endpoint = st.endpoint.model_copy() if st.endpoint is not None else None
    return out


def _set_state(st: ManagedServiceStatus, state: State) -> None:
    if st.state != state:
        st.lastState = st.state
        st.state = state
    if st.endpoint is not None:
        st.endpoint.state = state


def _ready(st: ManagedServiceStatus, ok: bool, reason: str, message: str, now: datetime, gen: int | None) -> None:
    st.conditions = set_condition(st.conditions, READY, "True" if ok else "False", reason, message, now, gen)


def _progress(st: ManagedServiceStatus, kind: str | None, reason: str, message: str, now: datetime,
              gen: int | None) -> None:
    st.conditions = mark_progress(st.conditions, kind, reason, message, now, gen)


def _finish(
    st: ManagedServiceStatus, now: datetime, gen: int | None, *, state: State, ready: bool, reason: str,
    message: str = "", progress: str | None = None, action: Action | None = None,
    requeue: float | None = None, settled: bool = False, probe_after: float | None = None,
) -> Plan:
    _set_state(st, state)
    _ready(st, ready, reason, message, now, gen)
    _progress(st, progress, reason, message, now, gen)
    return Plan(action, st, requeue, settled, reason, message, probe_after)


def _clear_run(st: ManagedServiceStatus) -> None:
    st.startedAt = None
    st.activeSince = None
    st.healthFailures = 0


# --------------------------------------------------------------------------- plan


def plan(svc: ManagedService, observed: Observed, now: datetime) -> Plan:
    """The next step for one service. Never raises for anything the world can do."""
    st = copy_status(svc.status)
    gen = svc.metadata.generation
    st.observedGeneration = gen
    spec = svc.spec
    st.backendKind = spec.backend.kind  # a printer column of the CRD

    if observed.error is not None:
        return _unobservable(st, observed.error, now, gen)
    obs = observed.observation
    assert obs is not None, "plan needs an observation or an error"
    phase = obs.phase
    if obs.details:
        st.backend = dict(obs.details)
        _endpoint_from_details(svc, st, obs.details)

    # Going away: deprovision, then forget.
    if svc.metadata.deletionTimestamp is not None or spec.adminState == AdminState.inactive:
        deleting = svc.metadata.deletionTimestamp is not None
        if phase == Phase.absent:
            _clear_run(st)
            st.backend = {}
            st.nextRetryTime = None
            st.consecutiveFailures = 0
            if st.endpoint is not None:
                st.endpoint.uri = None
            return _finish(st, now, gen, state=State.inactive, ready=False, reason="Inactive",
                           message="deprovisioned", action=Action.forget if deleting else None,
                           settled=True)
        if observed.dependents_running:
            return _wait_dependents(st, observed, now, gen)
        return _finish(st, now, gen, state=State.pending_shutdown, ready=False, reason="Deprovisioning",
                       progress=RECONCILING, action=Action.deprovision, requeue=0.0)

    if spec.adminState == AdminState.suspended:
        if phase == Phase.running:
            if observed.dependents_running:
                return _wait_dependents(st, observed, now, gen)
            return _finish(st, now, gen, state=State.pending_shutdown, ready=False, reason="Suspending",
                           progress=RECONCILING, action=Action.suspend, requeue=0.0)
        _clear_run(st)
        st.nextRetryTime = None
        return _finish(st, now, gen, state=State.scaled_to_zero, ready=False, reason="Suspended",
                       message="adminState is suspended", settled=True)

    return _plan_active(svc, st, obs, observed, now, gen)


def _unobservable(st: ManagedServiceStatus, err: BackendError, now: datetime, gen: int | None) -> Plan:
    st.lastError = err.message
    if isinstance(err, PermanentError):
        return _finish(st, now, gen, state=State.error, ready=False, reason=err.reason, message=err.message,
                       progress=STALLED, settled=True)
    retry = UNAVAILABLE_RETRY if isinstance(err, BackendUnavailable) else 5.0
    return _finish(st, now, gen, state=State.error, ready=False, reason=err.reason, message=err.message,
                   progress=RECONCILING, requeue=retry)


def _wait_dependents(st: ManagedServiceStatus, observed: Observed, now: datetime, gen: int | None) -> Plan:
    msg = "waiting for dependents to stop: " + ", ".join(observed.dependents_running)
    return _finish(st, now, gen, state=State.pending_shutdown, ready=False, reason="DependentsRunning",
                   message=msg, progress=RECONCILING, requeue=WAIT_RETRY)


def _plan_active(
    svc: ManagedService, st: ManagedServiceStatus, obs: Observation, observed: Observed, now: datetime,
    gen: int | None,
) -> Plan:
    policy = svc.spec.restartPolicy
    phase = obs.phase
    if phase != Phase.running and st.specHash not in (None, observed.desired_hash):
        # A new spec gets a fresh start: the old one's crash loop says nothing about it.
        st.consecutiveFailures = 0
        st.nextRetryTime = None
        st.startedAt = None

    # It was running and stopped on its own: count a failure, back off.
    if phase in (Phase.exited, Phase.absent) and st.startedAt is not None:
        st.consecutiveFailures += 1
        st.lastExitCode = obs.exit_code
        st.lastError = (obs.message or "the service stopped")[-LOG_TAIL_CHARS:]
        _clear_run(st)
        delay = restart_delay(st.consecutiveFailures, policy.backoffSeconds, policy.maxBackoffSeconds)
        st.nextRetryTime = now + timedelta(seconds=delay)

    if phase == Phase.running:
        stale = obs.spec_hash if obs.spec_hash is not None else st.specHash
        if obs.drifted or (stale is not None and stale != observed.desired_hash):
            why = "drift detected: " + obs.message if obs.drifted else "spec changed"
            return _provision(st, now, gen, why)
        return _running(svc, st, observed, now, gen)

    if phase == Phase.error:
        st.lastError = (obs.message or "backend reports an error")[-LOG_TAIL_CHARS:]

    # Not running (absent, exited, suspended, error): start it when allowed.
    if observed.deps_not_ready:
        msg = "waiting for dependencies to be Ready: " + ", ".join(observed.deps_not_ready)
        state = st.state if st.state in (State.inactive, State.scaled_to_zero, State.error) else State.inactive
        return _finish(st, now, gen, state=state, ready=False, reason="DependencyNotReady", message=msg,
                       progress=RECONCILING, requeue=WAIT_RETRY)
    if st.nextRetryTime is not None and now < st.nextRetryTime:
        wait = (st.nextRetryTime - now).total_seconds()
        msg = f"back-off {wait:.1f}s restarting failed service: {first_line(st.lastError)}"
        return _finish(st, now, gen, state=State.error, ready=False, reason="CrashLoopBackOff",
                       message=msg[:LOG_TAIL_CHARS], progress=RECONCILING, requeue=wait)
    if phase == Phase.suspended:
        why = "resuming"
    elif st.consecutiveFailures > 0:
        why = "restarting after failure: " + first_line(st.lastError) if st.lastError else "restarting"
    else:
        why = "starting"
    return _provision(st, now, gen, why)


def _provision(st: ManagedServiceStatus, now: datetime, gen: int | None, why: str) -> Plan:
    if st.consecutiveFailures > 0:
        st.restarts += 1
    st.startedAt = now
    st.activeSince = None
    st.healthFailures = 0
    st.nextRetryTime = None
    return _finish(st, now, gen, state=State.pending_startup, ready=False, reason="Progressing",
                   message=why, progress=RECONCILING, action=Action.provision, requeue=FIRST_LOOK)


def _healthy(svc: ManagedService, st: ManagedServiceStatus, now: datetime) -> float | None:
    """Mark a healthy run; the requeue that resets the backoff once healthy long enough."""
    policy = svc.spec.restartPolicy
    st.healthFailures = 0
    if st.activeSince is None:
        st.activeSince = now
    requeue = None
    if st.consecutiveFailures > 0:  # keep the last crash visible until the backoff resets
        healthy_for = (now - st.activeSince).total_seconds()
        if healthy_for >= policy.resetAfterSeconds:
            st.consecutiveFailures = 0
        else:
            requeue = policy.resetAfterSeconds - healthy_for
    if st.consecutiveFailures == 0:
        st.lastError = ""
    return requeue


def _running(svc: ManagedService, st: ManagedServiceStatus, observed: Observed, now: datetime,
             gen: int | None) -> Plan:
    if st.startedAt is None:  # adopted: running before we knew
        st.startedAt = now
    st.specHash = observed.desired_hash
    st.nextRetryTime = None
    check = svc.spec.endpoint.healthCheck if svc.spec.endpoint is not None else None
    obs = observed.observation
    if obs is not None and obs.ready is not None:
        return _running_by_backend(svc, st, obs, now, gen)
    health = observed.health
    if check is None or health is None or health.ok:
        requeue = _healthy(svc, st, now)
        msg = "" if check is None else "health check passed"
        return _finish(st, now, gen, state=State.active, ready=True, reason="Healthy" if check else "Running",
                       message=msg, requeue=requeue, settled=True,
                       probe_after=check.periodSeconds if check is not None else None)

    # Unhealthy.
    if st.activeSince is None:
        started = (now - st.startedAt).total_seconds()
        if started < check.startupTimeoutSeconds:
            return _finish(st, now, gen, state=State.pending_startup, ready=False, reason="Starting",
                           message=health.message, progress=RECONCILING,
                           requeue=min(1.0, max(FIRST_LOOK / 2, started / 4)))
        st.lastError = f"not healthy {check.startupTimeoutSeconds:g}s after start: {health.message}"
        return _finish(st, now, gen, state=State.error, ready=False, reason="HealthCheckFailed",
                       message=st.lastError, progress=RECONCILING, requeue=check.periodSeconds)
    if observed.health_fresh or st.healthFailures == 0:  # a failure counts once, whatever wakes us
        st.healthFailures = min(st.healthFailures + 1, check.failureThreshold)
    if st.healthFailures < check.failureThreshold:
        return _finish(st, now, gen, state=State.active, ready=True, reason="Healthy",
                       message=f"health check failed {st.healthFailures}x: {health.message}",
                       settled=True, probe_after=check.periodSeconds)
    st.lastError = f"health check failed {st.healthFailures} times: {health.message}"
    return _finish(st, now, gen, state=State.error, ready=False, reason="HealthCheckFailed",
                   message=st.lastError, progress=RECONCILING, requeue=check.periodSeconds)


def _running_by_backend(svc: ManagedService, st: ManagedServiceStatus, obs: Observation, now: datetime,
                        gen: int | None) -> Plan:
    """Readiness as the backend judges it (a Deployment's rollout), no probe from this host:
    ready -> active; failed (obs.failure) -> error, Stalled until something changes;
    otherwise still rolling out -> pending_startup. The backend's watch brings the service
    back on every change; the requeues are only a fallback."""
    check = svc.spec.endpoint.healthCheck if svc.spec.endpoint is not None else None
    if obs.ready:
        requeue = _healthy(svc, st, now)
        return _finish(st, now, gen, state=State.active, ready=True, reason="Healthy" if check else "Running",
                       message=obs.message, requeue=requeue, settled=True)
    st.activeSince = None
    if obs.failure:
        st.lastError = obs.message[-LOG_TAIL_CHARS:]
        return _finish(st, now, gen, state=State.error, ready=False, reason=obs.failure, message=st.lastError,
                       progress=STALLED, requeue=BACKEND_FAILED_RETRY, settled=True)
    return _finish(st, now, gen, state=State.pending_startup, ready=False, reason="Progressing",
                   message=obs.message, progress=RECONCILING, requeue=BACKEND_PROGRESS_RETRY)


def at_rest(svc: ManagedService, p: Plan) -> bool:
    """Whether p, planned for svc, is a fixed point: nothing to do, nothing to write, no
    look due. Planned again later from the same object and an equal Observed, it is the
    same plan (time only enters through backoff, start-up and reset deadlines, and each
    of those asks for a requeue or changes the status), so that pass can be skipped."""
    return p.action is None and p.settled and p.requeue_after is None and p.status == svc.status


_PASSED = ProbeResult(True)


def look_at_rest(o: Observed) -> Observed:
    """What of a look the plan depends on, to compare the looks of a service at rest: of a
    passed probe only that it passed (its message, and whether an earlier pass already
    counted it, never enter the plan: only a failure is counted). So a resync that finds the
    prober's newest passing result is the same look as the one at rest before."""
    if o.health is not None and o.health.ok and (not o.health_fresh or o.health.message):
        return replace(o, health=_PASSED, health_fresh=True)
    return o


# --------------------------------------------------------------------------- outcomes


def provisioned(svc: ManagedService, st: ManagedServiceStatus, details: dict[str, object],
                port: int | None, desired_hash: str) -> ManagedServiceStatus:
    """Status after a successful provision call."""
    out = copy_status(st)
    out.backend = dict(details)
    out.specHash = desired_hash
    if svc.spec.endpoint is not None:
        uri = endpoint_uri(svc, port) or details.get("endpoint")
        out.endpoint = EndpointStatus(uri=str(uri) if uri else None, port=port, state=out.state)
    _endpoint_from_details(svc, out, details)
    return out


def _endpoint_from_details(svc: ManagedService, st: ManagedServiceStatus, details: Mapping[str, object]) -> None:
    """A backend that makes its own endpoint publishes it as details["endpoint"]: a Terraform
    output (when the spec has no endpoint), a Kubernetes Service (details["endpointPort"]:
    the Service's port, not one of this host's; it wins over the host's allocation)."""
    uri = details.get("endpoint")
    if not uri:
        return
    own_port = details.get("endpointPort")
    if svc.spec.endpoint is not None and own_port is None:
        return
    port = int(str(own_port)) if own_port is not None else None
    if st.endpoint is None or st.endpoint.uri != str(uri) or (port is not None and st.endpoint.port != port):
        st.endpoint = EndpointStatus(uri=str(uri), port=port, state=st.state)


def failed(svc: ManagedService, st: ManagedServiceStatus, action: Action, err: BackendError,
           now: datetime) -> Plan:
    """Status after an action raised: one place decides retry and backoff."""
    out = copy_status(st)
    gen = svc.metadata.generation
    out.lastError = f"{action.value} failed: {err.message}"[:LOG_TAIL_CHARS]
    if isinstance(err, PermanentError):
        return _finish(out, now, gen, state=State.error, ready=False, reason=err.reason,
                       message=out.lastError, progress=STALLED, settled=True)
    if isinstance(err, BackendUnavailable):
        return _finish(out, now, gen, state=State.error, ready=False, reason=err.reason,
                       message=out.lastError, progress=RECONCILING, requeue=UNAVAILABLE_RETRY)
    if action == Action.provision:
        policy = svc.spec.restartPolicy
        out.consecutiveFailures += 1
        _clear_run(out)
        delay = max(restart_delay(out.consecutiveFailures, policy.backoffSeconds, policy.maxBackoffSeconds),
                    policy.backoffSeconds if out.consecutiveFailures == 1 else 0.0)
        out.nextRetryTime = now + timedelta(seconds=delay)
        return _finish(out, now, gen, state=State.error, ready=False, reason=err.reason,
                       message=out.lastError, progress=RECONCILING, requeue=delay)
    return _finish(out, now, gen, state=State.error, ready=False, reason=err.reason, message=out.lastError,
                   progress=RECONCILING, requeue=svc.spec.restartPolicy.backoffSeconds)
