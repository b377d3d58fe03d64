"""What `wait --for` waits for, kubectl's forms. Pure.

    condition=Ready            the condition's status is True (names are case-insensitive)
    condition=Ready=false      ... is False (any status value: True, False, Unknown)
    delete                     the object is gone
"""

from __future__ import annotations

from dataclasses import dataclass

from converge.api import ManagedService

STATUSES = {"true": "True", "false": "False", "unknown": "Unknown"}


class BadWaitFor(ValueError):
    pass


@dataclass(frozen=True)
class WaitFor:
    condition: str | None  # None: wait for deletion
    status: str = "True"

    @property
    def delete(self) -> bool:
        return self.condition is None

    def __str__(self) -> str:
        if self.condition is None:
            return "delete"
        return f"condition={self.condition}" + ("" if self.status == "True" else f"={self.status}")

    def met(self, svc: ManagedService | None) -> bool:
        """svc None: the object does not exist."""
        if self.condition is None:
            return svc is None
        if svc is None:
            return False
        want = self.condition.lower()
        return any(c.type.lower() == want and c.status == self.status for c in svc.status.conditions)


def parse_wait_for(text: str) -> WaitFor:
    t = text.strip()
    if t.lower() == "delete":
        return WaitFor(None)
    kind, _, rest = t.partition("=")
    if kind.lower() != "condition" or not rest:
        raise BadWaitFor(f"{text!r}: use condition=TYPE, condition=TYPE=true|false|unknown, or delete")
    name, eq, value = rest.partition("=")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise BadWaitFor(f"{text!r}: {name!r} is not a condition type")
    if eq and value.lower() not in STATUSES:
        raise BadWaitFor(f"{text!r}: the condition status must be true, false or unknown, not {value!r}")
    return WaitFor(name, STATUSES[value.lower()] if eq else "True")
