"""The spawn helper's pure parts: its report line, its command line, where it is trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converge.backends import spawn


@pytest.mark.parametrize(("data", "want"), [
    (b"ok 0 1234\n", spawn.Report("ok", 0, 1234)),
    (b"exec 2 99\n", spawn.Report("exec", 2, 99)),
    (b"clone 38\n", spawn.Report("clone", 38, None)),
    (b"usage 22\n", spawn.Report("usage", 22, None)),
])
def test_reports_it_can_write(data: bytes, want: spawn.Report) -> None:
    assert spawn.parse_report(data) == want


@pytest.mark.parametrize("data", [
    b"", b"ok 0 1234", b"ok 0\n", b"exec 2\n", b"clone 38 12\n", b"usage 22 1\n", b"ok 0 0\n",
    b"ok 0 1234\nok 0 5\n", b"OK 0 1\n", b"ok -1 5\n", b"ok 0 12345678901\n", b"ok 0 1234\n\x00",
])
def test_anything_else_is_no_report(data: bytes) -> None:
    assert spawn.parse_report(data) is None


@given(st.binary(max_size=80))
def test_no_bytes_crash_the_parser(data: bytes) -> None:
    r = spawn.parse_report(data)
    assert r is None or (r.outcome in ("ok", "exec")) == (r.pid is not None)


def test_the_program_argv_follows_the_separator_untouched() -> None:
    argv = ["-x", "$(PORT)", "a b", "--"]
    assert spawn.argv_for("/v/bin/converge-spawn", 7, Path("/sys/fs/cgroup/c/svc-1"), argv) == [
        "/v/bin/converge-spawn", "7", "/sys/fs/cgroup/c/svc-1", "--", "-x", "$(PORT)", "a b", "--"]


def test_only_a_private_regular_executable_is_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    helper = folder / "converge-spawn"
    helper.write_bytes(b"\x7fELF")
    os.chmod(helper, 0o755)
    me = os.geteuid()
    assert spawn.trusted(helper, me)
    os.chmod(helper, 0o775)
    assert not spawn.trusted(helper, me)  # others could change it
    os.chmod(helper, 0o644)
    assert not spawn.trusted(helper, me)  # not executable
    os.chmod(helper, 0o755)
    os.chmod(folder, 0o777)
    assert not spawn.trusted(helper, me)  # others could replace it
    os.chmod(folder, 0o755)
    link = folder / "link"
    link.symlink_to(helper)
    assert not spawn.trusted(link, me)  # never through a link
    assert not spawn.trusted(folder, me) and not spawn.trusted(folder / "missing", me)
    if me == 0:
        os.chown(helper, 4321, 4321)
        assert not spawn.trusted(helper, me)  # another user's file


def test_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(spawn.SWITCH, "off")
    spawn.forget()
    try:
        assert spawn.helper() is None
    finally:
        monkeypatch.undo()
        spawn.forget()


def test_only_the_file_next_to_python_is_looked_for_and_an_unsafe_one_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    os.chmod(bin_dir, 0o755)
    helper = bin_dir / spawn.NAME
    helper.write_bytes(b"\x7fELF")
    monkeypatch.setattr("sys.executable", str(bin_dir / "python"))
    monkeypatch.delenv(spawn.SWITCH, raising=False)
    try:
        os.chmod(helper, 0o755)
        spawn.forget()
        assert spawn.helper() == str(helper)
        os.chmod(helper, 0o777)
        spawn.forget()
        assert spawn.helper() is None
        assert f"{helper} not used" in caplog.text
    finally:
        monkeypatch.undo()
        spawn.forget()
