"""The operator's view of the ManagedServices: the latest version of each object as the
watch delivered it or as our own write returned it (client-go's informer store, in small).

Pure bookkeeping, no I/O: KubeStore (converge.kubestore) feeds it and asks it first.
- `seen(event type, object)`: a watch event. A version newer than the one held replaces
  it; DELETED drops it. Returns whether the object needs a pass: a version that one of
  our own writes made (the finalizer, a status) comes back as an event the pass that
  wrote it already knows, so it needs none.
- `wrote(object)`: our write's result (newer than anything the watch has told yet). Only
  an object the cache holds is replaced: one the watch said is deleted stays deleted,
  whatever order the write's answer and the DELETED event come in.
- `get(key)`: the held version, None when not held (the caller reads the API server).
- `listed(namespace, keys, resourceVersion)`: a full list; objects the cache holds at an
  older version that the list does not have are gone (a delete the watch missed).
- `forget(key)`: a write was refused (Conflict, NotFound): read the server until the
  watch brings a version newer than our last write.
Versions are compared as the integers the API server's resourceVersions are (etcd's
revision); two that are not both integers cannot be ordered, so the entry is dropped and
the next read goes to the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from converge.api import ServiceKey

T = TypeVar("T")
OWN_PENDING = 8  # own versions per object not yet seen from the watch (older ones are dropped)


def newer(rv: str, than: str) -> bool | None:
    """Whether resourceVersion rv is later than `than`; None when they cannot be ordered."""
    if rv.isdigit() and than.isdigit():
        return int(rv) > int(than)
    return None if rv != than else False


def key_of(raw: Mapping[str, Any]) -> tuple[ServiceKey | None, str]:
    meta = raw.get("metadata") or {}
    name, ns = meta.get("name"), meta.get("namespace")
    return (ServiceKey(str(ns), str(name)) if name and ns else None), str(meta.get("resourceVersion") or "")


@dataclass
class _Entry(Generic[T]):
    rv: str
    raw: Mapping[str, Any] | None  # not yet parsed
    obj: T | None = None  # raw and obj both None: at least version rv, content unknown


class ObjectCache(Generic[T]):
    """Latest versions by key; `parse` turns the API's JSON into T (once per version, on
    first use: most versions the watch delivers are never read)."""

    def __init__(self, parse: Callable[[Mapping[str, Any]], T]) -> None:
        self._parse = parse
        self._entries: dict[ServiceKey, _Entry[T]] = {}
        self._own: dict[ServiceKey, list[str]] = {}
        self._mu = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, kind: str | None, raw: Mapping[str, Any]) -> ServiceKey | None:
        """A watch event (kind ADDED, MODIFIED, DELETED, or None when listed). Returns the
        key when it needs a pass, None for our own write coming back (or no object)."""
        key, rv = key_of(raw)
        if key is None:
            return None
        with self._mu:
            if kind == "DELETED":
                self._entries.pop(key, None)
                self._own.pop(key, None)
                return key
            own = self._own.get(key)
            mine = bool(rv) and own is not None and rv in own
            if own is not None and mine:
                del own[:own.index(rv) + 1]  # the watch's order: older ones will not come
                if not own:
                    del self._own[key]
            held = self._entries.get(key)
            if held is None:
                if rv:
                    self._entries[key] = _Entry(rv, raw)
            else:
                later = newer(rv, held.rv)
                if later or (rv == held.rv and held.obj is None and held.raw is None):
                    self._entries[key] = _Entry(rv, raw)
                elif later is None:
                    del self._entries[key]
            return None if mine else key

    def wrote(self, key: ServiceKey, rv: str | None, obj: T) -> None:
        """Our write made version rv of key (its result: obj)."""
        if not rv:
            return
        with self._mu:
            own = self._own.setdefault(key, [])
            own.append(rv)
            del own[:-OWN_PENDING]
            held = self._entries.get(key)
            if held is None:
                return  # not watched, or deleted: never brought back by a write's answer
            later = newer(rv, held.rv)
            if later:
                self._entries[key] = _Entry(rv, None, obj)
            elif later is None:
                del self._entries[key]

    def get(self, key: ServiceKey) -> T | None:
        """The held version (parsed on first use; a parse error propagates and the entry stays
        unparsed), or None."""
        with self._mu:
            held = self._entries.get(key)
        if held is None or (held.obj is None and held.raw is None):
            return None  # not held, or only known to be at least at held.rv (see forget)
        if held.obj is None:
            assert held.raw is not None
            obj = self._parse(held.raw)  # outside the lock: pydantic's validation takes a while
            with self._mu:
                if self._entries.get(key) is held:
                    held.obj, held.raw = obj, None
            return obj
        return held.obj

    def forget(self, key: ServiceKey) -> None:
        """Read key from the server until the watch shows a newer version than our last
        write of it (an older event still queued would undo that write in the cache)."""
        with self._mu:
            held = self._entries.get(key)
            if held is not None:
                self._entries[key] = _Entry(held.rv, None)

    def listed(self, namespace: str | None, keys: Iterable[ServiceKey], list_rv: str) -> int:
        """A full list of namespace (None: all) at list_rv held `keys`: drop what the cache
        holds there at an older version and the list lacks. Returns how many were dropped."""
        present = set(keys)
        dropped = 0
        with self._mu:
            for key in [k for k in self._entries if namespace is None or k.namespace == namespace]:
                if key in present:
                    continue
                if newer(list_rv, self._entries[key].rv):
                    del self._entries[key]
                    self._own.pop(key, None)
                    dropped += 1
        return dropped
