"""converge.host.Host's folders: a controller checks a namespace's folders once for all its
services, and still never uses a folder reached through a link planted since, nor leaves
one made wider since as it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from converge.api import ServiceKey
from converge.host import Host, UnsafeHost


def key(name: str) -> ServiceKey:
    return ServiceKey("default", name)


def outside_with(tmp_path: Path, *names: str) -> Path:
    """A private folder outside the store holding private folders of these names, and a
    private "default" folder holding the same (every folder as converge would make it)."""
    out = tmp_path / "outside"
    out.mkdir(mode=0o700)
    (out / "default").mkdir(mode=0o700)
    for name in names:
        (out / "default" / name).mkdir(mode=0o700)
        (out / name).mkdir(mode=0o700)
    return out


def test_services_of_a_checked_namespace_get_their_folders(tmp_path: Path) -> None:
    root = tmp_path / "store"
    host = Host(root)
    a = host.runtime_dir(key("a"))
    (root / "_runtime" / "default" / "b").mkdir(mode=0o700)  # there already (an earlier controller's)
    b = host.runtime_dir(key("b"))
    c = host.runtime_dir(key("c"))  # made
    assert (a, b, c) == tuple(root / "_runtime" / "default" / n for n in "abc")
    for d in (a, b, c):
        assert d.is_dir() and not d.is_symlink() and d.stat().st_mode & 0o077 == 0
    with host.lock(key("a")), host.lock(key("b")):
        pass
    assert sorted(p.name for p in (root / "_locks" / "default").iterdir()) == ["a.lock", "b.lock"]


@pytest.mark.parametrize("swapped", ["_runtime/default", "_runtime"])
def test_a_link_planted_on_the_way_after_the_first_check_is_refused(tmp_path: Path, swapped: str) -> None:
    root = tmp_path / "store"
    host = Host(root)
    host.runtime_dir(key("a"))
    (root / "_runtime" / "default" / "b").mkdir(mode=0o700)
    outside = outside_with(tmp_path, "b", "c")
    before = sorted(str(p) for p in outside.rglob("*"))
    os.rename(root / swapped, tmp_path / "moved")
    (root / swapped).symlink_to(outside / "default" if swapped.endswith("default") else outside)
    for name in ("b", "c"):  # there already behind the link, and to be made
        with pytest.raises(UnsafeHost, match="is a link"):
            host.runtime_dir(key(name))
    assert sorted(str(p) for p in outside.rglob("*")) == before


def test_a_folder_made_wider_since_is_made_private_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    host = Host(root)
    host.runtime_dir(key("a"))
    (root / "_runtime" / "default" / "b").mkdir(mode=0o700)
    os.chmod(root / "_runtime" / "default", 0o755)
    os.chmod(root / "_runtime" / "default" / "b", 0o755)
    host.runtime_dir(key("b"))
    for d in (root / "_runtime" / "default", root / "_runtime" / "default" / "b"):
        assert d.stat().st_mode & 0o077 == 0, d


def test_a_namespace_folder_removed_since_is_made_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    host = Host(root)
    host.runtime_dir(key("a"))
    (root / "_runtime" / "default" / "a").rmdir()
    (root / "_runtime" / "default").rmdir()
    assert host.runtime_dir(key("b")).is_dir()


def test_a_link_swapped_in_while_a_service_folder_is_made_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new service's folder is made straight in its namespace folder checked before; that
    folder is checked again after the mkdir, so a link swapped in meanwhile is still refused."""
    root = tmp_path / "store"
    host = Host(root)
    host.runtime_dir(key("a"))
    outside = outside_with(tmp_path)
    ns = root / "_runtime" / "default"
    real = os.mkdir

    def mkdir_then_swap(path: str, mode: int = 0o777) -> None:
        real(path, mode)
        if path.endswith("/c"):
            os.rename(ns, tmp_path / "moved")
            (tmp_path / "moved" / "c").rename(outside / "default" / "c")
            ns.symlink_to(outside / "default")

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with pytest.raises(UnsafeHost, match="is a link"):
        host.runtime_dir(key("c"))
