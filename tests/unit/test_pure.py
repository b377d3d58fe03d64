"""Backoff, selectors, conditions, dependency cycles, the work queue. No I/O."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from converge.backoff import restart_delay
from converge.conditions import READY, RECONCILING, STALLED, mark_progress, set_condition
from converge.deps import find_cycle
from converge.selector import SelectorError, parse_selector
from converge.workqueue import WorkQueue


@pytest.mark.parametrize(("n", "want"), [(0, 0), (1, 0), (2, 1), (3, 2), (4, 4), (10, 10), (100, 10)])
def test_restart_delay(n: int, want: float) -> None:
    assert restart_delay(n, 1, 10) == want


@pytest.mark.parametrize(
    ("sel", "labels", "match"),
    [
        ("stack=demo", {"stack": "demo"}, True),
        ("stack==demo", {"stack": "prod"}, False),
        ("stack!=demo", {}, True),
        ("stack=demo,tier in (web, api)", {"stack": "demo", "tier": "api"}, True),
        ("tier notin (db)", {"tier": "db"}, False),
        ("gpu", {"gpu": ""}, True),
        ("!gpu", {"gpu": "1"}, False),
        ("", {"a": "b"}, True),
    ],
)
def test_selector(sel: str, labels: dict[str, str], match: bool) -> None:
    assert parse_selector(sel).matches(labels) is match


@pytest.mark.parametrize("bad", ["a=b=c", "!a in (b)", "a in b", "=x"])
def test_selector_rejects(bad: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(bad)


def test_conditions_keep_transition_time_and_exclude_each_other() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    c = set_condition([], READY, "False", "Starting", "", t0)
    c = set_condition(c, READY, "False", "Other", "m", t0 + timedelta(seconds=5))
    assert c[0].lastTransitionTime == t0 and c[0].reason == "Other"
    c = set_condition(c, READY, "True", "Healthy", "", t0 + timedelta(seconds=9))
    assert c[0].lastTransitionTime == t0 + timedelta(seconds=9)
    c = mark_progress(c, RECONCILING, "Progressing", "", t0)
    c = mark_progress(c, STALLED, "InvalidSpec", "", t0)
    assert {x.type for x in c} == {READY, STALLED}
    assert {x.type for x in mark_progress(c, None, "", "", t0)} == {READY}


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": ["missing"]}) is None


def test_workqueue_dedups_and_serializes_a_key() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("a")
    q.add_after("b", 0.05)
    assert q.get(timeout=1) == "a"
    q.add("a")  # while processing: handed out again only after done
    assert q.get(timeout=0.01) is None
    assert q.get(timeout=1) == "b"
    q.done("a")
    assert q.get(timeout=1) == "a"


def test_workqueue_add_after_keeps_earliest_and_close_wakes() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 10)
    q.add_after("a", 0.01)
    t = time.monotonic()
    assert q.get(timeout=2) == "a"
    assert time.monotonic() - t < 1
    got: list[str | None] = []
    th = threading.Thread(target=lambda: got.append(q.get()))
    th.start()
    q.close()
    th.join(2)
    assert got == [None]


def test_workqueue_idle_workers_sleep_until_woken_and_due_keys_are_never_late() -> None:
    """One idle worker sleeps until the next delayed key is due, the others until woken; a
    key that falls due while that one is busy is still handed out on time, by another."""
    q: WorkQueue[str] = WorkQueue()
    got: dict[str, float] = {}
    mu = threading.Lock()

    def work() -> None:
        while (key := q.get()) is not None:
            with mu:
                got[key] = time.monotonic()
            time.sleep(0.5)  # busy well past the next key's due time
            q.done(key)

    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.05)  # all idle in get()
    t0 = time.monotonic()
    q.add_after("first", 0.1)
    q.add_after("second", 0.25)
    q.add_after("third", 0.3)
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    q.close()
    for w in workers:
        w.join(2)
    assert set(got) == {"first", "second", "third"}, got
    assert got["second"] - t0 < 0.45, got  # not after "first" was done (0.6 s)
    assert got["third"] - t0 < 0.5, got


def test_inotify_events_are_decoded_from_what_read_returns() -> None:
    import struct

    from converge.inotify import IN_ISDIR, IN_MOVED_TO, IN_Q_OVERFLOW, Event, parse

    def raw(wd: int, mask: int, name: bytes, padded: int) -> bytes:
        return struct.pack("iIII", wd, mask, 0, padded) + name.ljust(padded, b"\0")

    buf = (raw(3, IN_MOVED_TO, b"web.yaml", 16) + raw(1, IN_MOVED_TO | IN_ISDIR, b"team", 16)
           + raw(-1, IN_Q_OVERFLOW, b"", 0))
    assert parse(buf) == [Event(3, IN_MOVED_TO, "web.yaml"), Event(1, IN_MOVED_TO | IN_ISDIR, "team"),
                          Event(-1, IN_Q_OVERFLOW, "")]
    assert parse(buf[:10]) == []  # a short read holds no whole event


def test_log_checks_fall_on_shared_moments_never_later_than_their_delay() -> None:
    from converge.backends.daemon import LOG_CHECK_MAX, LOG_CHECK_SECONDS, log_check_at

    for delay in (LOG_CHECK_SECONDS, LOG_CHECK_MAX):
        starts = [1000.5 + i * 0.037 for i in range(200)]  # 200 logs looked at over 7.4 s
        due = [log_check_at(t, delay) for t in starts]
        assert all(t < d <= t + delay for t, d in zip(starts, due, strict=True))
        assert all(abs(d - round(d)) > 0.25 for d in due)  # never with the prober's whole-second slots
        assert len(set(due)) <= 7.4 / delay + 1  # one wake-up per delay for all of them
        again = [log_check_at(d, delay) for d in due]  # checked on time: the next one a delay on
        assert all(abs(a - d - delay) < 1e-9 for a, d in zip(again, due, strict=True))
