"""API models of the ManagedService resource: the single source of truth.

The CRD's openAPIV3Schema (controller.crd), the file store's validation
(converge.manifest) and the manifest reference in the README all come from these
pydantic models. Pure data: no I/O here.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_GROUP = "converge.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "ManagedService"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Port = Annotated[int, Field(ge=1, le=65535)]


class Model(BaseModel):
    """Base of every spec model: unknown fields are errors, names are camelCase."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


def cel(rule: str, message: str) -> ConfigDict:
    """A model's cross-field rule, said in CEL for the CRD (x-kubernetes-validations, checked by
    the API server) next to the model_validator that checks it here; same message in both."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [{"rule": rule, "message": message}]})


def _dns_label(value: str, what: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} must be a DNS-1123 label: at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return value


# --------------------------------------------------------------------------- metadata


class ObjectMeta(Model):
    name: str = Field(description="DNS-1123 label, unique in its namespace.")
    namespace: str = Field(default="default", description="Local mode: a folder of the store.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = Field(default=None, description="Set by the store on creation.")
    resourceVersion: str | None = Field(default=None, description="Optimistic concurrency token.")
    generation: int | None = Field(default=None, description="Incremented on each spec change.")
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None
    finalizers: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _dns_label(v, "name")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return _dns_label(v, "namespace")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if len(key) > 253 or not LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} is not a valid label key")
            if len(value) > 63 or not LABEL_VALUE.match(value):
                raise ValueError(f"label value {value!r} of {key!r} is not a valid label value")
        return v


# --------------------------------------------------------------------------- env


ONE_VALUE_FROM = "valueFrom needs exactly one of 'file' or 'env'"
VALUE_XOR_VALUE_FROM = "set either 'value' or 'valueFrom', not both"


class ValueFrom(Model):
    """Where a secret value comes from. The value itself never reaches status or logs."""

    model_config = cel("has(self.file) != has(self.env)", ONE_VALUE_FROM)
    file: str | None = Field(default=None, description="Read the value from this file.")
    env: str | None = Field(default=None, description="Read the value from the controller's environment.")

    @model_validator(mode="after")
    def _one(self) -> ValueFrom:
        if (self.file is None) == (self.env is None):
            raise ValueError(ONE_VALUE_FROM)
        return self


class EnvVar(Model):
    model_config = cel("!has(self.value) || !has(self.valueFrom)", VALUE_XOR_VALUE_FROM)

    name: str
    value: str | None = None
    valueFrom: ValueFrom | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ENV_NAME.match(v):
            raise ValueError(f"environment variable name {v!r} is not valid")
        return v

    @model_validator(mode="after")
    def _one(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError(VALUE_XOR_VALUE_FROM)
        return self


def _normalize_env(v: Any) -> Any:
    """Accept the short form {NAME: value} as well as the list of EnvVar."""
    if isinstance(v, dict):
        return [
            {"name": k, **val} if isinstance(val, dict) else {"name": k, "value": None if val is None else str(val)}
            for k, val in v.items()
        ]
    return v


# --------------------------------------------------------------------------- backends


class DaemonBackend(Model):
    """A local process, started detached in its own session."""

    command: list[str] = Field(
        min_length=1,
        description="argv of the process; $(PORT) and $(NAME) are expanded, no shell is involved.",
    )
    env: list[EnvVar] = Field(default_factory=list)
    workingDir: str | None = None
    stopGracePeriodSeconds: float = Field(default=10.0, ge=0, le=3600)

    _env = field_validator("env", mode="before")(_normalize_env)


class VolumeMount(Model):
    hostPath: str
    containerPath: str
    readOnly: bool = False


class ContainerPort(Model):
    containerPort: Port
    hostPort: Port | None = None
    protocol: Literal["tcp", "udp"] = "tcp"


class Resources(Model):
    memory: str | None = Field(default=None, description="e.g. 128m, 1g")
    cpus: float | None = Field(default=None, gt=0)


class ContainerBackend(Model):
    image: str = Field(min_length=1)
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)
    volumes: list[VolumeMount] = Field(default_factory=list)
    workingDir: str | None = None
    user: str | None = None
    resources: Resources | None = None
    imagePullPolicy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    stopGracePeriodSeconds: float = Field(default=10.0, ge=0, le=3600)

    _env = field_validator("env", mode="before")(_normalize_env)


class TerraformBackend(Model):
    directory: str = Field(min_length=1, description="The recipe: a directory of .tf files.")
    variables: dict[str, Any] = Field(default_factory=dict)
    variableFiles: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list, description="Outputs to publish in status.")
    copy_: bool = Field(default=True, alias="copy", description="Copy the recipe into the runtime dir.")
    logLevel: str | None = Field(default=None, description="TF_LOG")
    timeoutSeconds: float = Field(default=600, gt=0)
    endpointOutput: str | None = Field(default=None, description="Output holding the endpoint URI.")


DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
ONE_KEY_REF = "valueFrom needs exactly one of 'secretKeyRef' or 'configMapKeyRef'"


class KeyRef(Model):
    """One key of a Secret or ConfigMap in the service's namespace."""

    name: str = Field(max_length=253, pattern=DNS1123_SUBDOMAIN)
    key: str = Field(max_length=253, pattern=CONFIG_KEY)
    optional: bool = False


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

    name: str
    value: str | None = None
    valueFrom: KubeValueFrom | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ENV_NAME.match(v):
            raise ValueError(f"environment variable name {v!r} is not valid")
        return v

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

    image: str = Field(min_length=1, max_length=512)
    imagePullPolicy: Literal["IfNotPresent", "Always", "Never"] | None = None
    replicas: int = Field(default=1, ge=0, le=1000)
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[KubeEnvVar] = Field(default_factory=list)
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


BACKEND_KINDS = ("daemon", "container", "terraform", "kubernetes")


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
    path: str = "/"
    status: int = Field(default=200, ge=100, le=599)
    timeoutSeconds: float = Field(default=2.0, gt=0, le=60)


class TcpCheck(Model):
    timeoutSeconds: float = Field(default=2.0, gt=0, le=60)


ONE_CHECK = "healthCheck needs exactly one of 'http' or 'tcp'"
PORT_OR_ALLOCATE = "endpoint needs a 'port', or 'allocatePort: true'"
BACKOFF_ORDER = "maxBackoffSeconds must be >= backoffSeconds"
TERRAFORM_NOT_SUSPENDED = ("adminState 'suspended' is not meaningful for the terraform backend: "
                           "use 'inactive' to destroy or 'active' to apply")


class HealthCheck(Model):
    model_config = cel("has(self.http) != has(self.tcp)", ONE_CHECK)

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    periodSeconds: float = Field(default=10.0, gt=0, description="Probe interval once healthy.")
    failureThreshold: int = Field(default=3, ge=1, description="Consecutive failures that mean error.")
    startupTimeoutSeconds: float = Field(default=60.0, gt=0, description="Longest pending_startup.")

    @model_validator(mode="after")
    def _one(self) -> HealthCheck:
        if (self.http is None) == (self.tcp is None):
            raise ValueError(ONE_CHECK)
        return self


class Endpoint(Model):
    model_config = cel("has(self.port) || (has(self.allocatePort) && self.allocatePort)", PORT_OR_ALLOCATE)

    protocol: Literal["tcp", "http", "https"] = "http"
    host: str = "127.0.0.1"
    port: Port | None = Field(default=None, description="Preferred port.")
    allocatePort: bool = Field(default=False, description="Pick a free port if the preferred one is busy.")
    healthCheck: HealthCheck | None = None

    @model_validator(mode="after")
    def _port(self) -> Endpoint:
        if self.port is None and not self.allocatePort:
            raise ValueError(PORT_OR_ALLOCATE)
        return self


class RestartPolicy(Model):
    model_config = cel("self.maxBackoffSeconds >= self.backoffSeconds", BACKOFF_ORDER)

    backoffSeconds: float = Field(default=1.0, gt=0, le=3600)
    maxBackoffSeconds: float = Field(default=300.0, gt=0, le=86400)
    resetAfterSeconds: float = Field(default=60.0, gt=0, description="Healthy this long resets the backoff.")

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
    dependsOn: list[str] = Field(default_factory=list, json_schema_extra={"x-kubernetes-list-type": "set"})
    backend: Backend
    endpoint: Endpoint | None = None
    restartPolicy: RestartPolicy = Field(default_factory=RestartPolicy)

    @field_validator("dependsOn")
    @classmethod
    def _deps(cls, v: list[str]) -> list[str]:
        for name in v:
            _dns_label(name, "dependsOn entry")
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


class ServiceKey(tuple[str, str]):
    """(namespace, name): what queues hold and stores index by."""

    def __new__(cls, namespace: str, name: str) -> ServiceKey:
        return super().__new__(cls, (namespace, name))

    @property
    def namespace(self) -> str:
        return self[0]

    @property
    def name(self) -> str:
        return self[1]

    def __str__(self) -> str:
        return f"{self[0]}/{self[1]}"
