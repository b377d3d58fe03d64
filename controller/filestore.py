"""FileStore: the local mode's store, one YAML file per object.

Layout under the root (default ./.converge, mode 0700; files 0600):

    <namespace>/<name>.yaml          the object (metadata, spec, status), written as
                                     indented JSON: valid YAML, as readable, and parsed
                                     by pydantic's own JSON parser (about 10x faster than
                                     YAML); a file edited into other YAML is read too
    .lock                            held (flock) by every writer: read-check-write is atomic

(The same root also holds the local host context, converge.host: `_runtime/` and
`_locks/`; folders starting with `_` or `.` are never namespaces.) Deletion follows the
API server (see converge.store): `delete` marks an object with finalizers, the update
that removes its last finalizer removes the file.

A write goes to a temp file in the same folder, is fsynced and renamed over the old one,
and the folder is fsynced (not for a status-only write: see _write): a crash leaves either
the old or the new object, never a torn one (a crash's leftover temp file is removed by
the next writer: every write happens under the store lock, so a temp file seen while
holding it is garbage). `create_many` (what `apply` uses for its new objects) writes a
batch all or nothing, also across a crash: see converge.storebatch.

Hostile contents: nothing inside the root is followed if it is a link (namespace folders,
object files, `.lock`, temp files: O_NOFOLLOW and folder fds), a link or anything but a
regular file where an object should be is a corrupt object reported by name, objects
larger than the API's limit are not parsed, and folders that exist with wider modes are
made 0700 again. Parsed objects are cached by (inode, mtime, size), so a steady-state pass
parses nothing; like an informer's cache, objects returned by get/list are shared: copy
(`model_copy(deep=True)`) before changing one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import threading
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from converge import heap, storebatch, storefiles
from converge import inotify as _IN
from converge.api import ManagedService, ManagedServiceSpec, ObjectMeta, ServiceKey
from converge.fielderrors import format_validation_error
from converge.inotify import Inotify
from converge.selector import Selector
from converge.store import AlreadyExists, Conflict, CorruptObject, Invalid, ListResult, NotFound, StoreError
from converge.storefiles import Raw, default_root

__all__ = ["FileStore", "UnsafeStore", "default_root", "parse"]

_Sig = storefiles.Sig
_sig = storefiles.sig
RECENT_NS = 1_000_000_000  # see FileStore._poll
STOP_CHECK = 1.0  # seconds between looks at a watch's stop flag while no event comes
_STOPPED, _ROOT_GONE, _UNUSABLE = "stopped", "root gone", "unusable"  # why an inotify watch ended
_ROOT_EVENTS = (_IN.IN_CREATE | _IN.IN_MOVED_TO | _IN.IN_DELETE | _IN.IN_MOVED_FROM | _IN.IN_DELETE_SELF
                | _IN.IN_MOVE_SELF | _IN.IN_ONLYDIR | _IN.IN_DONT_FOLLOW)
_NS_EVENTS = (_IN.IN_CLOSE_WRITE | _IN.IN_MOVED_TO | _IN.IN_MOVED_FROM | _IN.IN_DELETE | _IN.IN_CREATE
              | _IN.IN_ATTRIB | _IN.IN_ONLYDIR | _IN.IN_DONT_FOLLOW)
_REWRITTEN = _IN.IN_CLOSE_WRITE | _IN.IN_CREATE  # never how this store writes (it renames): always another's
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeStore(StoreError):
    """Something inside the store is a link or not what it should be: converge refuses to
    write through it (it would write outside the store)."""


_STORE_OWNED = ("uid", "creationTimestamp", "generation", "deletionTimestamp")  # update keeps the stored ones


def _next_version(cur: ManagedService) -> str:
    return str(int(cur.metadata.resourceVersion or "0") + 1)


def _encode(obj: ManagedService) -> bytes:
    """An object file's content: the model's canonical JSON (= ManagedService.dump())."""
    return (obj.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n").encode()


def _canonical(data: bytes) -> ManagedService | None:
    """The object data holds if it is valid and validates back to the same bytes (what a
    stamp vouches for, see converge.storefiles), else None. It is a new object, shared
    with nothing: what a reader would parse from the file."""
    try:
        obj = ManagedService.model_validate_json(data)
    except ValidationError:
        return None
    return obj if _encode(obj) == data else None


def parse(path: str, raw: Raw, key: ServiceKey) -> ManagedService:
    """The object of `key` in a file's bytes, validated (CorruptObject if it is not one,
    or holds another key); a valid canonical file not stamped yet is stamped."""
    obj = _parse(path, raw.data, key)
    if obj.key != key:
        raise CorruptObject(path, f"holds {obj.key}, expected {key}", key)
    if not raw.stamped and _encode(obj) == raw.data:
        storefiles.stamp_path(path, raw.sig, raw.data)
    return obj


def _parse(path: str, raw: bytes, key: ServiceKey) -> ManagedService:
    """An object file's content: JSON as written (parsed and validated in one step by
    pydantic; JSON has no anchors or tags), else YAML (a file someone edited): through
    the bounded reader when it has anchors or tags (bombs, cycles), else the C loader."""
    if raw.lstrip()[:1] == b"{":
        try:
            return ManagedService.model_validate_json(raw)
        except ValidationError as exc:
            if not any(e["type"] == "json_invalid" for e in exc.errors()):
                raise CorruptObject(path, format_validation_error(exc, ManagedService), key) from None
            # not JSON after all (a YAML flow mapping): read it as YAML
    import yaml  # only for files that are not JSON

    from converge.yamlsafe import YamlError, load_all

    try:
        from yaml import CSafeLoader as _Loader
    except ImportError:  # pragma: no cover - libyaml missing
        from yaml import SafeLoader as _Loader  # type: ignore[assignment]
    data: Any = None
    try:
        text = raw.decode()
        if b"&" in raw or b"!" in raw:  # anchors or tags: only the bounded reader (bombs, cycles)
            docs = [d for _, d in load_all(text)]
            data = docs[0] if len(docs) == 1 else docs
        else:
            data = yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, YamlError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptObject(path, f"not valid YAML: {' '.join(str(exc).split())[:300]}", key) from None
    if not isinstance(data, dict):
        raise CorruptObject(path, "not a mapping", key)
    try:
        return ManagedService.model_validate(data)
    except ValidationError as exc:
        raise CorruptObject(path, format_validation_error(exc, ManagedService), key) from None


class FileStore:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.writes = 0  # files written by this instance: steady state must add none
        self._cache: dict[ServiceKey, tuple[_Sig, ManagedService]] = {}
        self._paths: dict[ServiceKey, str] = {}  # pathlib costs more than the rest of a cached get
        self._mu = threading.Lock()
        self._made: set[Path] = set()  # folders known to exist (created on first write)
        self._swept = False  # leftover temp files removed (by the first write)
        self._own: dict[Path, _Sig | None] = {}  # object file -> this instance's last write (None: deleted)

    # ------------------------------------------------------------------ paths

    def _ensure_dir(self, path: Path) -> None:
        """Create path (and the store root) private: mkdir's `parents` ignores the mode.
        A folder inside the root must be a real folder (never a link), and one that exists
        with a wider mode is made 0700."""
        if path != self.root and self.root not in self._made:
            self._ensure_dir(self.root)
            self._made.add(self.root)
        missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
        for p in reversed(missing):
            p.mkdir(mode=0o700, exist_ok=True)
        if path == self.root:
            if path.stat().st_mode & 0o077:
                path.chmod(0o700)
            return
        fd = self._open_dir(path)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    def _open_dir(self, path: Path) -> int:
        """An fd of a folder inside the root, refusing a link (O_NOFOLLOW)."""
        try:
            return os.open(path, _DIR_FLAGS)
        except OSError as exc:
            what = "is a link" if path.is_symlink() else (exc.strerror or str(exc))
            raise UnsafeStore(f"{path}: {what}: refusing to write there (links inside the store "
                              "are never followed)") from None

    def _folder(self, path: Path) -> int:
        """An fd of an object's folder to write in: made (private) on this instance's first
        write there; after that only its mode is checked, on the fd every write opens anyway
        (walking and stat'ing the whole path on each write was a tenth of a write's CPU)."""
        if path not in self._made:
            self._ensure_dir(path)
            self._made.add(path)
        try:
            dfd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:  # removed since: made again
            self._ensure_dir(path)
            dfd = self._open_dir(path)
        except OSError:
            dfd = self._open_dir(path)  # raises UnsafeStore, saying why (a link)
        try:
            if os.fstat(dfd).st_mode & 0o077:
                os.fchmod(dfd, 0o700)
        except BaseException:
            os.close(dfd)
            raise
        return dfd

    def path(self, key: ServiceKey) -> Path:
        return self.root / key.namespace / f"{key.name}.yaml"

    def namespaces(self) -> list[str]:
        return storefiles.namespaces(self.root)

    # ------------------------------------------------------------------ reading

    def _read(self, key: ServiceKey, path: str, folder_checked: bool = False,
              entry: os.DirEntry[str] | None = None) -> ManagedService:
        """The object of `key` stored at `path` (a str: pathlib is most of a cached get);
        parsed only when the file changed. `folder_checked`: the caller knows the
        namespace folder is no link; `entry`: the folder's entry of the file."""
        with self._mu:
            hit = self._cache.get(key)
        if hit is not None or entry is None or not entry.is_file(follow_symlinks=False):
            sig = storefiles.check(key, path, folder_checked)
            if hit is not None and hit[0] == sig:
                return hit[1]
        # (else: nothing to compare with, and the listing says a regular file: read checks
        # the type and size of what it opens, and a cold list makes one lstat fewer per object)
        raw = storefiles.read(key, path)
        obj = parse(path, raw, key)
        with self._mu:
            self._cache[key] = (raw.sig, obj)
        return obj

    def get(self, key: ServiceKey) -> ManagedService:
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = str(self.path(key))
        return self._read(key, path)

    def list(self, namespace: str | None = None, selector: Selector | None = None) -> ListResult:
        out = ListResult()
        with heap.keeping():  # (a cold list makes and keeps many objects: the collector paused)
            self._list_into(out, namespace, selector)
        return out

    def _list_into(self, out: ListResult, namespace: str | None, selector: Selector | None) -> None:
        for found in storefiles.object_files(self.root, namespace):
            if isinstance(found, CorruptObject):
                out.errors.append(found)
                continue
            key, entry = found
            self._paths.setdefault(key, entry.path)  # (get's path: the same string)
            try:
                obj = self._read(key, entry.path, folder_checked=True, entry=entry)
            except NotFound:
                continue
            except CorruptObject as exc:
                out.errors.append(exc)
                continue
            if selector is None or selector.matches(obj.metadata.labels):
                out.items.append(obj)

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        if self.root not in self._made:
            self._ensure_dir(self.root)
            self._made.add(self.root)
        try:
            fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UnsafeStore(f"{self.root / '.lock'}: {exc.strerror}: refusing a link as the store's lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not self._swept:
                self._sweep()
            else:  # a batch committed since by a writer that then crashed (a `run` writes on)
                self._complete_batches()
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _sweep(self) -> None:
        """What a writer that crashed left (called holding the store lock, when no write
        can be under way): a batch it committed is completed (converge.storebatch), then
        its temp files are removed."""
        self._swept = True
        self._complete_batches()
        for ns in self.namespaces():
            with contextlib.suppress(OSError):
                for e in os.scandir(self.root / ns):
                    if storebatch.is_temp(e.name) and e.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            Path(e.path).unlink()

    def _complete_batches(self) -> None:
        """Finish what a crashed writer's committed batch left (holding the store lock):
        one look at the root's names when there is none (~20 µs a write)."""
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            storebatch.complete(root_fd)
        finally:
            os.close(root_fd)

    def _stage(self, dfd: int, path: Path, data: bytes, sync: bool = True) -> tuple[str, _Sig, ManagedService | None]:
        """data in a new temp file next to path (in the folder dfd), stamped if it is
        canonical, fsynced (unless not `sync`: the caller fsyncs it): (its name, its (inode,
        mtime, size), the object it holds if canonical). Nothing is left behind on failure."""
        tmp = storebatch.temp_name(path.name)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            stored = _canonical(data)
            if stored is not None:  # valid as written: readers may trust it unvalidated
                storefiles.stamp_fd(fd, data)
            if sync:
                os.fsync(fd)
            sig = _sig(os.fstat(fd))  # a rename keeps inode, mtime and size (an fsync too)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(fd)
        return tmp, sig, stored

    def _write(self, obj: ManagedService, cur: ManagedService | None = None, durable: bool = True) -> ManagedService:
        """Write obj atomically (temp file, fsync, rename). `cur`: the stored object obj
        replaces (its spec is kept if obj has the very same one). `durable`: fsync the
        folder too, so the rename itself survives a power loss; status-only writes skip it.

        Why a status write needs no folder fsync, for what DESIGN.md promises (a crash at
        any moment leaves no duplicate and no orphan, and nothing is lost): the temp file
        is fsynced before the rename, so after a power loss the name holds either the old
        object or the new one, complete (journaled file systems commit a rename and the
        old file's release together; the old blocks are not reused before). Losing the
        rename loses only the newest status, never spec, finalizers or deletion (those
        writes stay durable, and their folder fsync also makes every earlier rename in
        the folder durable). Status is observed, never trusted: what a backend started is
        found again by its own records (pid file, container label, Terraform state), not
        by status, and a local daemon does not outlive the power loss anyway. So an old
        status can make no duplicate and no orphan; the next pass observes and rewrites it."""
        path = self.path(obj.key)
        data = _encode(obj)
        dfd = self._folder(path.parent)  # every step relative to the folder: no link followed
        try:
            tmp, sig, stored = self._stage(dfd, path, data)
            with self._mu:
                self._own[path] = sig  # before the rename: the watch must never see it unannounced
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            if durable:
                os.fsync(dfd)
        finally:
            os.close(dfd)
        self.writes += 1
        # The cache and the caller each get an object of their own (the caller may change
        # what a write returns): parsed from the bytes written, a fraction of a deep copy.
        if stored is None:  # not canonical (an invalid value set by hand): copies as they are
            stored, mine = obj.model_copy(deep=True), obj.model_copy(deep=True)
        else:
            mine = ManagedService.model_validate_json(data)
            if cur is not None and obj.spec is cur.spec:
                stored.spec = cur.spec  # the same shared spec: per-spec memos (its hash) stay valid
        with self._mu:
            self._cache[obj.key] = (sig, stored)
        return mine

    def _current(self, key: ServiceKey) -> ManagedService | None:
        try:
            return self.get(key)
        except NotFound:
            return None

    def _checked(self, obj: ManagedService) -> ManagedService:
        """The stored object obj was read from (NotFound, or Conflict when it changed)."""
        cur = self._current(obj.key)
        if cur is None:
            raise NotFound(str(obj.key))
        self._check(cur, obj)
        return cur

    @staticmethod
    def _check(cur: ManagedService, obj: ManagedService) -> None:
        if obj.metadata.resourceVersion is not None and obj.metadata.resourceVersion != cur.metadata.resourceVersion:
            raise Conflict(f"{obj.key}: resourceVersion {obj.metadata.resourceVersion} is stale "
                           f"(now {cur.metadata.resourceVersion}); read it again and retry")
        if obj.metadata.uid is not None and obj.metadata.uid != cur.metadata.uid:
            raise Conflict(f"{obj.key}: uid changed (the object was deleted and created again)")

    @staticmethod
    def _new(obj: ManagedService, now: datetime) -> ManagedService:
        meta = obj.metadata.model_copy(update={
            "uid": str(uuid.uuid4()), "resourceVersion": "1", "generation": 1, "creationTimestamp": now})
        return obj.model_copy(update={"metadata": meta})

    def create(self, obj: ManagedService) -> ManagedService:
        with self._writer():
            if self._current(obj.key) is not None:
                raise AlreadyExists(str(obj.key))
            return self._write(self._new(obj, datetime.now(UTC)))

    def create_many(self, objs: Sequence[ManagedService]) -> None:
        """Create all of objs or none: AlreadyExists (nothing written) if any exists.
        One hold of the lock; the files written, then fsynced several at once, then a
        commit record, the renames and one fsync per folder (converge.storebatch says what
        a crash at any moment leaves: none of them, or all once the next writer has looked)."""
        if len({o.key for o in objs}) != len(objs):
            raise ValueError("create_many: a key given twice")
        with self._writer():
            for obj in objs:
                if self._current(obj.key) is not None:
                    raise AlreadyExists(str(obj.key))
            now = datetime.now(UTC)
            folders: dict[Path, int] = {}
            staged: list[tuple[int, Path, str, _Sig, ManagedService | None, ManagedService]] = []
            committed = False
            try:
                for obj in objs:
                    new = self._new(obj, now)
                    path = self.path(new.key)
                    dfd = folders.get(path.parent)
                    if dfd is None:
                        dfd = folders[path.parent] = self._folder(path.parent)
                    staged.append((dfd, path, *self._stage(dfd, path, _encode(new), sync=False), new))
                storebatch.fsync_all([(dfd, tmp) for dfd, _, tmp, *_ in staged])
                root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    record = storebatch.write_record(root_fd, [(p.parent.name, tmp) for _, p, tmp, *_ in staged])
                    committed = True
                    for dfd, path, tmp, sig, _, _ in staged:
                        with self._mu:
                            self._own[path] = sig  # before the rename: the watch must never see it unannounced
                        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
                    for dfd in folders.values():
                        os.fsync(dfd)
                    os.unlink(record, dir_fd=root_fd)
                finally:
                    os.close(root_fd)
            except BaseException:
                if not committed:  # none of them was renamed: the temp files go now
                    for dfd, _, tmp, *_ in staged:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp, dir_fd=dfd)
                raise
            finally:
                for dfd in folders.values():
                    os.close(dfd)
            with self._mu:
                for _, _, _, sig, stored, new in staged:
                    self._cache[new.key] = (sig, stored if stored is not None else new.model_copy(deep=True))
            self.writes += len(staged)

    # The object to write is built by shallow copies (model_copy(update=...)), sharing parts
    # with the stored object and with the caller's: it is only encoded, and what is kept
    # and returned is parsed back from the bytes (_write). Deep copies here (three to six
    # per write) cost more CPU than the rest of a write, fsyncs included.

    def update(self, obj: ManagedService) -> ManagedService:
        with self._writer():
            return self._update(self._checked(obj), obj.metadata, obj.spec)

    def _update(self, cur: ManagedService, metadata: ObjectMeta, spec: ManagedServiceSpec) -> ManagedService:
        """update's rules, holding the lock: metadata and spec from the caller; uid,
        creationTimestamp, generation and deletionTimestamp are the store's."""
        meta = metadata.model_copy(update={k: getattr(cur.metadata, k) for k in _STORE_OWNED})
        if cur.metadata.deletionTimestamp is not None:
            added = set(meta.finalizers) - set(cur.metadata.finalizers)
            if added:
                raise Invalid(f"{cur.key}: metadata.finalizers: no new finalizers can be added "
                              f"while the object is being deleted ({', '.join(sorted(added))})")
        if spec != cur.spec:
            meta.generation = (cur.metadata.generation or 0) + 1
        elif meta == cur.metadata:
            return cur
        meta.resourceVersion = _next_version(cur)
        new = cur.model_copy(update={"metadata": meta, "spec": spec})
        if meta.deletionTimestamp is not None and not meta.finalizers:
            self._remove(cur.key)  # the last finalizer is gone: so is the object
            return new.model_copy(deep=True)  # the caller's own, as a write's result always is
        return self._write(new, cur)

    def set_finalizers(self, obj: ManagedService, finalizers: Sequence[str]) -> ManagedService:
        with self._writer():  # the same rules as any metadata change, in one hold of the lock
            cur = self._checked(obj)
            return self._update(cur, cur.metadata.model_copy(update={"finalizers": list(finalizers)}), cur.spec)

    def update_status(self, obj: ManagedService) -> ManagedService:
        with self._writer():
            cur = self._checked(obj)
            if cur.status == obj.status:
                return cur
            meta = cur.metadata.model_copy(update={"resourceVersion": _next_version(cur)})
            return self._write(cur.model_copy(update={"metadata": meta, "status": obj.status}), cur, durable=False)

    def delete(self, key: ServiceKey, resource_version: str | None = None) -> None:
        with self._writer():
            cur = self._current(key)
            if cur is None:
                raise NotFound(str(key))
            if resource_version is not None and resource_version != cur.metadata.resourceVersion:
                raise Conflict(f"{key}: resourceVersion {resource_version} is stale")
            if not cur.metadata.finalizers:
                self._remove(key)
                return
            if cur.metadata.deletionTimestamp is not None:
                return  # already requested
            meta = cur.metadata.model_copy(update={"deletionTimestamp": datetime.now(UTC),
                                                   "resourceVersion": _next_version(cur)})
            self._write(cur.model_copy(update={"metadata": meta}), cur)

    def _remove(self, key: ServiceKey) -> None:
        path = self.path(key)
        dfd = self._open_dir(path.parent)
        try:
            with self._mu:
                self._own[path] = None  # before the unlink: the watch must never see it unannounced
            os.unlink(path.name, dir_fd=dfd)
        finally:
            os.close(dfd)
        with self._mu:
            self._cache.pop(key, None)
        self.writes += 1

    # ------------------------------------------------------------------ watch

    def _scan(self, ns: str) -> dict[str, _Sig]:
        """Object file name -> (inode, mtime, size) of a folder that changed. Every write
        renames a new file into place, but the filesystem reuses a freed inode number at
        once (write 3 may get write 1's inode), so the inode alone can miss a change."""
        out: dict[str, _Sig] = {}
        try:
            with os.scandir(self.root / ns) as it:
                for e in it:
                    if e.name.endswith(".yaml") and not e.name.startswith("."):
                        with contextlib.suppress(FileNotFoundError):
                            out[e.name] = _sig(e.stat(follow_symlinks=False))
        except FileNotFoundError:
            pass
        return out

    def watch(self, stop: object, interval: float = 0.25, events: bool = True) -> Iterator[ServiceKey]:
        """Keys whose objects others changed (created, updated, deleted).

        A change this instance made itself (the controller's own status writes) is not
        reported: the writer already knows, and reporting it would cost one more reconcile
        per write. Two ways to notice, the same keys either way:
        - inotify (Linux; `events`): the kernel tells of each rename, delete or write in
          the namespace folders and of namespace folders made or removed; an idle store
          costs nothing (a converge.stopsignal.StopSignal is waited on with the events; any
          other `stop` is looked at every STOP_CHECK seconds);
        - polling every `interval` seconds, where inotify cannot be had: see _poll; and
          while the store's folder is not there (a `converge run` started before the first
          `apply` made it) or after it went away, until it is there again: then inotify
          takes over again, and what polling knew is compared with what is there, so
          nothing that appeared in between is missed."""
        known: dict[str, dict[str, _Sig]] | None = None  # what polling knew, when inotify takes over
        while events:
            try:
                ino = Inotify()
            except OSError:
                break
            try:
                why = yield from self._follow(stop, ino, before=known)
            finally:
                ino.close()
            if why == _STOPPED:
                return
            if why == _UNUSABLE:
                break
            known = yield from self._poll(stop, interval, until_root=True)  # _ROOT_GONE
            if known is None:
                return
        yield from self._poll(stop, interval)

    def _follow(self, stop: object, ino: Inotify,
                before: dict[str, dict[str, _Sig]] | None = None) -> Generator[ServiceKey, None, str]:
        """The inotify watch, until stopped (_STOPPED), the store's folder is not there or
        went away (_ROOT_GONE), or a watch is refused (_UNUSABLE: polling for good).
        `before`: what an earlier watch knew of the files (every one that differs now is
        reported first); None: nothing is reported of what is there when it starts."""
        is_set = getattr(stop, "is_set", lambda: False)
        try:
            root_wd = ino.add(self.root, _ROOT_EVENTS)
        except OSError as exc:
            return _ROOT_GONE if exc.errno in (errno.ENOENT, errno.ENOTDIR) else _UNUSABLE
        wds: dict[int, str] = {}
        files: dict[str, dict[str, _Sig]] = {}

        def follow(ns: str) -> None:
            """Watch a namespace folder (then list it: no change falls between)."""
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                wds[ino.add(self.root / ns, _NS_EVENTS)] = ns

        def differing(ns: str) -> list[str]:
            """List a folder again: the names whose files differ from what is known of them
            (`files` is brought up to date name by name where they are reported, below)."""
            prev, cur = files.get(ns, {}), self._scan(ns)
            return sorted(n for n in cur.keys() | prev.keys() if cur.get(n) != prev.get(n))

        for ns in self.namespaces():
            follow(ns)
            files[ns] = self._scan(ns)
        was = before if before is not None else files  # None: nothing differs
        for ns in sorted(files.keys() | was.keys()):
            then, there = was.get(ns, {}), files.get(ns, {})
            for name in sorted(n for n in there.keys() | then.keys() if there.get(n) != then.get(n)):
                if not self._own_change(self.root / ns / name, there.get(name)):
                    yield ServiceKey(ns, name[:-5])
        stop_fd = getattr(stop, "fileno", lambda: -1)()  # a StopSignal: its stop wakes the same wait
        fds, pause = ([ino.fd, stop_fd], None) if stop_fd >= 0 else ([ino.fd], STOP_CHECK)
        try:
            while not is_set():
                if ino.fd not in select.select(fds, [], [], pause)[0]:
                    continue
                changed: dict[tuple[str, str], None] = {}  # (namespace, file name), in order
                for ev in ino.read():
                    if ev.mask & _IN.IN_Q_OVERFLOW:  # events were lost: compare every folder again
                        for ns in dict.fromkeys([*files, *self.namespaces()]):
                            if ns not in files:
                                follow(ns)  # a new one: all of it differs
                            changed.update(((ns, n), None) for n in differing(ns))
                    elif ev.wd == root_wd:
                        if ev.mask & (_IN.IN_DELETE_SELF | _IN.IN_MOVE_SELF | _IN.IN_IGNORED):
                            return _ROOT_GONE  # the store's folder went away: polling sees it come back
                        if not ev.mask & _IN.IN_ISDIR or ev.name.startswith((".", "_")):
                            continue
                        if ev.mask & (_IN.IN_CREATE | _IN.IN_MOVED_TO):
                            follow(ev.name)
                            names = differing(ev.name)  # what it held before the watch was added too
                        else:  # a namespace folder removed or renamed away: its objects are gone
                            names = sorted(files.pop(ev.name, {}))
                        changed.update(((ev.name, n), None) for n in names)
                    else:
                        ns_of = wds.get(ev.wd)
                        if ns_of is None:
                            continue
                        if ev.mask & _IN.IN_IGNORED:  # the folder is gone (its root event reports it)
                            del wds[ev.wd]
                        elif ev.name.endswith(".yaml") and not ev.name.startswith("."):
                            changed[(ns_of, ev.name)] = None
                            known = files.setdefault(ns_of, {})
                            if ev.mask & _REWRITTEN:
                                known.pop(ev.name, None)  # written in place or created: report it
                for ns, name in changed:
                    path = self.root / ns / name
                    try:
                        sig: _Sig | None = _sig(os.lstat(path))
                    except OSError:
                        sig = None
                    known = files.setdefault(ns, {})
                    prev = known.get(name)
                    if sig is None:
                        known.pop(name, None)
                    else:
                        known[name] = sig
                    if (sig != prev or prev is None) and not self._own_change(path, sig):
                        yield ServiceKey(ns, name[:-5])
        finally:
            for wd in [root_wd, *wds]:
                ino.remove(wd)
        return _STOPPED

    def _poll(self, stop: object, interval: float,
              until_root: bool = False) -> Generator[ServiceKey, None, dict[str, dict[str, _Sig]] | None]:
        """The watch by polling: every write renames a new file into its namespace folder,
        which changes the folder's mtime: each tick stats the folders, and lists again only
        those that changed, comparing each file's (inode, mtime, size). An idle store costs a
        few stat calls per tick.

        A folder's mtime is coarse (the kernel's clock tick): a second write in the same
        tick as our look leaves it unchanged. So a folder changed less than RECENT_NS ago
        is listed again on the next tick too, whatever its mtime says.

        `until_root`: returns what it knows of the files (for inotify to take over) at the
        first tick the store's folder is there; None once stopped."""
        is_set = getattr(stop, "is_set", lambda: False)
        wait = getattr(stop, "wait", time.sleep)

        def dir_sig(path: Path) -> _Sig | None:
            try:
                return _sig(path.stat())
            except FileNotFoundError:
                return None

        def recent(sig: _Sig | None) -> bool:
            return sig is not None and time.time_ns() - sig[1] < RECENT_NS

        root_sig = dir_sig(self.root)
        root_recent = recent(root_sig)
        dirs = {ns: dir_sig(self.root / ns) for ns in self.namespaces()}
        fresh = {ns for ns, sig in dirs.items() if recent(sig)}  # look again next tick
        files = {ns: self._scan(ns) for ns in dirs}
        while not is_set():
            wait(interval)
            now_root = dir_sig(self.root)
            if until_root and now_root is not None and not is_set():
                return files
            if now_root != root_sig or root_recent:
                root_sig, root_recent = now_root, recent(now_root)
                for ns in self.namespaces():
                    dirs.setdefault(ns, None)
            for ns, before in list(dirs.items()):
                now = dir_sig(self.root / ns)
                if now == before and ns not in fresh:
                    continue
                dirs[ns] = now
                if recent(now):
                    fresh.add(ns)
                else:
                    fresh.discard(ns)
                cur = self._scan(ns) if now is not None else {}
                prev = files.get(ns, {})
                files[ns] = cur
                for name in sorted(n for n in cur.keys() | prev.keys() if cur.get(n) != prev.get(n)):
                    if not self._own_change(self.root / ns / name, cur.get(name)):
                        yield ServiceKey(ns, name[:-5])
        return None

    def _own_change(self, path: Path, sig: _Sig | None) -> bool:
        """Whether the file is as this instance last left it (written or deleted)."""
        with self._mu:
            if path not in self._own:
                return False
            own = self._own[path]
            if own is None or sig is None:
                if own is None and sig is None:
                    del self._own[path]  # our delete, seen: forget it
                    return True
                return False
        return own == sig
