"""FileStore on a real filesystem: optimistic concurrency, atomic writes, locks, corruption."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from converge import filestore
from converge.api import ManagedService, ServiceKey
from converge.filestore import FileStore, UnsafeStore
from converge.host import Host
from converge.selector import parse_selector
from converge.stopsignal import StopSignal
from converge.store import AlreadyExists, Conflict, Invalid, NotFound
from tests.helpers import until

KEY_GOOD = ServiceKey("default", "good")


def make(name: str, **labels: str) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": name, "labels": labels},
        "spec": {"backend": {"daemon": {"command": ["true"]}}},
    })


def test_create_get_update_conflict_delete(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    a = s.create(make("a", stack="x"))
    assert (a.metadata.resourceVersion, a.metadata.generation) == ("1", 1) and a.metadata.uid
    with pytest.raises(AlreadyExists):
        s.create(make("a"))
    stale = s.get(a.key).model_copy(deep=True)  # objects from the store are shared: copy to change
    a.spec.backend.daemon.command = ["false"]  # type: ignore[union-attr]
    b = s.update(a)
    assert (b.metadata.resourceVersion, b.metadata.generation) == ("2", 2)
    stale.spec.adminState = "suspended"  # type: ignore[assignment]
    with pytest.raises(Conflict):
        s.update(stale)
    b.status.restarts = 4
    c = s.update_status(b)
    assert c.metadata.generation == 2 and c.status.restarts == 4
    with pytest.raises(Conflict):
        s.update_status(b)  # b's resourceVersion is now stale
    assert s.update(s.get(a.key).model_copy(deep=True)).metadata.resourceVersion == "3"  # no change, no write
    assert [o.metadata.name for o in s.list(selector=parse_selector("stack=x")).items] == ["a"]
    with pytest.raises(Conflict):
        s.delete(a.key, "1")
    s.delete(a.key)
    with pytest.raises(NotFound):
        s.get(a.key)


def test_delete_with_finalizers_marks_and_the_last_finalizer_removes(tmp_path: Path) -> None:
    """Deletion as in the API server: requested, held by finalizers, gone without them."""
    s = FileStore(tmp_path / "st")
    a = make("a")
    a.metadata.finalizers = ["converge.dev/deprovision", "example.com/keep"]
    a.metadata.deletionTimestamp = None
    created = s.create(a)
    s.delete(created.key)
    marked = s.get(created.key)
    assert marked.metadata.deletionTimestamp is not None
    assert marked.metadata.resourceVersion == "2" and marked.metadata.generation == 1
    s.delete(created.key)  # asking again changes nothing
    assert s.get(created.key).metadata.resourceVersion == "2"
    adding = marked.model_copy(deep=True)
    adding.metadata.finalizers.append("late.example.com/x")
    with pytest.raises(Invalid, match="no new finalizers"):
        s.update(adding)
    undelete = marked.model_copy(deep=True)
    undelete.metadata.deletionTimestamp = None
    undelete.metadata.finalizers = ["converge.dev/deprovision"]
    after = s.update(undelete)  # a writer cannot clear deletionTimestamp
    assert after.metadata.deletionTimestamp == marked.metadata.deletionTimestamp
    last = after.model_copy(deep=True)
    last.metadata.finalizers = []
    assert s.update(last).metadata.finalizers == []
    with pytest.raises(NotFound):
        s.get(created.key)
    assert not (tmp_path / "st" / "default" / "a.yaml").exists()


def test_recreated_object_is_not_overwritten_by_a_stale_writer(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    old = s.create(make("a"))
    s.delete(old.key)
    s.create(make("a"))
    with pytest.raises(Conflict):
        s.update(old)  # same resourceVersion "1", another uid


def test_writes_are_atomic_and_private(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    s.create(make("a"))
    assert (tmp_path / "st").stat().st_mode & 0o777 == 0o700
    f = tmp_path / "st" / "default" / "a.yaml"
    assert f.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in f.parent.iterdir()] == ["a.yaml"]  # no temp file left
    # A crash between writing the temp file and renaming it leaves a stray temp: ignored.
    (f.parent / ".a.yaml.123.456.tmp").write_text("half a wri")
    assert [o.metadata.name for o in s.list().items] == ["a"]


def _writer(root: str, name: str, n: int) -> None:
    s = FileStore(root)
    key = ServiceKey("default", "counter")
    for _ in range(n):
        while True:
            cur = s.get(key).model_copy(deep=True)
            cur.status.restarts += 1
            try:
                s.update_status(cur)
                break
            except Conflict:
                continue
    s.create(make(name))


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    root = tmp_path / "st"
    FileStore(root).create(make("counter"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(root), f"w{i}", 40)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = FileStore(root)
    assert s.get(ServiceKey("default", "counter")).status.restarts == 120
    assert len(s.list().items) == 4


def _hold_lock(root: str, started: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with Host(root).lock(ServiceKey("default", "x")):
        started.set()
        time.sleep(60)


def test_service_lock_excludes_and_dies_with_its_holder(tmp_path: Path) -> None:
    root = tmp_path / "st"
    FileStore(root)
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(root), started))
    holder.start()
    assert started.wait(30)
    got = threading.Event()

    def take() -> None:
        with Host(root).lock(ServiceKey("default", "x")):
            got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    assert not got.wait(0.3)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)  # a crashed controller's lock is released by the kernel
    holder.join()
    assert got.wait(5)


def test_corrupt_and_misplaced_files_are_reported_by_name(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    s.create(make("good"))
    d = tmp_path / "st" / "default"
    (d / "bad.yaml").write_text(": : :\n  - [")
    (d / "wrong.yaml").write_text((d / "good.yaml").read_text())
    edited = yaml.safe_load((d / "good.yaml").read_text())  # edited by hand, saved as block YAML
    edited["metadata"]["name"] = "invalid"
    edited["spec"]["adminState"] = "sleeping"
    (d / "invalid.yaml").write_text(yaml.safe_dump(edited))
    (d / "invalid-json.yaml").write_text((d / "good.yaml").read_text().replace('"good"', '"invalid-json"')
                                         .replace('"adminState": "active"', '"adminState": "sleeping"'))
    res = s.list()
    assert [o.metadata.name for o in res.items] == ["good"]
    errs = {Path(e.where).name: e.reason for e in res.errors}
    assert "not valid YAML" in errs["bad.yaml"]
    assert "expected default/wrong" in errs["wrong.yaml"]
    assert "spec.adminState" in errs["invalid.yaml"]
    assert "spec.adminState" in errs["invalid-json.yaml"]


def test_objects_are_written_as_json_that_is_yaml_and_hand_edited_yaml_is_read(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    s.create(make("good"))
    f = tmp_path / "st" / "default" / "good.yaml"
    text = f.read_text()
    assert text.startswith("{\n") and '\n  "metadata": {\n' in text  # indented: one field a line
    assert json.loads(text) == yaml.safe_load(text) == s.get(KEY_GOOD).dump()
    edited = yaml.safe_load(text)
    edited["metadata"]["labels"] = {"edited": "by-hand"}
    f.write_text(yaml.safe_dump(edited))  # block YAML, as an editor would leave it
    assert FileStore(tmp_path / "st").get(KEY_GOOD).metadata.labels == {"edited": "by-hand"}
    f.write_text("{metadata: {name: good}, spec: {backend: {daemon: {command: [x]}}}}\n")  # a YAML flow map
    assert FileStore(tmp_path / "st").get(KEY_GOOD).spec.backend.kind == "daemon"


def test_reading_creates_nothing_and_every_folder_is_private(tmp_path: Path) -> None:
    root = tmp_path / "a" / "store"
    s = FileStore(root)
    assert s.list().items == [] and not root.exists()  # `converge get` in a new folder writes nothing
    host = Host(root)
    with host.lock(ServiceKey("default", "x")):  # the first thing done may be taking a lock
        pass
    host.runtime_dir(ServiceKey("default", "x"))
    for d in [root, *root.rglob("*")]:
        if d.is_dir():
            assert d.stat().st_mode & 0o077 == 0, d


@contextlib.contextmanager
def watching(watch: Callable[[threading.Event], Iterator[ServiceKey]]) -> Iterator[Callable[[int], list[ServiceKey]]]:
    """Run a store's watch on a thread; yields taken(n): the keys it reported once n were
    (or, for none, after a pause), sorted, then forgotten. The watch ends with the block."""
    stop = threading.Event()
    seen: list[ServiceKey] = []
    t = threading.Thread(target=lambda: seen.extend(watch(stop)), daemon=True)
    t.start()

    def taken(n: int = 0) -> list[ServiceKey]:
        deadline = time.monotonic() + 10
        while len(seen) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        got = sorted(seen)
        seen.clear()
        return got

    try:
        yield taken
    finally:
        stop.set()
        t.join(3)
    assert not t.is_alive()


@pytest.mark.parametrize("events", [True, False], ids=["inotify", "polling"])
def test_watch_reports_others_changes_not_its_own_writes(tmp_path: Path, events: bool) -> None:
    mine, other = FileStore(tmp_path / "st"), FileStore(tmp_path / "st")  # e.g. `converge run` and `apply`
    mine.create(make("own"))
    other.create(make("theirs"))
    with watching(lambda stop: mine.watch(stop, interval=0.02, events=events)) as settle:
        other.create(make("sentinel"))
        assert settle(1) == [ServiceKey("default", "sentinel")]  # the watch is running
        own = mine.get(ServiceKey("default", "own")).model_copy(deep=True)
        own.status.restarts = 1
        mine.update_status(own)  # the controller's own status write
        mine.create(make("mine-new"))
        assert settle(0) == []
        theirs = other.get(ServiceKey("default", "theirs")).model_copy(deep=True)
        theirs.metadata.labels = {"changed": "yes"}
        other.update(theirs)
        other.create(make("new"))
        assert settle(2) == [ServiceKey("default", "new"), ServiceKey("default", "theirs")]
        other.delete(ServiceKey("default", "own"))
        assert settle(1) == [ServiceKey("default", "own")]
        mine.delete(ServiceKey("default", "theirs"))
        assert settle(0) == []


@pytest.mark.parametrize("events", [True, False], ids=["inotify", "polling"])
def test_watch_sees_a_write_that_left_the_folder_mtime_unchanged(tmp_path: Path, events: bool) -> None:
    """A folder's mtime is as coarse as the kernel's clock tick: a second write in the same
    tick as the watch's look changes nothing the watch can stat. It must still be seen."""
    mine, other = FileStore(tmp_path / "st"), FileStore(tmp_path / "st")
    other.create(make("x"))
    folder = tmp_path / "st" / "default"
    stop = threading.Event()
    seen: list[ServiceKey] = []
    t = threading.Thread(target=lambda: seen.extend(mine.watch(stop, interval=0.2, events=events)), daemon=True)
    t.start()
    try:
        time.sleep(0.5)  # the watch has its first look
        before = folder.stat()
        x = other.get(ServiceKey("default", "x")).model_copy(deep=True)
        x.metadata.labels = {"v": "2"}
        other.update(x)
        os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))  # as if in the same clock tick
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [ServiceKey("default", "x")]
    finally:
        stop.set()
        t.join(2)


def in_team(name: str) -> ManagedService:
    svc = make(name)
    svc.metadata.namespace = "team"
    return svc


def test_watch_by_inotify_reports_at_once_new_namespaces_and_edits_in_place(tmp_path: Path) -> None:
    """With inotify a change comes as it happens (a 60 s polling interval would hide it), a
    namespace folder made after the watch started is followed, a file rewritten in place
    (an editor, `cp`) is reported, and an idle store reports nothing."""
    mine, other = FileStore(tmp_path / "st"), FileStore(tmp_path / "st")
    other.create(make("a"))
    with watching(lambda stop: mine.watch(stop, interval=60)) as wait_for:
        time.sleep(0.3)  # the watch is set up
        other.create(make("b"))
        assert wait_for(1) == [ServiceKey("default", "b")]
        other.create(in_team("c"))
        assert wait_for(1) == [ServiceKey("team", "c")]
        other.create(in_team("d"))
        assert wait_for(1) == [ServiceKey("team", "d")]
        path = tmp_path / "st" / "default" / "a.yaml"
        data = path.read_bytes()
        with path.open("r+b") as f:  # in place: same inode, same size
            f.write(data)
        assert wait_for(1) == [ServiceKey("default", "a")]
        own = mine.get(ServiceKey("team", "c")).model_copy(deep=True)
        own.status.restarts = 3
        mine.update_status(own)
        assert wait_for(0) == []
        other.delete(ServiceKey("team", "d"))
        assert wait_for(1) == [ServiceKey("team", "d")]


def test_a_stop_signal_is_readable_exactly_while_set() -> None:
    sig = StopSignal()
    try:
        assert select.select([sig], [], [], 0)[0] == []
        sig.set()
        sig.set()
        assert sig.is_set() and select.select([sig], [], [], 0)[0] == [sig]
        sig.clear()
        assert not sig.is_set() and select.select([sig], [], [], 0)[0] == []
        sig.set()
        assert select.select([sig], [], [], 0)[0] == [sig]
    finally:
        sig.close()
    assert sig.fileno() == -1
    sig.set()  # closed: only the flag
    assert sig.is_set()


def test_watch_by_inotify_sleeps_on_a_stop_signal_with_its_events(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A StopSignal (`converge run`'s) ends the watch at once, however rarely the watch
    would look at a plain flag: an idle watch has nothing to wake up for."""
    monkeypatch.setattr(filestore, "STOP_CHECK", 3600.0)
    mine, other = FileStore(tmp_path / "st"), FileStore(tmp_path / "st")
    other.create(make("a"))  # the store's folder is there: inotify, not polling
    stop = StopSignal()
    seen: list[ServiceKey] = []
    t = threading.Thread(target=lambda: seen.extend(mine.watch(stop, interval=60)), daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # the watch is set up
        other.create(make("b"))
        until(lambda: seen == [ServiceKey("default", "b")], what="the change reported")
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    stop.close()


def _wakeups(tid: int) -> int:
    """How many times the thread tid has been scheduled (/proc's schedstat)."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[2])


def test_watch_started_before_the_store_exists_goes_over_to_inotify_once_it_does(tmp_path: Path) -> None:
    """`converge run` started before the first `apply`: the store's folder is not there yet,
    so the watch polls; once it is made, inotify takes over (it used to poll 4 times a second
    for good), and what was made in between is reported. The same after the folder is
    removed and made again."""
    root = tmp_path / "st"
    mine = FileStore(root)
    stop = StopSignal()
    seen: list[ServiceKey] = []
    tids: list[int] = []

    def watch() -> None:
        tids.append(threading.get_native_id())
        seen.extend(mine.watch(stop, interval=0.05))

    def quiet() -> int:
        """The watch thread's wake-ups over a second of an idle store."""
        time.sleep(0.3)  # inotify is set up
        before = _wakeups(tids[0])
        time.sleep(1.0)
        return _wakeups(tids[0]) - before

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # polling: no folder to watch
        other = FileStore(root)
        other.create(make("a"))
        other.create(in_team("b"))
        until(lambda: {ServiceKey("default", "a"), ServiceKey("team", "b")} <= set(seen), what="a and b reported")
        assert quiet() <= 2  # polling every 0.05 s: ~20
        other.create(make("c"))
        until(lambda: ServiceKey("default", "c") in seen, what="c reported")
        shutil.rmtree(root)
        time.sleep(0.2)
        FileStore(root).create(make("d"))
        until(lambda: ServiceKey("default", "d") in seen, what="d reported")
        assert quiet() <= 2
    finally:
        stop.set()
        t.join(10)
        stop.close()
    assert not t.is_alive()


def test_watch_by_inotify_reports_a_namespace_folder_moved_in_whole(tmp_path: Path) -> None:
    """A folder that arrives with its objects already in it (a restore, `mv`): no event of
    its own files ever comes, so what it holds is reported when the folder appears."""
    mine = FileStore(tmp_path / "st")
    mine.create(make("a"))
    elsewhere = FileStore(tmp_path / "backup")
    elsewhere.create(in_team("c"))
    elsewhere.create(in_team("d"))
    with watching(lambda stop: mine.watch(stop, interval=60)) as taken:
        time.sleep(0.3)  # the watch is set up
        os.rename(tmp_path / "backup" / "team", tmp_path / "st" / "team")
        assert taken(2) == [ServiceKey("team", "c"), ServiceKey("team", "d")]


def test_watch_by_inotify_after_lost_events_reports_what_changed_also_in_a_new_namespace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's event queue overflowed (IN_Q_OVERFLOW: the events themselves are lost):
    the watch compares every folder again, and a namespace folder it never saw is reported
    whole. The overflow is injected (it needs the system-wide queue limit lowered): the
    events of one read are replaced by it; the store, the folders and inotify are real."""
    from converge import filestore, inotify

    mode: list[str] = [""]  # "lose": the events read are dropped; "overflow": replaced by one

    class LosingEvents(inotify.Inotify):
        def read(self) -> list[inotify.Event]:
            got = super().read()
            if got and mode[0] == "lose":
                return []
            if got and mode[0] == "overflow":
                mode[0] = ""
                return [inotify.Event(-1, inotify.IN_Q_OVERFLOW, "")]
            return got

    monkeypatch.setattr(filestore, "Inotify", LosingEvents)
    mine, other = FileStore(tmp_path / "st"), FileStore(tmp_path / "st")
    other.create(make("a"))
    with watching(lambda stop: mine.watch(stop, interval=60)) as taken:
        time.sleep(0.3)  # the watch is set up
        mode[0] = "lose"
        other.create(in_team("c"))  # a new namespace folder and its object: events lost
        assert taken(0) == []
        mode[0] = "overflow"
        other.create(make("b"))  # the kernel says it lost events
        assert taken(2) == [ServiceKey("default", "b"), ServiceKey("team", "c")]
        assert mode[0] == ""
        other.create(in_team("d"))  # the new namespace is followed from now on
        assert taken(1) == [ServiceKey("team", "d")]


def test_written_objects_are_the_callers_own_and_a_status_write_keeps_the_shared_spec(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    created = s.create(make("a"))
    created.metadata.labels["changed"] = "after"  # what a write returns is the caller's to change
    first = s.get(created.key)
    assert "changed" not in first.metadata.labels
    new = first.model_copy(update={"status": first.status.model_copy(update={"restarts": 1})})
    written = s.update_status(new)
    written.status.restarts = 7
    again = s.get(created.key)
    assert again.status.restarts == 1 and again.metadata.resourceVersion == "2"
    assert again.spec is first.spec  # unchanged spec: the same shared object (per-spec memos hold)
    assert again.status is not new.status  # the cache keeps nothing the caller passed
    new.status.restarts = 9
    assert s.get(created.key).status.restarts == 1


def test_an_object_folder_is_checked_on_every_write(tmp_path: Path) -> None:
    s = FileStore(tmp_path / "st")
    s.create(make("a"))
    ns = tmp_path / "st" / "default"
    ns.chmod(0o755)  # widened after the first write
    s.create(make("b"))
    assert ns.stat().st_mode & 0o777 == 0o700
    for f in ns.iterdir():
        f.unlink()
    ns.rmdir()  # removed under a running store
    s.create(make("c"))
    assert [o.metadata.name for o in s.list().items] == ["c"]
    for f in ns.iterdir():
        f.unlink()
    ns.rmdir()
    (tmp_path / "elsewhere").mkdir()
    ns.symlink_to(tmp_path / "elsewhere")  # replaced by a link: never written through
    with pytest.raises(UnsafeStore):
        s.create(make("d"))
    assert list((tmp_path / "elsewhere").iterdir()) == []
