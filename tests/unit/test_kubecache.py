"""ObjectCache: the operator's view of the objects (watch events and our own writes). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from converge.api import ServiceKey
from converge.kubecache import ObjectCache, newer

K = ServiceKey("ns", "a")


def raw(rv: str, name: str = "a", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "spec": spec}


def parse(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A stand-in parse: (resourceVersion, spec); the real one is KubeStore's from_api."""
    if data.get("spec", {}).get("bad"):
        raise ValueError("bad spec")
    return str(data["metadata"]["resourceVersion"]), dict(data.get("spec") or {})


def test_newer_compares_integers_and_refuses_to_order_anything_else() -> None:
    assert newer("10", "9") is True and newer("9", "10") is False and newer("7", "7") is False
    assert newer("abc", "9") is None and newer("x", "x") is False


def test_events_replace_older_versions_only_and_delete_drops() -> None:
    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(parse)
    assert c.get(K) is None
    assert c.seen(None, raw("5")) == K  # listed: needs a pass
    assert c.get(K) == ("5", {})
    assert c.seen("MODIFIED", raw("7", x=1)) == K
    c.seen("MODIFIED", raw("6", x=0))  # older than what is held: kept out
    assert c.get(K) == ("7", {"x": 1})
    assert c.seen("DELETED", raw("8")) == K
    assert c.get(K) is None and len(c) == 0
    assert c.seen("ADDED", {"metadata": {"name": "cluster-scoped"}}) is None


def test_own_writes_are_held_and_their_events_need_no_pass_in_any_order() -> None:
    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(parse)
    c.seen("ADDED", raw("1"))
    c.wrote(K, "2", ("2", {"finalizer": True}))  # the finalizer
    c.wrote(K, "3", ("3", {"status": True}))  # then a status, before either event came
    assert c.get(K) == ("3", {"status": True})
    assert c.seen("MODIFIED", raw("2")) is None  # both events are ours: no pass
    assert c.get(K) == ("3", {"status": True})  # and the older one does not undo the newer write
    assert c.seen("MODIFIED", raw("3")) is None
    assert c.seen("MODIFIED", raw("4", user=1)) == K  # someone else's change: a pass
    assert c.seen("MODIFIED", raw("3")) == K  # an own version seen once is not ours twice


def test_a_write_never_brings_back_an_object_the_watch_did_not_show_or_deleted() -> None:
    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(parse)
    c.wrote(K, "2", ("2", {}))  # not watched (the CLI): nothing held
    assert c.get(K) is None
    c.seen("ADDED", raw("3"))
    c.seen("DELETED", raw("5"))  # the finalizer's removal deleted it, event first ...
    c.wrote(K, "4", ("4", {}))  # ... the write's answer after
    assert c.get(K) is None


def test_forget_reads_the_server_until_the_watch_is_past_our_last_write() -> None:
    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(parse)
    c.seen("ADDED", raw("1"))
    c.wrote(K, "3", ("3", {}))
    c.forget(K)  # a later write was refused: the cache is behind the server
    assert c.get(K) is None
    c.seen("MODIFIED", raw("2", other=1))  # queued before our write: still unknown
    assert c.get(K) is None
    c.seen("MODIFIED", raw("3"))  # our write's own version: its content now
    assert c.get(K) == ("3", {})


def test_unordered_versions_drop_the_entry() -> None:
    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(parse)
    c.seen("ADDED", raw("opaque-1"))
    assert c.get(K) == ("opaque-1", {})
    c.seen("MODIFIED", raw("opaque-2"))
    assert c.get(K) is None  # cannot tell which is newer: the server decides


def test_parse_once_per_version_and_errors_propagate() -> None:
    calls: list[str] = []

    def counting(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        calls.append(str(data["metadata"]["resourceVersion"]))
        return parse(data)

    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(counting)
    c.seen("ADDED", raw("1"))
    c.seen("MODIFIED", raw("2"))
    first = c.get(K)
    assert c.get(K) is first and calls == ["2"]  # version 1 was never read: never parsed
    c.seen("MODIFIED", raw("3", bad=True))
    with pytest.raises(ValueError, match="bad spec"):
        c.get(K)


def test_a_full_list_drops_what_it_lacks_at_older_versions() -> None:
    c: ObjectCache[tuple[str, dict[str, Any]]] = ObjectCache(parse)
    b, other = ServiceKey("ns", "b"), ServiceKey("other", "c")
    c.seen("ADDED", raw("3"))
    c.seen("ADDED", raw("4", name="b"))
    c.seen("ADDED", {"metadata": {"name": "c", "namespace": "other", "resourceVersion": "2"}})
    c.seen("ADDED", raw("9", name="new"))  # created after the list was made
    assert c.listed("ns", [b], "6") == 1  # a: deleted while the watch was away
    assert c.get(K) is None and c.get(b) is not None and c.get(other) is not None
    assert c.get(ServiceKey("ns", "new")) is not None
    assert c.listed(None, [b], "10") == 2  # all namespaces: c and new
