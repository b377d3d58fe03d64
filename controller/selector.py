"""Label selectors, kubectl's syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
`a`, `!a`, joined by commas. Pure: parse once, match many."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return has and value in self.values
            case "!=" | "notin":
                return not has or value not in self.values
            case "exists":
                return has
            case _:
                return not has


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(f"{r.key}{r.op}{sorted(r.values)}" for r in self.requirements)

    def query(self) -> str:
        """The selector in the API server's syntax (a labelSelector query parameter)."""
        out = []
        for r in self.requirements:
            match r.op:
                case "=" | "!=":
                    out.append(f"{r.key}{r.op}{next(iter(r.values))}")
                case "in" | "notin":
                    out.append(f"{r.key} {r.op} ({','.join(sorted(r.values))})")
                case "exists":
                    out.append(r.key)
                case _:
                    out.append(f"!{r.key}")
        return ",".join(out)


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def parse_selector(text: str | None) -> Selector:
    if not text or not text.strip():
        return Selector()
    reqs: list[Requirement] = []
    for part in _split(text):
        if m := _EQ.match(part):
            key, op, value = m.groups()
            reqs.append(Requirement(key, "!=" if op == "!=" else "=", frozenset([value])))
        elif m := _SET.match(part):
            neg, key, op, values = m.groups()
            if op:
                if neg:
                    raise SelectorError(f"invalid selector term {part.strip()!r}")
                vals = frozenset(v.strip() for v in values.split(",") if v.strip())
                reqs.append(Requirement(key, op, vals))
            else:
                reqs.append(Requirement(key, "!exists" if neg else "exists"))
        else:
            raise SelectorError(f"invalid selector term {part.strip()!r}")
    return Selector(tuple(reqs))
