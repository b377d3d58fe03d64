"""core.at_rest: a plan with nothing to do, write or look at again is the same plan
whenever it is made again from the same object and observation (the reconciler's
steady-state shortcut relies on it). Property-tested over reachable statuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from converge import core
from converge.api import ManagedService
from converge.backends.base import Observation, Phase
from converge.backends.health import ProbeResult

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HASH = "h1"


def service(admin: str, health: bool, deleting: bool) -> ManagedService:
    s = ManagedService.model_validate({
        "metadata": {"name": "web", "generation": 2, "finalizers": ["converge.dev/deprovision"]},
        "spec": {"adminState": admin, "backend": {"daemon": {"command": ["x"]}},
                 "endpoint": {"port": 8080, **({"healthCheck": {"http": {}, "failureThreshold": 2,
                                                                 "startupTimeoutSeconds": 10}} if health else {})},
                 "restartPolicy": {"backoffSeconds": 2, "maxBackoffSeconds": 16, "resetAfterSeconds": 60}},
    })
    if deleting:
        s.metadata.deletionTimestamp = T0
    return s


observations = st.builds(
    Observation,
    phase=st.sampled_from(list(Phase)),
    message=st.sampled_from(["", "boom"]),
    details=st.sampled_from([{}, {"pid": 42}]),
    spec_hash=st.sampled_from([HASH, "old", None]),
    drifted=st.booleans(),
    exit_code=st.sampled_from([None, 1]),
    ready=st.sampled_from([None, True, False]),
    failure=st.sampled_from(["", "ImagePullBackOff"]),
)
observed = st.builds(
    core.Observed,
    observation=observations,
    health=st.sampled_from([None, ProbeResult(True), ProbeResult(False, "refused")]),
    health_fresh=st.booleans(),
    deps_not_ready=st.sampled_from([(), ("db",)]),
    dependents_running=st.sampled_from([(), ("api",)]),
    desired_hash=st.just(HASH),
)
seconds = st.one_of(st.floats(min_value=0, max_value=20, allow_nan=False),  # backoff, start-up
                    st.floats(min_value=0, max_value=7 * 86400, allow_nan=False))


@settings(max_examples=400, deadline=None)
@given(admin=st.sampled_from(["active", "suspended", "inactive"]), health=st.booleans(),
       deleting=st.booleans(), history=st.lists(st.tuples(observed, seconds), min_size=1, max_size=6),
       last=observed, later=seconds, earlier=seconds)
def test_a_plan_at_rest_is_the_same_plan_at_any_other_time(admin: str, health: bool, deleting: bool,
                                                          history: list[tuple[Any, float]], last: Any,
                                                          later: float, earlier: float) -> None:
    svc = service(admin, health, deleting)
    now = T0
    for seen, dt in history:  # a status the core itself reached: its plans applied in turn
        now += timedelta(seconds=dt)
        svc = svc.model_copy(update={"status": core.plan(svc, seen, now).status})
    p = core.plan(svc, last, now)
    for again in (now + timedelta(seconds=later), now - timedelta(seconds=earlier)):
        if core.at_rest(svc, p):
            assert core.plan(svc, last, again) == p


def test_at_rest_needs_no_action_no_write_and_no_look_due() -> None:
    svc = service("active", health=False, deleting=False)
    running = core.Observed(observation=Observation(Phase.running, spec_hash=HASH), desired_hash=HASH)
    first = core.plan(svc, running, T0)
    assert not core.at_rest(svc, first)  # it writes (active, Ready)
    svc = svc.model_copy(update={"status": first.status})
    assert core.at_rest(svc, core.plan(svc, running, T0 + timedelta(seconds=5)))
    absent = core.Observed(observation=Observation(Phase.absent), desired_hash=HASH)
    assert not core.at_rest(svc, core.plan(svc, absent, T0))  # provision


@settings(max_examples=400, deadline=None)
@given(admin=st.sampled_from(["active", "suspended", "inactive"]), health=st.booleans(),
       deleting=st.booleans(), history=st.lists(st.tuples(observed, seconds), min_size=1, max_size=6),
       last=observed, message=st.sampled_from(["", "200 OK"]))
def test_a_passed_probe_plans_the_same_whatever_its_message_and_freshness(
        admin: str, health: bool, deleting: bool, history: list[tuple[Any, float]], last: Any, message: str) -> None:
    """core.look_at_rest keeps of a look all that a plan depends on (the reconciler compares
    looks of services at rest through it)."""
    svc = service(admin, health, deleting)
    now = T0
    for seen, dt in history:
        now += timedelta(seconds=dt)
        svc = svc.model_copy(update={"status": core.plan(svc, seen, now).status})
    if last.health is not None and last.health.ok:
        last = core.Observed(**{**vars(last), "health": ProbeResult(True, message)})
    assert core.plan(svc, last, now) == core.plan(svc, core.look_at_rest(last), now)
    assert core.look_at_rest(core.look_at_rest(last)) == core.look_at_rest(last)
    if last.health is not None and not last.health.ok:
        assert core.look_at_rest(last) == last  # a failure is counted: kept as it is
