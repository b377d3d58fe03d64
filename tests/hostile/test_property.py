"""Property-based: thousands of mutations of valid manifests through the real validation
path (converge.manifest, as `converge apply` runs it), and a sample through the real CLI.

For every input: either it is valid (and the object round-trips and fits the size limit),
or it is refused with ManifestError only (never another exception), every problem names the
file, and the field changed (or the YAML line) is named; each input takes bounded time and
the whole run bounded memory. Through the CLI: exit code 0 or 1, never a traceback, and a
refused input leaves the store exactly as it was.

`pytest -s` prints the figures (inputs tried, refused cleanly, slowest input).
"""

from __future__ import annotations

import copy
import json
import resource
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converge.api import MAX_OBJECT_BYTES, ManagedService
from converge.fielderrors import path as field_path
from converge.manifest import ManifestError, encoded, load
from converge.registry import available_kinds
from tests.conftest import CLI
from tests.hostile.cases import VALID, container, tf
from tests.hostile.measure import run_measured, snapshot

BASES: list[dict[str, Any]] = [
    yaml.safe_load(VALID),
    yaml.safe_load(container("image: registry.local:5000/team/app:1.2\n      ports: [{containerPort: 80}]\n"
                             "      volumes: [{hostPath: ./data, containerPath: /data}]\n"
                             "      resources: {memory: 128m, cpus: 0.5}")),
    yaml.safe_load(tf("{name: x, n: 3, nested: {a: [1, 2]}}\n      outputs: [url]")),
]
KINDS = available_kinds()

NASTY: list[Any] = [
    True, False, None, 0, -1, 1, 2**31, 2**64, 65536, 0.5, 1e-300, 1e300, float("inf"), float("-inf"),
    float("nan"), "", " ", "\n", "a\n", "\na", "x\x00y", "../x", "/abs", "~nouser/x", "a\r\nb: c", "yes", "1",
    "1e3", "A" * 70, "a" * 300, "é", "\u202e", "$(PORT)", "$$", "-rf", "--help", "a b", "a:b", "UPPER",
    [], {}, [[[]]], {"a": {"b": {}}}, [None], ["", "x"], {"": ""}, {"name": "x"},
]
SCALARS = st.one_of(st.sampled_from(NASTY), st.text(max_size=20), st.integers(), st.floats(), st.booleans())
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
TEXT_NOISE = ["&a", "*a", "!!binary", "!!set", "!!python/name:os.system", "{", "[", ":", "---", "\t", "- ", "? ",
              "<<: *a", "\"", "'", "#", "%TAG", "@", "`", "\\", "\x07", "\ufeff", "&b [*b]", "[[[[[[[[[["]

Path_ = tuple[str | int, ...]


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    out: list[Path_] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, p: Path_) -> Any:
    for part in p[:-1]:
        doc = doc[part]
    return doc


@st.composite
def alias_bomb(draw: st.DrawFn) -> str:
    width, levels = draw(st.integers(2, 12)), draw(st.integers(1, 12))
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"        a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return tf("\n".join(lines))


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 3000))
    if draw(st.booleans()):
        return tf("deep: " + "[" * depth + "]" * depth)
    return tf("deep: " + "{a: " * depth + "1" + "}" * depth)


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, list[Path_]]:
    """(manifest text, the paths of the values changed; none for a change of the text itself)."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    paths = _paths(doc)
    changes = draw(st.integers(1, 2))
    changed: list[Path_] = []
    for _ in range(changes):
        p = draw(st.sampled_from(paths))
        parent = _parent(doc, p)
        try:
            op = draw(st.sampled_from(["set", "set", "set", "delete", "extra", "wrap"]))
            if op == "set":
                parent[p[-1]] = copy.deepcopy(draw(VALUES))
            elif op == "delete":
                del parent[p[-1]]
            elif op == "extra" and isinstance(parent[p[-1]], dict):
                key = draw(st.sampled_from(["colour", "replicas", "", "status", "Name"]))
                parent[p[-1]][key] = copy.deepcopy(draw(VALUES))
            elif op == "wrap":
                parent[p[-1]] = [parent[p[-1]]] if draw(st.booleans()) else {"value": parent[p[-1]]}
        except (KeyError, IndexError, TypeError):
            continue
        changed.append(p)
        paths = _paths(doc) or [("metadata",)]
    if draw(st.integers(0, 9)) == 0:  # structure bombs: aliases fanning out, nesting, in a free-form value
        return draw(st.one_of(alias_bomb(), deep_nesting())), []
    fmt = draw(st.sampled_from(["yaml", "yaml", "json"]))
    text = yaml.safe_dump(doc, sort_keys=False) if fmt == "yaml" else json.dumps(doc)
    if draw(st.integers(0, 4)) == 0:  # a change of the text: YAML structure, tags, aliases, truncation
        lines = text.splitlines(keepends=True)
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        kind = draw(st.sampled_from(["insert", "duplicate", "truncate"]))
        if kind == "insert" and lines:
            col = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:col] + draw(st.sampled_from(TEXT_NOISE)) + " " + lines[i][col:]
        elif kind == "duplicate" and lines:
            lines.insert(i, lines[i])
        else:
            lines = lines[:i]
        return "".join(lines), []
    return text, changed


class Stats:
    tried = 0
    accepted = 0
    refused = 0
    slowest = 0.0
    slowest_input = ""
    cli_runs = 0


def _check(text: str, changed: list[Path_], f: Path) -> None:
    f.write_text(text)
    objs: list[ManagedService] = []
    problems: list[str] | None = None
    start = time.thread_time()  # CPU time: other agents' load on the machine does not count
    try:  # any other exception fails the test (with hypothesis's minimal example)
        objs = load([str(f)], KINDS)
    except ManifestError as exc:
        problems = exc.problems
    took = time.thread_time() - start
    Stats.tried += 1
    if took > Stats.slowest:
        Stats.slowest, Stats.slowest_input = took, text[:200]
    assert took < 2.0, f"{took:.2f} s of CPU for {text[:300]!r}"
    if problems is not None:
        Stats.refused += 1
        assert all(p.startswith(str(f)) for p in problems), problems
        assert all(len(p.splitlines()[0]) < 1000 for p in problems), problems
        said = "\n".join(problems)
        if changed and "not valid YAML" not in said:  # the field changed is named (or its parent)
            named = [field_path(c[: min(len(c), 2)]) for c in changed]
            assert any(n in said for n in named), (changed, problems)
        if "not valid YAML" in said:
            assert "line " in said or "larger than" in said or "cannot read" in said, problems
    else:
        Stats.accepted += 1
        for obj in objs:
            again = ManagedService.model_validate(obj.dump())
            assert again.dump() == obj.dump()
            assert len(encoded(obj)) <= MAX_OBJECT_BYTES


@settings(max_examples=2500, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutation())
def test_mutated_manifests_are_valid_or_refused_cleanly(case: tuple[str, list[Path_]], tmp_path: Path) -> None:
    text, changed = case
    _check(text, changed, tmp_path / "m.yaml")


def test_zz_figures(capsys: Any) -> None:
    """Run after the property test (name order): print the figures and bound the memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with capsys.disabled():
        print(f"\nproperty test: {Stats.tried} inputs, {Stats.refused} refused cleanly, {Stats.accepted} valid, "
              f"slowest {Stats.slowest * 1000:.1f} ms of CPU ({Stats.slowest_input[:60]!r}...), test process peak RSS "
              f"{rss:.0f} MiB")
    assert rss < 1024


@settings(max_examples=8, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutation())
def test_mutated_manifests_through_the_cli(case: tuple[str, list[Path_]], tmp_path: Path) -> None:
    """apply only records desired state: nothing is started, so no `down` is needed after."""
    text, _ = case
    Stats.cli_runs += 1
    cli = CLI(tmp_path / f"store{Stats.cli_runs}", tmp_path)
    before = snapshot(cli.store)
    r = run_measured(cli, "apply", "-f", "-", input=text)
    assert r.returncode in (0, 1), r
    assert "Traceback" not in r.stderr, r.stderr
    assert r.seconds < 30 and r.peak_rss_mib < 300, r
    if r.returncode == 1:
        assert r.stderr.startswith("error: <stdin>") and "nothing was applied" in r.stderr, r.stderr
        assert snapshot(cli.store) == before
    else:
        assert "managedservice/" in r.stdout
