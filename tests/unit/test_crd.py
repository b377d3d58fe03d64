"""The CRD generator: pure, generic over the models, and its output is a structural schema."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from converge import api
from converge.api import Model
from converge.crd import NAME, SchemaError, crd, crd_yaml, model_schema, openapi_schema, structural

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / f"{NAME}.yaml"


def nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    out = [(path, schema)]
    for k, v in schema.get("properties", {}).items():
        out += nodes(v, f"{path}.{k}")
    if isinstance(schema.get("items"), dict):
        out += nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += nodes(schema["additionalProperties"], f"{path}.*")
    return out


def test_committed_crd_is_current() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `make crds`"


def test_schema_is_structural() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const", "uniqueItems"}
    for path, node in nodes(openapi_schema()):
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        assert not forbidden & set(node), f"{path}: {forbidden & set(node)}"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not isinstance(node.get("additionalProperties"), bool), path
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", path
        for name in node.get("required", []):
            assert name in node["properties"], f"{path}: required {name} is not a property"


def test_free_form_only_where_values_are_free_form() -> None:
    free = {p for p, n in nodes(openapi_schema()) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert free == {".spec.backend", ".spec.backend.terraform.variables", ".status.backend"}


def test_every_cross_field_validator_has_a_rule_in_the_crd() -> None:
    """A model_validator without its CEL rule (or schema equivalent) would let the API server
    accept what local validation rejects."""
    models = [m for _, m in inspect.getmembers(api, inspect.isclass) if issubclass(m, Model) and m is not Model]
    for m in models:
        if m.__pydantic_decorators__.model_validators:
            schema = m.model_json_schema()
            assert "x-kubernetes-validations" in schema or "maxProperties" in schema, m.__name__


def test_crd_names_columns_and_subresource() -> None:
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["msvc"] and spec["names"]["categories"] == ["converge"]
    assert spec["names"]["plural"] == "managedservices" and spec["scope"] == "Namespaced"
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}
    cols = {c["name"].upper(): c for c in version["additionalPrinterColumns"]}
    assert list(cols) == ["STATE", "READY", "BACKEND", "ENDPOINT", "RESTARTS", "AGE", "REASON"]
    assert [c.get("priority", 0) for c in cols.values()] == [0, 0, 0, 0, 0, 0, 1]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for col in cols.values():  # every column's field exists in the schema
        parts = col["jsonPath"].split("[")[0].strip(".").split(".")
        if parts[0] == "status":
            node: dict[str, Any] = {"properties": status}
            for part in parts[1:]:
                assert part in node["properties"], col
                node = node["properties"][part]


# --------------------------------------------------------------------------- the conversion, on small models


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int = Field(ge=1)


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"x-kubernetes-validations": [{"rule": "true"}]})

    inner: Inner
    maybe: Inner | None = None
    nullable: int | None = 5
    labels: dict[str, str] = Field(default_factory=dict)
    anything: dict[str, Any] = Field(default_factory=dict)
    jsons: dict[str, JsonValue] = Field(default_factory=dict)
    value: Any = None
    ratio: float = Field(default=1.0, gt=0, lt=2)
    mode: Literal["fixed"] = "fixed"
    tags: list[str] = Field(default_factory=list, max_length=8)
    period: float = Field(default=1.0, ge=0.1, lt=60.5)


def test_conversion_of_each_construct() -> None:
    s = model_schema(Sample, "sample")
    p = s["properties"]
    assert s["type"] == "object" and s["required"] == ["inner"] and s["x-kubernetes-validations"] == [{"rule": "true"}]
    assert p["inner"] == {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer", "minimum": 1}}}
    assert p["maybe"] == p["inner"]  # Optional with None default: a plain optional field
    assert p["nullable"] == {"type": "integer", "default": 5, "nullable": True}  # null differs from unset
    assert p["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert p["anything"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert p["jsons"] == p["anything"]
    assert p["value"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert p["ratio"] == {"type": "number", "default": 1.0, "minimum": 0, "exclusiveMinimum": True,
                          "maximum": 2, "exclusiveMaximum": True}
    assert p["mode"] == {"type": "string", "enum": ["fixed"], "default": "fixed"}
    assert p["period"] == {  # the API server truncates fractional bounds for integer values: CEL says them again
        "type": "number", "default": 1.0, "minimum": 0.1, "maximum": 60.5, "exclusiveMaximum": True,
        "x-kubernetes-validations": [
            {"rule": "self >= 0.1", "message": "Input should be greater than or equal to 0.1"},
            {"rule": "self < 60.5", "message": "Input should be less than 60.5"}]}
    assert p["tags"] == {"type": "array", "maxItems": 8, "items": {"type": "string"}}


def test_extra_allowed_keeps_unknown_fields() -> None:
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        a: str | None = None

    assert model_schema(Open, "open") == {"type": "object", "properties": {"a": {"type": "string"}},
                                          "x-kubernetes-preserve-unknown-fields": True}


def test_unique_items_become_a_set() -> None:
    class Tags(BaseModel):
        tags: set[str]

    assert model_schema(Tags, "t")["properties"]["tags"]["x-kubernetes-list-type"] == "set"


@pytest.mark.parametrize(("node", "message"), [
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "union"),
    ({"type": "string", "contentEncoding": "base64"}, "contentEncoding"),
    ({"$ref": "#/definitions/X"}, r"unsupported \$ref"),
])
def test_what_a_structural_schema_cannot_say_is_an_error(node: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        structural(node, {}, "f")


def test_blank_pattern_is_what_str_strip_removes() -> None:
    """The CEL rule for a blank program (an RE2 class) and the local check (str.strip) agree."""
    import sys
    import unicodedata

    from converge.api import BLANK_PATTERN

    assert BLANK_PATTERN == r"^[\t-\r\x1c-\x20\x85\p{Z}]*$"
    said = {*range(0x09, 0x0E), *range(0x1C, 0x21), 0x85}
    said |= {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")}
    assert said == {c for c in range(sys.maxunicode + 1) if chr(c).isspace()}


# Every field validator of the models, and what says it in the CRD, or the table case that
# records the API server's gap (tests/cases/invalid_manifests.yaml, `apiServerAccepts`).
FIELD_VALIDATORS = {
    ("ContainerBackend", "_env"): "before: the {NAME: value} shorthand; the CRD takes the list form only",
    ("DaemonBackend", "_env"): "before: the {NAME: value} shorthand; the CRD takes the list form only",
    ("KubernetesBackend", "_env"): "before: the {NAME: value} shorthand; the CRD takes the list form only",
    ("DaemonBackend", "_no_secret_in_argv"): "gap: daemon-secret-in-argv",
    ("Endpoint", "_host"): "gap: endpoint-host-bad-ipv6",
    ("Resources", "_memory"): "gap: container-memory-too-small",
    ("KubernetesBackend", "_ports"): "x-kubernetes-list-type: set",
    ("ManagedServiceSpec", "_deps"): "x-kubernetes-list-type: set",
    ("TerraformBackend", "_variables"): "finite numbers: JSON, and so the API server, has no inf or NaN",
}


def test_every_field_validator_is_accounted_for() -> None:
    """A new field validator must say how the API server checks the same (or record the gap)."""
    from tests.helpers import api_server_gaps

    found = {(name, fn) for name, m in inspect.getmembers(api, inspect.isclass)
             if issubclass(m, Model) for fn in m.__pydantic_decorators__.field_validators}
    assert found == set(FIELD_VALIDATORS)
    gaps = api_server_gaps()
    for how in FIELD_VALIDATORS.values():
        if how.startswith("gap: "):
            assert how.removeprefix("gap: ") in gaps, how
    sets = {p for p, n in nodes(openapi_schema()) if n.get("x-kubernetes-list-type") == "set"}
    assert {".spec.dependsOn", ".spec.backend.kubernetes.ports"} <= sets


def test_cel_cost_is_bounded() -> None:
    """The API server refuses a CRD whose CEL rules could cost without bound: every list or map
    around a rule has a maximum size, and the strings a rule reads have a maximum length."""

    def walk(node: dict[str, Any], path: str, bounded: bool) -> None:
        if node.get("x-kubernetes-validations"):
            assert bounded, f"{path}: a CEL rule inside an unbounded list or map"
            strings = [node] if node.get("type") == "string" else [node.get("items", {})]
            for s in strings:
                assert s.get("type") != "string" or "maxLength" in s or "enum" in s, f"{path}: unbounded string"
        for k, v in node.get("properties", {}).items():
            walk(v, f"{path}.{k}", bounded)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]", bounded and "maxItems" in node)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*", bounded and "maxProperties" in node)

    walk(openapi_schema(), "", True)
