"""Reading and validating manifests: files, folders, multi-document YAML, stdin.

Everything is validated before anything is written: each error names the file, the
object (kind, name, document number) and the field. Relative paths in a spec (a daemon's
workingDir, files of secrets, a Terraform recipe, bind mounts) are resolved against the
manifest's folder, like docker compose does, so the stored spec means the same from any
working directory.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from converge.api import (
    GROUP_VERSION,
    KIND,
    MAX_OBJECT_BYTES,
    EnvVar,
    HostPath,
    LocalPath,
    ManagedService,
    check_name,
)
from converge.deps import find_cycle
from converge.fielderrors import explain
from converge.yamlsafe import MAX_SOURCE_BYTES, YamlError, load_all

SUFFIXES = (".yaml", ".yml", ".json")
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")


class ManifestError(Exception):
    """All problems found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Document:
    source: str  # file name or "<stdin>"
    index: int  # 1-based document number in the source
    base_dir: Path
    data: Any

    def where(self, name: str | None = None) -> str:
        if name is not None and not name.isprintable():
            name = repr(name)[1:-1]  # a hostile name must not break the one-line error
        what = f'{KIND} "{name}"' if name else "document"
        return f"{self.source}: {what} (document {self.index})"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    return [path]


def _read_bounded(path: Path | None) -> str:
    """The text of a file (or stdin), refusing more than MAX_SOURCE_BYTES without reading it all."""
    if path is None:
        data = sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1)
    else:
        with path.open("rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise ValueError(f"larger than {MAX_SOURCE_BYTES} bytes")
    return data.decode("utf-8")


def read_documents(sources: Iterable[str], problems: list[str] | None = None) -> list[Document]:
    """The documents of every source. Problems (unreadable, not YAML, empty) are appended
    to `problems` if given, else raised as one ManifestError."""
    collect = problems is not None
    docs: list[Document] = []
    problems = problems if problems is not None else []
    bases: dict[Path, Path] = {}
    for src in sources:
        entries: list[tuple[str, Path, str]] = []
        if src == "-":
            try:
                entries.append(("<stdin>", Path.cwd(), _read_bounded(None)))
            except (OSError, ValueError) as exc:
                problems.append(f"<stdin>: cannot read: {exc}")
        else:
            path = Path(src)
            if not path.exists():
                problems.append(f"{src}: no such file or directory")
                continue
            files = _files(path)
            if path.is_dir() and not files:
                problems.append(f"{src}: no manifest files (*.yaml, *.yml, *.json)")
            for f in files:
                try:
                    base = bases.get(f.parent)
                    if base is None:  # the files of a folder share it: resolved once
                        base = bases[f.parent] = f.parent.resolve()
                    entries.append((str(f), base, _read_bounded(f)))
                except (OSError, ValueError, RuntimeError) as exc:  # UnicodeDecodeError is a ValueError
                    problems.append(f"{f}: cannot read: {exc}")
        for name, base, text in entries:
            found = 0
            try:
                for i, data in load_all(text):
                    if data is not None:
                        found += 1
                        docs.append(Document(name, i, base, data))
            except YamlError as exc:
                problems.append(f"{name}: not valid YAML: {exc}")
                continue
            if not found:
                problems.append(f"{name}: no objects found (the file is empty or holds only empty documents)")
    if problems and not collect:
        raise ManifestError(problems)
    return docs


class _PathError(Exception):
    pass


def _abs(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    except (RuntimeError, OSError, ValueError) as exc:  # ~nouser, a link loop, ...
        raise _PathError(f"{value[:80]!r}: {exc}") from None


def resolve_paths(obj: ManagedService, base: Path, resolved: list[tuple[str, bool]] | None = None) -> list[str]:
    """Make the spec's host paths absolute (against the manifest's folder); the problems
    found, each naming its field. `resolved` gets each value set: (the path, whether it
    is a bind mount's host path)."""
    b = obj.spec.backend
    problems: list[str] = []

    def fix(field: str, value: str | None, host: bool = False) -> str | None:
        try:
            new = _abs(base, value)
        except _PathError as exc:
            problems.append(f"{field}: {exc}")
            return value
        if resolved is not None and new is not None:
            resolved.append((new, host))
        return new

    def fix_env(env: list[EnvVar], where: str) -> None:
        for i, var in enumerate(env):
            if var.valueFrom is not None and var.valueFrom.file is not None:
                var.valueFrom.file = fix(f"{where}.env[{i}].valueFrom.file", var.valueFrom.file)

    if b.daemon is not None:
        # No workingDir: the manifest's folder (stdin: the current one), like docker compose.
        b.daemon.workingDir = fix("spec.backend.daemon.workingDir", b.daemon.workingDir or ".")
        fix_env(b.daemon.env, "spec.backend.daemon")
    if b.container is not None:
        fix_env(b.container.env, "spec.backend.container")
        for i, v in enumerate(b.container.volumes):
            v.hostPath = fix(f"spec.backend.container.volumes[{i}].hostPath", v.hostPath, host=True) or v.hostPath
    if b.terraform is not None:
        b.terraform.directory = fix("spec.backend.terraform.directory", b.terraform.directory) or b.terraform.directory
        b.terraform.variableFiles = [fix(f"spec.backend.terraform.variableFiles[{i}]", f) or f
                                     for i, f in enumerate(b.terraform.variableFiles)]
    # kubernetes: env comes from Secrets/ConfigMaps in the cluster, no local paths
    return problems


def _validate(where: str, data: Any) -> ManagedService:
    try:
        return ManagedService.model_validate(data)
    except ValidationError as exc:
        lines = explain(exc, ManagedService)
        # The document is named once, on the first problem's line; the others follow indented.
        raise ManifestError(["\n  ".join([f"{where}: {lines[0]}", *lines[1:]])]) from None


@functools.cache
def _path_type(host: bool) -> TypeAdapter[str]:
    return TypeAdapter(HostPath if host else LocalPath)


def _valid_path(value: str, host: bool) -> bool:
    """Whether a path resolve_paths set is valid as its field's type (HostPath for a bind
    mount's host path, else LocalPath)."""
    try:
        _path_type(host).validate_python(value)
    except ValidationError:
        return False
    return True


def encoded(obj: ManagedService) -> bytes:
    """The object as stored (JSON, like etcd); raises ValueError if it cannot be."""
    return json.dumps(obj.dump(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def parse(doc: Document, known_backends: Collection[str] | None = None,
          namespace: str | None = None) -> ManagedService:
    """The object a document describes, checked as it will be written: `namespace`
    (e.g. the -n flag) replaces the manifest's, paths are made absolute, and then the
    final object is validated and serialised again."""
    data = doc.data
    if not isinstance(data, dict):
        raise ManifestError([f"{doc.where()}: expected a mapping, got {type(data).__name__}"])
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    where = doc.where(name[:80] if name else None)
    if data.get("apiVersion") != GROUP_VERSION or data.get("kind") != KIND:
        raise ManifestError([f"{where}: apiVersion/kind must be {GROUP_VERSION}/{KIND}, got "
                             f"{str(data.get('apiVersion'))[:80]}/{str(data.get('kind'))[:80]}"])
    clean = {k: v for k, v in data.items() if k != "status"}  # status is the controller's
    if isinstance(meta, dict):  # server-set fields are not taken from manifests
        clean["metadata"] = {k: v for k, v in meta.items() if k not in SERVER_FIELDS}
        if namespace is not None:
            clean["metadata"]["namespace"] = namespace
    obj = _validate(where, clean)
    if known_backends is not None and obj.spec.backend.kind not in known_backends:
        raise ManifestError([f"{where}: spec.backend: unknown backend {obj.spec.backend.kind!r} "
                             f"(known: {', '.join(sorted(known_backends))})"])
    resolved: list[tuple[str, bool]] = []
    problems = resolve_paths(obj, doc.base_dir, resolved)
    if problems:
        raise ManifestError([f"{where}: {p}" for p in problems])
    # Every check on the object as written: only the paths changed since it was validated,
    # so each is checked as the field's type; if one fails, the whole object is validated
    # again, for the error naming its field.
    final = obj if all(_valid_path(v, host) for v, host in resolved) else _validate(where, obj.dump())
    try:
        size = len(encoded(final))
    except ValueError as exc:
        raise ManifestError([f"{where}: cannot be stored: {exc}"]) from None
    if size > MAX_OBJECT_BYTES:
        raise ManifestError([f"{where}: the object is {size} bytes, more than the limit of {MAX_OBJECT_BYTES}"])
    return final


def load(sources: Iterable[str], known_backends: Collection[str] | None = None,
         existing: Iterable[ManagedService] = (), namespace: str | None = None,
         stored_deps: Callable[[str, str], list[str] | None] | None = None) -> list[ManagedService]:
    """Read and validate every object; raise ManifestError with all problems found.

    `namespace` replaces every object's namespace before any check; `existing` (the
    store's objects) takes part in the dependsOn cycle check of the final objects. Or,
    instead of all of them, `stored_deps(namespace, name)` (a stored service's dependsOn,
    None if there is none): only the services the new objects reach through dependsOn
    are looked up, since a new cycle must pass through a new object.
    """
    if namespace is not None:
        try:
            check_name(namespace, "namespace")
        except ValueError as exc:
            raise ManifestError([str(exc)]) from None
    problems: list[str] = []
    objs: list[ManagedService] = []
    where: dict[tuple[str, str], str] = {}
    for doc in read_documents(sources, problems):
        try:
            obj = parse(doc, known_backends, namespace)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        key = (obj.metadata.namespace, obj.metadata.name)
        if key in where:
            problems.append(f"{doc.where(obj.metadata.name)}: duplicate of {where[key]}")
            continue
        where[key] = doc.where(obj.metadata.name)
        objs.append(obj)
    graphs: dict[str, dict[str, list[str]]] = {}
    for o in list(existing) + objs:  # applied objects override stored ones
        graphs.setdefault(o.metadata.namespace, {})[o.metadata.name] = o.spec.dependsOn
    if stored_deps is not None:
        todo = [(o.metadata.namespace, d) for o in objs for d in o.spec.dependsOn]
        while todo:
            ns, name = todo.pop()
            graph = graphs.setdefault(ns, {})
            if name not in graph:
                graph[name] = stored_deps(ns, name) or []
                todo += [(ns, d) for d in graph[name]]
    for ns, graph in sorted(graphs.items()):
        cycle = find_cycle(graph)
        if cycle:  # told from a new object's point of view: the error names its file
            i = next((i for i, n in enumerate(cycle[:-1]) if (ns, n) in where), 0)
            cycle = cycle[i:-1] + cycle[:i] + [cycle[i]]
            first = where.get((ns, cycle[0]), f"{KIND} {ns}/{cycle[0]}")
            problems.append(f"{first}: spec.dependsOn: dependency cycle: {' -> '.join(cycle)}")
    if problems:
        raise ManifestError(problems)
    return objs
