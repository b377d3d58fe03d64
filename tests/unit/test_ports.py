"""Port reservations of converge.ports: owners, renewal, expiry (a fake clock, no sockets)."""

from __future__ import annotations

import pytest

from converge import ports


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(ports.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(ports, "_reserved", {})
    monkeypatch.setattr(ports, "_expiry", [])
    return now


def test_a_reserved_port_is_refused_to_other_owners_until_it_expires(clock: list[float]) -> None:
    assert ports._take(5000, "a")
    assert not ports._take(5000, "b")
    assert ports._take(5000, "a")  # the owner renews
    clock[0] += ports._RESERVE_SECONDS - 1
    assert not ports._take(5000, "b")  # the renewal counts from its own time
    clock[0] += 2
    assert ports._take(5000, "a") is True and not ports._take(5000, "b")  # renewed again by a
    clock[0] += ports._RESERVE_SECONDS + 1
    assert ports._take(5000, "b")


def test_expired_reservations_are_forgotten(clock: list[float]) -> None:
    for p in range(10_000):
        assert ports._take(10_000 + p, f"svc-{p}")
    assert len(ports._reserved) == 10_000
    clock[0] += ports._RESERVE_SECONDS + 1
    assert ports._take(9999, "late")
    assert ports._reserved == {9999: ("late", clock[0] + ports._RESERVE_SECONDS)}
    assert len(ports._expiry) == 1
