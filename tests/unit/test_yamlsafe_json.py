"""yamlsafe reads a JSON text with the C JSON parser only when the YAML path would read
exactly the same: property test over JSON texts written every way json.dumps writes
them (and a few ways people do by hand), and the texts it must leave to the YAML path.
Pure: text in, values out."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converge import yamlnodes, yamlsafe
from converge.api import MAX_OBJECT_BYTES
from converge.yamlsafe import YamlError, load_all

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "yes", "no", "on", "~", "null", "1e3", "0x1F", "2001-12-14", "<<", "&a", "*a", "!!binary",
                     "a: b", "- x", "#", "\t", "\x85", "\u2028", "\ufeff", "\ud83d\ude00", "é", "a\nb", "\x7f",
                     "k" * 1100]),
)
KEYS = st.one_of(st.text(max_size=8), st.sampled_from(["<<", "? x", "a:b", "", "k" * 1100, "\u2029", "\t"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20)


def _yaml(text: str) -> Any:
    try:
        return ("ok", list(yamlnodes.load_yaml(text, MAX_OBJECT_BYTES)))
    except YamlError as exc:
        return ("error", str(exc))


def _fast(text: str) -> Any:
    try:
        return ("ok", list(load_all(text)))
    except YamlError as exc:
        return ("error", str(exc))


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and -0.0 told from 0.0 (and 1 from True)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    doc = {"apiVersion": "converge.dev/v1alpha1", **draw(st.dictionaries(KEYS, VALUES, max_size=5))}
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2, "\t"])),
                      separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])))
    if draw(st.booleans()):  # by hand: a duplicated line, a key and its ':' apart, CRLF
        how = draw(st.sampled_from(["dup", "colon", "crlf", "lead"]))
        lines = text.splitlines(keepends=True)
        if how == "dup" and len(lines) > 2:
            lines.insert(1, lines[1])
        elif how == "colon":
            lines = [ln.replace('":', '"\n  :', 1) for ln in lines]
        elif how == "crlf":
            lines = [ln.replace("\n", "\r\n") for ln in lines]
        else:
            lines.insert(0, "\n  ")
        text = "".join(lines)
    return text + draw(st.sampled_from(["", "\n", " \n\n"]))


@settings(max_examples=1500, deadline=None, database=None, derandomize=True)
@given(text=json_texts())
def test_json_reads_as_the_yaml_path_reads_it(text: str) -> None:
    fast, slow = _fast(text), _yaml(text)
    assert fast[0] == slow[0], (text, fast, slow)
    assert _same(fast[1], slow[1]), (text, fast, slow)


@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2}',  # duplicate key: the YAML path names its line
    '{"a": NaN}', '{"a": -Infinity}',  # YAML: strings
    '{"a": "\\ud83d\\ude00"}',  # JSON joins the pair
    '{"a":\t1}', '{"a": "x\u2028y"}', '{"a": "x\x85y"}', '\ufeff{"a": 1}',
    '{"a"\n: 1}', '{"' + "k" * 1100 + '": 1}',
    '{"a": ' + "[" * 70 + "]" * 70 + "}",  # deeper than MAX_DEPTH could be
    '{"a": "' + "x" * (MAX_OBJECT_BYTES // 3) + '"}',  # the node pass measures it
    "a: 1", "[1]", '{"a": 1',
])
def test_left_to_the_yaml_path(text: str) -> None:
    assert yamlsafe._json_document(text, MAX_OBJECT_BYTES) is yamlsafe._NOT_JSON


def test_duplicate_key_in_json_is_refused_with_its_line() -> None:
    with pytest.raises(YamlError, match=r"line 3: duplicate key 'a' \(first on line 2\)"):
        list(load_all('{\n "a": 1,\n "a": 2\n}\n'))


def test_plain_json_takes_the_fast_path() -> None:
    text = json.dumps({"apiVersion": "converge.dev/v1alpha1", "spec": {"port": 80, "cmd": ["a", "b"], "x": 1.5e3}},
                      indent=2)
    assert yamlsafe._json_document(text, MAX_OBJECT_BYTES) == json.loads(text)
