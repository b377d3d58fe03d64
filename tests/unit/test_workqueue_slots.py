"""The work queue's schedule (converge.workqueue.Schedule): batched keys in slots, one
worker per slot. Pure: a fake clock, no threads; a model checks every hand-out."""

from __future__ import annotations

import threading
import time

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from converge.workqueue import Schedule, WorkQueue

SLOT = 1.0
KEYS = st.sampled_from("abcdef")
# a few times often (keys in one slot, a slot's end, just after it), any time now and then
DELAYS = st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.3, 2.5]) | st.floats(0, 3)


class ScheduleMachine(RuleBasedStateMachine):
    """Workers (w0..w2) take keys, finish them, keys are added (batched or not) and time
    passes; a model of the due times says what may be handed out and when."""

    def __init__(self) -> None:
        super().__init__()
        self.s: Schedule[str] = Schedule(SLOT, offset=0.25)
        self.now = 100.0
        self.due: dict[str, tuple[float, bool]] = {}  # the model: queued keys
        self.again: dict[str, tuple[float, bool]] = {}  # added while processing
        self.held: dict[str, tuple[str, bool, float]] = {}  # worker -> (key, batched, its due time)

    def _merge(self, prev: tuple[float, bool] | None, when: float, batch: bool) -> tuple[float, bool]:
        if batch:
            when = self.s.slot_of(when)
        return (when, batch) if prev is None else (min(when, prev[0]), batch and prev[1])

    @rule(key=KEYS, delay=DELAYS, batch=st.booleans())
    def add(self, key: str, delay: float, batch: bool) -> None:
        self.s.add(key, self.now + delay, batch)
        processing = any(k == key for k, _, _ in self.held.values())
        book = self.again if processing else self.due
        book[key] = self._merge(book.get(key), self.now + delay, batch)
        if batch:  # the start of its slot: early by less than a slot, never late
            assert self.now + delay - SLOT < self.s.slot_of(self.now + delay) <= self.now + delay

    @rule(dt=DELAYS)
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(worker=st.sampled_from(["w0", "w1", "w2"]), owner=st.booleans())
    def take(self, worker: str, owner: bool) -> None:
        if worker in self.held:
            return
        owner = owner and bool(self.held)  # (an owner is a worker just back from a batched key)
        held_slots = [w for _, b, w in self.held.values() if b]
        key = self.s.take(self.now, owner)
        alone = [k for k, (w, b) in self.due.items() if w <= self.now and not b]
        batched = [k for k, (w, b) in self.due.items() if w <= self.now and b]
        # a slot being worked on waits for its worker (unless owner: it is one) a slot at most
        free = [k for k in batched if owner or self.now >= self.due[k][0] + SLOT
                or not any(w >= self.due[k][0] for w in held_slots)]
        if key is None:
            assert not alone and not free, (alone, free)
            at = self.s.wake_at(self.now, owner)
            if self.due:  # a caller sleeps no later than the moment it could take something
                soonest = min(w + SLOT if b and any(h >= w for h in held_slots) else w
                              for w, b in self.due.values())
                assert at is not None and at <= soonest + 1e-9
            else:
                assert at is None
            return
        when, batch = self.due.pop(key)
        assert when <= self.now
        if alone:  # keys not batched first, the earliest first
            assert not batch and when == min(self.due.get(k, (when, False))[0] for k in alone)
        else:
            assert key in free and when == min(self.due.get(k, (when, True))[0] for k in free)
        self.held[worker] = (key, batch, when)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.held)))
        key, _, _ = self.held.pop(worker)
        self.s.done(key)
        again = self.again.pop(key, None)
        if again is not None:
            prev = self.due.get(key)
            self.due[key] = again if prev is None else (min(again[0], prev[0]), again[1] and prev[1])

    @invariant()
    def counts(self) -> None:
        assert self.s.pending() == len(self.due) + len(self.held)
        assert self.s.depth(self.now) == sum(1 for w, _ in self.due.values() if w <= self.now)


TestSchedule = ScheduleMachine.TestCase
TestSchedule.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def test_a_slot_goes_to_the_worker_that_comes_back_and_to_others_only_when_late() -> None:
    s: Schedule[str] = Schedule(SLOT)
    for k in "abcd":
        s.add(k, 10.3 + 0.1 * "abcd".index(k), batch=True)  # one slot: due at 10.0
    s.add("x", 10.9)  # not batched
    assert s.take(9.99) is None and s.wake_at(9.99) == 10.0
    assert s.take(10.05) == "a"
    assert s.take(10.05) is None  # the others wait for a's worker ...
    assert s.wake_at(10.05) == 10.9  # (x is due before)
    assert s.ready(10.05) == 0  # not a backlog for the worker limit
    s.done("a")
    assert s.take(10.06, owner=True) == "b"  # a's worker, back: the next of the slot
    assert s.take(10.95) == "x"  # not batched: to anyone, first
    assert s.take(10.95) is None
    assert s.wake_at(10.95) == 11.0  # ... a slot at most
    assert s.take(11.0) == "c"  # b's worker did not come back within a slot: any worker
    assert s.take(11.0) == "d"
    s.done("b")
    s.done("c")
    s.done("d")
    assert s.pending() == 1 and s.wake_at(11.0) is None


def test_the_last_batch_worker_leaving_without_coming_back_wakes_a_sleeper() -> None:
    s: Schedule[str] = Schedule(SLOT)
    s.add("a", 5.0, batch=True)
    s.add("b", 5.0, batch=True)
    assert s.take(5.0) == "a"
    assert s.take(5.0) is None
    assert s.done("a")  # (done, not a get: its worker gave up its place) b is free now
    assert s.take(5.01) == "b"


def test_an_event_for_a_key_waiting_in_its_slot_hands_it_out_alone() -> None:
    s: Schedule[str] = Schedule(SLOT)
    s.add("a", 5.0, batch=True)
    s.add("b", 5.0, batch=True)
    assert s.take(5.0) == "a"
    assert s.take(5.1) is None
    assert s.add("b", 5.1)  # its process exited: not held back for a's worker
    assert s.take(5.1) == "b"


def test_worker_threads_pass_over_a_slot_in_one_wake_up() -> None:
    """Real threads: a slot's keys all go to one worker while its passes are quick; a
    worker stuck on one of them holds the others back by at most a slot."""
    slot = 0.5
    q: WorkQueue[str] = WorkQueue(slot=slot)
    took: dict[str, tuple[str, float]] = {}
    mu = threading.Lock()
    stuck = threading.Event()

    def work() -> None:
        done = None
        while (key := q.get(done=done)) is not None:
            with mu:
                took[key] = (threading.current_thread().name, time.monotonic())
            if key.startswith("slow") and not stuck.is_set():
                stuck.set()
                time.sleep(3 * slot)
            done = key

    workers = [threading.Thread(target=work, name=f"w{i}") for i in range(4)]
    for w in workers:
        w.start()
    try:
        t = time.monotonic()
        start = (t // slot + 2) * slot  # a slot boundary at least one slot ahead
        keys = [f"k{i}" for i in range(6)]
        for k in keys:
            q.add_after(k, start + slot / 2 - time.monotonic(), batch=True)
        deadline = time.monotonic() + 10
        while len(took) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len({took[k][0] for k in keys}) == 1, took  # one worker
        assert all(start - 0.001 <= took[k][1] < start + slot for k in keys), (start, took)  # never early

        start += 3 * slot
        keys = ["slow", "k10", "k11", "k12"]
        for k in keys:
            q.add_after(k, start + slot / 2 - time.monotonic(), batch=True)
        while len(took) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        others = [took[k] for k in keys[1:]]
        assert all(name != took["slow"][0] for name, _ in others), took  # taken over ...
        assert all(start + slot - 0.001 <= at < start + 2 * slot for _, at in others), (start, took)  # ... a slot late
    finally:
        q.close()
        for w in workers:
            w.join(5)
