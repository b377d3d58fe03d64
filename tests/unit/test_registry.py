"""converge's own backend kinds are known without scanning entry points: they must be the
ones pyproject.toml registers."""

from __future__ import annotations

from converge.registry import BUILTIN_KINDS, KnownKinds, available_kinds


def test_builtin_kinds_are_the_registered_entry_points() -> None:
    assert set(available_kinds()) >= BUILTIN_KINDS
    known = KnownKinds()
    assert "daemon" in known and "nope" not in known
    assert sorted(known) == available_kinds() and len(known) == len(available_kinds())
