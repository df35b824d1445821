"""host.json and function_app.py's binding metadata against their published JSON schemas, and
every binding's connection and `%SETTING%` against the settings that must resolve it.

The metadata is what the Python worker hands the Functions host: each function's
`get_function_json()`. The worker writes enum values in upper case (`IN`, `ANONYMOUS`, `MANY`)
and the host parses them ignoring case, so they are compared with the schema's values ignoring
case too. SchemaStore's function.json accepts any binding as a "dynamic" one, so each binding is
checked against the definition of its own type (and the common base) instead; a type it has no
definition for (Event Grid) gets the base alone. Connections resolve as the host resolves them:
the setting of that exact name, else settings under its `<name>__` prefix, here the one the
extension reads for an identity-based connection. Nothing here starts the host or reaches Azure.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from tests import functions

SCHEMAS = Path(__file__).resolve().parent / "schemas" / "schemastore"
# The setting under a connection's prefix that each extension reads for an identity-based
# connection (the Functions docs, "Connections": Service Bus and Event Hubs need the namespace,
# Event Grid the topic endpoint, host storage the account name or its service URIs).
IDENTITY_SETTINGS = {
    "serviceBusTrigger": ("fullyQualifiedNamespace",),
    "serviceBus": ("fullyQualifiedNamespace",),
    "eventHubTrigger": ("fullyQualifiedNamespace",),
    "eventHub": ("fullyQualifiedNamespace",),
    "eventGrid": ("topicEndpointUri",),
    "host storage": ("accountName", "blobServiceUri"),
}
# The host's own connection: not in any binding, but every trigger needs it (leases, timers).
HOST_STORAGE = "AzureWebJobsStorage"
_EXPRESSION = re.compile(r"%([^%]+)%")


def schema(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / name).read_text(encoding="utf-8")))


def function_metadata() -> dict[str, dict[str, Any]]:
    """Each function of function_app.py by name, as the worker indexes it and reports it to the
    host (the app is indexed once per process: tests.functions)."""
    return {name: f.function_json for name, f in functions.indexed().items()}


def host_json_problems(document: Any, host_schema: Mapping[str, Any]) -> list[str]:
    """host.json's disagreements with its schema, the most specific error of each."""
    validator = jsonschema.Draft7Validator(host_schema)
    return [_sentence(e) for e in _deepest(validator.iter_errors(document))]


def binding_problems(metadata: Mapping[str, Any], function_schema: Mapping[str, Any]) -> list[str]:
    """One function's metadata against function.json: its own fields and each binding against
    the common base, then each binding against the definition of its own type."""
    definitions = function_schema["definitions"]
    bindings = [
        _enum_case(b, [definitions["bindingBase"], *_specs(definitions, b.get("type"))])
        for b in metadata.get("bindings", [])
    ]
    top = copy.deepcopy(dict(function_schema))
    top["properties"]["bindings"]["items"] = {"$ref": "#/definitions/bindingBase"}
    validator = jsonschema.Draft4Validator(top)
    found = [_sentence(e) for e in validator.iter_errors({**metadata, "bindings": bindings})]
    for index, binding in enumerate(bindings):
        specs = _specs(definitions, binding.get("type"))
        own = jsonschema.Draft4Validator({"allOf": specs, "definitions": definitions})
        found.extend(
            f"bindings.{index} ({binding.get('type')}): {_sentence(e)}"
            for e in _deepest(own.iter_errors(binding))
        )
    return found


def connections(metadata: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each connection name the functions use, with the binding type that uses it; the host's
    own storage connection included."""
    used = {HOST_STORAGE: "host storage"}
    for function in metadata.values():
        for binding in function["bindings"]:
            if "connection" in binding:
                used[binding["connection"]] = binding["type"]
    return used


def expressions(metadata: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Every app setting named by a `%SETTING%` binding expression."""
    return {
        name
        for function in metadata.values()
        for binding in function["bindings"]
        for value in binding.values()
        if isinstance(value, str)
        for name in _EXPRESSION.findall(value)
    }


def resolution_problems(
    metadata: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    empty_allowed: bool = False,
) -> list[str]:
    """Each connection and `%SETTING%` that `settings` (name -> value) cannot resolve. A value
    of "" counts as absent unless `empty_allowed` (a sample's placeholder to fill in)."""

    def given(name: str) -> bool:
        return name in settings and (empty_allowed or settings[name] != "")

    found = []
    for name, kind in sorted(connections(metadata).items()):
        prefixed = [f"{name}__{suffix}" for suffix in IDENTITY_SETTINGS.get(kind, ())]
        if not given(name) and not any(given(setting) for setting in prefixed):
            options = " or ".join([name, *prefixed])
            found.append(f"connection {name} ({kind}): no setting {options}")
    for name in sorted(expressions(metadata)):
        if settings.get(name, "") == "":
            found.append(f"%{name}%: no setting {name} with a value")
    return found


def _specs(definitions: Mapping[str, Any], binding_type: Any) -> list[dict[str, Any]]:
    """The parts of function.json's definitions that describe bindings of `binding_type`:
    each definition's common part with its branch for that type."""
    found = []
    for spec in definitions.values():
        for branch in spec.get("oneOf", [spec]):
            if binding_type in branch.get("properties", {}).get("type", {}).get("enum", []):
                common = {k: v for k, v in spec.items() if k != "oneOf"}
                found.extend([common, branch] if branch is not spec else [common])
    return found


def _enum_case(binding: Mapping[str, Any], specs: Iterable[Any]) -> dict[str, Any]:
    """`binding` with each value that matches an enum value of its schema ignoring case written
    in the schema's case, as the host reads it."""
    allowed: dict[str, list[str]] = {}
    for spec in specs:
        for branch in [spec, *spec.get("oneOf", [])]:
            for name, prop in branch.get("properties", {}).items():
                items = prop.get("items", {})
                items = items[0] if isinstance(items, list) and items else items
                for values in (prop.get("enum"), items.get("enum") if items else None):
                    allowed.setdefault(name, []).extend(v for v in values or [] if v)
    out = dict(binding)
    for name, value in binding.items():
        by_lower = {str(v).lower(): v for v in allowed.get(name, [])}
        if isinstance(value, str):
            out[name] = by_lower.get(value.lower(), value)
        elif isinstance(value, list):
            out[name] = [by_lower.get(str(v).lower(), v) for v in value]
    return out


def _deepest(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """Each error, or the most specific of its alternatives when it is a oneOf/anyOf."""
    for error in errors:
        yield best_match([error])


def _sentence(error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{path}: {message}"
