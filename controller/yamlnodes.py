"""The YAML path of converge.yamlsafe: PyYAML's C parser, the node-graph checks (duplicate
keys, foreign tags, recursive aliases, expanded size and depth) and only then the values.
Imported when a text is not plain JSON. Pure: text in, values out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from converge.yamlsafe import MAX_DEPTH, YamlError

try:  # the C parser is ~10x faster when libyaml is there
    from yaml import CSafeLoader as _Base
    from yaml._yaml import get_version

    _C_NESTING_LIMIT = get_version() >= (0, 2, 5)
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Base  # type: ignore[assignment]

    _C_NESTING_LIMIT = False

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null", "timestamp", "merge", "value")}


class _Loader(_Base):
    """The safe loader, with timestamps kept as the strings they were written as, and
    YAML 1.2 / JSON floats without a dot (1e-3) read as the numbers they are."""


_Loader.add_constructor(_T + "timestamp", _Loader.construct_yaml_str)  # type: ignore[type-var]
_Loader.add_implicit_resolver(  # after YAML 1.1's int and float: "10" stays an int
    _T + "float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _line(node: Any) -> int:
    mark = getattr(node, "start_mark", None)
    return int(mark.line) + 1 if mark is not None else 0


def _check_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlError(f"nested more than {MAX_DEPTH} levels deep", _line(event))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


class _Measure:
    """Expanded size (bytes, roughly as JSON) and depth of a node graph, one visit per node."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.memo: dict[int, tuple[int, int]] = {}
        self.active: set[int] = set()

    def __call__(self, node: yaml.Node, level: int = 0) -> tuple[int, int]:
        if level > MAX_DEPTH:  # checked going down: no recursion deeper than the limit
            raise YamlError(f"nested more than {MAX_DEPTH} levels deep", _line(node))
        ident = id(node)
        if ident in self.memo:
            size, depth = self.memo[ident]
            if level + depth > MAX_DEPTH:
                raise YamlError(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", _line(node))
            return size, depth
        if ident in self.active:
            raise YamlError("recursive alias: a value contains itself", _line(node))
        self.active.add(ident)
        try:
            result = self._measure(node, level)
        finally:
            self.active.discard(ident)
        if result[0] > self.limit:
            raise YamlError(f"larger than {self.limit} bytes once aliases are expanded "
                            f"(the limit of one object)", _line(node))
        if result[1] > MAX_DEPTH:
            raise YamlError(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", _line(node))
        self.memo[ident] = result
        return result

    def _measure(self, node: yaml.Node, level: int) -> tuple[int, int]:
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise YamlError(f"tag {_short(node.tag)} is not allowed: values are strings, numbers, "
                                "booleans, null, lists and mappings", _line(node))
            return len(node.value) + 3, 0
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _T + "seq":
                raise YamlError(f"tag {_short(node.tag)} is not allowed on a list", _line(node))
            size, depth = 2, 0
            for item in node.value:
                s, d = self(item, level + 1)
                size, depth = size + s + 1, max(depth, d)
                if size > self.limit:
                    break
            return size, depth + 1
        if isinstance(node, yaml.MappingNode):
            if node.tag != _T + "map":
                raise YamlError(f"tag {_short(node.tag)} is not allowed on a mapping", _line(node))
            size, depth = 2, 0
            seen: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise YamlError("a mapping key must be a string, not a list or mapping", _line(key))
                if key.tag != _T + "merge":
                    if key.value in seen:
                        raise YamlError(f"duplicate key {key.value[:60]!r} (first on line {seen[key.value]})",
                                        _line(key))
                    seen[key.value] = _line(key)
                ks, _ = self(key, level + 1)
                vs, vd = self(value, level + 1)
                size, depth = size + ks + vs + 2, max(depth, vd)
                if size > self.limit:
                    break
            return size, depth + 1
        raise YamlError(f"unexpected node {type(node).__name__}", _line(node))  # pragma: no cover


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_T) if tag.startswith(_T) else tag[:60]


def load_yaml(text: str, limit: int) -> Iterator[tuple[int, Any]]:
    try:
        if not _C_NESTING_LIMIT:  # libyaml >= 0.2.5 refuses nesting past 1000 itself (no deep C recursion)
            _check_depth(text)
        loader = _Loader(text)
        try:
            index = 0
            while loader.check_node():
                index += 1
                node = loader.get_node()
                if node is None:  # pragma: no cover - an empty document has no node
                    yield index, None
                    continue
                _Measure(limit)(node)
                yield index, loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(_one_line(exc.problem or exc.context or "not valid"), mark.line + 1 if mark else 0) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise YamlError(f"character {chr(exc.character)!r} is not allowed" if isinstance(exc.character, int)
                        else _one_line(exc.reason), line) from None
    except yaml.YAMLError as exc:
        raise YamlError(_one_line(str(exc))) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. int() of 5,000 digits
        raise YamlError(f"cannot read a value: {_one_line(str(exc))}") from None
