"""Pure part of the container backend: a service's identity and its container's arguments.

From a `Target` (the spec, the service's key/uid/spec hash and its endpoint port) this
module derives the container's name and labels and the keyword arguments of
`docker.DockerClient.containers.create` — no I/O, no docker engine; unit tested in
tests/unit/test_container_args.py. converge.backends.container does the calls.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converge.api import ContainerBackend, ServiceKey
from converge.backends.base import Target
from converge.backends.env import expand, uses_var
from converge.backends.errors import PermanentError

LABEL_NAMESPACE = "dev.converge.namespace"
LABEL_NAME = "dev.converge.name"
LABEL_UID = "dev.converge.uid"
LABEL_SPEC_HASH = "dev.converge.spec-hash"
LABEL_PORT = "dev.converge.port"  # the endpoint's host port the container was made for
OWN_LABELS = (LABEL_NAMESPACE, LABEL_NAME, LABEL_UID, LABEL_SPEC_HASH, LABEL_PORT)

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def container_name(key: ServiceKey) -> str:
    """`converge_<namespace>_<name>`: '_' never occurs in a DNS-1123 label, so distinct
    services never share a name."""
    return f"converge_{key.namespace}_{key.name}"


def identity_filter(key: ServiceKey) -> dict[str, list[str]]:
    """Docker list filter for every container of the service, whatever its uid."""
    return {"label": [f"{LABEL_NAMESPACE}={key.namespace}", f"{LABEL_NAME}={key.name}"]}


def key_of(labels: Mapping[str, str]) -> ServiceKey | None:
    ns, name = labels.get(LABEL_NAMESPACE), labels.get(LABEL_NAME)
    return ServiceKey(ns, name) if ns and name else None


def labels_for(target: Target) -> dict[str, str]:
    labels = {k: v for k, v in target.labels.items() if k not in OWN_LABELS}
    labels.update({
        LABEL_NAMESPACE: target.key.namespace,
        LABEL_NAME: target.key.name,
        LABEL_UID: target.uid,
        LABEL_SPEC_HASH: target.spec_hash,
        LABEL_PORT: "" if target.port is None else str(target.port),
    })
    return labels


def observed_hash(labels: Mapping[str, str], target: Target) -> str | None:
    """The spec hash a container runs, as the core compares it: the label's hash, marked
    stale when the container publishes another endpoint port than the one now allocated."""
    h = labels.get(LABEL_SPEC_HASH)
    if h is None:
        return None
    want_port = "" if target.port is None else str(target.port)
    if labels.get(LABEL_PORT, want_port) != want_port:
        return f"{h}+port:{labels.get(LABEL_PORT)}"
    return h


def is_current(labels: Mapping[str, str], target: Target) -> bool:
    return labels.get(LABEL_UID) == target.uid and observed_hash(labels, target) == target.spec_hash


def parse_memory(value: str) -> int:
    """Docker's memory notation (e.g. 512k, 128m, 1g, 1.5g) in bytes."""
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in _UNITS and not text[-1:].isdigit() else ""
    number = text[: len(text) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise PermanentError(f"resources.memory {value!r} is not a size like 128m or 1g",
                             reason="InvalidSpec") from None
    size = int(amount * _UNITS[unit])
    if size < 6 * 1024**2:
        raise PermanentError(f"resources.memory {value!r} is below Docker's minimum of 6m",
                             reason="InvalidSpec")
    return size


def exposed_tcp_ports(image_config: Mapping[str, Any] | None) -> list[int]:
    """The image's EXPOSEd TCP ports, from its inspect data's Config (`{"8080/tcp": {}}`)."""
    out = []
    for key in (image_config or {}).get("ExposedPorts") or {}:
        number, _, proto = str(key).partition("/")
        if (proto or "tcp") == "tcp" and number.isdigit():
            out.append(int(number))
    return sorted(set(out))


def endpoint_container_port(spec: ContainerBackend, port: int | None, exposed: Sequence[int] | None = ()
                            ) -> int | None:
    """The container port the endpoint reaches: the first `ports` entry without a
    hostPort; with no `ports`, the image's single EXPOSEd TCP port, else (a command that
    says `$(PORT)` listens where it is told) the endpoint port itself. None: not published.
    exposed None: the image is not known yet (no error then)."""
    for p in spec.ports:
        if p.hostPort is None and p.protocol == "tcp":
            return p.containerPort
    if spec.ports or port is None:
        return None
    if exposed is not None and len(exposed) == 1:
        return exposed[0]
    if uses_var(spec.command, "PORT") or uses_var(spec.args, "PORT"):
        return port
    if exposed is None:
        return None
    raise PermanentError(missing_port_message(spec.image, exposed), reason="InvalidSpec")


def missing_port_message(image: str, exposed: Sequence[int]) -> str:
    what = "exposes no port" if not exposed else f"exposes {len(exposed)} ports ({', '.join(map(str, exposed))})"
    return (f"spec.backend.container.ports: the endpoint needs the container port it reaches, and image "
            f"{image} {what}: set ports: [{{containerPort: N}}] (or pass $(PORT) in the command)")


def expand_args(target: Target, env: Mapping[str, str], container_port: int | None) -> tuple[
        list[str] | None, list[str] | None]:
    """command and args with $(PORT) (the container port), $(NAME), $(NAMESPACE) and the
    env variables expanded, as for daemons."""
    spec: ContainerBackend = target.config
    variables = {"NAME": target.key.name, "NAMESPACE": target.key.namespace, **env}
    if container_port is not None:
        variables["PORT"] = str(container_port)
    command = None if spec.command is None else [expand(a, variables) for a in spec.command]
    args = None if spec.args is None else [expand(a, variables) for a in spec.args]
    return command, args


def publish_host(host: str) -> str:
    """The address ports are published on: the endpoint's host if it is an IP, else loopback."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "127.0.0.1"


def port_bindings(spec: ContainerBackend, port: int | None, host: str, exposed: Sequence[int] | None = ()
                  ) -> dict[str, list[Any]]:
    """`ports=` of containers.create: '<cport>/<proto>' -> [(host_ip, host_port|None), ...]."""
    addr = publish_host(host)
    out: dict[str, list[Any]] = {}
    ep_cport = endpoint_container_port(spec, port, exposed)
    if port is not None and ep_cport is not None:
        out.setdefault(f"{ep_cport}/tcp", []).append((addr, port))
    ep_taken = False
    for p in spec.ports:
        key = f"{p.containerPort}/{p.protocol}"
        if p.hostPort is not None:
            out.setdefault(key, []).append((addr, p.hostPort))
        elif p.containerPort == ep_cport and p.protocol == "tcp" and port is not None and not ep_taken:
            ep_taken = True  # published on the endpoint port above
        else:
            out.setdefault(key, []).append((addr, None))  # a free port picked by Docker
    return out


def bind_mounts(spec: ContainerBackend, base_dir: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for v in spec.volumes:
        host = Path(v.hostPath).expanduser()
        if not host.is_absolute():
            host = base_dir / host
        if not v.containerPath.startswith("/"):
            raise PermanentError(f"volume containerPath {v.containerPath!r} must be absolute",
                                 reason="InvalidSpec")
        out[str(host)] = {"bind": v.containerPath, "mode": "ro" if v.readOnly else "rw"}
    return out


def create_args(target: Target, env: Mapping[str, str], base_dir: Path, exposed: Sequence[int] = ()
                ) -> dict[str, Any]:
    """Keyword arguments of `containers.create` for this target. `env` is the resolved
    environment (it may hold secrets: the result must never be logged); `exposed` the
    image's EXPOSEd TCP ports."""
    spec: ContainerBackend = target.config
    cport = endpoint_container_port(spec, target.port, exposed)
    environment = dict(env)
    if cport is not None:
        environment.setdefault("PORT", str(cport))  # as daemons get it
    args: dict[str, Any] = {
        "image": spec.image,
        "name": container_name(target.key),
        "labels": labels_for(target),
        "init": True,
        "environment": environment,
    }
    # Kubernetes' meaning: command replaces the image's ENTRYPOINT, args its CMD.
    command, cmd_args = expand_args(target, env, cport)
    if command is not None:
        args["entrypoint"] = command
    if cmd_args is not None:
        args["command"] = cmd_args
    ports = port_bindings(spec, target.port, target.host, exposed)
    if ports:
        args["ports"] = ports
    volumes = bind_mounts(spec, base_dir)
    if volumes:
        args["volumes"] = volumes
    if spec.workingDir is not None:
        args["working_dir"] = spec.workingDir
    if spec.user is not None:
        args["user"] = spec.user
    if spec.resources is not None:
        if spec.resources.memory is not None:
            args["mem_limit"] = parse_memory(spec.resources.memory)
        if spec.resources.cpus is not None:
            args["nano_cpus"] = int(spec.resources.cpus * 1e9)
    return args


def split_image(image: str) -> tuple[str, str]:
    """(repository, tag or digest) for a pull; a reference without either means 'latest'."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:]
    return image, "latest"
