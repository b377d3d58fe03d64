"""Hostile manifests through the real CLI: exit code 1, one line per problem naming the
file, the object and the field, nothing written (all or nothing), bounded time and memory."""

from __future__ import annotations

from pathlib import Path

import yaml

from converge.api import ServiceKey
from converge.filestore import FileStore
from tests.conftest import CLI
from tests.helpers import daemon, write
from tests.hostile.cases import BOMB, CASES, VALID
from tests.hostile.measure import run_measured, snapshot


def test_every_hostile_case_in_one_apply_names_each_file_and_field(cli: CLI, tmp_path: Path) -> None:
    d = tmp_path / "cases"
    d.mkdir()
    (d / "0-good.yaml").write_text(VALID)
    for case, (text, _) in CASES.items():
        (d / f"{case}.yaml").write_text(text)
    p = cli("apply", "-f", str(d), check=False)
    assert p.returncode == 1, p.stdout
    lines = p.stderr.splitlines()
    assert lines[-1] == "error: nothing was applied"
    for case, (_, field) in CASES.items():
        mine = [ln for ln in lines if f"/{case}.yaml:" in ln]
        assert mine, f"{case}: no error line in\n{p.stderr}"
        assert any(field in ln for ln in mine), f"{case}: {field!r} not named in {mine}"
    assert all(ln.startswith("error: ") for ln in lines), p.stderr
    assert not cli.store.exists()


def test_each_class_alone_exits_1_and_writes_nothing(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "seed.yaml", daemon("seed", ["x"]))
    cli("apply", "-f", str(tmp_path / "seed.yaml"))
    before = snapshot(cli.store)
    for case in ("empty", "lone-separator", "duplicate-key", "nested-deep", "recursive-alias", "binary",
                 "namespace-dotdot", "port-bool", "allocate-string", "period-inf", "backoff-tiny", "name-newline",
                 "http-path-crlf", "argv-nul", "workdir-nouser", "huge-int"):
        text, field = CASES[case]
        f = tmp_path / f"{case}.yaml"
        f.write_text(text)
        for args, stdin in ((["-f", str(f)], None), (["-f", "-"], text)):
            r = run_measured(cli, "apply", *args, input=stdin)
            assert r.returncode == 1, (case, r)
            assert "Traceback" not in r.stderr, (case, r.stderr)
            assert field in r.stderr and ("<stdin>" in r.stderr or str(f) in r.stderr), (case, r.stderr)
        assert snapshot(cli.store) == before, case


def test_alias_bomb_is_refused_fast_and_small(cli: CLI, tmp_path: Path) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    assert len(BOMB) < 1024
    r = run_measured(cli, "apply", "-f", str(f))
    assert r.returncode == 1 and "larger than 1048576 bytes" in r.stderr, r
    assert r.seconds < 10, r  # was 80 s
    assert r.peak_rss_mib < 200, r  # was 4.9 GB
    assert not cli.store.exists()


def test_namespace_flag_is_validated_and_never_a_path(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", daemon("a", ["x"]))
    for ns in ("../x", "/abs", "x/y", "prod\n", "..", "UPPER", ""):
        p = cli("-n", ns, "apply", "-f", str(tmp_path / "a.yaml"), check=False)
        assert p.returncode != 0 and "namespace" in p.stderr and "Traceback" not in p.stderr, (ns, p.stderr)
        p = cli("get", "-n", ns, "a", check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr, (ns, p.stderr)
    assert not cli.store.exists()
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml"]


def test_names_on_the_command_line_are_never_paths(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", daemon("a", ["x"]))
    cli("apply", "-f", str(tmp_path / "a.yaml"))
    for args in (["get", "../default/a"], ["describe", "../../etc"], ["delete", "../default/a"],
                 ["logs", "a\n"], ["wait", "/abs", "--timeout", "1s"], ["up", "../x"]):
        p = cli(*args, check=False)
        assert p.returncode == 1 and "must be a DNS-1123 label" in p.stderr, (args, p.stderr)
    assert cli("get", "-o", "name").stdout == "managedservice/a\n"


def test_namespace_flag_takes_part_in_the_cycle_check(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", daemon("a", ["x"], depends=["b"], namespace="prod"))
    cli("apply", "-f", str(tmp_path / "a.yaml"))
    write(tmp_path / "b.yaml", daemon("b", ["x"], depends=["a"]))  # namespace default in the file
    p = cli("-n", "prod", "apply", "-f", str(tmp_path / "b.yaml"), check=False)
    assert p.returncode == 1 and "dependency cycle" in p.stderr, p.stderr
    assert cli("get", "-A", "-o", "name").stdout == "managedservice/a\n"


def test_good_document_then_bad_one_writes_neither(cli: CLI, tmp_path: Path) -> None:
    bad = yaml.safe_load(VALID)
    bad["metadata"]["name"] = "second"
    bad["spec"]["endpoint"]["port"] = True
    f = tmp_path / "two.yaml"
    write(f, daemon("first", ["x"]), bad)
    p = cli("apply", "-f", str(f), check=False)
    assert p.returncode == 1 and "document 2" in p.stderr and "spec.endpoint.port" in p.stderr, p.stderr
    assert not cli.store.exists()


def test_apply_is_all_or_nothing_against_the_store(cli: CLI, tmp_path: Path) -> None:
    """The second object cannot be applied (it is being deleted): the first is not changed either."""
    write(tmp_path / "ab.yaml", daemon("a", ["x"], labels={"v": "1"}), daemon("b", ["x"], labels={"v": "1"}))
    cli("apply", "-f", str(tmp_path / "ab.yaml"))
    store = FileStore(cli.store)
    b = store.get(ServiceKey("default", "b")).model_copy(deep=True)
    b.metadata.finalizers = ["test.converge.dev/hold"]
    store.update(b)
    store.delete(b.key)  # held by its finalizer: marked as being deleted
    before = snapshot(cli.store)
    write(tmp_path / "ab2.yaml", daemon("a", ["x"], labels={"v": "2"}), daemon("b", ["x"], labels={"v": "2"}))
    p = cli("apply", "-f", str(tmp_path / "ab2.yaml"), check=False)
    assert p.returncode == 1 and "being deleted" in p.stderr, p.stderr
    assert snapshot(cli.store) == before
