"""How the CLI shows services: tables, describe, yaml/json. Pure (strings in, strings out)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import yaml

from converge.api import ManagedService
from converge.conditions import READY


def age(then: datetime | None, now: datetime | None = None) -> str:
    if then is None:
        return "<unknown>"
    secs = int(((now or datetime.now(UTC)) - then).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _ready(svc: ManagedService) -> str:
    c = svc.status.condition(READY)
    return c.status if c is not None else "Unknown"


def _endpoint(svc: ManagedService) -> str:
    ep = svc.status.endpoint
    return ep.uri if ep is not None and ep.uri else "<none>"


REASON_WIDTH = 80


def cut(text: str, width: int) -> str:
    """The first line of text, at most width characters; `…` marks what was cut."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if len(first) > width:
        return first[: width - 1] + "…"
    return first + ("…" if len(lines) > 1 else "")


def _reason(svc: ManagedService) -> str:
    c = svc.status.condition(READY)
    if c is None:
        return ""
    return cut(c.reason + (f": {c.message}" if c.message else ""), REASON_WIDTH)


def table(items: Sequence[ManagedService], wide: bool = False, namespaces: bool = False,
          header: bool = True) -> str:
    head = ["NAME", "STATE", "READY", "BACKEND", "ENDPOINT"]
    if wide:
        head += ["RESTARTS", "AGE", "REASON"]
    else:
        head += ["AGE"]
    if namespaces:
        head = ["NAMESPACE", *head]
    rows = [head]
    for s in items:
        row = [s.metadata.name, s.status.state.value, _ready(s), s.spec.backend.kind, _endpoint(s)]
        row += [str(s.status.restarts), age(s.metadata.creationTimestamp), _reason(s)] if wide else [
            age(s.metadata.creationTimestamp)]
        rows.append([s.metadata.namespace, *row] if namespaces else row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines if header else lines[1:])


def dump(items: Sequence[ManagedService], fmt: str, single: bool) -> str:
    data = items[0].dump() if single and items else {
        "apiVersion": "v1", "kind": "List", "items": [i.dump() for i in items]}
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False).rstrip()


def describe(s: ManagedService) -> str:
    st = s.status
    out = [
        f"Name:          {s.metadata.name}",
        f"Namespace:     {s.metadata.namespace}",
        f"Labels:        {', '.join(f'{k}={v}' for k, v in s.metadata.labels.items()) or '<none>'}",
        f"UID:           {s.metadata.uid}",
        f"Generation:    {s.metadata.generation} (observed {st.observedGeneration})",
        f"Created:       {s.metadata.creationTimestamp} ({age(s.metadata.creationTimestamp)} ago)",
    ]
    if s.metadata.deletionTimestamp:
        out.append(f"Deleting:      since {s.metadata.deletionTimestamp}")
    out += [
        f"Admin state:   {s.spec.adminState.value}",
        f"State:         {st.state.value} (last: {st.lastState.value if st.lastState else '<none>'})",
        f"Depends on:    {', '.join(s.spec.dependsOn) or '<none>'}",
        f"Endpoint:      {_endpoint(s)}" + (f" ({st.endpoint.state.value})" if st.endpoint else ""),
        f"Restarts:      {st.restarts} (consecutive failures {st.consecutiveFailures}"
        + (f", last exit code {st.lastExitCode}" if st.lastExitCode is not None else "") + ")",
    ]
    if st.nextRetryTime:
        out.append(f"Next retry:    {st.nextRetryTime}")
    out.append("Backend:       " + s.spec.backend.kind)
    for k, v in st.backend.items():
        out.append(f"  {k}: {v}")
    out.append("Spec:")
    spec_yaml = yaml.safe_dump(s.spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    out += ["  " + line for line in spec_yaml.rstrip().splitlines()]
    out.append("Conditions:")
    out.append("  TYPE          STATUS   REASON               SINCE      MESSAGE")
    for c in st.conditions:
        msg = c.message.splitlines()[0] if c.message else ""
        out.append(f"  {c.type:<13} {c.status:<8} {c.reason:<20} {age(c.lastTransitionTime):<10} {msg}")
    if st.lastError:
        out.append("Last error:")
        out += ["  " + line for line in st.lastError.splitlines()]
    return "\n".join(out)
