"""The file store's object files, read without the API models (no pydantic).

converge.filestore.FileStore builds ManagedService models from what this module reads;
`converge get` on the file store reads the objects as the dicts they are written as
(what `get -o json` prints), so a command that only shows services never imports
pydantic for objects converge itself wrote and validated:

- Every object file converge writes is the model's canonical JSON (`model_dump_json`,
  aliases, no None values, indent 2). When the writer (or a validating reader) has
  checked that the bytes are valid and canonical (validating them gives back the same
  bytes), it *stamps* the file: an extended attribute STAMP_ATTR holding a keyed hash
  of the bytes (blake2b, keyed with the hash of the API models' source, so another
  converge's models never trust this one's stamps).
- A reader trusts a file whose stamp matches its bytes: `json.loads` gives exactly the
  dict the model would dump. Anything else (edited by hand, a copy, an older converge,
  a file system without user xattrs) is validated as before (`parse`, through pydantic)
  and reported as a corrupt object when it is not valid: the output is the same either way.

A stamp is not a security boundary (whoever can write the store's files can stamp them);
it only tells converge's own writes from hand edits, and a hand edit changes the bytes.

Hostile contents are refused here for both readers: nothing inside the root is followed
if it is a link (O_NOFOLLOW, lstat, the namespace folder), anything but a regular file
where an object should be is a corrupt object, and files larger than an object can be
are not read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from converge import heap
from converge.names import MAX_OBJECT_BYTES, ServiceKey
from converge.store import CorruptObject, NotFound

Sig = tuple[int, int, int]
STAMP_ATTR = "user.converge.valid"
MAX_FILE_BYTES = 2 * MAX_OBJECT_BYTES  # the canonical JSON of the largest object (indent, escapes)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def default_root() -> Path:
    return Path(os.environ.get("CONVERGE_STORE", ".converge"))


def object_path(root: Path, key: ServiceKey) -> str:
    return os.path.join(root, key.namespace, f"{key.name}.yaml")  # noqa: PTH118 - str paths on the hot path


def sig(st: os.stat_result) -> Sig:
    """What tells one version of a file from another: (inode, mtime, size)."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------- stamps

try:
    from _blake2 import blake2b  # hashlib.blake2b itself, without hashlib's OpenSSL start-up
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

_key: bytes | None = None


def _stamp_key() -> bytes:
    """The hash of the API models' source (converge/api.py): their validation is what a
    stamp vouches for. Empty (nothing is trusted or stamped) when it cannot be read."""
    global _key
    if _key is None:
        try:
            with open(os.path.join(os.path.dirname(__file__), "api.py"), "rb") as f:  # noqa: PTH118, PTH120
                _key = blake2b(f.read()).digest()
        except OSError:
            _key = b""
    return _key


def stamp_of(raw: bytes) -> bytes | None:
    key = _stamp_key()
    return blake2b(raw, key=key, digest_size=16).digest() if key else None


def is_stamped(fd: int, raw: bytes) -> bool:
    try:
        have = os.getxattr(fd, STAMP_ATTR)
    except OSError:  # none, or no user xattrs on this file system
        return False
    return have == stamp_of(raw)


def stamp_fd(fd: int, raw: bytes) -> None:
    """Mark the open file as holding these valid, canonical bytes (best effort)."""
    value = stamp_of(raw)
    if value is not None:
        with contextlib.suppress(OSError):
            os.setxattr(fd, STAMP_ATTR, value)


def stamp_path(path: str, expected: Sig, raw: bytes) -> None:
    """stamp_fd for a file read earlier, if it is still the version read (never a link)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return
    try:
        if sig(os.fstat(fd)) == expected:
            stamp_fd(fd, raw)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- reading


class Raw(NamedTuple):
    sig: Sig
    data: bytes
    stamped: bool


def check(key: ServiceKey, path: str, folder_checked: bool = False) -> Sig:
    """The (inode, mtime, size) of the object file at path, refusing what is no regular
    file of at most an object's size (or sits in a linked folder). `folder_checked`: the
    caller knows the namespace folder is no link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(str(key)) from None
    except OSError as exc:
        raise CorruptObject(path, f"cannot read: {exc.strerror}", key) from None
    if not stat.S_ISREG(st.st_mode):  # a folder, a link, a fifo ... where an object should be
        what = "a link (never followed)" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise CorruptObject(path, what, key)
    folder = os.path.dirname(path)  # noqa: PTH120 - str paths on the hot path
    if not folder_checked and os.path.islink(folder):  # noqa: PTH114
        raise CorruptObject(path, f"{folder} is a link (never followed)", key)
    if st.st_size > MAX_FILE_BYTES:
        raise CorruptObject(path, f"{st.st_size} bytes, more than an object can be", key)
    return sig(st)


def read(key: ServiceKey, path: str) -> Raw:
    """The bytes of the object file at path (after `check`), whether they are stamped,
    and the signature of the file actually read (a writer may have renamed another into
    place since `check`)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise NotFound(str(key)) from None
    except OSError as exc:
        raise CorruptObject(path, f"cannot read: {exc.strerror}", key) from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise CorruptObject(path, "not a regular file", key)
        if opened.st_size > MAX_FILE_BYTES:
            raise CorruptObject(path, f"{opened.st_size} bytes, more than an object can be", key)
        data = os.read(fd, opened.st_size + 1)  # its size, not the limit: no 2 MB buffer per read
        return Raw(sig(opened), data, is_stamped(fd, data))
    except OSError as exc:
        raise CorruptObject(path, f"cannot read: {exc.strerror}", key) from None
    finally:
        os.close(fd)


def namespaces(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root)  # a linked folder is no namespace
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith((".", "_")))
    except FileNotFoundError:
        return []


def object_files(root: Path, namespace: str | None) -> Iterator[tuple[ServiceKey, os.DirEntry[str]] | CorruptObject]:
    """(key, folder entry) of every object file of a namespace (or of all), in name
    order; a namespace that cannot be listed comes as a CorruptObject."""
    for ns in [namespace] if namespace else namespaces(root):
        folder = root / ns
        if folder.is_symlink():
            yield CorruptObject(str(folder), "a link (never followed)", None)
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            yield CorruptObject(str(folder), f"cannot read: {exc.strerror}", None)
            continue
        for e in entries:
            if e.name.endswith(".yaml") and not e.name.startswith("."):
                yield ServiceKey(ns, e.name[:-5]), e


# ---------------------------------------------------------------------------- documents


def _held(path: str, doc: Any, key: ServiceKey) -> dict[str, Any]:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    held = (meta.get("namespace"), meta.get("name")) if isinstance(meta, dict) else None
    if held != key:
        raise CorruptObject(path, f"holds {'/'.join(map(str, held or ()))}, expected {key}", key)
    return doc  # type: ignore[no-any-return]


def document(key: ServiceKey, path: str, folder_checked: bool = False,
             entry: os.DirEntry[str] | None = None) -> dict[str, Any]:
    """The object stored at path as the dict it is written as (the model's dump): a
    stamped file as it is, anything else validated by the API models first. `entry`:
    the folder's entry of the file (its type from the listing: one lstat fewer)."""
    if entry is None or not entry.is_file(follow_symlinks=False):
        check(key, path, folder_checked)  # (the size and type of what is opened are checked by read)
    raw = read(key, path)
    if raw.stamped:
        try:
            return _held(path, json.loads(raw.data), key)
        except ValueError:  # pragma: no cover - stamped bytes are the model's JSON
            pass
    from converge.filestore import parse  # the API models: only for files not stamped

    obj = parse(path, raw, key)
    return obj.dump()


def documents(root: Path, namespace: str | None,
              keep: Any = None) -> tuple[list[dict[str, Any]], list[CorruptObject]]:
    """Every readable object of a namespace (or of all) as dicts, and the unreadable ones;
    `keep(doc)`: which to return (e.g. a label selector)."""
    docs: list[dict[str, Any]] = []
    errors: list[CorruptObject] = []
    with heap.keeping():  # (many objects made and kept: the collector paused)
        _documents_into(docs, errors, root, namespace, keep)
    return docs, errors


def _documents_into(docs: list[dict[str, Any]], errors: list[CorruptObject], root: Path, namespace: str | None,
                    keep: Any) -> None:
    for found in object_files(root, namespace):
        if isinstance(found, CorruptObject):
            errors.append(found)
            continue
        key, entry = found
        try:
            doc = document(key, entry.path, folder_checked=True, entry=entry)
        except NotFound:
            continue
        except CorruptObject as exc:
            errors.append(exc)
            continue
        if keep is None or keep(doc):
            docs.append(doc)
