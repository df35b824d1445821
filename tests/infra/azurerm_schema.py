"""infra/terraform against the azurerm and azuread providers' own schemas, as npm's
@cdktf/provider-azurerm and @cdktf/provider-azuread publish them.

`terraform validate` cannot run here (it needs the provider binary from the registry), so this
module reads the package's `.jsii` type data, generated from the provider's schema: for each
resource and data source, a config struct whose properties are its arguments (optional or not)
and whose struct-typed properties are its nested blocks, each a struct of its own. Names come from
the Terraform Registry link in each property's docs (`...#app_settings`), so they are Terraform's
own. It checks what tests/infra/terraform_model parsed: every resource and data source type,
every argument and nested block at every depth (dynamic blocks too), every required argument or
block, and arguments written as blocks. Values are not checked: the schema has no enums. It
reads files only; `make` installs the package (tests/infra/schemas/README.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent / "schemas" / "azurerm"
JSII = PACKAGE / "node_modules" / "@cdktf" / "provider-azurerm" / ".jsii"
ASSEMBLY = "@cdktf/provider-azurerm"
PROVIDER_CONFIG = f"{ASSEMBLY}.provider.AzurermProviderConfig"
# The azuread provider's (the app registrations, app-registration.tf), the same way.
AZUREAD_PACKAGE = Path(__file__).resolve().parent / "schemas" / "azuread"
AZUREAD_JSII = AZUREAD_PACKAGE / "node_modules" / "@cdktf" / "provider-azuread" / ".jsii"
AZUREAD_PROVIDER_CONFIG = "@cdktf/provider-azuread.provider.AzureadProviderConfig"
# Terraform names a type after its provider: azurerm's all start so, and only azurerm's.
PREFIX = "azurerm_"
# Terraform's own arguments, not the provider's (cdktf's TerraformMetaArguments).
RESOURCE_META = frozenset(
    {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}
)
DATA_META = frozenset({"count", "for_each", "depends_on", "provider", "lifecycle"})
PROVIDER_META = frozenset({"alias"})
_REPRESENTS = re.compile(
    r"Represents a \{@link https://registry\.terraform\.io/providers/hashicorp/"
    r"(?P<provider>azurerm|azuread)/(?P<version>[\d.]+)/docs/(?P<kind>resources|data-sources)/"
    r"\w+ (?P<type>(?P=provider)_\w+)\}"
)
_ANCHOR = re.compile(r"\{@link https://registry\.terraform\.io/\S+#(?P<name>\w+) ")


class SchemaMissing(Exception):
    """The package is not installed: run `make test-infra` (or the Makefile's stamp target)."""


@dataclass(frozen=True)
class Argument:
    name: str
    required: bool
    block: Block | None = None  # the nested block's schema, for a block (or object) argument


@dataclass(frozen=True)
class Block:
    """One resource's, data source's or nested block's arguments, by Terraform name."""

    arguments: Mapping[str, Argument] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderSchema:
    version: str  # the provider release the package was generated from
    resources: Mapping[str, str]  # terraform type -> config struct fqn
    data_sources: Mapping[str, str]
    types: Mapping[str, Any]  # the jsii `types` map
    provider: str = "azurerm"

    @property
    def prefix(self) -> str:
        return f"{self.provider}_"

    def block(self, fqn: str) -> Block:
        return _block(self, fqn)


@cache
def load(path: Path = JSII) -> ProviderSchema:
    """The schema in the package's `.jsii` (about 90 MB of JSON: read once per session)."""
    if not path.exists():
        package = path.parents[2]
        raise SchemaMissing(
            f"{path} is missing: `make test-infra` installs it from {package / 'package-lock.json'}"
        )
    types = json.loads(path.read_text(encoding="utf-8"))["types"]
    versions, found = set(), {"resources": {}, "data-sources": {}}
    for entry in types.values():
        match = _REPRESENTS.search(entry.get("docs", {}).get("summary", ""))
        if entry.get("kind") == "class" and match:
            config = entry["initializer"]["parameters"][-1]["type"]["fqn"]
            found[match["kind"]][match["type"]] = config
            versions.add((match["provider"], match["version"]))
    ((provider, version),) = versions
    return ProviderSchema(version, found["resources"], found["data-sources"], types, provider)


def problems(
    resources: Mapping[str, Mapping[str, Mapping[str, Any]]], schema: ProviderSchema
) -> list[str]:
    """Every way the resources and data sources of a TerraformModel (`data.` types prefixed) of
    the schema's provider disagree with the schema, as sentences naming the address and argument
    path; other providers' types are left to their schema or to `foreign_types`."""
    found = []
    for kind, named in sorted(resources.items()):
        is_data = kind.startswith("data.")
        terraform_type = kind.removeprefix("data.")
        if not terraform_type.startswith(schema.prefix):
            continue  # another provider's (time_sleep): not in this schema
        configs = schema.data_sources if is_data else schema.resources
        for name, body in sorted(named.items()):
            address = f"{kind}.{name}"
            if terraform_type not in configs:
                what = "data source" if is_data else "resource type"
                found.append(
                    f"{address}: {schema.provider} {schema.version} has no {what} {terraform_type}"
                )
                continue
            meta = DATA_META if is_data else RESOURCE_META
            block = schema.block(configs[terraform_type])
            found.extend(f"{address}: {p}" for p in check_block(body, block, "", meta))
    return found


def foreign_types(resources: Mapping[str, object], providers: Iterable[str]) -> list[str]:
    """The resource and data source types (`data.` prefixed) that belong to no provider in
    `providers` (the names in required_providers): azurerm's are checked by `problems`, and a
    type of a provider nobody requires would make `terraform init` fetch it unpinned."""
    return sorted(
        kind
        for kind in resources
        if kind.removeprefix("data.").split("_", 1)[0] not in set(providers)
    )


def provider_problems(bodies: Iterable[Mapping[str, Any]], schema: ProviderSchema) -> list[str]:
    """The same check for `provider "azurerm"` (or "azuread") blocks (parsed and normalised)."""
    config = PROVIDER_CONFIG if schema.provider == "azurerm" else AZUREAD_PROVIDER_CONFIG
    block = schema.block(config)
    return [
        f'provider "{schema.provider}": {p}'
        for body in bodies
        for p in check_block(body, block, "", PROVIDER_META)
    ]


def check_block(
    body: Mapping[str, Any], block: Block, path: str, meta: frozenset[str] = frozenset()
) -> list[str]:
    """The problems of one block body against its schema (`meta`: Terraform's own names)."""
    found: list[str] = []
    present = set(body)
    for key, value in body.items():
        where = f"{path}{key}"
        if key in meta:
            continue
        if key == "dynamic":
            for label, spec in ((k, v) for entry in value for k, v in entry.items()):
                present.add(label)
                found.extend(_dynamic(label, spec, block, path))
            continue
        argument = block.arguments.get(key)
        if argument is None:
            found.append(f"{where}: no such argument or block")
        elif argument.block is None:
            if _is_block(value):
                found.append(f"{where}: an argument, written as a block (use `{key} = ...`)")
        else:
            bodies = value if _is_block(value) else [value] if isinstance(value, dict) else []
            for index, inner in enumerate(bodies):
                suffix = f"[{index}]." if len(bodies) > 1 else "."
                found.extend(check_block(inner, argument.block, f"{where}{suffix}"))
    for name, argument in block.arguments.items():
        if argument.required and name not in present:
            what = "block" if argument.block is not None else "argument"
            found.append(f"{path}{name}: required {what}, not set")
    return found


def _dynamic(label: str, spec: Mapping[str, Any], block: Block, path: str) -> list[str]:
    argument = block.arguments.get(label)
    if argument is None or argument.block is None:
        return [f"{path}dynamic {label!r}: no such block"]
    return [
        problem
        for content in spec.get("content", [])
        for problem in check_block(content, argument.block, f"{path}{label}.")
    ]


def _is_block(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


_BLOCKS: dict[tuple[int, str], Block] = {}


def _block(schema: ProviderSchema, fqn: str) -> Block:
    key = (id(schema), fqn)
    if key not in _BLOCKS:
        arguments = {}
        for prop in schema.types[fqn].get("properties", []):
            name = _terraform_name(prop)
            nested = _struct(schema, prop["type"])
            arguments[name] = Argument(
                name=name,
                required=not prop.get("optional", False),
                block=_block(schema, nested) if nested else None,
            )
        _BLOCKS[key] = Block(arguments)
    return _BLOCKS[key]


def _struct(schema: ProviderSchema, kind: Mapping[str, Any]) -> str | None:
    """The fqn of the provider struct a property holds (one, a list of them), if any."""
    if "fqn" in kind:
        entry = schema.types.get(kind["fqn"])
        return kind["fqn"] if entry is not None and entry.get("datatype") else None
    if "collection" in kind:
        return _struct(schema, kind["collection"]["elementtype"])
    if "union" in kind:
        return next((s for s in (_struct(schema, t) for t in kind["union"]["types"]) if s), None)
    return None


def _terraform_name(prop: Mapping[str, Any]) -> str:
    docs = prop.get("docs", {})
    match = _ANCHOR.search(f"{docs.get('summary', '')} {docs.get('remarks', '')}")
    if match:
        return match["name"]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", prop["name"]).lower()
