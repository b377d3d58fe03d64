"""How the CLI shows services: tables, describe, yaml/json. Pure (strings in, strings out).

Tables, names, custom columns and yaml/json work on an object as it is written (a dict:
ManagedService.dump(), or a stored object file's JSON), so `converge get` needs no API
model; describe takes the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from converge.names import BACKEND_KINDS

if TYPE_CHECKING:
    from converge.api import ManagedService

Doc = dict[str, Any]  # an object as written: ManagedService.dump()
READY = "Ready"  # converge.conditions.READY (that module imports the API models)


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


def _when(text: Any) -> datetime | None:
    """A timestamp as written (RFC 3339; pydantic writes UTC as `Z`)."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _ready_condition(status: Doc) -> Doc | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == READY), None)


def _ready(status: Doc) -> str:
    c = _ready_condition(status)
    return str(c.get("status", "Unknown")) if c is not None else "Unknown"


def _endpoint(status: Doc) -> str:
    ep = status.get("endpoint") or {}
    return ep.get("uri") or "<none>"


def backend_kind(spec: Doc) -> str:
    """spec.backend's one key, as ManagedService.spec.backend.kind."""
    backend = spec.get("backend") or {}
    return next((k for k in BACKEND_KINDS if backend.get(k) is not None), next(iter(backend), ""))


REASON_WIDTH = 80


def cut(text: str, width: int) -> str:
    """The first line of text, at most width characters; `…` marks what was cut."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if len(first) > width:
        return first[: width - 1] + "…"
    return first + ("…" if len(lines) > 1 else "")


def _reason(status: Doc) -> str:
    c = _ready_condition(status)
    if c is None:
        return ""
    message = c.get("message") or ""
    return cut(str(c.get("reason", "")) + (f": {message}" if message else ""), REASON_WIDTH)


def table(items: Sequence[Doc], wide: bool = False, namespaces: bool = False, header: bool = True) -> str:
    head = ["NAME", "STATE", "READY", "BACKEND", "ENDPOINT"]
    if wide:
        head += ["RESTARTS", "AGE", "REASON"]
    else:
        head += ["AGE"]
    if namespaces:
        head = ["NAMESPACE", *head]
    rows = [head]
    now = datetime.now(UTC)
    for s in items:
        meta, status = s["metadata"], s.get("status") or {}
        created = _when(meta.get("creationTimestamp"))
        row = [meta["name"], str(status.get("state", "inactive")), _ready(status), backend_kind(s.get("spec") or {}),
               _endpoint(status)]
        row += [str(status.get("restarts", 0)), age(created, now), _reason(status)] if wide else [age(created, now)]
        rows.append([meta.get("namespace", "default"), *row] if namespaces else row)
    line = "   ".join(f"{{:<{max(map(len, column))}}}" for column in zip(*rows, strict=True)).format
    return "\n".join([line(*r).rstrip() for r in (rows if header else rows[1:])])


_TIME_KEYS = ("creationTimestamp", "deletionTimestamp", "lastTransitionTime", "nextRetryTime", "startedAt",
              "activeSince")


def _seconds(node: Any) -> Any:
    """Timestamps of metadata and status as the API server writes them: RFC 3339, whole seconds, Z."""
    if isinstance(node, list):
        return [_seconds(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _TIME_KEYS and isinstance(v, str):
            try:
                when = datetime.fromisoformat(v)
            except ValueError:
                out[k] = v
                continue
            out[k] = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            out[k] = _seconds(v) if k in ("conditions", "items") else v
    return out


def shown(doc: Doc) -> Doc:
    """The object (as written) as `get -o yaml|json|custom-columns` show it."""
    data = dict(doc)
    for part in ("metadata", "status"):
        if isinstance(data.get(part), dict):
            data[part] = _seconds(data[part])
    return data


def dump(items: Sequence[Doc], fmt: str, single: bool) -> str:
    data = shown(items[0]) if single and items else {
        "apiVersion": "v1", "kind": "List", "items": [shown(i) for i in items]}
    if fmt == "json":
        return json.dumps(data, indent=2)
    import yaml  # imported when used: `get` and `get -o json` do not need it

    return yaml.safe_dump(data, sort_keys=False).rstrip()


def timestamp(when: datetime | None) -> str:
    """kubectl describe's form: Sun, 29 Nov 2026 05:37:17 +0000 (seconds, numeric zone)."""
    if when is None:
        return "<unset>"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.strftime("%a, %d %b %Y %H:%M:%S %z")


def _title(key: str) -> str:
    """camelCase -> Title Case, as kubectl describe shows field names."""
    words, cur = [], ""
    for ch in key:
        if ch.isupper() and cur and not cur[-1].isupper():
            words.append(cur)
            cur = ""
        cur += ch
    words.append(cur)
    return " ".join(w[:1].upper() + w[1:] for w in words if w)


KEY_WIDTH = 20


def _field(key: str, value: object, indent: int = 0) -> list[str]:
    """`Key:   value`, values aligned; a multi-line value continues under the first."""
    text = str(value) if value not in (None, "") else "<none>"
    lines = text.splitlines() or [""]
    pad = " " * indent
    width = max(KEY_WIDTH - indent, len(key) + 2)
    out = [f"{pad}{key + ':':<{width}}{lines[0]}".rstrip()]
    out += [f"{pad}{'':<{width}}{line}".rstrip() for line in lines[1:]]
    return out


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def describe(s: ManagedService, now: datetime | None = None) -> str:
    import yaml

    st, meta = s.status, s.metadata
    labels = "\n".join(f"{k}={v}" for k, v in sorted(meta.labels.items())) or "<none>"
    annotations = "\n".join(f"{k}: {v}" for k, v in sorted(meta.annotations.items())) or "<none>"
    if st.observedGeneration is None:
        gen = f"{meta.generation} (not reconciled yet)"
    elif st.observedGeneration != meta.generation:
        gen = f"{meta.generation} (status is of generation {st.observedGeneration}: not reconciled yet)"
    else:
        gen = f"{meta.generation}"
    out = [
        *_field("Name", meta.name),
        *_field("Namespace", meta.namespace),
        *_field("Labels", labels),
        *_field("Annotations", annotations),
        *_field("UID", meta.uid),
        *_field("Generation", gen),
        *_field("Creation Timestamp", f"{timestamp(meta.creationTimestamp)}   "
                f"({age(meta.creationTimestamp, now)} ago)"),
    ]
    if meta.deletionTimestamp:
        out += _field("Deletion Timestamp", timestamp(meta.deletionTimestamp))
    if meta.finalizers:
        out += _field("Finalizers", ", ".join(meta.finalizers))
    out += [
        *_field("Admin State", s.spec.adminState.value),
        *_field("State", st.state.value),
        *_field("Last State", st.lastState.value if st.lastState else "<none>"),
        *_field("Depends On", ", ".join(s.spec.dependsOn) or "<none>"),
        *_field("Endpoint", f"{st.endpoint.uri} ({st.endpoint.state.value})" if st.endpoint and st.endpoint.uri
                else "<none>"),
        *_field("Restarts", st.restarts),
    ]
    if st.consecutiveFailures:
        out += _field("Failures In A Row", st.consecutiveFailures)
    if st.lastExitCode is not None:
        out += _field("Last Exit Code", st.lastExitCode)
    if st.startedAt:
        out += _field("Started", timestamp(st.startedAt))
    if st.nextRetryTime:
        out += _field("Next Retry", timestamp(st.nextRetryTime))
    out += _field("Backend", s.spec.backend.kind)
    for k, v in st.backend.items():
        out += _field(_title(k), v if not isinstance(v, dict | list) else json.dumps(v), indent=2)
    out.append("Spec:")
    spec_yaml = yaml.safe_dump(s.spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    out += ["  " + line for line in spec_yaml.rstrip().splitlines()]
    if st.conditions:
        out.append("Conditions:")
        rows = [["Type", "Status", "Reason", "Age", "Message"], ["----", "------", "------", "---", "-------"]]
        for c in st.conditions:
            rows.append([c.type, c.status, c.reason, age(c.lastTransitionTime, now), cut(c.message, 100)])
        out += _table(rows)
    else:
        out += _field("Conditions", "<none>")
    if st.lastError:
        out.append("Last Error:")
        out += ["  " + line for line in st.lastError.splitlines()]
    return "\n".join(out)
