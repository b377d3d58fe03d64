"""converge.backends.container against a real Docker engine (the session's private dockerd)."""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from converge.api import HealthCheck, ServiceKey
from converge.backends import container_args as ca
from converge.backends.base import Observation, Phase, Target
from converge.backends.container import ContainerBackend
from converge.backends.errors import BackendUnavailable, TemporaryError
from converge.backends.health import probe
from tests.docker.engine import Engine, build_busybox_image

MakeTarget = Callable[..., Target]
HTTP = HealthCheck.model_validate({"http": {"path": "/healthz", "timeoutSeconds": 1}})

pytestmark = pytest.mark.docker


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {cond}")
        time.sleep(every)


def healthy(t: Target) -> bool:
    assert t.port is not None
    return probe(HTTP, "http", "127.0.0.1", t.port).ok


def ours(client: Any, t: Target) -> list[Any]:
    return client.containers.list(all=True, filters=ca.identity_filter(t.key))


def observe(backend: ContainerBackend, t: Target) -> Observation:
    return backend.observe(t)


def test_start_to_ready_with_http_check(backend: ContainerBackend, make_target: MakeTarget,
                                        docker_client: Any) -> None:
    t = make_target()
    started = time.monotonic()
    details = backend.provision(t)
    wait_for(lambda: healthy(t))
    ready_after = time.monotonic() - started
    assert ready_after < 10
    assert details["containerName"] == f"converge_test_{t.key.name}"
    assert details["ports"] == {"8080/tcp": f"127.0.0.1:{t.port}"}
    obs = observe(backend, t)
    assert obs.phase == Phase.running and obs.spec_hash == "h1"
    assert obs.details["containerId"] == details["containerId"]
    [c] = ours(docker_client, t)
    assert c.attrs["HostConfig"]["Init"] is True
    assert c.labels[ca.LABEL_UID] == t.uid and c.labels[ca.LABEL_NAMESPACE] == "test"
    # idempotent: a second provision changes nothing
    assert backend.provision(t)["containerId"] == details["containerId"]
    assert len(ours(docker_client, t)) == 1


def test_killed_process_is_exited_then_restarted_in_place(
        backend: ContainerBackend, make_target: MakeTarget, docker_client: Any) -> None:
    t = make_target(command=["sh", "-c", "echo booting; exec busybox httpd -f -p 8080 -h /www"])
    first = backend.provision(t)["containerId"]
    wait_for(lambda: healthy(t))
    [c] = ours(docker_client, t)
    init = psutil.Process(c.attrs["State"]["Pid"])
    [server] = init.children()
    os.kill(server.pid, signal.SIGKILL)
    obs = wait_for(lambda: (o := observe(backend, t)).phase == Phase.exited and o)
    assert obs.exit_code == 128 + signal.SIGKILL
    assert "exited with code 137" in obs.message and "booting" in obs.message
    assert backend.provision(t)["containerId"] == first  # started again, not re-created
    wait_for(lambda: healthy(t))


def test_removed_by_hand_is_absent_then_recreated(backend: ContainerBackend, make_target: MakeTarget,
                                                  docker_client: Any) -> None:
    t = make_target()
    first = backend.provision(t)["containerId"]
    ours(docker_client, t)[0].remove(force=True)
    assert observe(backend, t).phase == Phase.absent
    second = backend.provision(t)["containerId"]
    assert second != first
    wait_for(lambda: healthy(t))
    assert len(ours(docker_client, t)) == 1


def test_paused_by_hand_reads_suspended_and_provision_unpauses(
        backend: ContainerBackend, make_target: MakeTarget, docker_client: Any) -> None:
    t = make_target()
    cid = backend.provision(t)["containerId"]
    ours(docker_client, t)[0].pause()
    assert observe(backend, t).phase == Phase.suspended
    assert backend.provision(t)["containerId"] == cid
    assert observe(backend, t).phase == Phase.running
    wait_for(lambda: healthy(t))


def test_suspend_keeps_container_and_resume_reuses_it(backend: ContainerBackend, make_target: MakeTarget,
                                                      docker_client: Any) -> None:
    t = make_target()
    cid = backend.provision(t)["containerId"]
    wait_for(lambda: healthy(t))
    backend.suspend(t)
    obs = observe(backend, t)
    assert obs.phase == Phase.suspended, obs
    assert not healthy(t)
    [c] = ours(docker_client, t)
    assert c.status == "exited"
    backend.suspend(t)  # idempotent
    assert backend.provision(t)["containerId"] == cid
    wait_for(lambda: healthy(t))
    # the marker is gone: a later exit on its own reads as exited again
    c.reload()
    c.kill()
    wait_for(lambda: observe(backend, t).phase == Phase.exited)


def test_spec_change_recreates_with_the_same_name(backend: ContainerBackend, make_target: MakeTarget,
                                                  docker_client: Any) -> None:
    t1 = make_target(env={"VERSION": "1"})
    first = backend.provision(t1)
    t2 = make_target(t1.key.name, port=t1.port, uid=t1.uid, spec_hash="h2", env={"VERSION": "2"})
    assert observe(backend, t2).spec_hash == "h1"  # the core sees "spec changed"
    second = backend.provision(t2)
    assert second["containerId"] != first["containerId"]
    assert second["containerName"] == first["containerName"]
    [c] = ours(docker_client, t2)
    assert c.labels[ca.LABEL_SPEC_HASH] == "h2" and "VERSION=2" in c.attrs["Config"]["Env"]
    wait_for(lambda: healthy(t2))
    # a new endpoint port also re-creates (the hash the core sees differs)
    t3 = make_target(t1.key.name, uid=t1.uid, spec_hash="h2", env={"VERSION": "2"})
    assert observe(backend, t3).spec_hash != "h2"
    backend.provision(t3)
    wait_for(lambda: healthy(t3))
    assert len(ours(docker_client, t3)) == 1


def test_spec_change_to_a_missing_image_keeps_the_old_container(
        backend: ContainerBackend, make_target: MakeTarget, docker_client: Any) -> None:
    t1 = make_target()
    first = backend.provision(t1)["containerId"]
    t2 = make_target(t1.key.name, port=t1.port, uid=t1.uid, spec_hash="h2", image="converge-test/nope:2")
    with pytest.raises(TemporaryError) as err:
        backend.provision(t2)
    assert err.value.reason == "ImagePullFailed"
    [c] = ours(docker_client, t1)
    assert c.id.startswith(first) and c.status == "running"
    wait_for(lambda: healthy(t1))


@pytest.mark.parametrize("policy", ["IfNotPresent", "Always", "Never"])
def test_missing_image_fails_fast(backend: ContainerBackend, make_target: MakeTarget, docker_client: Any,
                                  policy: str) -> None:
    t = make_target(image="converge-test/nope:1", imagePullPolicy=policy)
    started = time.monotonic()
    with pytest.raises(TemporaryError) as err:
        backend.provision(t)
    assert err.value.reason == "ImagePullFailed"
    assert "converge-test/nope:1" in err.value.message
    assert time.monotonic() - started < 15
    assert ours(docker_client, t) == []
    assert observe(backend, t).phase == Phase.absent


def test_resources_user_workdir_volumes(backend: ContainerBackend, make_target: MakeTarget,
                                        docker_client: Any, tmp_path: Any) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("hello\n")
    t = make_target(command=["sh", "-c", "id -u > /data/uid; pwd > /data/pwd; cat /data/in.txt > /data/out; "
                                         "exec busybox httpd -f -p 8080 -h /www"],
                    volumes=[{"hostPath": str(shared), "containerPath": "/data"}],
                    workingDir="/tmp", user="0", resources={"memory": "64m", "cpus": 0.5})
    backend.provision(t)
    wait_for(lambda: healthy(t))
    [c] = ours(docker_client, t)
    assert c.attrs["HostConfig"]["Memory"] == 64 * 1024**2
    assert c.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert (shared / "pwd").read_text().strip() == "/tmp"
    assert (shared / "uid").read_text().strip() == "0"
    assert (shared / "out").read_text() == "hello\n"


def test_secrets_never_in_details_messages_or_logs(backend: ContainerBackend, make_target: MakeTarget,
                                                   docker_client: Any, tmp_path: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("s3cr3t-from-file\n")
    monkeypatch.setenv("CVG_TEST_SECRET", "s3cr3t-from-env")
    t = make_target(command=["sh", "-c", 'echo "file=$FROM_FILE env=$FROM_ENV plain=$PLAIN"; exit 3'],
                    env=[{"name": "FROM_FILE", "valueFrom": {"file": str(tmp_path / "token")}},
                         {"name": "FROM_ENV", "valueFrom": {"env": "CVG_TEST_SECRET"}},
                         {"name": "PLAIN", "value": "visible"}])
    details = backend.provision(t)
    obs = wait_for(lambda: (o := observe(backend, t)).phase == Phase.exited and o)
    [c] = ours(docker_client, t)
    assert "FROM_FILE=s3cr3t-from-file" in c.attrs["Config"]["Env"]  # the container got it
    text = repr(details) + repr(obs) + "\n".join(backend.logs(t))
    assert "s3cr3t" not in text
    assert "file=*** env=*** plain=visible" in obs.message
    assert obs.exit_code == 3


def test_logs_tail_and_follow(backend: ContainerBackend, make_target: MakeTarget) -> None:
    t = make_target(command=["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo late; "
                                         "exec busybox httpd -f -p 8080 -h /www"])
    backend.provision(t)
    wait_for(lambda: "line5" in list(backend.logs(t)))
    assert list(backend.logs(t, tail=2))[-1] in ("line5", "late")
    lines: list[str] = []
    for line in backend.logs(t, follow=True, tail=1):
        lines.append(line)
        if line == "late":
            break
    assert lines[-1] == "late"
    with pytest.raises(TemporaryError):
        list(backend.logs(make_target()))


def test_deprovision_removes_and_absent_is_success(backend: ContainerBackend, make_target: MakeTarget,
                                                   docker_client: Any) -> None:
    t = make_target()
    backend.provision(t)
    started = time.monotonic()
    backend.deprovision(t)
    assert time.monotonic() - started < 5  # init passes SIGTERM on: no grace-period wait
    assert ours(docker_client, t) == []
    assert observe(backend, t).phase == Phase.absent
    backend.deprovision(t)


def test_restarted_controller_adopts_without_duplicate(make_target: MakeTarget, docker_client: Any,
                                                       engine: Engine) -> None:
    t = make_target()
    first = ContainerBackend()
    cid = first.provision(t)["containerId"]
    first.close()
    second = ContainerBackend()
    try:
        obs = second.observe(t)
        assert obs.phase == Phase.running and obs.details["containerId"] == cid and obs.spec_hash == "h1"
        assert second.provision(t)["containerId"] == cid
        assert len(ours(docker_client, t)) == 1
        # the same service re-created with a new uid replaces the old one's container
        again = make_target(t.key.name, port=t.port)
        assert second.observe(again).phase == Phase.absent
        assert second.provision(again)["containerId"] != cid
        assert len(ours(docker_client, again)) == 1
    finally:
        second.close()


def test_name_taken_by_a_foreign_container(backend: ContainerBackend, make_target: MakeTarget,
                                           docker_client: Any) -> None:
    t = make_target()
    docker_client.containers.create("converge-test/busybox:1", ["sleep", "60"], name=ca.container_name(t.key))
    with pytest.raises(TemporaryError) as err:
        backend.provision(t)
    assert err.value.reason == "NameConflict"


def test_watch_delivers_events(backend: ContainerBackend, make_target: MakeTarget,
                               docker_client: Any) -> None:
    seen: queue.Queue[ServiceKey] = queue.Queue()
    t = make_target()
    backend.watch(seen.put)
    backend.provision(t)

    def drain_until(key: ServiceKey, timeout: float = 5.0) -> float:
        started = time.monotonic()
        while True:
            got = seen.get(timeout=max(0.01, timeout - (time.monotonic() - started)))
            if got == key:
                return time.monotonic() - started

    drain_until(t.key)  # start
    time.sleep(0.2)
    while not seen.empty():
        seen.get()
    ours(docker_client, t)[0].kill()
    assert drain_until(t.key) < 2.0
    started = time.monotonic()
    backend.close()
    assert backend._watcher is None and time.monotonic() - started < 2


def test_engine_down_is_unavailable_then_recovers(make_target: MakeTarget,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A second engine of its own, stopped and started again under a live backend."""
    eng = Engine()
    try:
        eng.start()
        build_busybox_image(eng)
        monkeypatch.setenv("DOCKER_HOST", eng.host)
        backend = ContainerBackend()
        seen: queue.Queue[ServiceKey] = queue.Queue()
        backend.watch(seen.put)
        t = make_target()
        backend.provision(t)
        wait_for(lambda: healthy(t))
        eng.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as err:
            backend.observe(t)
        assert time.monotonic() - started < 2
        assert err.value.reason == "BackendUnavailable"
        with pytest.raises(BackendUnavailable):
            backend.provision(t)
        eng.start()
        # back: the container was stopped with the engine; provision brings it back
        obs = wait_for(lambda: backend.observe(t), timeout=10)
        assert obs.phase in (Phase.exited, Phase.running)
        backend.provision(t)
        wait_for(lambda: healthy(t))
        # the watcher reconnected by itself: a kill is reported
        wait_for(lambda: backend._stream is not None)
        time.sleep(0.3)
        while not seen.empty():
            seen.get()
        client = eng.client()
        client.containers.list(filters=ca.identity_filter(t.key))[0].kill()
        client.close()
        assert seen.get(timeout=5) == t.key
        backend.close()
    finally:
        eng.close()


def test_unreachable_engine_is_reported_quickly(make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Any) -> None:
    t = make_target()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    backend = ContainerBackend()
    started = time.monotonic()
    for call in (backend.observe, backend.provision, backend.deprovision, backend.suspend):
        with pytest.raises(BackendUnavailable):
            call(t)
    assert time.monotonic() - started < 2
    backend.close()
