"""`converge apply` creates its new objects in one batch (FileStore.create_many): all of
them or none, also when the process dies in the middle. Real crashes: the real CLI is
stopped (SIGSTOP) the moment the kernel reports the point of the batch a test wants (the
first temp file, the commit record, the first object renamed into place) and killed
(SIGKILL); then a later writer of the store looks, as after any crash. Only a torn commit
record, which no kill can be timed to leave, is written by hand."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from converge import storebatch
from converge.api import FINALIZER, ManagedService, ServiceKey
from converge.filestore import FileStore
from converge.inotify import IN_CREATE, IN_MOVED_TO, Inotify
from converge.store import AlreadyExists
from tests.conftest import CLI, CONVERGE
from tests.helpers import stop_controller, until

N = 400


def _manifests(folder: Path, n: int = N, admin: str = "active") -> Path:
    folder.mkdir()
    for i in range(n):
        doc = {"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
               "metadata": {"name": f"svc-{i:04d}"},
               "spec": {"adminState": admin, "backend": {"daemon": {"command": ["sleep", "1000"]}}}}
        (folder / f"svc-{i:04d}.yaml").write_text(json.dumps(doc) + "\n")
    return folder


def _crash_at(cli: CLI, mdir: Path, where: str) -> None:
    """Run `converge apply -f mdir`; stop it the moment `where` happens ("temp": its first
    temp file is made, "record": its commit record, "object": its first object file is
    renamed into place), then kill it."""
    (cli.store / "default").mkdir(parents=True, mode=0o700, exist_ok=True)
    ino = Inotify()
    try:
        folder = cli.store if where == "record" else cli.store / "default"
        ino.add(folder, IN_MOVED_TO if where == "object" else IN_CREATE)
        p = cli.popen("apply", "-f", str(mdir))
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.poll() is None:
                select.select([ino.fileno()], [], [], 0.5)
                if any(_is(where, ev.name) for ev in ino.read()):
                    os.kill(p.pid, signal.SIGSTOP)
                    break
            else:
                pytest.fail(f"apply ended before {where!r}: {p.poll()} {p.stdout.read() if p.stdout else ''}")
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout:
                p.stdout.close()
    finally:
        ino.close()


def _is(where: str, name: str) -> bool:
    if where == "temp":
        return storebatch.is_temp(name)
    if where == "record":
        return name.startswith(storebatch.RECORD_PREFIX)
    return name.endswith(".yaml") and not name.startswith(".")


def _objects(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "default").iterdir() if not p.name.startswith("."))


def _leftovers(store: Path) -> list[str]:
    return sorted(p.name for p in [*store.iterdir(), *(store / "default").iterdir()]
                  if storebatch.is_temp(p.name) or p.name.startswith(storebatch.RECORD_PREFIX))


def _next_writer(store: Path) -> None:
    """Any later write of the store (here: another service created) looks first."""
    FileStore(store).create(ManagedService.model_validate({
        "metadata": {"name": "later"}, "spec": {"backend": {"daemon": {"command": ["true"]}}}}))


def _all_valid(cli: CLI, n: int) -> None:
    """Every object readable and valid, as apply makes them (its finalizer)."""
    got = cli("get", "-o", "json")
    assert "warning" not in got.stderr, got.stderr
    items = json.loads(got.stdout)["items"]
    assert len(items) == n
    assert all(FINALIZER in o["metadata"]["finalizers"] for o in items if o["metadata"]["name"] != "later")


def test_killed_while_writing_the_files_leaves_none(cli: CLI, tmp_path: Path) -> None:
    _crash_at(cli, _manifests(tmp_path / "m"), "temp")
    assert _objects(cli.store) == [], "nothing is visible before the commit"
    assert [n for n in _leftovers(cli.store) if n.startswith(storebatch.RECORD_PREFIX)] == []
    _next_writer(cli.store)
    assert _objects(cli.store) == ["later.yaml"] and _leftovers(cli.store) == []
    assert cli("apply", "-f", str(tmp_path / "m")).stdout.count(" created") == N  # nothing half-made to trip on
    _all_valid(cli, N + 1)


def test_killed_while_renaming_leaves_all_once_the_next_writer_looks(cli: CLI, tmp_path: Path) -> None:
    _crash_at(cli, _manifests(tmp_path / "m"), "object")
    seen = _objects(cli.store)
    assert 1 <= len(seen) <= N
    if len(seen) < N:  # the kill came mid-batch (the usual case): the record says what is left
        assert [n for n in _leftovers(cli.store) if n.startswith(storebatch.RECORD_PREFIX)]
    _all_valid(cli, len(seen))  # a reader meanwhile: complete objects only
    _next_writer(cli.store)
    assert len(_objects(cli.store)) == N + 1 and _leftovers(cli.store) == []
    _all_valid(cli, N + 1)
    assert cli("apply", "-f", str(tmp_path / "m")).stdout.count(" unchanged") == N


def test_a_run_already_running_completes_a_batch_crashed_meanwhile(cli: CLI, tmp_path: Path) -> None:
    """The next writer need not be a new process: a `converge run` that has written before
    the crash finishes the batch with its next write (the part it sees renamed makes one)
    and reconciles all of it."""
    first = tmp_path / "first.yaml"
    first.write_text(json.dumps({"apiVersion": "converge.dev/v1alpha1", "kind": "ManagedService",
                                 "metadata": {"name": "first"}, "spec": {"adminState": "suspended",
                                 "backend": {"daemon": {"command": ["sleep", "1000"]}}}}))
    cli("apply", "-f", str(first))
    store = FileStore(cli.store)
    with (tmp_path / "run.log").open("w") as log:
        run = subprocess.Popen([CONVERGE, "run", "--resync", "600s"], env=cli.env, cwd=cli.cwd,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        key = ServiceKey("default", "first")
        until(lambda: store.get(key).status.observedGeneration, timeout=30, what="run's first write")
        _crash_at(cli, _manifests(tmp_path / "m", admin="suspended"), "object")

        def reconciled() -> int:
            names = [n[:-5] for n in _objects(cli.store)]
            return sum(1 for n in names if store.get(ServiceKey("default", n)).status.observedGeneration)

        until(lambda: reconciled() == N + 1, timeout=60, interval=0.2, what="every object of the batch reconciled")
        assert _leftovers(cli.store) == []
        assert run.poll() is None, (tmp_path / "run.log").read_text()
    finally:
        stop_controller(run, grace=20)


def test_killed_at_the_commit_leaves_none_or_all(cli: CLI, tmp_path: Path) -> None:
    _crash_at(cli, _manifests(tmp_path / "m"), "record")
    _next_writer(cli.store)
    made = len(_objects(cli.store)) - 1
    assert made in (0, N), made  # a torn record is no commit; a complete one is all of it
    assert _leftovers(cli.store) == []
    _all_valid(cli, made + 1)


def test_a_torn_record_commits_nothing(tmp_path: Path) -> None:
    """A crash between making the record and its fsync (no kill can be timed to land
    there): the record does not parse, nothing was renamed, and nothing ever is."""
    root = tmp_path / "st"
    FileStore(root).create(ManagedService.model_validate({
        "metadata": {"name": "a"}, "spec": {"backend": {"daemon": {"command": ["true"]}}}}))
    folder = root / "default"
    tmp = storebatch.temp_name("b.yaml")
    (folder / tmp).write_bytes((folder / "a.yaml").read_bytes().replace(b'"a"', b'"b"'))
    record = json.dumps([["default", tmp]])
    (root / f"{storebatch.RECORD_PREFIX}{'0' * 32}").write_text(record[: len(record) // 2])
    _next_writer(root)
    assert sorted(p.name for p in folder.iterdir()) == ["a.yaml", "later.yaml"]
    assert [p.name for p in root.iterdir() if p.name.startswith(".batch")] == []


def test_a_record_renames_only_this_stores_temp_files(tmp_path: Path) -> None:
    """A record is data found in the store: what does not name one of its own temp files
    in a namespace folder is never renamed, and a name made since is kept."""
    root = tmp_path / "st"
    store = FileStore(root)
    store.create(ManagedService.model_validate({
        "metadata": {"name": "a"}, "spec": {"backend": {"daemon": {"command": ["true"]}}}}))
    folder = root / "default"
    (folder / "x.txt").write_text("not an object")
    keep = storebatch.temp_name("a.yaml")  # a.yaml exists: kept as it is
    (folder / keep).write_text("{}")
    entries = [["default", "x.txt"], ["../default", keep], ["default", "../../x.yaml"], ["default", keep]]
    (root / f"{storebatch.RECORD_PREFIX}{'1' * 32}").write_text(json.dumps(entries))
    before = (folder / "a.yaml").read_bytes()
    _next_writer(root)
    assert sorted(p.name for p in folder.iterdir()) == ["a.yaml", "later.yaml", "x.txt"]
    assert (folder / "a.yaml").read_bytes() == before


def test_create_many_is_all_or_nothing_on_an_existing_name(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "st")

    def svc(name: str) -> ManagedService:
        return ManagedService.model_validate({"metadata": {"name": name},
                                              "spec": {"backend": {"daemon": {"command": ["true"]}}}})

    store.create(svc("b"))
    with pytest.raises(AlreadyExists):
        store.create_many([svc("a"), svc("b"), svc("c")])
    assert sorted(p.name for p in (tmp_path / "st" / "default").iterdir()) == ["b.yaml"]
    store.create_many([svc("a"), svc("c")])
    fresh = FileStore(tmp_path / "st")  # what another process reads: the files themselves
    got = {k: fresh.get(ServiceKey("default", k)) for k in "abc"}
    assert {k: o.metadata.resourceVersion for k, o in got.items()} == {"a": "1", "b": "1", "c": "1"}
    assert got["a"].metadata.uid != got["c"].metadata.uid
    assert store.get(ServiceKey("default", "a")) == got["a"]  # the writer's cache: the same
    assert sorted(p.name for p in (tmp_path / "st" / "default").iterdir()) == ["a.yaml", "b.yaml", "c.yaml"]


def test_a_committed_batch_across_namespaces_is_completed_in_each(tmp_path: Path) -> None:
    """A crash right after the commit, in two namespaces (the state is made as the writer
    leaves it: temp files staged and a complete record, nothing renamed yet)."""
    root = tmp_path / "st"
    FileStore(root).create_many([ManagedService.model_validate({
        "metadata": {"name": "seed", "namespace": ns}, "spec": {"backend": {"daemon": {"command": ["true"]}}}})
        for ns in ("one", "two")])
    entries = []
    for ns in ("one", "two"):
        tmp = storebatch.temp_name("x.yaml")
        (root / ns / tmp).write_bytes((root / ns / "seed.yaml").read_bytes().replace(b'"seed"', b'"x"'))
        entries.append([ns, tmp])
    (root / f"{storebatch.RECORD_PREFIX}{'2' * 32}").write_text(json.dumps(entries))
    _next_writer(root)
    fresh = FileStore(root)
    assert {o.metadata.namespace for o in fresh.list().items if o.metadata.name == "x"} == {"one", "two"}
    assert [p.name for p in root.rglob(".*") if p.name != ".lock"] == []


IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10  # (inotify(7); converge itself never asks for them)


def test_fsync_all_tries_every_file_follows_no_link_and_raises_the_first_error(tmp_path: Path) -> None:
    """The batch's files are fsynced several at once: each one opened (read-only, seen by
    inotify) even when another fails, a link never followed, an error raised at the end."""
    folder, elsewhere = tmp_path / "ns", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    names = [f".svc-{i:02d}.yaml.{i:032x}.tmp" for i in range(24)]
    for n in names:
        (folder / n).write_bytes(b"{}\n")
    (elsewhere / "target").write_bytes(b"not ours\n")
    (folder / "planted").symlink_to(elsewhere / "target")
    ino = Inotify()
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ino.add(folder, IN_OPEN)
        ino.add(elsewhere, IN_OPEN)
        listed = [*names[:5], "planted", "missing", *names[5:]]
        with pytest.raises(OSError) as err:
            storebatch.fsync_all([(dfd, n) for n in listed], threads=4)
        assert err.value.errno in (errno.ELOOP, errno.ENOENT)
        opened: set[str] = set()
        deadline = time.monotonic() + 5
        while opened != set(names) and time.monotonic() < deadline:
            select.select([ino.fileno()], [], [], 0.2)
            opened |= {ev.name for ev in ino.read() if ev.name}
        assert opened == set(names), "every file tried, the link's target never opened"
        storebatch.fsync_all([(dfd, n) for n in names], threads=4)  # all good: no error
        storebatch.fsync_all([(dfd, names[0])])  # one file: no thread started
    finally:
        os.close(dfd)
        ino.close()
