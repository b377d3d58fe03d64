"""Pure parts behind the CLI: custom columns, --for forms, spec diffs, cut text."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converge.api import ManagedService
from converge.columns import BadColumns, cell, parse_columns, parse_path, render
from converge.printers import cut
from converge.specdiff import diff_objects
from converge.waiting import BadWaitFor, WaitFor, parse_wait_for

OBJ = {
    "metadata": {"name": "web", "labels": {"stack": "demo", "app.kubernetes.io/name": "w"}},
    "spec": {"dependsOn": ["db", "cache"]},
    "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Stalled", "status": "False"}],
               "endpoint": {"port": 8080}},
}


@pytest.mark.parametrize(("path", "want"), [
    (".metadata.name", "web"),
    ("metadata.name", "web"),
    ("{.metadata.name}", "web"),
    (".spec.dependsOn[0]", "db"),
    (".spec.dependsOn[-1]", "cache"),
    (".spec.dependsOn[*]", "db,cache"),
    (".spec.dependsOn[5]", "<none>"),
    (".status.conditions[?(@.type==\"Ready\")].status", "True"),
    (".status.conditions[?(@.type!='Ready')].type", "Stalled"),
    (".status.conditions[*].type", "Ready,Stalled"),
    (".status.endpoint.port", "8080"),
    (".status.endpoint", '{"port":8080}'),
    (".metadata.labels['app.kubernetes.io/name']", "w"),
    (".nope.deeper", "<none>"),
])
def test_custom_column_paths(path: str, want: str) -> None:
    assert cell(parse_path(path), OBJ) == want


def test_custom_columns_render_and_split_on_top_level_commas() -> None:
    cols = parse_columns('NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,'
                         "DEPS:.spec.dependsOn[*]")
    assert [c.header for c in cols] == ["NAME", "READY", "DEPS"]
    lines = render(cols, [OBJ]).splitlines()
    assert lines[0].split() == ["NAME", "READY", "DEPS"] and lines[1].split() == ["web", "True", "db,cache"]


@pytest.mark.parametrize("bad", ["", "NAME", ":.a", "NAME:.a[", "NAME:.a..b", "X:.a[?(@.b~1)]"])
def test_bad_custom_columns_are_rejected(bad: str) -> None:
    with pytest.raises(BadColumns):
        parse_columns(bad)


@given(st.text())
def test_custom_columns_parser_only_raises_its_own_error(text: str) -> None:
    with contextlib.suppress(BadColumns):
        parse_columns(text)


@pytest.mark.parametrize(("text", "want"), [
    ("condition=Ready", WaitFor("Ready")),
    ("condition=ready", WaitFor("ready")),
    ("CONDITION=Ready=false", WaitFor("Ready", "False")),
    ("condition=Stalled=True", WaitFor("Stalled", "True")),
    ("condition=Ready=unknown", WaitFor("Ready", "Unknown")),
    ("delete", WaitFor(None)),
    ("Delete", WaitFor(None)),
])
def test_wait_for_forms(text: str, want: WaitFor) -> None:
    assert parse_wait_for(text) == want


@pytest.mark.parametrize("bad", ["Ready", "condition=", "condition=Ready=maybe", "jsonpath={.x}", "deleted",
                                 "condition=a b"])
def test_wait_for_rejects_unknown_forms(bad: str) -> None:
    with pytest.raises(BadWaitFor):
        parse_wait_for(bad)


def _svc(**spec: object) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": "a", "labels": {"x": "1"}},
        "spec": {"backend": {"daemon": {"command": ["true"]}}, **spec}})


def test_wait_for_matches_case_insensitively() -> None:
    svc = _svc()
    svc.status = svc.status.model_validate({"conditions": [
        {"type": "Ready", "status": "False", "reason": "x", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    assert parse_wait_for("condition=READY=false").met(svc)
    assert not parse_wait_for("condition=ready").met(svc)
    assert parse_wait_for("delete").met(None) and not parse_wait_for("delete").met(svc)


def test_spec_diff() -> None:
    a = _svc()
    assert diff_objects(a, _svc()) == ""
    d = diff_objects(a, _svc(adminState="suspended"))
    assert "-  adminState: active" in d and "+  adminState: suspended" in d
    assert d.startswith("--- live/default/a\n+++ merged/default/a\n")
    new = diff_objects(None, a)
    assert new.startswith("--- /dev/null") and "+  name: a" in new


def test_cut_marks_what_was_cut() -> None:
    assert cut("short", 10) == "short"
    assert cut("x" * 12, 10) == "x" * 9 + "…"
    assert cut("first\nsecond", 80) == "first…"
    assert cut("", 5) == ""
