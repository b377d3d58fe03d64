"""`-o custom-columns=HEADER:PATH,...` as kubectl has it. Pure.

A PATH is the JSONPath subset kubectl users write in custom columns:

    .metadata.name                     fields
    .spec.dependsOn[0]                 an index (negative counts from the end)
    .spec.dependsOn[*]                 every element (shown comma-separated)
    .status.conditions[?(@.type=="Ready")].status     a filter (== or !=, on a field)
    metadata.name  {.metadata.name}    the leading dot and the braces are optional

A missing value shows as `<none>`; maps and lists show as compact JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


class BadColumns(ValueError):
    pass


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Index:
    index: int | None  # None: [*]


@dataclass(frozen=True)
class Filter:
    field: tuple[str, ...]
    op: str  # == or !=
    value: Any


Step = Field | Index | Filter
_NAME = r"[A-Za-z_][A-Za-z0-9_\-]*"
_TOKEN = re.compile(
    rf"""\.(?P<field>{_NAME})
       | \[(?P<index>-?\d+|\*)\]
       | \[\?\(@(?P<ffield>(?:\.{_NAME})+)\s*(?P<op>==|!=)\s*
           (?P<value>"[^"]*"|'[^']*'|-?\d+(?:\.\d+)?|true|false)\s*\)\]
       | \['(?P<qfield>[^']+)'\]""",
    re.VERBOSE,
)


def _literal(text: str) -> Any:
    if text[0] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    return float(text) if "." in text else int(text)


def parse_path(text: str) -> tuple[Step, ...]:
    p = text.strip()
    if p.startswith("{") and p.endswith("}"):
        p = p[1:-1].strip()
    if p in ("", "."):
        return ()
    if not p.startswith((".", "[")):
        p = "." + p
    steps: list[Step] = []
    pos = 0
    while pos < len(p):
        m = _TOKEN.match(p, pos)
        if m is None:
            raise BadColumns(f"{text!r}: cannot parse the path at {p[pos:]!r}")
        if m.group("field") or m.group("qfield"):
            steps.append(Field(m.group("field") or m.group("qfield")))
        elif m.group("index"):
            steps.append(Index(None if m.group("index") == "*" else int(m.group("index"))))
        else:
            steps.append(Filter(tuple(m.group("ffield").split(".")[1:]), m.group("op"), _literal(m.group("value"))))
        pos = m.end()
    return tuple(steps)


@dataclass(frozen=True)
class Column:
    header: str
    path: tuple[Step, ...]


def parse_columns(spec: str) -> list[Column]:
    """`HEADER:PATH,HEADER:PATH` (commas inside [...] or quotes do not split)."""
    parts: list[str] = []
    depth, quote, cur = 0, "", ""
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    cols = []
    for part in parts:
        header, sep, path = part.partition(":")
        if not sep or not header.strip():
            raise BadColumns(f"custom-columns: {part!r} is not HEADER:PATH (e.g. NAME:.metadata.name)")
        cols.append(Column(header.strip(), parse_path(path)))
    if not cols:
        raise BadColumns("custom-columns: give at least one HEADER:PATH")
    return cols


_MISSING = object()


def _get(obj: Any, names: tuple[str, ...]) -> Any:
    for n in names:
        if not isinstance(obj, dict) or n not in obj:
            return _MISSING
        obj = obj[n]
    return obj


def evaluate(path: tuple[Step, ...], data: Any) -> list[Any]:
    """Every value the path selects in data (a JSON-like structure)."""
    values = [data]
    for step in path:
        nxt: list[Any] = []
        for v in values:
            if isinstance(step, Field):
                if isinstance(v, dict) and step.name in v:
                    nxt.append(v[step.name])
            elif isinstance(step, Index):
                if isinstance(v, list):
                    if step.index is None:
                        nxt.extend(v)
                    elif -len(v) <= step.index < len(v):
                        nxt.append(v[step.index])
            else:
                items = v if isinstance(v, list) else [v]
                for item in items:
                    got = _get(item, step.field)
                    if got is _MISSING:
                        continue
                    same = got == step.value or (isinstance(got, str) and got == str(step.value))
                    if same == (step.op == "=="):
                        nxt.append(item)
        values = nxt
    return values


def _show(v: Any) -> str:
    if v is None:
        return "<none>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def cell(path: tuple[Step, ...], data: Any) -> str:
    values = evaluate(path, data)
    return ",".join(_show(v) for v in values) if values else "<none>"


def render(columns: list[Column], objects: list[dict[str, Any]], header: bool = True) -> str:
    rows = [[c.header for c in columns]] if header else []
    rows += [[cell(c.path, o) for c in columns] for o in objects]
    return align(rows)


def align(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
