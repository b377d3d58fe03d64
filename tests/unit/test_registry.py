"""converge's own backend kinds are known without scanning entry points: they must be the
ones pyproject.toml registers."""

from __future__ import annotations

from importlib.metadata import entry_points

from converge.registry import BUILTIN, BUILTIN_KINDS, GROUP, KnownKinds, available_kinds


def test_builtin_kinds_are_the_registered_entry_points() -> None:
    assert set(available_kinds()) >= BUILTIN_KINDS
    assert {ep.name: ep.value for ep in entry_points(group=GROUP) if ep.name in BUILTIN} == BUILTIN
    known = KnownKinds()
    assert "daemon" in known and "nope" not in known
    assert sorted(known) == available_kinds() and len(known) == len(available_kinds())
