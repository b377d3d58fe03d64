"""Reading YAML that someone else wrote, with bounds checked before any work is done.

PyYAML alone accepts what a careless or hostile manifest can hold: alias bombs (a
640-byte document that expands to gigabytes), recursive aliases, nesting deep enough to
overflow the stack, duplicate keys (the last one silently wins), and tags that are no
JSON value (`!!binary`, `!!set`). Here a document goes through three passes:

1. its text: at most MAX_DOCUMENT_TEXT bytes (found from the `---` lines, no parsing);
   nesting is capped by libyaml itself (>= 0.2.5: 1,000 levels), else by a pass over the
   event stream (iterative) at MAX_DEPTH;
2. the node graph (aliases are shared nodes, not copies): duplicate keys, non-scalar
   keys, foreign tags, recursive aliases, and the *expanded* size and depth (checked going
   down), measured with one visit per node, so a bomb is refused without being expanded;
3. only then the Python values. Timestamps stay strings, as in JSON.

Every error names the line. Pure: text in, values out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from converge.api import MAX_OBJECT_BYTES

try:  # the C parser is ~10x faster when libyaml is there
    from yaml import CSafeLoader as _Base
    from yaml._yaml import get_version

    _C_NESTING_LIMIT = get_version() >= (0, 2, 5)
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Base  # type: ignore[assignment]

    _C_NESTING_LIMIT = False

MAX_DEPTH = 64  # nested mappings/sequences in one document, aliases expanded
MAX_SOURCE_BYTES = 16 * 1024 * 1024  # one file or stdin
MAX_DOCUMENT_TEXT = 2 * MAX_OBJECT_BYTES  # one document's text (YAML's indentation is wider than JSON)
_DOC_MARK = re.compile(r"^(?:---|\.\.\.)(?=\s|$)", re.M)

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null", "timestamp", "merge", "value")}


class YamlError(Exception):
    """One problem; `line` is 1-based (0: unknown)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


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


# JSON that the YAML path reads exactly alike (see _json_document): no tab, no character
# the YAML reader refuses, no BOM, no raw line separator (YAML folds NEL, U+2028 and U+2029
# inside a quoted string; JSON keeps them).
_NOT_PLAIN_JSON = re.compile("[^\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
                             "\U00010000-\U0010ffff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON joins a pair, YAML does not
_KEY_ON_NEXT_LINE = re.compile(r"[\n\r]\s*:")  # a YAML flow key ends on its own line
_MAX_SIMPLE_KEY = 1000  # a YAML key longer than 1024 characters is no implicit key


class _NotPlainJson(Exception):
    pass


def _refuse_constant(_name: str) -> Any:
    raise _NotPlainJson  # NaN, Infinity: YAML reads them as strings


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs) or any(len(k) > _MAX_SIMPLE_KEY for k in obj):
        raise _NotPlainJson  # a duplicate key: the YAML path names it and its lines
    return obj


_NOT_JSON = object()


def _json_document(text: str, limit: int) -> Any:
    """The value of a text that is one JSON object, read by the C JSON parser (YAML's
    constructor is Python, ~1 ms an object), when the YAML path below would return exactly
    the same value: else _NOT_JSON, and the YAML path reads it (and names any problem).

    Exactly the same: JSON is YAML's flow style, so a JSON text means the same to both
    except where the checks above send it to the YAML path (characters, surrogate escapes,
    NaN/Infinity, duplicate or very long keys, a key and its ':' on two lines). The
    bounds hold without the node pass: JSON has no aliases, tags or merge keys; its
    expanded size (as _Measure counts it) is at most 2.5 times its text, so a text of at
    most a third of `limit` fits, and it is nested no deeper than it has brackets."""
    if text.lstrip(" \n\r")[:1] != "{" or 3 * len(text) > limit:
        return _NOT_JSON
    if text.count("{") + text.count("[") > MAX_DEPTH or _NOT_PLAIN_JSON.search(text):
        return _NOT_JSON
    if ("\\u" in text and _SURROGATE_ESCAPE.search(text)) or _KEY_ON_NEXT_LINE.search(text):
        return _NOT_JSON
    try:
        return json.loads(text, object_pairs_hook=_object, parse_constant=_refuse_constant)
    except (_NotPlainJson, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return _NOT_JSON


def load_all(text: str, limit: int = MAX_OBJECT_BYTES) -> Iterator[tuple[int, Any]]:
    """(1-based document number, value) for each document; empty documents are None.
    Raises YamlError (a subclass carries the line) for the first problem found."""
    if len(text) > MAX_SOURCE_BYTES:
        raise YamlError(f"larger than {MAX_SOURCE_BYTES} bytes")
    start = 0
    for m in [*_DOC_MARK.finditer(text), None]:  # one document's text, before any parsing
        end = m.start() if m is not None else len(text)
        if end - start > MAX_DOCUMENT_TEXT:
            raise YamlError(f"a document of more than {MAX_DOCUMENT_TEXT} bytes", text.count("\n", 0, start) + 1)
        start = end
    value = _json_document(text, limit)
    if value is not _NOT_JSON:
        yield 1, value
        return
    yield from _load_yaml(text, limit)


def _load_yaml(text: str, limit: int) -> Iterator[tuple[int, Any]]:
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
