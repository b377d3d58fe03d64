"""Unit tests of converge.backends.container_args: spec -> name, labels, create kwargs. No I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from converge.api import ContainerBackend, ServiceKey
from converge.backends import container_args as ca
from converge.backends.base import Target
from converge.backends.errors import PermanentError


def target(port: int | None = 8080, host: str = "127.0.0.1", labels: dict[str, str] | None = None,
           **spec: Any) -> Target:
    spec.setdefault("image", "img:1")
    return Target(key=ServiceKey("default", "web"), uid="u-1", config=ContainerBackend.model_validate(spec),
                  spec_hash="h1", runtime_dir=Path("/nonexistent"), host=host, port=port,
                  labels=labels or {})


def args(**kw: Any) -> dict[str, Any]:
    """create_args for an image that EXPOSEs 8080 (unless `exposed` says otherwise)."""
    env = kw.pop("env_resolved", {})
    exposed = kw.pop("exposed", [8080])
    return ca.create_args(target(**kw), env, Path("/base"), exposed)


def test_names_never_collide_across_namespaces() -> None:
    assert ca.container_name(ServiceKey("a-b", "c")) != ca.container_name(ServiceKey("a", "b-c"))
    assert ca.container_name(ServiceKey("default", "web")) == "converge_default_web"


def test_minimal_args() -> None:
    a = args()
    assert a == {
        "image": "img:1",
        "name": "converge_default_web",
        "labels": {ca.LABEL_NAMESPACE: "default", ca.LABEL_NAME: "web", ca.LABEL_UID: "u-1",
                   ca.LABEL_SPEC_HASH: "h1", ca.LABEL_PORT: "8080"},
        "init": True,
        "environment": {"PORT": "8080"},  # the container port, as daemons get it
        "ports": {"8080/tcp": [("127.0.0.1", 8080)]},
    }


def test_command_is_entrypoint_and_args_is_cmd() -> None:
    a = args(command=["busybox", "httpd"], args=["-f", "-p", "80"])
    assert a["entrypoint"] == ["busybox", "httpd"]
    assert a["command"] == ["-f", "-p", "80"]
    assert "entrypoint" not in args(args=["x"]) and "command" not in args(command=["x"])


@pytest.mark.parametrize(("ports", "port", "want"), [
    ([], 8080, {"8080/tcp": [("127.0.0.1", 8080)]}),
    ([], None, {}),
    ([{"containerPort": 80}], 18080, {"80/tcp": [("127.0.0.1", 18080)]}),
    ([{"containerPort": 80}], None, {"80/tcp": [("127.0.0.1", None)]}),
    ([{"containerPort": 9000, "hostPort": 19000}, {"containerPort": 80}], 18080,
     {"80/tcp": [("127.0.0.1", 18080)], "9000/tcp": [("127.0.0.1", 19000)]}),
    ([{"containerPort": 80}, {"containerPort": 81}], 18080,
     {"80/tcp": [("127.0.0.1", 18080)], "81/tcp": [("127.0.0.1", None)]}),
    # only ports with hostPort: the endpoint has no container port of its own
    ([{"containerPort": 53, "hostPort": 5353, "protocol": "udp"}], 18080,
     {"53/udp": [("127.0.0.1", 5353)]}),
])
def test_ports(ports: list[dict[str, Any]], port: int | None, want: dict[str, Any]) -> None:
    assert args(ports=ports, port=port).get("ports", {}) == want


def test_ports_published_on_endpoint_ip_else_loopback() -> None:
    assert args(host="0.0.0.0")["ports"] == {"8080/tcp": [("0.0.0.0", 8080)]}
    assert args(host="localhost")["ports"] == {"8080/tcp": [("127.0.0.1", 8080)]}


def test_volumes_env_workdir_user_resources() -> None:
    a = args(volumes=[{"hostPath": "data", "containerPath": "/data"},
                      {"hostPath": "/etc/x", "containerPath": "/x", "readOnly": True}],
             workingDir="/data", user="65534", resources={"memory": "128m", "cpus": 0.5},
             env_resolved={"A": "1"})
    assert a["volumes"] == {"/base/data": {"bind": "/data", "mode": "rw"},
                            "/etc/x": {"bind": "/x", "mode": "ro"}}
    assert a["working_dir"] == "/data" and a["user"] == "65534"
    assert a["mem_limit"] == 128 * 1024**2 and a["nano_cpus"] == 500_000_000
    assert a["environment"] == {"A": "1", "PORT": "8080"}


def test_relative_container_path_is_invalid() -> None:
    # Refused by the API model (at apply), before any backend sees it.
    with pytest.raises(ValidationError, match="containerPath"):
        args(volumes=[{"hostPath": "/a", "containerPath": "data"}])


@pytest.mark.parametrize(("text", "size"), [
    ("128m", 128 * 1024**2), ("1g", 1024**3), ("1.5g", int(1.5 * 1024**3)), ("512MiB", 512 * 1024**2),
    ("10000000", 10_000_000), ("8192k", 8 * 1024**2),
])
def test_parse_memory(text: str, size: int) -> None:
    assert ca.parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "1x", "", "1k", "100"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(PermanentError) as err:
        ca.parse_memory(text)
    assert err.value.reason == "InvalidSpec"


def test_user_labels_kept_but_never_override_ours() -> None:
    a = args(labels={"stack": "demo", ca.LABEL_UID: "forged"})
    assert a["labels"]["stack"] == "demo" and a["labels"][ca.LABEL_UID] == "u-1"


def test_observed_hash_marks_port_change() -> None:
    t = target(port=8080)
    labels = ca.labels_for(t)
    assert ca.observed_hash(labels, t) == "h1" and ca.is_current(labels, t)
    moved = target(port=9090)
    assert ca.observed_hash(labels, moved) != "h1" and not ca.is_current(labels, moved)
    assert ca.observed_hash({}, t) is None
    assert not ca.is_current({**labels, ca.LABEL_UID: "other"}, t)


def test_identity_filter_and_key_of() -> None:
    key = ServiceKey("ns", "web")
    assert ca.identity_filter(key) == {"label": [f"{ca.LABEL_NAMESPACE}=ns", f"{ca.LABEL_NAME}=web"]}
    assert ca.key_of({ca.LABEL_NAMESPACE: "ns", ca.LABEL_NAME: "web"}) == key
    assert ca.key_of({ca.LABEL_NAME: "web"}) is None


@pytest.mark.parametrize(("image", "want"), [
    ("busybox", ("busybox", "latest")),
    ("busybox:1", ("busybox", "1")),
    ("localhost:5000/a/b", ("localhost:5000/a/b", "latest")),
    ("localhost:5000/a/b:2", ("localhost:5000/a/b", "2")),
    ("a/b@sha256:abc", ("a/b", "sha256:abc")),
])
def test_split_image(image: str, want: tuple[str, str]) -> None:
    assert ca.split_image(image) == want


# --------------------------------------------------------------------------- error mapping


def _api_error(status: int, explanation: str) -> Exception:
    import docker.errors
    import requests

    resp = requests.Response()
    resp.status_code = status
    cls = docker.errors.ImageNotFound if "No such image" in explanation else docker.errors.APIError
    return cls("engine said no", response=resp, explanation=explanation)


@pytest.mark.parametrize(("make", "kind", "reason"), [
    (lambda: _api_error(400, "invalid mount config"), "PermanentError", "InvalidSpec"),
    (lambda: _api_error(404, "No such image: x:1"), "TemporaryError", "ImagePullFailed"),
    (lambda: _api_error(409, "name in use"), "TemporaryError", "Conflict"),
    (lambda: _api_error(500, "driver failed programming external connectivity"), "TemporaryError",
     "ContainerError"),
    (lambda: __import__("requests").exceptions.ConnectionError("refused"), "BackendUnavailable",
     "BackendUnavailable"),
    (lambda: __import__("requests").exceptions.ReadTimeout("slow"), "BackendUnavailable", "BackendUnavailable"),
    (lambda: __import__("docker").errors.DockerException(
        "Error while fetching server API version: ('Connection aborted.', FileNotFoundError(2))"),
     "BackendUnavailable", "BackendUnavailable"),
])
def test_map_error(make: Any, kind: str, reason: str) -> None:
    from converge.backends.container import _map_error

    err = _map_error(make(), "provision default/web")
    assert type(err).__name__ == kind and err.reason == reason
    assert err.message.startswith("provision default/web: ")


def test_map_error_scrubs_secrets() -> None:
    from converge.backends.container import _map_error

    err = _map_error(_api_error(500, "bad env TOKEN=hunter22"), "provision x", ["hunter22"])
    assert "hunter22" not in err.message and "***" in err.message


def test_endpoint_without_ports_uses_the_images_single_exposed_port() -> None:
    a = args(port=18080, exposed=[8080])
    assert a["ports"] == {"8080/tcp": [("127.0.0.1", 18080)]} and a["environment"]["PORT"] == "8080"
    assert ca.exposed_tcp_ports({"ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "9090": {}}}) == [8080, 9090]
    assert ca.exposed_tcp_ports(None) == []


@pytest.mark.parametrize("exposed", [[], [80, 443]])
def test_endpoint_without_ports_needs_a_container_port(exposed: list[int]) -> None:
    with pytest.raises(PermanentError, match=r"ports: \[\{containerPort: N\}\]") as e:
        args(port=18080, exposed=exposed)
    assert e.value.reason == "InvalidSpec" and "img:1" in str(e.value)
    # explicit ports, or a command told where to listen, need no EXPOSE
    assert args(port=18080, exposed=exposed, ports=[{"containerPort": 9000}])["ports"] == {
        "9000/tcp": [("127.0.0.1", 18080)]}
    told = args(port=18080, exposed=exposed, command=["srv", "--port", "$(PORT)", "$$(PORT)"])
    assert told["entrypoint"] == ["srv", "--port", "18080", "$(PORT)"]
    assert told["ports"] == {"18080/tcp": [("127.0.0.1", 18080)]}


def test_port_and_names_expand_in_command_and_args() -> None:
    a = args(port=18080, exposed=[8080], command=["run", "$(NAME).$(NAMESPACE)"],
             args=["--listen=0.0.0.0:$(PORT)", "$(GREETING)", "$(UNKNOWN)"], env_resolved={"GREETING": "hi"})
    assert a["entrypoint"] == ["run", "web.default"]
    assert a["command"] == ["--listen=0.0.0.0:8080", "hi", "$(UNKNOWN)"]
