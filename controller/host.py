"""The local host context: what a controller process keeps on its own machine.

Not persistence (that is the Store's, file or API server): the backends' private folder
of each service (pid files, logs, Terraform copies) and the per-service action lock, so
two controllers on one host (a `converge run` and a CLI `reconcile`) never act on one
service at once. Layout under the root (the file store's root in local mode, the
operator's `--state-dir` in the cluster), folders 0700, files 0600:

    _runtime/<namespace>/<name>/     the backend's files for the service
    _locks/<namespace>/<name>.lock   held (flock) while acting on the service

One owner removes a service's runtime folder: `forget`, called by the reconciler once
the service is deprovisioned and its deletion is being finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from converge.api import ServiceKey

RUNTIME = "_runtime"
LOCKS = "_locks"


class UnsafeHost(OSError):
    """A folder of the host context is a link (or not a folder)."""


def default_state_dir() -> Path:
    """Where a cluster-mode controller keeps host-local files when not told otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "converge"


class Host:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._made: dict[tuple[str, ...], str] = {}  # folders known to exist: parts below the root -> path
        self._checked: dict[tuple[str, ...], tuple[int, int]] = {}  # folders checked: parts -> (dev, inode)
        # Per key, made once: pathlib costs more than the rest of a steady-state pass.
        self._dirs: dict[ServiceKey, Path] = {}
        self._locks: dict[ServiceKey, str] = {}

    def _inside(self, parts: tuple[str, ...]) -> list[str]:
        """The folders from just below the root down to root/parts (str paths: pathlib
        costs more than the system calls here, once per service on a controller's first
        pass)."""
        chain, cur = [], self._root
        for part in parts:
            cur = os.path.join(cur, part)  # noqa: PTH118
            chain.append(cur)
        return chain

    @staticmethod
    def _not_a_link(p: str, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeHost(f"{p} is a link: refusing to use it (links inside the store are never followed)")

    def _check_no_links(self, path: Path) -> None:
        """Every folder below the root on the way to path is a real folder, never a link:
        a link planted there would make converge write (or delete) outside its root."""
        for p in self._inside(path.relative_to(self.root).parts):
            with contextlib.suppress(FileNotFoundError):
                self._not_a_link(p, os.lstat(p))

    def _ensure_dir(self, parts: tuple[str, ...]) -> str:
        """Create root/parts and its missing parents up to the root, each 0700 (mkdir's
        `parents` ignores the mode); folders that exist with a wider mode are made 0700.
        Each folder below the root is checked to be no link before anything is made in it.
        Returns the folder's path."""
        made = self._made.get(parts)
        if made is not None:
            return made
        inside = self._inside(parts)
        known = len(parts) - 1  # the deepest folder on the way that this Host checked
        while known and parts[:known] not in self._checked:
            known -= 1
        if known and self._still(parts[:known], inside[known - 1]):
            # A folder on the way checked already and still the same folder (a link
            # planted at or above it would make its path lead to another): only the
            # folders below it are looked at (a new controller's first look at N services
            # looks at their namespace's folders once, not N times), and those missing are
            # made in it (a new service's folder: no walk from the root); made ones are
            # checked with the folder above them again afterwards.
            below = []
            fresh = False
            for p in inside[known:]:
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    try:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(p, 0o700)  # noqa: PTH102
                        st = os.lstat(p)
                    except OSError:
                        break
                    fresh = True
                except OSError:
                    break
                if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077:  # (a link is no folder)
                    break
                below.append(st)
            else:
                if not fresh or self._still(parts[:known], inside[known - 1]):
                    return self._remember(parts, known, below)
            # something to fix or refuse below it, or swapped while made: the whole walk
        missing, up = [], self._root
        while not os.path.exists(up):  # noqa: PTH110 - the root and what it needs above it
            missing.append(up)
            parent = os.path.dirname(up)  # noqa: PTH120
            if parent == up:
                break
            up = parent
        for p in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, 0o700)  # noqa: PTH102
        changed = False
        seen = []
        for p in inside:  # top down: a link is refused before anything is made under it
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(p, 0o700)  # noqa: PTH102
                st, changed = os.lstat(p), True
            self._not_a_link(p, st)
            if st.st_mode & 0o077:
                os.chmod(p, 0o700)  # noqa: PTH101 - checked no link just above
                changed = True
            seen.append(st)
        if changed:  # nothing swapped in while we made them (a new controller's first look
            seen = [os.lstat(p) for p in inside]  # at folders that exist: 3 lstats fewer)
            for p, st in zip(inside, seen, strict=True):
                self._not_a_link(p, st)
        return self._remember(parts, 0, seen)

    def _still(self, parts: tuple[str, ...], path: str) -> bool:
        """The folder checked as root/parts is still what its path leads to, private."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077
                and (st.st_dev, st.st_ino) == self._checked[parts])

    def _remember(self, parts: tuple[str, ...], first: int, stats: list[os.stat_result]) -> str:
        """root/parts made or checked, and what its folders from root/parts[:first+1] down
        were when checked (stats)."""
        for i, st in enumerate(stats, start=first + 1):
            self._checked[parts[:i]] = (st.st_dev, st.st_ino)
        path = self._made[parts] = os.path.join(self._root, *parts)  # noqa: PTH118
        return path

    def runtime_dir(self, key: ServiceKey) -> Path:
        """A private folder for the backend's files of this service (created on demand)."""
        d = self._dirs.get(key)
        if d is None:
            d = self._dirs[key] = Path(self._ensure_dir((RUNTIME, key.namespace, key.name)))
        return d

    def runtime_path(self, key: ServiceKey) -> Path:
        """The runtime folder's path, without creating it."""
        return self.root / RUNTIME / key.namespace / key.name

    @contextlib.contextmanager
    def lock(self, key: ServiceKey) -> Iterator[None]:
        """Held while acting on a service's resources; released by the kernel if we die."""
        path = self._locks.get(key)
        if path is None:
            d = self._ensure_dir((LOCKS, key.namespace))
            path = self._locks[key] = os.path.join(d, f"{key.name}.lock")  # noqa: PTH118
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def forget(self, key: ServiceKey) -> None:
        """Remove the service's runtime folder: forgotten means forgotten. Never follows a
        link out of the root."""
        d = self.runtime_path(key)
        self._made.pop((RUNTIME, key.namespace, key.name), None)
        self._checked.pop((RUNTIME, key.namespace, key.name), None)
        self._dirs.pop(key, None)
        self._locks.pop(key, None)
        try:
            self._check_no_links(d.parent)  # never rmtree through a linked _runtime or namespace
        except UnsafeHost:
            return
        if d.is_symlink():
            d.unlink()
        elif d.is_dir():
            import shutil  # only here: ~10 ms of start-up for every command otherwise

            shutil.rmtree(d, ignore_errors=True)  # rmtree itself never follows links inside
