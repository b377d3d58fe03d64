"""Reading and validating manifests: files, folders, multi-document YAML, stdin.

Everything is validated before anything is written: each error names the file, the
object (kind, name, document number) and the field. Relative paths in a spec (a daemon's
workingDir, files of secrets, a Terraform recipe, bind mounts) are resolved against the
manifest's folder, like docker compose does, so the stored spec means the same from any
working directory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from converge.api import GROUP_VERSION, KIND, EnvVar, ManagedService
from converge.deps import find_cycle
from converge.fielderrors import explain

SUFFIXES = (".yaml", ".yml", ".json")


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
        what = f'{KIND} "{name}"' if name else "document"
        return f"{self.source}: {what} (document {self.index})"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    return [path]


def read_documents(sources: Iterable[str]) -> list[Document]:
    docs: list[Document] = []
    problems: list[str] = []
    for src in sources:
        if src == "-":
            entries: list[tuple[str, Path, str]] = [("<stdin>", Path.cwd(), sys.stdin.read())]
        else:
            path = Path(src)
            if not path.exists():
                problems.append(f"{src}: no such file or directory")
                continue
            files = _files(path)
            if path.is_dir() and not files:
                problems.append(f"{src}: no manifest files (*.yaml, *.yml, *.json)")
            entries = []
            for f in files:
                try:
                    entries.append((str(f), f.parent.resolve(), f.read_text()))
                except (OSError, UnicodeDecodeError) as exc:
                    problems.append(f"{f}: cannot read: {exc}")
        for name, base, text in entries:
            try:
                for i, data in enumerate(yaml.safe_load_all(text), start=1):
                    if data is not None:
                        docs.append(Document(name, i, base, data))
            except yaml.YAMLError as exc:
                problems.append(f"{name}: not valid YAML: {exc}")
    if problems:
        raise ManifestError(problems)
    return docs


def _abs(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_env(base: Path, env: list[EnvVar]) -> None:
    for var in env:
        if var.valueFrom is not None and var.valueFrom.file is not None:
            var.valueFrom.file = _abs(base, var.valueFrom.file)


def resolve_paths(obj: ManagedService, base: Path) -> None:
    b = obj.spec.backend
    if b.daemon is not None:
        b.daemon.workingDir = _abs(base, b.daemon.workingDir)
        _resolve_env(base, b.daemon.env)
    if b.container is not None:
        _resolve_env(base, b.container.env)
        for v in b.container.volumes:
            v.hostPath = _abs(base, v.hostPath) or v.hostPath
    if b.terraform is not None:
        b.terraform.directory = _abs(base, b.terraform.directory) or b.terraform.directory
        b.terraform.variableFiles = [_abs(base, f) or f for f in b.terraform.variableFiles]
    # kubernetes: env comes from Secrets/ConfigMaps in the cluster, no local paths


def parse(doc: Document, known_backends: Iterable[str] | None = None) -> ManagedService:
    data = doc.data
    if not isinstance(data, dict):
        raise ManifestError([f"{doc.where()}: expected a mapping, got {type(data).__name__}"])
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    where = doc.where(name)
    if data.get("apiVersion") != GROUP_VERSION or data.get("kind") != KIND:
        raise ManifestError([f"{where}: apiVersion/kind must be {GROUP_VERSION}/{KIND}, got "
                             f"{data.get('apiVersion')}/{data.get('kind')}"])
    clean = {k: v for k, v in data.items() if k != "status"}  # status is the controller's
    if isinstance(meta, dict):  # server-set fields are not taken from manifests
        clean["metadata"] = {k: v for k, v in meta.items()
                             if k not in ("uid", "resourceVersion", "generation", "creationTimestamp",
                                          "deletionTimestamp")}
    try:
        obj = ManagedService.model_validate(clean)
    except ValidationError as exc:
        lines = explain(exc, ManagedService)
        # The document is named once, on the first problem's line; the others follow indented.
        raise ManifestError(["\n  ".join([f"{where}: {lines[0]}", *lines[1:]])]) from None
    if known_backends is not None and obj.spec.backend.kind not in set(known_backends):
        raise ManifestError([f"{where}: spec.backend: unknown backend {obj.spec.backend.kind!r} "
                             f"(known: {', '.join(sorted(known_backends))})"])
    resolve_paths(obj, doc.base_dir)
    return obj


def load(sources: Iterable[str], known_backends: Iterable[str] | None = None,
         existing: Iterable[ManagedService] = ()) -> list[ManagedService]:
    """Read and validate every object; raise ManifestError with all problems found.

    `existing` (the store's objects) takes part in the dependsOn cycle check.
    """
    problems: list[str] = []
    objs: list[ManagedService] = []
    where: dict[tuple[str, str], str] = {}
    for doc in read_documents(sources):
        try:
            obj = parse(doc, known_backends)
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
    for ns, graph in sorted(graphs.items()):
        cycle = find_cycle(graph)
        if cycle:
            first = where.get((ns, cycle[0]), f"{KIND} {ns}/{cycle[0]}")
            problems.append(f"{first}: spec.dependsOn: dependency cycle: {' -> '.join(cycle)}")
    if problems:
        raise ManifestError(problems)
    return objs
