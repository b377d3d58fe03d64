"""pydantic validation errors as a user reads them. Pure.

    spec.backend.daemon.comand: unknown field 'comand' (did you mean 'command'?)
    spec.endpoint.port: Input should be less than or equal to 65535
    spec.backend.daemon.env[0].name: environment variable name '1x' is not valid

Field paths use the manifest's names (aliases), list positions as `[i]`.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from converge.api import PATTERN_HINTS

SHOWN = 60  # characters of a rejected value that an error message repeats


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Manifest name (alias when set) -> annotation."""
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def _inner(annotation: Any, part: str | int) -> Any:
    """The type found one step (a field name or a list index / dict key) below annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            got = _inner(arg, part)
            if got is not None:
                return got
        return None
    if origin is typing.Annotated:
        return _inner(typing.get_args(annotation)[0], part)
    if origin in (list, tuple) and isinstance(part, int):
        return typing.get_args(annotation)[0]
    if origin is dict:
        return typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
        return _fields(annotation).get(part)
    return None


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    cur: Any = root
    for part in loc:
        cur = _inner(cur, part)
        if cur is None:
            return None
    while typing.get_origin(cur) in (typing.Union, types.UnionType, typing.Annotated):
        cur = next((a for a in typing.get_args(cur) if a is not type(None)), None)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-"):
            out += ("." if out else "") + str(part)
    return out


def unknown_field(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r} (did you mean {close[0]!r}?)"
    return f"unknown field {name!r} (known: {', '.join(known)})"


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 4] + "...'"


def message(err: ErrorDetails) -> str:
    """What is wrong, saying what a pattern means ("should match pattern '^[a-z0-9]...$'"
    tells no one what to write) and what was given instead of a strict type."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    ctx = err.get("ctx") or {}
    if err["type"] == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_HINTS:
        return f"{shown(err['input'])} {PATTERN_HINTS[ctx['pattern']]}"
    if err["type"] in ("int_type", "float_type", "bool_type", "string_type", "int_from_float"):
        return f"{msg}, got {type(err['input']).__name__} {shown(err['input'])}"
    return msg


def format_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """The problems on one line, separated by '; ' (e.g. a corrupt object in the store)."""
    return "; ".join(explain(exc, root))


def explain(exc: ValidationError, root: type[BaseModel] | None) -> list[str]:
    """One `path: message` line per error, in the manifest's own terms."""
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if loc and loc[-1] == "[key]":  # a mapping's key (e.g. a label key): name the mapping
            where = path(loc[:-2])
            lines.append(f"{where}: key {message(err)}" if where else f"key {message(err)}")
            continue
        if err["type"] == "extra_forbidden" and loc:
            parent = _model_at(root, loc[:-1]) if root is not None else None
            known = list(_fields(parent)) if parent is not None else []
            msg = unknown_field(str(loc[-1]), known) if known else f"unknown field {str(loc[-1])!r}"
            lines.append(f"{path(loc)}: {msg}")
            continue
        msg = message(err)
        where = path(loc)
        lines.append(f"{where}: {msg}" if where else msg)
    return list(dict.fromkeys(lines))
