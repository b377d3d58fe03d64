"""Resolve a spec's environment (plain values and secrets) for a backend.

Values from `valueFrom` are read here, at provision time, and handed straight to the
process or container; they are never returned in details, status, events or logs.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converge.api import EnvVar, ValueFrom
from converge.backends.errors import PermanentError, TemporaryError

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(arg: str, variables: Mapping[str, str]) -> str:
    """Kubernetes-style $(VAR) expansion; $$ is a literal $; unknown names stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return variables.get(m.group(1), m.group(0))
    return _VAR.sub(sub, arg)


def uses_var(args: Sequence[str] | None, name: str) -> bool:
    """Some argument refers to $(name) (not a literal $$(name))."""
    return any(m.group(1) == name for a in args or () for m in _VAR.finditer(a))


def resolve_env(env: Sequence[EnvVar], base_dir: Path | None = None) -> dict[str, str]:
    """The environment as NAME -> value. Raises (naming the variable, not its value)
    when a referenced file or controller variable is missing."""
    out: dict[str, str] = {}
    for var in env:
        if var.valueFrom is None:
            out[var.name] = var.value or ""
        elif var.valueFrom.env is not None:
            if var.valueFrom.env not in os.environ:
                raise PermanentError(
                    f"env {var.name}: the controller has no environment variable {var.valueFrom.env!r}",
                    reason="SecretNotFound",
                )
            out[var.name] = os.environ[var.valueFrom.env]
        else:
            path = Path(var.valueFrom.file or "")
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                out[var.name] = path.read_text().rstrip("\n")
            except OSError as exc:
                raise TemporaryError(
                    f"env {var.name}: cannot read {path}: {exc.strerror}", reason="SecretNotFound"
                ) from exc
    return out


def secret_values(env: Sequence[EnvVar], resolved: dict[str, str]) -> list[str]:
    """The values that came from valueFrom, so callers can scrub them from text."""
    return [resolved[v.name] for v in env if v.valueFrom is not None and resolved.get(v.name)]


MIN_SECRET = 3  # shorter values are no secret worth hiding (and would blank out text)


def _pieces(secrets: Sequence[str]) -> list[str]:
    """Each secret, and each line of a multi-line one (a log shows it line by line), longest
    first so a longer secret is never left half-replaced by a shorter one."""
    out = set()
    for s in secrets:
        for piece in (s, *s.splitlines()):
            piece = piece.strip()
            if len(piece) >= MIN_SECRET:
                out.add(piece)
    return sorted(out, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace every secret value in text (e.g. an error message, a log line) with ***."""
    for s in _pieces(secrets):
        if s in text:
            text = text.replace(s, "***")
    return text


def secrets_of(config: Any) -> list[str]:
    """The values a service's spec takes from valueFrom, read now (best effort: a value
    that cannot be read is not in anything converge writes either). For scrubbing."""
    env = getattr(config, "env", None)
    if not env:
        return []
    out: list[str] = []
    for var in env:
        src = getattr(var, "valueFrom", None)
        if src is None or not isinstance(src, ValueFrom):
            continue  # e.g. a Kubernetes secretKeyRef: resolved by the kubelet, never read here
        with contextlib.suppress(PermanentError, TemporaryError):
            out += resolve_env([var]).values()
    return out
