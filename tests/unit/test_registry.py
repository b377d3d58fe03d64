"""converge's own backend kinds are known without scanning entry points: they must be the
ones pyproject.toml registers."""

from __future__ import annotations

from importlib.metadata import entry_points

from converge.registry import (
    BUILTIN,
    BUILTIN_KINDS,
    CHECKED_AT_APPLY,
    GROUP,
    KnownKinds,
    _backend_class,
    available_kinds,
    checked_at_apply,
)


def test_builtin_kinds_are_the_registered_entry_points() -> None:
    assert set(available_kinds()) >= BUILTIN_KINDS
    assert {ep.name: ep.value for ep in entry_points(group=GROUP) if ep.name in BUILTIN} == BUILTIN
    known = KnownKinds()
    assert "daemon" in known and "nope" not in known
    assert sorted(known) == available_kinds() and len(known) == len(available_kinds())


def test_checked_at_apply_are_the_builtin_backends_with_apply_time_checks() -> None:
    assert {k for k in BUILTIN if hasattr(_backend_class(k), "check_apply")} == CHECKED_AT_APPLY
    assert checked_at_apply("container") and not checked_at_apply("daemon")
    assert checked_at_apply("some-plugin")  # a plug-in's class is asked
