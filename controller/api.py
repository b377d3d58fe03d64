"""API models of the ManagedService resource: the single source of truth.

The CRD's openAPIV3Schema (controller.crd), the file store's validation
(converge.manifest) and the manifest reference in the README all come from these
pydantic models. Pure data: no I/O here.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from converge.names import BACKEND_KINDS as BACKEND_KINDS
from converge.names import DNS1123_LABEL as DNS1123_LABEL
from converge.names import DNS1123_LABEL_HINT, DNS1123_LABEL_PATTERN
from converge.names import MAX_OBJECT_BYTES as MAX_OBJECT_BYTES
from converge.names import InvalidName as InvalidName
from converge.names import ServiceKey as ServiceKey
from converge.names import check_name as check_name
from converge.names import is_dns_label as is_dns_label

API_GROUP = "converge.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "ManagedService"
# converge's finalizer: added before anything is provisioned, removed once deprovisioned.
FINALIZER = "converge.dev/deprovision"

# Bounds on what a manifest may hold; an object (as written) is at most MAX_OBJECT_BYTES
# (converge.names).
MAX_PATH = 4096
MAX_ARG = 32 * 1024  # one argv element or env value (Linux allows 128 KiB)
MAX_ITEMS = 1024  # argv elements, env entries, ports, volumes, dependsOn, outputs ...

# Every pattern is anchored (^...$): pydantic-core searches with `pattern`, and `$` is
# the end of the text there (no match before a trailing newline), so these are full
# matches, in the file store and in the CRD's openAPIV3Schema alike.
LABEL_KEY_PATTERN = (r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TEXT_PATTERN = r"^[^\x00]*$"  # anything but NUL, which no argv, environment or path can hold
CONTAINER_PATH_PATTERN = r"^/[^\x00:]*$"  # absolute; ':' would split Docker's bind syntax
HOST_PATH_PATTERN = r"^[^\x00:]+$"
HTTP_PATH_PATTERN = r"^/[!-~]*$"  # printable ASCII, no space, CR or LF: percent-encode the rest
HOST_PATTERN = (r"^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*"
                r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")  # a host name, an IPv4 or an IPv6 address
# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest].
_IMG_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMG_DOMAIN = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
IMAGE_PATTERN = (rf"^(?:{_IMG_DOMAIN}/)?{_IMG_COMPONENT}(?:/{_IMG_COMPONENT})*"
                 r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                 r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$")
MEMORY_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,6})?([kKmMgGtT][iI]?)?[bB]?$"
USER_PATTERN = r"^[A-Za-z0-9_][-A-Za-z0-9_.]{0,63}(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,63})?$"
TF_NAME_PATTERN = r"^[A-Za-z_][-A-Za-z0-9_]{0,255}$"
TF_LOG_PATTERN = r"^(TRACE|DEBUG|INFO|WARN|ERROR|OFF|JSON|trace|debug|info|warn|error|off|json)$"

# What a pattern means, for error messages (converge.validation).
PATTERN_HINTS = {
    DNS1123_LABEL_PATTERN: DNS1123_LABEL_HINT,
    LABEL_KEY_PATTERN: "is not a valid label key ([prefix/]name: name at most 63 letters, digits, "
                       "'-', '_', '.', starting and ending with a letter or digit)",
    LABEL_VALUE_PATTERN: "is not a valid label value (at most 63 letters, digits, '-', '_', '.', "
                         "starting and ending with a letter or digit)",
    ENV_NAME_PATTERN: "is not a valid environment variable name (letters, digits and '_', not starting "
                      "with a digit)",
    TEXT_PATTERN: "must not contain a NUL byte",
    CONTAINER_PATH_PATTERN: "must be an absolute path inside the container, without NUL or ':'",
    HOST_PATH_PATTERN: "must be a path without NUL or ':'",
    HTTP_PATH_PATTERN: "must be an absolute request path of printable ASCII without spaces or line "
                       "breaks (percent-encode the rest)",
    HOST_PATTERN: "must be a host name or an IP address",
    IMAGE_PATTERN: "is not a valid image reference ([registry/]repository[:tag][@digest], repository "
                   "in lowercase)",
    MEMORY_PATTERN: "is not a size like 128m, 512Mi or 1g",
    USER_PATTERN: "is not a user like 'name', '1000' or '1000:1000'",
    TF_NAME_PATTERN: "is not a Terraform name (at most 256 letters, digits, '_' and '-', not starting with a "
                     "digit)",
    TF_LOG_PATTERN: "is not a TF_LOG level (TRACE, DEBUG, INFO, WARN, ERROR, OFF or JSON)",
}

DNSLabel = Annotated[str, StringConstraints(max_length=63, pattern=DNS1123_LABEL_PATTERN)]
LabelKey = Annotated[str, StringConstraints(max_length=317, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=MAX_ARG, pattern=TEXT_PATTERN)]
LocalPath = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH, pattern=TEXT_PATTERN)]
HostPath = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH, pattern=HOST_PATH_PATTERN)]
ContainerPath = Annotated[str, StringConstraints(max_length=MAX_PATH, pattern=CONTAINER_PATH_PATTERN)]
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]
TfName = Annotated[str, StringConstraints(pattern=TF_NAME_PATTERN)]  # bounded by the pattern (a CRD map key)
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]


def seconds(default: float, ge: float, le: float, description: str | None = None) -> Any:
    """A finite, bounded number of seconds (ints are fine, booleans and strings are not)."""
    return Field(default=default, ge=ge, le=le, allow_inf_nan=False, strict=True, description=description)


class Model(BaseModel):
    """Base of every spec model: unknown fields are errors, names are camelCase."""

    # defer_build: a model's validator is built on first use, so a command that validates
    # nothing (or only some models) does not pay for building all of them at import.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False, defer_build=True)


def cel_rule(rule: str, message: str) -> dict[str, Any]:
    """A rule said in CEL for the CRD (x-kubernetes-validations, checked by the API server), for
    `Field(json_schema_extra=...)` next to the validator that checks it here; same message in both."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


def cel(rule: str, message: str) -> ConfigDict:
    """A model's cross-field rule in CEL (see cel_rule), next to its model_validator."""
    return ConfigDict(json_schema_extra=cel_rule(rule, message))


# --------------------------------------------------------------------------- metadata


class ObjectMeta(Model):
    name: DNSLabel = Field(description="DNS-1123 label, unique in its namespace.")
    namespace: DNSLabel = Field(default="default", description="Local mode: a folder of the store.")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[LabelKey, str] = Field(default_factory=dict)
    uid: str | None = Field(default=None, description="Set by the store on creation.")
    resourceVersion: str | None = Field(default=None, description="Optimistic concurrency token.")
    generation: int | None = Field(default=None, description="Incremented on each spec change.")
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None
    finalizers: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- env


ONE_VALUE_FROM = "valueFrom needs exactly one of 'file' or 'env'"
VALUE_XOR_VALUE_FROM = "set either 'value' or 'valueFrom', not both"


class ValueFrom(Model):
    """Where a secret value comes from. The value itself never reaches status or logs."""

    model_config = cel("has(self.file) != has(self.env)", ONE_VALUE_FROM)

    file: LocalPath | None = Field(default=None, description="Read the value from this file.")
    env: EnvName | None = Field(default=None, description="Read the value from the controller's environment.")

    @model_validator(mode="after")
    def _one(self) -> ValueFrom:
        if (self.file is None) == (self.env is None):
            raise ValueError(ONE_VALUE_FROM)
        return self


class EnvVar(Model):
    model_config = cel("!has(self.value) || !has(self.valueFrom)", VALUE_XOR_VALUE_FROM)

    name: EnvName
    value: Text | None = None
    valueFrom: ValueFrom | None = None

    @model_validator(mode="after")
    def _one(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError(VALUE_XOR_VALUE_FROM)
        return self


def _normalize_env(v: Any) -> Any:
    """Accept the short form {NAME: value} as well as the list of EnvVar. Values are
    strings (quote numbers), null, or a mapping with valueFrom."""
    if isinstance(v, dict):
        out = []
        for k, val in v.items():
            if isinstance(val, dict):
                out.append({"name": k, **val})
            elif val is None or isinstance(val, str):
                out.append({"name": k, "value": val})
            else:
                raise ValueError(f"env {str(k)[:80]!r}: the value must be a string (quote it), "
                                 f"got {type(val).__name__}")
        return out
    return v


EnvList = Annotated[list[EnvVar], Field(max_length=MAX_ITEMS)]
Argv = Annotated[list[Text], Field(max_length=MAX_ITEMS)]
BLANK_PROGRAM = "the program (the first element) must not be empty"
# What str.strip() removes (str.isspace) as an RE2 class: \t-\r, \x1c-\x20, NEL and Unicode's Z*.
BLANK_PATTERN = r"^[\t-\r\x1c-\x20\x85\p{Z}]*$"


def _argv0(v: list[str]) -> list[str]:
    if v and not v[0].strip():
        raise ValueError(BLANK_PROGRAM)
    return v


Command = Annotated[Argv, AfterValidator(_argv0), Field(json_schema_extra=cel_rule(
    f"size(self) == 0 || !self[0].matches(r'{BLANK_PATTERN}')", BLANK_PROGRAM))]


# --------------------------------------------------------------------------- backends


class DaemonBackend(Model):
    """A local process, started detached in its own session."""

    command: Command = Field(
        min_length=1,
        description="argv of the process; $(PORT), $(NAME), $(NAMESPACE) and plain env values are expanded "
                    "(never valueFrom secrets), no shell is involved.",
    )
    env: EnvList = Field(default_factory=list)
    workingDir: LocalPath | None = None
    stopGracePeriodSeconds: float = seconds(10.0, 0, 3600)
    logMaxBytes: StrictInt = Field(default=10 * 1024 * 1024, ge=64 * 1024, le=1024**4,
                                   description="daemon.log is rotated while the service runs once this large.")
    logMaxFiles: StrictInt = Field(default=3, ge=0, le=100, description="Rotated logs kept (daemon.log.1 ...).")

    _env = field_validator("env", mode="before")(_normalize_env)

    @field_validator("env")
    @classmethod
    def _no_secret_in_argv(cls, env: list[EnvVar], info: ValidationInfo) -> list[EnvVar]:
        """A secret expanded into the command line would be readable by every user of the
        host (/proc/PID/cmdline) and stored in daemon.json: secrets go in the environment only."""
        command = info.data.get("command") or []
        for var in env:
            if var.valueFrom is None:
                continue
            ref = f"$({var.name})"
            for i, arg in enumerate(command):
                if ref in arg.replace("$$", ""):
                    raise ValueError(f"{var.name} comes from valueFrom (a secret) and command[{i}] expands {ref}: "
                                     "a command line is readable by every user of the host; read the secret "
                                     "from the environment in the program instead")
        return env


class VolumeMount(Model):
    hostPath: HostPath
    containerPath: ContainerPath
    readOnly: StrictBool = False


class ContainerPort(Model):
    containerPort: Port
    hostPort: Port | None = None
    protocol: Literal["tcp", "udp"] = "tcp"


_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MIN_MEMORY = 6 * 1024**2  # Docker's minimum
MAX_MEMORY = 1024**5


def memory_bytes(value: str) -> int:
    """A size in MEMORY_PATTERN's notation (128m, 512Mi, 1g, 1.5G) in bytes."""
    text = value.lower().removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in _MEMORY_UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * _MEMORY_UNITS[unit])


class Resources(Model):
    memory: Annotated[str, StringConstraints(max_length=32, pattern=MEMORY_PATTERN)] | None = Field(
        default=None, description="e.g. 128m, 512Mi, 1g (at least 6m)")
    cpus: float | None = Field(default=None, gt=0, le=1024, allow_inf_nan=False, strict=True)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not MIN_MEMORY <= memory_bytes(v) <= MAX_MEMORY:
            raise ValueError(f"{v!r} is out of range: at least 6m (Docker's minimum), at most 1p")
        return v


class ContainerBackend(Model):
    image: ImageRef
    command: Command | None = None
    args: Argv | None = None
    env: EnvList = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list, max_length=MAX_ITEMS)
    volumes: list[VolumeMount] = Field(default_factory=list, max_length=MAX_ITEMS)
    workingDir: ContainerPath | None = None
    user: Annotated[str, StringConstraints(max_length=129, pattern=USER_PATTERN)] | None = None
    resources: Resources | None = None
    imagePullPolicy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    stopGracePeriodSeconds: float = seconds(10.0, 0, 3600)

    _env = field_validator("env", mode="before")(_normalize_env)


def _finite(value: Any, where: str = "") -> None:
    """JSON (and so the store and the API server) has no inf or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'value'}: {value} is not a number JSON can hold")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


class TerraformBackend(Model):
    directory: LocalPath = Field(description="The recipe: a directory of .tf files.")
    variables: dict[TfName, JsonValue] = Field(default_factory=dict, max_length=MAX_ITEMS)
    variableFiles: list[LocalPath] = Field(default_factory=list, max_length=MAX_ITEMS)
    outputs: list[TfName] = Field(default_factory=list, max_length=MAX_ITEMS,
                                  description="Outputs to publish in status.")
    copy_: StrictBool = Field(default=True, alias="copy", description="Copy the recipe into the runtime dir.")
    logLevel: Annotated[str, StringConstraints(pattern=TF_LOG_PATTERN)] | None = Field(
        default=None, description="TF_LOG")
    timeoutSeconds: float = seconds(600, 1, 86400)
    endpointOutput: TfName | None = Field(default=None, description="Output holding the endpoint URI.")

    @field_validator("variables")
    @classmethod
    def _variables(cls, v: dict[str, Any]) -> dict[str, Any]:
        _finite(v)
        return v


DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
ONE_KEY_REF = "valueFrom needs exactly one of 'secretKeyRef' or 'configMapKeyRef'"


class KeyRef(Model):
    """One key of a Secret or ConfigMap in the service's namespace."""

    name: str = Field(max_length=253, pattern=DNS1123_SUBDOMAIN)
    key: str = Field(max_length=253, pattern=CONFIG_KEY)
    optional: StrictBool = False


class KubeValueFrom(Model):
    """Where a pod's variable comes from: resolved by the kubelet, never read by converge."""

    model_config = cel("has(self.secretKeyRef) != has(self.configMapKeyRef)", ONE_KEY_REF)

    secretKeyRef: KeyRef | None = None
    configMapKeyRef: KeyRef | None = None

    @model_validator(mode="after")
    def _one(self) -> KubeValueFrom:
        if (self.secretKeyRef is None) == (self.configMapKeyRef is None):
            raise ValueError(ONE_KEY_REF)
        return self


class KubeEnvVar(Model):
    model_config = cel("!has(self.value) || !has(self.valueFrom)", VALUE_XOR_VALUE_FROM)

    name: EnvName
    value: Text | None = None
    valueFrom: KubeValueFrom | None = None

    @model_validator(mode="after")
    def _one(self) -> KubeEnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError(VALUE_XOR_VALUE_FROM)
        return self


class ResourceList(Model):
    cpu: str | None = Field(default=None, pattern=QUANTITY, description="e.g. 250m, 1")
    memory: str | None = Field(default=None, pattern=QUANTITY, description="e.g. 128Mi, 1Gi")


class KubeResources(Model):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class KubernetesBackend(Model):
    """A Deployment and a Service in the ManagedService's namespace."""

    image: ImageRef
    imagePullPolicy: Literal["IfNotPresent", "Always", "Never"] | None = None
    replicas: StrictInt = Field(default=1, ge=0, le=1000)
    command: Command | None = None
    args: Argv | None = None
    env: list[KubeEnvVar] = Field(default_factory=list, max_length=MAX_ITEMS)
    ports: list[Port] = Field(default_factory=list, max_length=32,
                              json_schema_extra={"x-kubernetes-list-type": "set"},
                              description="Container ports, each also a port of the Service.")
    resources: KubeResources | None = None
    serviceAccountName: str | None = Field(default=None, max_length=253, pattern=DNS1123_SUBDOMAIN)

    _env = field_validator("env", mode="before")(_normalize_env)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("ports lists a port twice")
        return v


class Backend(Model):
    """Exactly one of the fields is set."""

    # extra: third-party backends (entry points); the CRD keeps their fields as they are and
    # counts the fields to say "exactly one"
    model_config = ConfigDict(extra="allow", populate_by_name=True,
                              json_schema_extra={"minProperties": 1, "maxProperties": 1})

    daemon: DaemonBackend | None = None
    container: ContainerBackend | None = None
    terraform: TerraformBackend | None = None
    kubernetes: KubernetesBackend | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Backend:
        extra = set(self.model_extra or {})
        set_ = [k for k in BACKEND_KINDS if getattr(self, k) is not None] + sorted(extra)
        if len(set_) != 1:
            raise ValueError(
                "exactly one backend must be set, one of: " + ", ".join(BACKEND_KINDS)
                + (f" (got {', '.join(set_)})" if set_ else " (got none)")
            )
        return self

    @property
    def kind(self) -> str:
        for k in BACKEND_KINDS:
            if getattr(self, k) is not None:
                return k
        return next(iter(self.model_extra or {}))

    def config(self) -> Any:
        """The spec of the chosen backend (a model, or a plain dict for plug-in backends)."""
        return getattr(self, self.kind, None) or (self.model_extra or {})[self.kind]


# --------------------------------------------------------------------------- endpoint


class HttpCheck(Model):
    path: Annotated[str, StringConstraints(max_length=2048, pattern=HTTP_PATH_PATTERN)] = "/"
    status: StrictInt = Field(default=200, ge=100, le=599)
    timeoutSeconds: float = seconds(2.0, 0.1, 60)


class TcpCheck(Model):
    timeoutSeconds: float = seconds(2.0, 0.1, 60)


ONE_CHECK = "healthCheck needs exactly one of 'http' or 'tcp'"
PORT_OR_ALLOCATE = "endpoint needs a 'port', or 'allocatePort: true'"
BACKOFF_ORDER = "maxBackoffSeconds must be >= backoffSeconds"
TERRAFORM_NOT_SUSPENDED = ("adminState 'suspended' is not meaningful for the terraform backend: "
                           "use 'inactive' to destroy or 'active' to apply")


class HealthCheck(Model):
    model_config = cel("has(self.http) != has(self.tcp)", ONE_CHECK)

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    periodSeconds: float = seconds(10.0, 0.1, 3600, "Probe interval once healthy.")
    failureThreshold: StrictInt = Field(default=3, ge=1, le=1000, description="Consecutive failures that mean error.")
    startupTimeoutSeconds: float = seconds(60.0, 1, 86400, "Longest pending_startup.")

    @model_validator(mode="after")
    def _one(self) -> HealthCheck:
        if (self.http is None) == (self.tcp is None):
            raise ValueError(ONE_CHECK)
        return self


class Endpoint(Model):
    model_config = cel("has(self.port) || (has(self.allocatePort) && self.allocatePort)", PORT_OR_ALLOCATE)

    protocol: Literal["tcp", "http", "https"] = "http"
    host: Annotated[str, StringConstraints(max_length=253, pattern=HOST_PATTERN)] = "127.0.0.1"
    port: Port | None = Field(default=None, description="Preferred port.")
    allocatePort: StrictBool = Field(default=False, description="Pick a free port if the preferred one is busy.")
    healthCheck: HealthCheck | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if ":" in v:
            try:
                ipaddress.IPv6Address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not a valid IPv6 address") from None
        return v

    @model_validator(mode="after")
    def _port(self) -> Endpoint:
        if self.port is None and not self.allocatePort:
            raise ValueError(PORT_OR_ALLOCATE)
        return self


class RestartPolicy(Model):
    model_config = cel("self.maxBackoffSeconds >= self.backoffSeconds", BACKOFF_ORDER)

    backoffSeconds: float = seconds(1.0, 0.1, 3600)
    maxBackoffSeconds: float = seconds(300.0, 0.1, 86400)
    resetAfterSeconds: float = seconds(60.0, 0.1, 86400, "Healthy this long resets the backoff.")

    @model_validator(mode="after")
    def _order(self) -> RestartPolicy:
        if self.maxBackoffSeconds < self.backoffSeconds:
            raise ValueError(BACKOFF_ORDER)
        return self


class AdminState(StrEnum):
    active = "active"
    suspended = "suspended"
    inactive = "inactive"


class ManagedServiceSpec(Model):
    model_config = cel("!has(self.backend.terraform) || self.adminState != 'suspended'", TERRAFORM_NOT_SUSPENDED)

    adminState: AdminState = AdminState.active
    dependsOn: list[DNSLabel] = Field(default_factory=list, max_length=MAX_ITEMS,
                                      json_schema_extra={"x-kubernetes-list-type": "set"})
    backend: Backend
    endpoint: Endpoint | None = None
    restartPolicy: RestartPolicy = Field(default_factory=RestartPolicy)

    @field_validator("dependsOn")
    @classmethod
    def _deps(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("dependsOn lists a service twice")
        return v

    @model_validator(mode="after")
    def _backend_rules(self) -> ManagedServiceSpec:
        if self.backend.terraform is not None and self.adminState == AdminState.suspended:
            raise ValueError(TERRAFORM_NOT_SUSPENDED)
        return self


# --------------------------------------------------------------------------- status


class State(StrEnum):
    inactive = "inactive"
    pending_startup = "pending_startup"
    active = "active"
    pending_shutdown = "pending_shutdown"
    error = "error"
    scaled_to_zero = "scaled_to_zero"


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: datetime
    observedGeneration: int | None = None


class EndpointStatus(Model):
    uri: str | None = None
    port: int | None = None
    state: State = State.inactive


class ManagedServiceStatus(Model):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    observedGeneration: int | None = None
    state: State = State.inactive
    lastState: State | None = None
    lastError: str = ""
    restarts: int = 0
    consecutiveFailures: int = 0
    lastExitCode: int | None = None
    nextRetryTime: datetime | None = None
    activeSince: datetime | None = None
    startedAt: datetime | None = None
    healthFailures: int = 0
    specHash: str | None = Field(default=None, description="Hash of the spec the backend runs.")
    backendKind: str | None = Field(default=None, description="The backend in use (spec.backend's one key).")
    endpoint: EndpointStatus | None = None
    backend: dict[str, Any] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class ManagedService(Model):
    apiVersion: Literal["converge.dev/v1alpha1"] = "converge.dev/v1alpha1"
    kind: Literal["ManagedService"] = "ManagedService"
    metadata: ObjectMeta
    spec: ManagedServiceSpec
    status: ManagedServiceStatus = Field(default_factory=ManagedServiceStatus)

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.metadata.namespace, self.metadata.name)

    def dump(self) -> dict[str, Any]:
        """The object as it is written: aliases, no None values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
