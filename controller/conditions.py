"""Status conditions, kstatus/Flux conventions. Pure.

`Ready` always present; `Reconciling` and `Stalled` are present (True) only when something
is in progress or stuck, and marking one removes the other. lastTransitionTime changes
only when the condition's status changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from converge.api import Condition

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

Status = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: list[Condition], type_: str, status: Status, reason: str, message: str, now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """A new list with `type_` set; the transition time is kept unless status changed."""
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type_:
            out.append(c)
            continue
        found = True
        if (c.status, c.reason, c.message, c.observedGeneration) == (status, reason, message, generation):
            out.append(c)  # unchanged (most passes): no new model to validate
            continue
        when = c.lastTransitionTime if c.status == status else now
        out.append(Condition(type=type_, status=status, reason=reason, message=message,
                             lastTransitionTime=when, observedGeneration=generation))
    if not found:
        out.append(Condition(type=type_, status=status, reason=reason, message=message,
                             lastTransitionTime=now, observedGeneration=generation))
    return out


def mark_progress(
    conditions: list[Condition], kind: str | None, reason: str, message: str, now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """Set Reconciling or Stalled (kind) True and drop the other; kind None drops both."""
    out = [c for c in conditions if c.type not in (RECONCILING, STALLED) or c.type == kind]
    if kind is None:
        return out
    return set_condition(out, kind, "True", reason, message, now, generation)


def is_ready(conditions: list[Condition]) -> bool:
    return any(c.type == READY and c.status == "True" for c in conditions)
