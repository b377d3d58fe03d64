"""KubeStore against a real kube-apiserver: the Store contract kept by the API server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from converge.api import API_GROUP, API_VERSION, FINALIZER, AdminState, ManagedService, ServiceKey
from converge.kubestore import PLURAL, KubeStore
from converge.selector import parse_selector
from converge.store import AlreadyExists, Conflict, Forbidden, Invalid, NotFound, Unavailable
from tests.cluster.controlplane import ControlPlane, free_port


def make(name: str, namespace: str, **labels: str) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"backend": {"daemon": {"command": ["sleep", "60"]}}},
    })


@pytest.fixture
def store(kubeconfig: Path) -> KubeStore:
    return KubeStore.from_kubeconfig(kubeconfig)


def test_create_get_update_conflict_status_list(store: KubeStore, namespace: str) -> None:
    a = store.create(make("a", namespace, stack="x"))
    assert a.metadata.uid and a.metadata.generation == 1 and a.metadata.resourceVersion
    assert a.spec.adminState == "active"
    with pytest.raises(AlreadyExists):
        store.create(make("a", namespace))
    stale = a.model_copy(deep=True)
    changed = a.model_copy(deep=True)
    changed.spec.backend.daemon.command = ["sleep", "61"]  # type: ignore[union-attr]
    b = store.update(changed)
    assert b.metadata.generation == 2
    stale.spec.adminState = AdminState.suspended
    with pytest.raises(Conflict):
        store.update(stale)  # never an overwrite
    b.status.restarts = 3
    b.status.lastError = "boom"
    c = store.update_status(b)
    assert c.status.restarts == 3 and c.metadata.generation == 2
    assert store.get(a.key).status.lastError == "boom"
    store.create(make("other", namespace, stack="y"))
    names = [o.metadata.name for o in store.list(namespace, parse_selector("stack=x")).items]
    assert names == ["a"]
    assert [o.metadata.name for o in store.list(namespace, parse_selector("stack in (x,y),stack!=y")).items] == ["a"]
    assert {o.metadata.name for o in store.list(namespace).items} == {"a", "other"}
    assert a.key in {o.key for o in store.list().items}  # all namespaces


def test_status_writes_do_not_conflict_with_metadata_writers_but_with_spec_changes(
        store: KubeStore, namespace: str) -> None:
    a = store.create(make("a", namespace))
    labelled = a.model_copy(deep=True)
    labelled.metadata.labels["team"] = "blue"
    store.update(labelled)  # someone else changes metadata: resourceVersion moves on
    a.status.restarts = 1
    assert store.update_status(a).status.restarts == 1  # planned for the same generation: fine
    respec = store.get(a.key).model_copy(deep=True)
    respec.spec.adminState = AdminState.suspended
    store.update(respec)
    a.status.restarts = 2
    with pytest.raises(Conflict):
        store.update_status(a)  # planned for generation 1, the spec is now generation 2
    assert store.get(a.key).status.restarts == 1


def test_deletion_is_held_by_finalizers(store: KubeStore, namespace: str) -> None:
    obj = make("a", namespace)
    obj.metadata.finalizers = [FINALIZER]
    a = store.create(obj)
    store.delete(a.key)
    marked = store.get(a.key)
    assert marked.metadata.deletionTimestamp is not None
    adding = marked.model_copy(deep=True)
    adding.metadata.finalizers.append("example.com/late")
    with pytest.raises(Invalid):
        store.update(adding)
    last = marked.model_copy(deep=True)
    last.metadata.finalizers = []
    assert store.update(last).metadata.finalizers == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            store.get(a.key)
        except NotFound:
            break
        time.sleep(0.1)
    else:
        pytest.fail("object still there after its last finalizer was removed")
    with pytest.raises(NotFound):
        store.delete(a.key)
    b = store.create(make("b", namespace))  # no finalizers: gone at once
    store.delete(b.key)
    with pytest.raises(NotFound):
        store.get(b.key)


def test_stale_resource_version_on_delete_is_a_conflict(store: KubeStore, namespace: str) -> None:
    a = store.create(make("a", namespace))
    relabel = a.model_copy(deep=True)
    relabel.metadata.labels["x"] = "y"
    store.update(relabel)
    with pytest.raises(Conflict):
        store.delete(a.key, a.metadata.resourceVersion)


def test_invalid_objects_are_refused_by_the_server_naming_the_field(store: KubeStore, namespace: str) -> None:
    a = make("a", namespace)
    a.spec.restartPolicy.backoffSeconds = -5
    with pytest.raises(Invalid, match="backoffSeconds"):
        store.create(a)


def _raw(store: KubeStore, key: ServiceKey) -> dict[str, Any]:
    data: dict[str, Any] = store.objects.get_namespaced_custom_object(
        API_GROUP, API_VERSION, key.namespace, PLURAL, key.name)
    return data


def test_a_fed_store_reads_its_cache_and_the_servers_guards_still_refuse_stale_writes(
        store: KubeStore, kubeconfig: Path, namespace: str) -> None:
    """The operator's KubeStore reads what kopf's events fed it, not the server; what it
    writes from a stale copy is still refused (Conflict), and then it reads the server."""
    a = store.create(make("a", namespace))
    assert store.seen("ADDED", _raw(store, a.key)) == a.key
    got = store.get(a.key)
    assert got is store.get(a.key)  # the same held object: no request, no new parse
    with_finalizer = store.set_finalizers(got, [FINALIZER])
    assert store.get(a.key) is with_finalizer  # our write's answer is held at once ...
    assert store.seen("MODIFIED", _raw(store, a.key)) is None  # ... and its event needs no pass

    other = KubeStore.from_kubeconfig(kubeconfig)  # someone else changes the spec
    respec = other.get(a.key).model_copy(deep=True)
    respec.spec.adminState = AdminState.suspended
    other.update(respec)
    stale = store.get(a.key)
    assert stale.metadata.generation == 1  # the event has not been fed yet
    stale.status.restarts = 5
    with pytest.raises(Conflict):
        store.update_status(stale)  # planned for generation 1: refused by the server's test
    fresh = store.get(a.key)  # after a refusal: the server's version
    assert fresh.metadata.generation == 2 and fresh.status.restarts == 0
    with pytest.raises(Conflict):
        store.set_finalizers(stale, [])  # a stale resourceVersion: refused too
    assert store.seen("MODIFIED", _raw(store, a.key)) == a.key  # the change, seen: a pass
    assert store.get(a.key).metadata.generation == 2
    assert store.get(a.key) is store.get(a.key)

    store.delete(a.key)
    assert store.seen("MODIFIED", _raw(store, a.key)) == a.key  # deleting, held by our finalizer
    stripped = store.get(a.key).model_copy(deep=True)
    assert stripped.metadata.deletionTimestamp is not None
    store.set_finalizers(stripped, [])
    assert store.seen("DELETED", _raw_or(store, a.key, stripped)) == a.key
    with pytest.raises(NotFound):
        store.get(a.key)


def _raw_or(store: KubeStore, key: ServiceKey, last: ManagedService) -> dict[str, Any]:
    """The object as a DELETED event carries it (its last version)."""
    try:
        return _raw(store, key)
    except ApiException:
        return {"metadata": {"name": key.name, "namespace": key.namespace,
                             "resourceVersion": last.metadata.resourceVersion}}


def test_a_full_list_drops_from_the_cache_what_was_deleted_unseen(store: KubeStore, namespace: str) -> None:
    a, b = store.create(make("a", namespace)), store.create(make("b", namespace))
    for o in (a, b):
        store.seen(None, _raw(store, o.key))
    store.objects.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, "a")
    assert store.get(a.key).metadata.name == "a"  # the watch never told
    assert [o.metadata.name for o in store.list(namespace).items] == ["b"]
    with pytest.raises(NotFound):
        store.get(a.key)


def _collect(store: KubeStore, namespace: str, stop: threading.Event, out: list[ServiceKey],
             resource_version: str = "") -> threading.Thread:
    def run() -> None:
        for key in store.watch(stop, namespace, resource_version=resource_version):
            out.append(key)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _until(cond: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_watch_reports_changes_and_relists_after_410(store: KubeStore, namespace: str) -> None:
    store.create(make("before", namespace))
    stop = threading.Event()
    seen: list[ServiceKey] = []
    t = _collect(store, namespace, stop, seen)
    try:
        assert _until(lambda: ServiceKey(namespace, "before") in seen)  # the initial list
        a = store.create(make("a", namespace))
        assert _until(lambda: ServiceKey(namespace, "a") in seen)
        seen.clear()
        a.status.restarts = 1
        store.update_status(a)
        assert _until(lambda: ServiceKey(namespace, "a") in seen)
        seen.clear()
        store.delete(a.key)
        assert _until(lambda: ServiceKey(namespace, "a") in seen)
    finally:
        stop.set()
    # A resourceVersion the server no longer has (410 Gone): list again, report every key.
    stop2 = threading.Event()
    again: list[ServiceKey] = []
    _collect(store, namespace, stop2, again, resource_version="1")
    try:
        assert _until(lambda: ServiceKey(namespace, "before") in again)
    finally:
        stop2.set()
    t.join(timeout=45)


def test_errors_are_the_stores_own(control_plane: ControlPlane, tmp_path: Path, namespace: str) -> None:
    nobody = KubeStore.from_kubeconfig(control_plane.write_kubeconfig(tmp_path / "nobody", control_plane.nobody_token))
    with pytest.raises(Forbidden, match="forbidden"):
        nobody.list(namespace)
    with pytest.raises(Forbidden):
        nobody.create(make("a", namespace))
    cfg = tmp_path / "down"
    cfg.write_text(control_plane.kubeconfig.read_text().replace(control_plane.server,
                                                                f"https://127.0.0.1:{free_port()}"))
    t = time.monotonic()
    with pytest.raises(Unavailable):
        KubeStore.from_kubeconfig(cfg).get(ServiceKey(namespace, "a"))
    assert time.monotonic() - t < 10
    with pytest.raises(Unavailable, match="nope"):
        KubeStore.from_kubeconfig(control_plane.kubeconfig, context="nope")


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    yield
