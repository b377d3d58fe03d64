"""Names, keys and the size bound of services, without the API models: what a command
that only reads the store needs (`converge get` on the file store imports no pydantic).
converge.api re-exports all of it."""

from __future__ import annotations

import re

# Like etcd's request limit, an object (as written) is at most MAX_OBJECT_BYTES;
# converge.manifest checks the expanded YAML against the same bound before building
# anything from it.
MAX_OBJECT_BYTES = 1024 * 1024
BACKEND_KINDS = ("daemon", "container", "terraform", "kubernetes")  # spec.backend's built-in keys

DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL_HINT = ("must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', "
                      "starting and ending with a letter or digit")
DNS1123_LABEL = re.compile(DNS1123_LABEL_PATTERN)


def is_dns_label(value: str) -> bool:
    """Full match (re.match's `$` would accept a trailing newline)."""
    return len(value) <= 63 and DNS1123_LABEL.fullmatch(value) is not None


class InvalidName(ValueError):
    """A namespace or name given outside a manifest is not a DNS-1123 label."""


def check_name(value: str, what: str = "name") -> str:
    """A namespace or name given outside a manifest (a CLI flag or argument, a client
    call): never a path into or out of the store."""
    if not is_dns_label(value):
        raise InvalidName(f"{what} {value[:80]!r} {DNS1123_LABEL_HINT}")
    return value


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
