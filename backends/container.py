"""The container backend: services as Docker containers, through the docker SDK.

Implements converge.backends.base.Backend for `spec.backend.container`. The engine is the one
`docker.from_env()` finds (DOCKER_HOST etc.), connected lazily and again after it was
unreachable. Identity lives on the container: its name (container_args.container_name)
and labels namespace/name/uid/spec-hash, so a restarted controller adopts what exists.

    provision    create + start; start an exited or suspended one; unpause a paused one;
                 re-create (same name, never a second copy) when the spec hash differs
    suspend      stop but keep the container; a marker file in target.runtime_dir records
                 that the stop was ours, so observe says `suspended`, not `exited`.
                 (A container paused by hand also reads as `suspended`; provision unpauses.)
    deprovision  stop with the spec's grace period, remove; absent is success
    observe      running | suspended | exited (exit code, OOM, last log lines) | absent
    watch        a thread following Docker events of labelled containers -> notify(key)

Docker SDK and transport errors become converge.backends.errors in one place (`_map_error`);
secret environment values never reach details, messages or log lines (converge.backends.env.scrub).
Argument building is pure and lives in converge.backends.container_args.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from converge import api
from converge.api import ServiceKey
from converge.backends import container_args as ca
from converge.backends.base import Notify, Observation, Phase, Target
from converge.backends.env import resolve_env, scrub, secret_values
from converge.backends.env import uses_var as env_uses_var
from converge.backends.errors import BackendError, BackendUnavailable, PermanentError, TemporaryError

log = logging.getLogger(__name__)

API_TIMEOUT = 10  # seconds for one engine call (observe, create, start, ...)
PULL_TIMEOUT = 60  # seconds without progress before a pull is given up
LOG_TAIL_LINES = 10
WATCH_EVENTS = ["die", "stop", "destroy", "pause", "unpause", "start", "oom"]
WATCH_BACKOFF = (0.5, 5.0)
SUSPEND_MARKER = "container.suspended"

T = TypeVar("T")


_MAPPED = (BackendError, docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def _map_error(exc: BaseException, what: str, secrets: Sequence[str] = ()) -> BackendError:
    """The one place docker SDK / transport errors (`_MAPPED`) become ours."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, requests.exceptions.Timeout):
        return BackendUnavailable(f"{what}: the Docker engine did not answer in time")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return BackendUnavailable(f"{what}: cannot reach the Docker engine ({_root_cause(exc)})")
    if isinstance(exc, docker.errors.ImageNotFound):
        return TemporaryError(scrub(f"{what}: {_explain(exc)}", secrets), reason="ImagePullFailed")
    if isinstance(exc, docker.errors.APIError):
        msg = scrub(f"{what}: {_explain(exc)}", secrets)
        status = exc.status_code or 0
        if status == 400:
            return PermanentError(msg, reason="InvalidSpec")
        if status == 409:
            return TemporaryError(msg, reason="Conflict")
        return TemporaryError(msg, reason="ContainerError")
    if isinstance(exc, docker.errors.DockerException):
        text = str(exc)
        if "Error while fetching server API version" in text or "Connection" in text:
            return BackendUnavailable(f"{what}: cannot reach the Docker engine ({_root_cause(exc)})")
        return TemporaryError(scrub(f"{what}: {text}", secrets), reason="ContainerError")
    return BackendUnavailable(f"{what}: Docker engine connection failed ({exc.__class__.__name__})")


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc).strip()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split(": ")[-1][:200] or exc.__class__.__name__


def _short(container: Any) -> str:
    return str(container.id)[:12]


class ContainerBackend:
    """Docker containers, one per service. Thread-safe; see the module docstring."""

    kind = "container"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: Any = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._stream: Any = None
        self._known: set[ServiceKey] = set()

    # ------------------------------------------------------------------ engine access

    def _docker(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = docker.from_env(timeout=API_TIMEOUT)
            return self._client

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _call(self, what: str, fn: Callable[[Any], T], secrets: Sequence[str] = ()) -> T:
        """Run fn(client), mapping errors; forget the client when the engine is gone."""
        try:
            return fn(self._docker())
        except _MAPPED as exc:
            err = _map_error(exc, what, secrets)
            if isinstance(err, BackendUnavailable):
                self._drop_client()
            raise err from None

    def _containers(self, client: Any, key: ServiceKey) -> list[Any]:
        """Every container of the service (any uid), newest first."""
        found = client.containers.list(all=True, filters=ca.identity_filter(key), ignore_removed=True)
        return sorted(found, key=lambda c: str(c.attrs.get("Created", "")), reverse=True)

    def _mine(self, client: Any, target: Target) -> list[Any]:
        """The containers of this very service (its uid), newest first."""
        return [c for c in self._containers(client, target.key) if c.labels.get(ca.LABEL_UID) == target.uid]

    # ------------------------------------------------------------------ apply-time checks

    def check_apply(self, spec: api.ManagedServiceSpec) -> list[str]:
        """Problems `apply` can know of before anything runs: an endpoint without a
        container port, when the image is present and does not EXPOSE exactly one. An image
        not pulled yet (or no engine) is decided at provision, with the same message."""
        c = spec.backend.container
        if c is None or spec.endpoint is None or c.ports or env_uses_var(c.command, "PORT") \
                or env_uses_var(c.args, "PORT"):
            return []
        try:
            image = self._docker().images.get(c.image)
        except Exception:
            return []
        exposed = ca.exposed_tcp_ports(image.attrs.get("Config"))
        return [] if len(exposed) == 1 else [ca.missing_port_message(c.image, exposed)]

    # ------------------------------------------------------------------ provision

    def provision(self, target: Target) -> Mapping[str, Any]:
        spec = self._spec(target)
        env = resolve_env(spec.env, Path.cwd())
        secrets = secret_values(spec.env, env)
        return self._call(f"provision {target.key}", lambda c: self._provision(c, target, spec, env),
                          secrets)

    def _provision(self, client: Any, target: Target, spec: api.ContainerBackend,
                   env: dict[str, str]) -> Mapping[str, Any]:
        found = self._containers(client, target.key)
        keep = next((c for c in found if ca.is_current(c.labels, target)
                     and c.status not in ("dead", "removing")), None)
        if keep is None:
            self._ensure_image(client, spec)  # before the old container goes: it stays if this fails
        for c in found:
            if c is not keep:
                self._remove(c, spec.stopGracePeriodSeconds)  # another spec, uid or a duplicate
        if keep is None:
            self._remove_by_name(client, target.key)
            exposed = ca.exposed_tcp_ports(client.images.get(spec.image).attrs.get("Config"))
            keep = client.containers.create(**ca.create_args(replace(target, config=spec), env, Path.cwd(),
                                                             exposed))
            try:
                keep.start()
            except Exception:
                with contextlib.suppress(Exception):
                    keep.remove(force=True)
                raise
        elif keep.status == "paused":
            keep.unpause()
        elif keep.status != "running":
            keep.start()
        self._marker(target).unlink(missing_ok=True)
        keep.reload()
        return self._details(keep)

    def _remove(self, container: Any, grace: float) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            if container.status == "paused":
                container.unpause()
            if container.status in ("running", "paused", "restarting"):
                container.stop(timeout=max(0, round(grace)))
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    def _remove_by_name(self, client: Any, key: ServiceKey) -> None:
        """Free the name for a new container; refuse to touch one converge did not make."""
        try:
            other = client.containers.get(ca.container_name(key))
        except docker.errors.NotFound:
            return
        if ca.key_of(other.labels) != key:
            raise TemporaryError(
                f"a container named {other.name} exists that converge did not create; "
                "remove or rename it", reason="NameConflict")
        with contextlib.suppress(docker.errors.NotFound):
            other.remove(force=True)

    def _ensure_image(self, client: Any, spec: api.ContainerBackend) -> None:
        if spec.imagePullPolicy != "Always":
            try:
                client.images.get(spec.image)
                return
            except docker.errors.ImageNotFound:
                if spec.imagePullPolicy == "Never":
                    raise TemporaryError(
                        f"image {spec.image} is not present and imagePullPolicy is Never",
                        reason="ImagePullFailed") from None
        self._pull(spec.image)

    def _pull(self, image: str) -> None:
        repo, tag = ca.split_image(image)
        puller = docker.from_env(timeout=PULL_TIMEOUT)
        try:
            for msg in puller.api.pull(repo, tag=tag, stream=True, decode=True):
                if isinstance(msg, dict) and msg.get("error"):
                    raise TemporaryError(f"pull {image}: {msg['error']}", reason="ImagePullFailed")
        except (docker.errors.APIError, requests.exceptions.Timeout) as exc:
            detail = _explain(exc) if isinstance(exc, docker.errors.APIError) else "timed out"
            raise TemporaryError(f"pull {image}: {detail}", reason="ImagePullFailed") from None
        finally:
            puller.close()

    def _details(self, container: Any) -> dict[str, Any]:
        ports: dict[str, str] = {}
        for cport, binds in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).items():
            for b in binds or []:
                ports.setdefault(cport, f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}")  # noqa: S104
        return {
            "containerId": _short(container),
            "containerName": container.name,
            "image": container.attrs.get("Config", {}).get("Image", ""),
            "ports": ports,
        }

    # ------------------------------------------------------------------ suspend / deprovision

    def suspend(self, target: Target) -> None:
        """Stop the container and keep it; the marker says the stop was ours."""
        spec = self._spec(target)

        def run(client: Any) -> None:
            for c in self._mine(client, target):
                marker = self._marker(target)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(c.id) + "\n")
                if c.status == "paused":
                    c.unpause()
                if c.status in ("running", "paused", "restarting"):
                    with contextlib.suppress(docker.errors.NotFound):
                        c.stop(timeout=max(0, round(spec.stopGracePeriodSeconds)))

        self._call(f"suspend {target.key}", run)

    def deprovision(self, target: Target) -> None:
        spec = self._spec(target)

        def run(client: Any) -> None:
            for c in self._containers(client, target.key):
                self._remove(c, spec.stopGracePeriodSeconds)

        self._call(f"deprovision {target.key}", run)
        self._marker(target).unlink(missing_ok=True)

    # ------------------------------------------------------------------ observe

    def observe(self, target: Target) -> Observation:
        return self._call(f"observe {target.key}", lambda c: self._observe(c, target),
                          self._secrets_quietly(target))

    def _observe(self, client: Any, target: Target) -> Observation:
        mine = self._mine(client, target)
        if not mine:
            return Observation(Phase.absent, "no container")
        c = mine[0]
        details = self._details(c)
        spec_hash = ca.observed_hash(c.labels, target)
        state = c.attrs.get("State", {})
        status = str(state.get("Status", c.status))
        extra = f" ({len(mine) - 1} more containers of this service)" if len(mine) > 1 else ""
        if status == "running":
            return Observation(Phase.running, f"container {c.name} running{extra}", details, spec_hash)
        if status == "paused":
            return Observation(Phase.suspended, f"container {c.name} paused{extra}", details, spec_hash)
        if status == "restarting":
            return Observation(Phase.running, f"container {c.name} restarting", details, spec_hash)
        if status in ("dead", "removing"):
            return Observation(Phase.error, f"container {c.name} is {status}", details, spec_hash)
        if self._suspended_by_us(target, c):
            return Observation(Phase.suspended, f"container {c.name} stopped (suspended)", details,
                               spec_hash)
        if status == "created":
            return Observation(Phase.exited, f"container {c.name} was created but never started",
                               details, spec_hash)
        code = state.get("ExitCode")
        why = " (OOMKilled)" if state.get("OOMKilled") else ""
        err = f": {state['Error']}" if state.get("Error") else ""
        message = f"container {c.name} exited with code {code}{why}{err}"
        tail = self._log_tail(c)
        if tail:
            message += "\n" + tail
        return Observation(Phase.exited, scrub(message, self._secrets_quietly(target)), details, spec_hash,
                           exit_code=code if isinstance(code, int) else None)

    def _log_tail(self, container: Any) -> str:
        try:
            raw = container.logs(tail=LOG_TAIL_LINES, stdout=True, stderr=True)
        except docker.errors.APIError:
            return ""
        return bytes(raw).decode("utf-8", errors="replace").rstrip("\n")

    def _marker(self, target: Target) -> Path:
        return target.runtime_dir / SUSPEND_MARKER

    def _suspended_by_us(self, target: Target, container: Any) -> bool:
        try:
            return self._marker(target).read_text().strip() == str(container.id)
        except OSError:
            return False

    # ------------------------------------------------------------------ logs

    def logs(self, target: Target, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        secrets = self._secrets_quietly(target)

        def find(client: Any) -> Any:
            mine = self._mine(client, target)
            if not mine:
                raise TemporaryError(f"{target.key} has no container", reason="NotProvisioned")
            return mine[0]

        container = self._call(f"logs {target.key}", find)
        if not follow:
            raw = self._call(f"logs {target.key}",
                             lambda _: container.logs(tail="all" if tail is None else tail))
            for line in bytes(raw).decode("utf-8", errors="replace").splitlines():
                yield scrub(line, secrets)
            return
        streamer = self._call(f"logs {target.key}", lambda _: docker.from_env(timeout=API_TIMEOUT))
        try:
            api = streamer.api
            api.timeout = None  # a followed stream waits for output as long as it takes
            chunks = self._call(
                f"logs {target.key}",
                lambda _: api.logs(container.id, stream=True, follow=True,
                                   tail="all" if tail is None else tail))
            pending = ""
            for chunk in chunks:
                pending += bytes(chunk).decode("utf-8", errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    yield scrub(line, secrets)
            if pending:
                yield scrub(pending, secrets)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _map_error(exc, f"logs {target.key}", secrets) from None
        finally:
            streamer.close()

    # ------------------------------------------------------------------ watch

    def watch(self, notify: Notify) -> None:
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch_loop, args=(notify,),
                                         name="converge-docker-events", daemon=True)
        self._watcher.start()

    def _watch_loop(self, notify: Notify) -> None:
        delay = WATCH_BACKOFF[0]
        while not self._stop.is_set():
            connected = False
            try:
                connected = self._follow_events(notify)
            except Exception as exc:
                connected = self._stream is not None
                log.debug("docker events: %s", _map_error(exc, "docker events"))
            finally:
                self._stream = None
            if self._stop.is_set():
                return
            if connected:  # the engine went away: let its services see it, once
                delay = WATCH_BACKOFF[0]
                for key in sorted(self._known):
                    notify(key)
            else:
                delay = min(delay * 2, WATCH_BACKOFF[1])
            self._stop.wait(delay)

    def _follow_events(self, notify: Notify) -> bool:
        """Follow the engine's events until the stream ends; False if it never started."""
        client = docker.from_env(timeout=API_TIMEOUT)
        try:
            stream = client.api.events(decode=True, filters={
                "type": "container", "label": [ca.LABEL_UID], "event": WATCH_EVENTS})
            self._stream = stream
            if self._stop.is_set():
                return True
            # Whatever happened while we were not listening: tell them all once.
            for c in client.containers.list(all=True, filters={"label": [ca.LABEL_UID]}):
                key = ca.key_of(c.labels)
                if key is not None:
                    self._known.add(key)
                    notify(key)
            for event in stream:
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                key = ca.key_of(attrs)
                if key is not None:
                    self._known.add(key)
                    notify(key)
            return True
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(timeout=5)
        self._drop_client()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _spec(target: Target) -> api.ContainerBackend:
        if isinstance(target.config, api.ContainerBackend):
            return target.config
        try:
            return api.ContainerBackend.model_validate(target.config)
        except Exception as exc:
            raise PermanentError(f"container backend spec: {exc}", reason="InvalidSpec") from None

    def _secrets_quietly(self, target: Target) -> list[str]:
        """The secret values to scrub from text; unreadable ones cannot leak, so skip them."""
        try:
            spec = self._spec(target)
            return secret_values(spec.env, resolve_env(spec.env, Path.cwd()))
        except BackendError:
            out: list[str] = []
            for var in self._spec(target).env:
                with contextlib.suppress(BackendError):
                    out += secret_values([var], resolve_env([var], Path.cwd()))
            return out
