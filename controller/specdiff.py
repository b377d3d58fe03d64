"""What `apply` would change in a stored object, as a unified diff (`converge diff`). Pure.

The fields compared are exactly those apply writes: metadata.labels, metadata.annotations
and spec (with defaults filled in on both sides, so a manifest that leaves a default out
does not differ from the stored object that spells it).
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from converge.api import ManagedService


def applied_fields(obj: ManagedService) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": obj.metadata.name, "namespace": obj.metadata.namespace}
    if obj.metadata.labels:
        meta["labels"] = dict(obj.metadata.labels)
    if obj.metadata.annotations:
        meta["annotations"] = dict(obj.metadata.annotations)
    return {"metadata": meta, "spec": obj.spec.model_dump(mode="json", by_alias=True, exclude_none=True)}


def _lines(data: dict[str, Any] | None) -> list[str]:
    if data is None:
        return []
    return yaml.safe_dump(data, sort_keys=False).splitlines(keepends=True)


def diff_objects(live: ManagedService | None, desired: ManagedService) -> str:
    """"" when apply would leave the object unchanged; else a unified diff, live first."""
    before = applied_fields(live) if live is not None else None
    after = applied_fields(desired)
    if before == after:
        return ""
    name = f"{desired.metadata.namespace}/{desired.metadata.name}"
    return "".join(difflib.unified_diff(
        _lines(before), _lines(after),
        fromfile=f"live/{name}" if live is not None else "/dev/null",
        tofile=f"merged/{name}", n=3))
