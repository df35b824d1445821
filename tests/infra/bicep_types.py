"""infra/bicep against the Bicep compiler's own type data (bicep-types-az `types.json`).

`bicep build` cannot run here, so this module reads the files the compiler reads
(tests/infra/schemas/bicep-types-az) and checks what tests/infra/bicep_model evaluated: every
resource's type and API version, every property it writes at every depth (inside arrays, loops
and modules too) with its literal values against string unions and scalar types, the required
properties it leaves out, the read-only ones it writes, and every property path the template reads
back (`site.properties.defaultHostName`, `site.identity.principalId`). It is stricter than the
compiler in one way: a string written where the type lists values and also allows any string
(ARM's open enums) must be one of those values. A value Azure decides at deployment time (an id,
an endpoint) is not checked, only the place it is written to. Property
names match case-insensitively, as in Azure, but a different case is reported all the same. It
never writes and never reaches the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tests.infra import bicep_model
from tests.infra.bicep_model import Resource, Unknown

TYPES_ROOT = Path(__file__).resolve().parent / "schemas" / "bicep-types-az"
# The Microsoft Graph Bicep extension's types (microsoftgraph/msgraph-bicep-types), one folder
# per Graph API version and extension release: microsoft.graph/v1.0/1.0.0/types.json.
GRAPH_TYPES_ROOT = Path(__file__).resolve().parent / "schemas" / "msgraph-bicep-types"
REQUIRED, READ_ONLY, WRITE_ONLY = 1, 2, 4
# What Bicep decides, not the resource body: never in a `properties` map of types.json.
_UNKNOWN_DEPS = frozenset({bicep_model.RESOURCE, bicep_model._DEPLOYMENT})


@dataclass(frozen=True)
class TypeFile:
    """One `types.json`: a top-level array whose `$ref` values "#/N" index it."""

    path: Path
    entries: tuple[dict[str, Any], ...]

    def get(self, ref: Mapping[str, str]) -> dict[str, Any]:
        return self.entries[int(ref["$ref"].removeprefix("#/"))]


@dataclass(frozen=True)
class ResourceType:
    name: str  # as types.json spells it: "Microsoft.Web/sites@2024-04-01"
    file: TypeFile
    body: dict[str, Any]


@cache
def resource_types(root: Path = TYPES_ROOT) -> dict[str, ResourceType]:
    """Every ResourceType in every types.json under `root`, by its lower-case name."""
    found = {}
    for path in sorted(root.rglob("types.json")):
        file = TypeFile(path, tuple(json.loads(path.read_text(encoding="utf-8"))))
        for entry in file.entries:
            if entry["$type"] == "ResourceType":
                found[entry["name"].lower()] = ResourceType(
                    entry["name"], file, file.get(entry["body"])
                )
    return found


def problems(
    resources: Iterable[Resource], root: Path = TYPES_ROOT, graph_root: Path = GRAPH_TYPES_ROOT
) -> list[str]:
    """Every way `resources` (bicep_model's `declared`) disagree with the type data, as
    sentences naming file, symbol and property path; empty when none. Loop instances that
    disagree the same way are reported once. Microsoft Graph resources are checked against the
    Graph extension's types (`graph_root`), the rest against Azure's (`root`)."""
    found: dict[str, None] = {}
    for resource in resources:
        where = f"{resource.file} {resource.symbol} ({resource.type}@{resource.api_version})"
        graph = resource.type.startswith(bicep_model.GRAPH_NAMESPACE)
        checks = _graph_problems(resource, graph_root) if graph else None
        for problem in checks if checks is not None else _resource_problems(resource, root):
            found[f"{where}: {problem}"] = None
    return list(found)


def body_problems(
    resource_type: str, body: Mapping[str, Any], root: Path = GRAPH_TYPES_ROOT
) -> list[str]:
    """The ways a JSON body (as sent to an API) disagrees with `resource_type`'s type data
    (`Microsoft.Graph/applications@v1.0`): for stand-ins that check what a client sends."""
    known = resource_types(root)[resource_type.lower()]
    found: list[str] = []
    _Checker(known.file, found).value(bicep_model._wrap(dict(body)), known.body, "")
    return found


def _graph_problems(resource: Resource, root: Path) -> list[str]:
    written = f"{resource.type}@{resource.api_version}"
    if not list(root.rglob(f"microsoft.graph/{resource.api_version}/*/types.json")):
        return [
            f"no type data for Microsoft Graph {resource.api_version}: copy generated/"
            f"microsoftgraph/microsoft.graph/{resource.api_version}/<release>/types.json from "
            "microsoftgraph/msgraph-bicep-types into tests/infra/schemas/msgraph-bicep-types"
        ]
    if written.lower() not in resource_types(root):
        return [f"unknown resource type {written} (not in the Graph extension's type data)"]
    return _resource_problems(resource, root)


def _resource_problems(resource: Resource, root: Path) -> list[str]:
    written = f"{resource.type}@{resource.api_version}"
    known = resource_types(root).get(written.lower())
    if known is None:
        namespace = resource.type.split("/", 1)[0].lower()
        provider_files = list(root.rglob(f"{namespace}/{resource.api_version}/types.json"))
        if not provider_files:
            return [
                f"no type data for {namespace} API version {resource.api_version}: copy "
                f"generated/<rp>/{namespace}/{resource.api_version}/types.json from "
                "Azure/bicep-types-az into tests/infra/schemas/bicep-types-az"
            ]
        return [f"unknown resource type {written} (not in {provider_files[0].relative_to(root)})"]
    found = []
    if known.name != written:
        found.append(f"resource type is spelt {known.name} in the type data")
    checker = _Checker(known.file, found)
    if not resource.existing:
        checker.value(bicep_model._V(dict(resource.values)), known.body, "")
    for path in sorted(resource.reads):
        checker.read(path, known.body)
    return found


class _Checker:
    def __init__(self, file: TypeFile, found: list[str]) -> None:
        self.file, self.found = file, found

    # writing

    def value(self, value: bicep_model._V, kind: dict[str, Any], path: str) -> None:
        """Check `value` (an evaluated body or part of one) against type entry `kind`."""
        self.found.extend(self._value(value, kind, path))

    def _value(self, value: bicep_model._V, kind: dict[str, Any], path: str) -> list[str]:
        data, kind_name = value.data, kind["$type"]
        if isinstance(data, Unknown) or kind_name == "AnyType":
            return []
        if kind_name in ("ObjectType", "DiscriminatedObjectType"):
            if not isinstance(data, dict):
                return self._scalar_mismatch(value, "an object", path)
            if kind_name == "ObjectType":
                additional = kind.get("additionalProperties")
                return self._object(data, kind["properties"], additional, path)
            return self._discriminated(data, kind, path)
        if kind_name == "ArrayType":
            if not isinstance(data, list):
                return self._scalar_mismatch(value, "an array", path)
            item = self.file.get(kind["itemType"])
            return [p for i, v in enumerate(data) for p in self._value(v, item, f"{path}[{i}]")]
        if kind_name == "UnionType":
            return self._union(value, [self.file.get(e) for e in kind["elements"]], path)
        return self._scalar(value, kind, path)

    def _object(
        self,
        data: dict[str, bicep_model._V],
        properties: Mapping[str, Any],
        additional: Mapping[str, str] | None,
        path: str,
    ) -> list[str]:
        found = []
        by_lower = {name.lower(): name for name in properties}
        for key, item in data.items():
            where = f"{path}.{key}" if path else key
            name = key if key in properties else by_lower.get(key.lower())
            if name is None:
                if additional is not None:
                    found.extend(self._value(item, self.file.get(additional), where))
                else:
                    writable = [n for n, v in properties.items() if not v["flags"] & READ_ONLY]
                    found.append(f"{where}: no such property (writable: {', '.join(writable)})")
                continue
            if name != key:
                found.append(f"{where}: the type data spells it {name}")
            flags = properties[name]["flags"]
            if flags & READ_ONLY:
                found.append(f"{where}: read-only, Azure sets it")
                continue
            found.extend(self._value(item, self.file.get(properties[name]["type"]), where))
        given = {key.lower() for key in data}
        for name, spec in properties.items():
            required = spec["flags"] & REQUIRED and not spec["flags"] & READ_ONLY
            if required and name.lower() not in given:
                found.append(f"{path + '.' if path else ''}{name}: required, not set")
        return found

    def _discriminated(
        self, data: dict[str, bicep_model._V], kind: dict[str, Any], path: str
    ) -> list[str]:
        key = kind["discriminator"]
        elements = {name: self.file.get(ref) for name, ref in kind["elements"].items()}
        chosen = data.get(key)
        where = f"{path}.{key}" if path else key
        if chosen is None:
            return [f"{where}: required, not set (one of {', '.join(elements)})"]
        if _known(chosen) and isinstance(chosen.data, str):
            if chosen.data not in elements:
                return [f"{where}: {chosen.data!r} is not one of {', '.join(elements)}"]
            properties = {**kind["baseProperties"], **elements[chosen.data]["properties"]}
            return self._object(data, properties, None, path)
        # The discriminator is decided at deployment: any element's properties may appear.
        union = dict(kind["baseProperties"])
        for element in (e["properties"] for e in elements.values()):
            optional = {k: {**v, "flags": v["flags"] & ~REQUIRED} for k, v in element.items()}
            union.update(optional)
        return self._object(data, union, None, path)

    def _union(self, value: bicep_model._V, kinds: list[dict[str, Any]], path: str) -> list[str]:
        # An "open" enum (its literals and any string, ARM's modelAsString) still gets its
        # literals enforced: the compiler would accept a typo there, Azure mostly would not.
        literals = [kind for kind in kinds if kind["$type"] == "StringLiteralType"]
        if literals and isinstance(value.data, str):
            kinds = literals
        attempts = [self._value(value, kind, path) for kind in kinds]
        if any(not attempt for attempt in attempts):
            return []
        if _known(value) and isinstance(value.data, str) and literals:
            allowed = ", ".join(repr(kind["value"]) for kind in literals)
            return [f"{path}: {value.data!r} is not one of {allowed}"]
        return min(attempts, key=len)

    def _scalar(self, value: bicep_model._V, kind: dict[str, Any], path: str) -> list[str]:
        if not _known(value):
            return []
        data, kind_name = value.data, kind["$type"]
        if kind_name == "StringLiteralType":
            if data == kind["value"]:
                return []
            if isinstance(data, str) and data.lower() == kind["value"].lower():
                return [f"{path}: {data!r} differs in case from {kind['value']!r}"]
            return [f"{path}: {data!r} is not {kind['value']!r}"]
        expected = {"StringType": str, "IntegerType": int, "BooleanType": bool}.get(kind_name)
        if expected is None:
            return []
        if not isinstance(data, expected) or (expected is int and isinstance(data, bool)):
            return self._scalar_mismatch(value, kind_name.removesuffix("Type").lower(), path)
        measure = len(data) if isinstance(data, str) else data
        low = kind.get("minLength" if isinstance(data, str) else "minValue")
        high = kind.get("maxLength" if isinstance(data, str) else "maxValue")
        if (low is not None and measure < low) or (high is not None and measure > high):
            return [f"{path}: {data!r} is outside {low}..{high}"]
        return []

    @staticmethod
    def _scalar_mismatch(value: bicep_model._V, expected: str, path: str) -> list[str]:
        if not _known(value):
            return []
        return [f"{path}: {bicep_model._plain(value)!r} is not {expected}"]

    # reading

    def read(self, path: tuple[str, ...], body: dict[str, Any]) -> None:
        """Check that `resource.<path>` exists in the type and may be read."""
        kinds = [body]
        for depth, name in enumerate(path):
            where = ".".join(path[: depth + 1])
            properties: dict[str, Any] = {}
            open_ended = False
            for kind in kinds:
                found, more = self._members(kind)
                properties.update(found)
                open_ended = open_ended or more
            spec = properties.get(name) or next(
                (v for k, v in properties.items() if k.lower() == name.lower()), None
            )
            if spec is None:
                if not open_ended:
                    self.found.append(f"reads {where}: no such property")
                return
            spelt = next(k for k, v in properties.items() if v is spec)
            if spelt != name:
                self.found.append(f"reads {where}: the type data spells it {spelt}")
            if spec["flags"] & WRITE_ONLY:
                self.found.append(f"reads {where}: write-only, Azure never returns it")
            kinds = [self.file.get(spec["type"])]

    def _members(self, kind: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The properties a value of `kind` may have, and whether it may have others too."""
        kind_name = kind["$type"]
        if kind_name == "ObjectType":
            return dict(kind["properties"]), "additionalProperties" in kind
        if kind_name == "DiscriminatedObjectType":
            members = dict(kind["baseProperties"])
            for ref in kind["elements"].values():
                members.update(self.file.get(ref)["properties"])
            return members, False
        if kind_name == "UnionType":
            members, open_ended = {}, False
            for ref in kind["elements"]:
                found, more = self._members(self.file.get(ref))
                members.update(found)
                open_ended = open_ended or more
            return members, open_ended
        return {}, kind_name == "AnyType"


def _known(value: bicep_model._V) -> bool:
    """Whether the value is the template's own (a literal or a parameter), not Azure's."""
    return not isinstance(value.data, Unknown) and not (value.deps & _UNKNOWN_DEPS)
