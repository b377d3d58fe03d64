"""The ManagedService CustomResourceDefinition, generated from the API models. Pure.

The pydantic models in converge.api are the single source of truth: this module turns
their JSON schema into a *structural* openAPIV3Schema (what apiextensions.k8s.io/v1
requires) without knowing any field by name:

- `$ref`s are inlined; `X | None` becomes a plain optional field (`nullable` only where
  null means something else than "unset", i.e. when the default is not None);
- constraints pass through (enum, minimum/maximum, patterns, lengths, item counts,
  required); `const` becomes a one-value enum, JSON-schema-2020 exclusive bounds become
  OpenAPI 3.0 ones, `uniqueItems` becomes `x-kubernetes-list-type: set`;
- maps become `additionalProperties`; constraints on a map's keys (`patternProperties`,
  `propertyNames`, which structural schemas lack) become CEL rules over the keys;
- free-form values (`Any`) and models that allow
  extra fields (third-party backends) become `x-kubernetes-preserve-unknown-fields`;
- cross-field rules the models declare next to their validators
  (`x-kubernetes-validations`, CEL) pass through.

A keyword this module does not know is an error, not silently copied: the CRD must mean
what local validation means.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from converge.api import (
    API_GROUP,
    API_VERSION,
    KIND,
    PATTERN_HINTS,
    ManagedServiceSpec,
    ManagedServiceStatus,
    ObjectMeta,
)

PLURAL = "managedservices"
SINGULAR = "managedservice"
SHORT_NAMES = ["msvc"]
CATEGORIES = ["converge"]
NAME = f"{PLURAL}.{API_GROUP}"

_READY = '.status.conditions[?(@.type=="Ready")]'
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "State", "type": "string", "jsonPath": ".status.state"},
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
    {"name": "Backend", "type": "string", "jsonPath": ".status.backendKind"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint.uri"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "priority": 1},
]

# Keywords copied as they are (after their values are converted where they hold schemas), in
# the order they are written.
_KEEP = (
    "type", "description", "format", "enum", "default", "nullable",
    "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "multipleOf", "minItems", "maxItems", "minProperties", "maxProperties", "required",
    "properties", "additionalProperties", "items",
)
_DROP = {"title", "$defs", "examples"}


class SchemaError(ValueError):
    """The models use something a structural schema cannot say."""


def _ref_name(ref: str) -> str:
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise SchemaError(f"unsupported $ref {ref!r}")
    return ref[len(prefix):]


def _merge_ref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The node with its `$ref` replaced by the definition (the node's own keys win)."""
    if "$ref" not in node:
        return node
    rest = {k: v for k, v in node.items() if k != "$ref"}
    return {**defs[_ref_name(node["$ref"])], **rest}


def _merge_any_of(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """`X | None` -> X, nullable only if null is not simply the default (= unset)."""
    if "anyOf" not in node:
        return node
    members = [_merge_ref(m, defs) for m in node["anyOf"]]
    non_null = [m for m in members if m.get("type") != "null"]
    if len(non_null) != 1:
        raise SchemaError(f"{path}: a union of several types has no structural schema")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    out = {**non_null[0], **rest}
    if len(non_null) < len(members) and not ("default" in rest and rest["default"] is None):
        out["nullable"] = True  # null is a value of its own here, not "unset"
    return out


def _key_message(pattern: str) -> str:
    """The message local validation gives for the pattern (converge.fielderrors), so both say the same."""
    return PATTERN_HINTS.get(pattern, f"must match {pattern}")


def _key_rule(condition: str, message: str, pattern: str | None = None) -> dict[str, str]:
    if pattern is not None and "'" in pattern:
        raise SchemaError(f"a key pattern with a quote cannot be said in CEL here: {pattern}")
    return {"rule": f"self.all(k, {condition})", "message": message}


def _fractional_bound_rules(out: dict[str, Any]) -> list[dict[str, str]]:
    """CEL rules restating fractional minimum/maximum bounds. The API server compares an
    integer value with a bound truncated to an integer (minimum 0.1 lets 0 through, seen
    with kube-apiserver 1.32), so a fractional bound is said once more in CEL, where `self`
    is a double; the message is pydantic's."""
    rules = []
    for bound, exclusive, op, words in (("minimum", "exclusiveMinimum", ">", "greater than"),
                                        ("maximum", "exclusiveMaximum", "<", "less than")):
        limit = out.get(bound)
        if isinstance(limit, float) and not limit.is_integer():
            strict = bool(out.get(exclusive))
            rules.append({"rule": f"self {op}{'' if strict else '='} {limit!r}",
                          "message": f"Input should be {words}{'' if strict else ' or equal to'} {limit!r}"})
    return rules


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """One JSON-schema node (pydantic's output) as a structural OpenAPI v3 schema."""
    node = _merge_any_of(_merge_ref(node, defs), defs, path)
    out: dict[str, Any] = {}
    rules: list[dict[str, str]] = []
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(value, bool):  # already OpenAPI 3.0 style
                out[key] = value
            else:
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
        elif key == "uniqueItems":
            if value:
                out["x-kubernetes-list-type"] = "set"
        elif key == "properties":
            out[key] = {k: structural(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, f"{path}[]")
        elif key == "patternProperties":  # dict[Annotated[str, pattern], V]: the keys' pattern
            if len(value) != 1:
                raise SchemaError(f"{path}: several key patterns have no structural schema")
            [(pattern, values)] = value.items()
            values = structural(values, defs, f"{path}.*")
            if values == {"x-kubernetes-preserve-unknown-fields": True}:  # a map of anything
                # The API server has no CEL type for a free-form object, so its keys cannot
                # be checked there: local validation (and the backend) check them.
                out["x-kubernetes-preserve-unknown-fields"] = True
                continue
            out["additionalProperties"] = values
            rules.append(_key_rule(f"k.matches(r'{pattern}')", _key_message(pattern), pattern))
        elif key == "propertyNames":  # the other constraints on the keys
            for k, limit in value.items():
                if k == "maxLength":
                    rules.append(_key_rule(f"size(k) <= {int(limit)}", f"every key is at most {limit} characters"))
                elif k == "minLength":
                    rules.append(_key_rule(f"size(k) >= {int(limit)}", f"every key is at least {limit} characters"))
                elif k == "pattern":
                    rules.append(_key_rule(f"k.matches(r'{limit}')", _key_message(limit), limit))
                else:
                    raise SchemaError(f"{path}: key constraint {k!r} has no CRD equivalent here")
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                values = structural(value, defs, f"{path}.*")
                if values == {"x-kubernetes-preserve-unknown-fields": True}:  # a map of anything
                    out["x-kubernetes-preserve-unknown-fields"] = True
                else:
                    out[key] = values
            # False: the default of a structural schema (unknown fields are pruned, or
            # rejected under strict field validation, which kubectl uses)
        elif key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value
        else:
            raise SchemaError(f"{path or '<root>'}: JSON schema keyword {key!r} has no CRD equivalent here")
    rules += _fractional_bound_rules(out)
    if rules:
        out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), *rules]
    out = {k: out[k] for k in sorted(out, key=lambda k: _KEEP.index(k) if k in _KEEP else len(_KEEP))}
    if not out.get("type") and not out.get("x-kubernetes-preserve-unknown-fields"):
        if node.get("type") is None and not set(out) - {"description", "default"}:
            out["x-kubernetes-preserve-unknown-fields"] = True  # Any: a free-form value
        else:
            raise SchemaError(f"{path or '<root>'}: no type")
    return out


def model_schema(model: type[BaseModel], path: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}), path)


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of ManagedService. metadata is the API server's, except the
    constraints on metadata.name (the only ones a CRD may add)."""
    name = model_schema(ObjectMeta, "metadata")["properties"]["name"]
    return {
        "type": "object",
        "description": "A service kept in the state its owner declared.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "properties": {"name": name}},
            "spec": model_schema(ManagedServiceSpec, "spec"),
            "status": model_schema(ManagedServiceStatus, "status"),
        },
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": CATEGORIES},
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }


HEADER = "# Generated from controller/api.py by `converge crds`; do not edit (make crds regenerates it).\n"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # repeated sub-schemas are written out, not as YAML anchors


def crd_yaml() -> str:
    return HEADER + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=100)
