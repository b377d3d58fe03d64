"""The reconcile core as tables: (service, observed, now) -> action, state, Ready. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from converge import core
from converge.api import ManagedService, State
from converge.backends.base import Observation, Phase
from converge.backends.errors import BackendUnavailable, PermanentError, TemporaryError
from converge.backends.health import ProbeResult
from converge.conditions import READY, RECONCILING, STALLED

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HASH = "h1"


def svc(admin: str = "active", health: bool = True, deleting: bool = False, **status: Any) -> ManagedService:
    s = ManagedService.model_validate({
        "metadata": {"name": "web", "generation": 2},
        "spec": {"adminState": admin, "backend": {"daemon": {"command": ["x"]}},
                 "endpoint": {"port": 8080, **({"healthCheck": {"http": {}, "failureThreshold": 2,
                                                                 "startupTimeoutSeconds": 10}} if health else {})},
                 "restartPolicy": {"backoffSeconds": 2, "maxBackoffSeconds": 16, "resetAfterSeconds": 60}},
    })
    if deleting:
        s.metadata.deletionTimestamp = NOW
    for k, v in status.items():
        setattr(s.status, k, v)
    return s


def obs(phase: Phase, h: str | None = HASH, **kw: Any) -> Observation:
    return Observation(phase, spec_hash=h, **kw)


def observed(o: Observation | None = None, health: ProbeResult | None = None, **kw: Any) -> core.Observed:
    return core.Observed(observation=o, health=health, desired_hash=HASH, **kw)


OK = ProbeResult(True)
BAD = ProbeResult(False, "connection refused")
T = NOW - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("service", "seen", "action", "state", "ready"),
    [
        # active
        (svc(), observed(obs(Phase.absent)), core.Action.provision, State.pending_startup, "False"),
        (svc(), observed(obs(Phase.suspended)), core.Action.provision, State.pending_startup, "False"),
        (svc(startedAt=T), observed(obs(Phase.running), OK), None, State.active, "True"),
        (svc(startedAt=T), observed(obs(Phase.running), BAD), None, State.pending_startup, "False"),
        (svc(startedAt=NOW - timedelta(seconds=11)), observed(obs(Phase.running), BAD), None, State.error, "False"),
        (svc(startedAt=T), observed(obs(Phase.running, h="old"), OK), core.Action.provision,
         State.pending_startup, "False"),
        (svc(startedAt=T), observed(obs(Phase.running, drifted=True), OK), core.Action.provision,
         State.pending_startup, "False"),
        (svc(health=False), observed(obs(Phase.running)), None, State.active, "True"),
        (svc(), observed(obs(Phase.absent), deps_not_ready=("db",)), None, State.inactive, "False"),
        # a first crash restarts at once
        (svc(startedAt=T, activeSince=T), observed(obs(Phase.exited, exit_code=3)), core.Action.provision,
         State.pending_startup, "False"),
        # suspended
        (svc("suspended"), observed(obs(Phase.running)), core.Action.suspend, State.pending_shutdown, "False"),
        (svc("suspended"), observed(obs(Phase.suspended)), None, State.scaled_to_zero, "False"),
        (svc("suspended"), observed(obs(Phase.absent)), None, State.scaled_to_zero, "False"),
        (svc("suspended"), observed(obs(Phase.running), dependents_running=("api",)), None,
         State.pending_shutdown, "False"),
        # inactive and delete
        (svc("inactive"), observed(obs(Phase.running)), core.Action.deprovision, State.pending_shutdown, "False"),
        (svc("inactive"), observed(obs(Phase.suspended)), core.Action.deprovision, State.pending_shutdown, "False"),
        (svc("inactive"), observed(obs(Phase.absent)), None, State.inactive, "False"),
        (svc(deleting=True), observed(obs(Phase.running)), core.Action.deprovision, State.pending_shutdown, "False"),
        (svc(deleting=True), observed(obs(Phase.absent)), core.Action.forget, State.inactive, "False"),
    ],
)
def test_plan_table(service: ManagedService, seen: core.Observed, action: core.Action | None, state: State,
                    ready: str) -> None:
    p = core.plan(service, seen, NOW)
    assert p.action == action
    assert p.status.state == state
    cond = p.status.condition(READY)
    assert cond is not None and cond.status == ready
    assert p.status.observedGeneration == 2


def test_crash_loop_backs_off_exponentially_and_caps() -> None:
    s = svc(startedAt=T)
    delays = []
    for _ in range(7):
        p = core.plan(s, observed(obs(Phase.exited, exit_code=1, message="boom")), NOW)
        s.status = p.status
        delays.append((s.status.nextRetryTime - NOW).total_seconds() if s.status.nextRetryTime else None)
        if p.action == core.Action.provision:
            s.status.startedAt = T  # it started, and will die again
        else:
            assert p.status.condition(READY).reason == "CrashLoopBackOff"  # type: ignore[union-attr]
            s.status.nextRetryTime = NOW  # time passes: the next look restarts it
            p = core.plan(s, observed(obs(Phase.exited, exit_code=1)), NOW)
            assert p.action == core.Action.provision
            s.status = p.status
            s.status.startedAt = T
    assert delays == [None, 2, 4, 8, 16, 16, 16]  # the first restart is immediate
    assert s.status.restarts == 7
    assert s.status.lastExitCode == 1


def test_backoff_resets_after_a_healthy_period() -> None:
    s = svc(startedAt=NOW - timedelta(seconds=100), activeSince=NOW - timedelta(seconds=30), consecutiveFailures=3)
    p = core.plan(s, observed(obs(Phase.running), OK), NOW)
    assert p.status.consecutiveFailures == 3
    assert p.requeue_after is not None and p.requeue_after <= 30
    s.status.activeSince = NOW - timedelta(seconds=61)
    assert core.plan(s, observed(obs(Phase.running), OK), NOW).status.consecutiveFailures == 0


def test_health_fails_past_threshold_then_recovers() -> None:
    s = svc(startedAt=T, activeSince=T)
    p = core.plan(s, observed(obs(Phase.running), BAD), NOW)
    assert p.status.state == State.active and p.status.healthFailures == 1
    s.status = p.status
    p = core.plan(s, observed(obs(Phase.running), BAD), NOW)
    assert p.status.state == State.error
    assert "connection refused" in p.status.lastError
    assert p.status.condition(READY).reason == "HealthCheckFailed"  # type: ignore[union-attr]
    s.status = p.status
    p = core.plan(s, observed(obs(Phase.running), OK), NOW)
    assert p.status.state == State.active and p.status.lastError == ""


def test_steady_state_is_a_fixed_point() -> None:
    s = svc(startedAt=T)
    first = core.plan(s, observed(obs(Phase.running), OK), NOW)
    s.status = first.status
    again = core.plan(s, observed(obs(Phase.running), OK), NOW + timedelta(seconds=5))
    assert again.status == first.status
    assert again.action is None


def test_ready_transition_time_only_moves_on_change() -> None:
    s = svc(startedAt=T)
    s.status = core.plan(s, observed(obs(Phase.running), OK), NOW).status
    t0 = s.status.condition(READY).lastTransitionTime  # type: ignore[union-attr]
    s.status = core.plan(s, observed(obs(Phase.running), OK), NOW + timedelta(seconds=9)).status
    assert s.status.condition(READY).lastTransitionTime == t0  # type: ignore[union-attr]


def test_reconciling_and_stalled_exclude_each_other() -> None:
    s = svc()
    s.status = core.plan(s, observed(obs(Phase.absent)), NOW).status
    assert s.status.condition(RECONCILING) is not None
    p = core.failed(s, s.status, core.Action.provision, PermanentError("bad image name"), NOW)
    assert p.status.condition(STALLED) is not None and p.status.condition(RECONCILING) is None
    assert p.settled


def test_provision_failure_backs_off() -> None:
    s = svc()
    p = core.failed(s, s.status, core.Action.provision, TemporaryError("no such file", reason="StartFailed"), NOW)
    assert p.status.state == State.error
    assert p.requeue_after == 2
    assert p.status.condition(READY).reason == "StartFailed"  # type: ignore[union-attr]


def test_backend_unavailable_is_reported_and_retried() -> None:
    p = core.plan(svc(), core.Observed(error=BackendUnavailable("engine down"), desired_hash=HASH), NOW)
    assert p.status.condition(READY).reason == "BackendUnavailable"  # type: ignore[union-attr]
    assert p.requeue_after == core.UNAVAILABLE_RETRY and not p.settled


def test_new_spec_skips_old_backoff() -> None:
    s = svc(consecutiveFailures=5, nextRetryTime=NOW + timedelta(seconds=100), specHash="old")
    p = core.plan(s, observed(obs(Phase.exited, h="old")), NOW)
    assert p.action == core.Action.provision
    assert p.status.restarts == 0


def test_spec_hash_ignores_health_and_labels() -> None:
    a, b = svc(), svc(health=False)
    b.metadata.labels = {"x": "y"}
    assert core.spec_hash(a) == core.spec_hash(b)
    b.spec.endpoint.port = 9090  # type: ignore[union-attr]
    assert core.spec_hash(a) != core.spec_hash(b)
