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

Every error names the line. Pure: text in, values out. A text that is plain JSON (most
machine-written manifests) is read by the C JSON parser instead, where that reads exactly
the same (see _json_document); PyYAML is imported only for the rest (converge.yamlnodes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from converge.names import MAX_OBJECT_BYTES

MAX_DEPTH = 64  # nested mappings/sequences in one document, aliases expanded
MAX_SOURCE_BYTES = 16 * 1024 * 1024  # one file or stdin
MAX_DOCUMENT_TEXT = 2 * MAX_OBJECT_BYTES  # one document's text (YAML's indentation is wider than JSON)
_DOC_MARK = re.compile(r"^(?:---|\.\.\.)(?=\s|$)", re.M)


class YamlError(Exception):
    """One problem; `line` is 1-based (0: unknown)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


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
    if len(obj) != len(pairs):
        raise _NotPlainJson  # a duplicate key: the YAML path names it and its lines
    return obj


def _object_long_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """_object, for a text long enough to hold a key of more than _MAX_SIMPLE_KEY."""
    if any(len(k) > _MAX_SIMPLE_KEY for k, _ in pairs):
        raise _NotPlainJson
    return _object(pairs)


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
        hook = _object if len(text) <= _MAX_SIMPLE_KEY else _object_long_keys
        return json.loads(text, object_pairs_hook=hook, parse_constant=_refuse_constant)
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
    from converge.yamlnodes import load_yaml  # PyYAML: only for what is not plain JSON

    yield from load_yaml(text, limit)


