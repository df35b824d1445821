"""A normalized model of infra/bicep, evaluated from pycep-parser's syntax tree, for tests/infra.

pycep parses Bicep but evaluates nothing. This module evaluates what the tests reason about
(names, loops, conditions, module parameters and outputs) for one set of deployment parameters,
so that "the relays of corp.example.com receive from writeback-requests-corp.example.com and
nothing else" is a fact a test can assert, and the Terraform model can be compared with it.
What only Azure knows (resource ids, endpoints, an identity's object id) stays an `Unknown` that
remembers the resource it comes from; `uniqueString()` gets a stand-in of the real shape (13
lower-case characters) so that name rules can be checked. It never contacts Azure and never
writes; an expression it does not understand raises `UnsupportedExpression` rather than guess.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser
from pycep.models import BicepElement

BICEP_ROOT = Path(__file__).resolve().parents[2] / "infra" / "bicep"
EXAMPLE_PARAMETERS = "main.parameters.example.json"
# The app registrations' manifest, which modules/app-registration.bicep loads (loadJsonContent),
# as infra/terraform and the `writeback entra` commands do.
MANIFEST = BICEP_ROOT.parents[1] / "writeback" / "entra" / "app-registration.json"

SERVICEBUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICEBUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
SERVICEBUS_DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"
KEYVAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KEYVAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_TABLE_DATA_READER = "76199698-9eea-4c19-bc75-cec21354c6b6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
EVENTHUBS_DATA_RECEIVER = "a638d3c7-ab3a-418d-83e6-5f17a39d4fde"
EVENTHUBS_DATA_OWNER = "f526a384-b230-433a-b45c-95f59c4a2dec"
EVENTGRID_DATA_SENDER = "d5a91429-5739-47e2-a06b-3470a27159e7"

ROLES = {
    SERVICEBUS_DATA_SENDER: "Azure Service Bus Data Sender",
    SERVICEBUS_DATA_RECEIVER: "Azure Service Bus Data Receiver",
    SERVICEBUS_DATA_OWNER: "Azure Service Bus Data Owner",
    KEYVAULT_SECRETS_USER: "Key Vault Secrets User",
    KEYVAULT_SECRETS_OFFICER: "Key Vault Secrets Officer",
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_QUEUE_DATA_CONTRIBUTOR: "Storage Queue Data Contributor",
    STORAGE_TABLE_DATA_CONTRIBUTOR: "Storage Table Data Contributor",
    STORAGE_TABLE_DATA_READER: "Storage Table Data Reader",
    MONITORING_METRICS_PUBLISHER: "Monitoring Metrics Publisher",
    EVENTHUBS_DATA_RECEIVER: "Azure Event Hubs Data Receiver",
    EVENTHUBS_DATA_OWNER: "Azure Event Hubs Data Owner",
    EVENTGRID_DATA_SENDER: "EventGrid Data Sender",
}

# What a role assignment's scope is called, by the scope resource's type.
ENTITY_KINDS = {
    "Microsoft.ServiceBus/namespaces/queues": "queue",
    "Microsoft.ServiceBus/namespaces": "servicebus-namespace",
    "Microsoft.KeyVault/vaults/secrets": "secret",
    "Microsoft.KeyVault/vaults": "key-vault",
    "Microsoft.Storage/storageAccounts/tableServices/tables": "table",
    "Microsoft.Storage/storageAccounts/blobServices/containers": "blob-container",
    "Microsoft.Storage/storageAccounts": "storage-account",
    "Microsoft.Insights/components": "application-insights",
    "Microsoft.EventGrid/topics": "eventgrid-topic",
    "Microsoft.EventHub/namespaces/eventhubs": "event-hub",
    "Microsoft.EventHub/namespaces": "eventhub-namespace",
}

# The roles of the contract and where each may sit. Data-plane roles sit on one entity (queue,
# secret, table, container, event hub, topic), never on the namespace, vault or account, with one
# exception: the
# Functions host creates its own containers and queues at run time, under names it chooses, so
# its identity alone holds HOST_STORAGE_ROLES on the storage account (AzureWebJobsStorage).
ALLOWED_SCOPES = {
    SERVICEBUS_DATA_SENDER: {"queue"},
    SERVICEBUS_DATA_RECEIVER: {"queue"},
    SERVICEBUS_DATA_OWNER: {"queue"},  # a trigger's queue: scale monitoring needs Manage
    KEYVAULT_SECRETS_USER: {"secret"},
    STORAGE_TABLE_DATA_CONTRIBUTOR: {"table"},
    STORAGE_BLOB_DATA_OWNER: {"blob-container", "storage-account"},
    STORAGE_QUEUE_DATA_CONTRIBUTOR: {"storage-account"},
    MONITORING_METRICS_PUBLISHER: {"application-insights"},
    EVENTHUBS_DATA_RECEIVER: {"event-hub"},
    EVENTGRID_DATA_SENDER: {"eventgrid-topic"},
    STORAGE_BLOB_DATA_CONTRIBUTOR: {"blob-container"},
}
HOST_STORAGE_ROLES = {STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR}

GRAPH_NAMESPACE = "Microsoft.Graph/"

LITERAL = "literal"  # a constant written in the template
PARAMETER = "parameter"  # derived from deployment parameters (and constants) only
RESOURCE = "resource"  # derived from a deployed resource: its name, endpoint, connection string
KEYVAULT_REFERENCE = "keyvault-reference"  # @Microsoft.KeyVault(...), resolved by the platform
_DEPLOYMENT = "deployment"  # resourceGroup(), subscription(), utcNow(): known at deployment time

FUNCTION_PRINCIPAL = "function"
RELAY_PRINCIPAL = "relay"
TOPIC_PRINCIPAL = "topic-identity"  # an Event Grid topic's system-assigned identity
UNKNOWN_PRINCIPAL = "unknown"


class UnsupportedExpression(Exception):
    """The template uses an expression this model does not evaluate; extend the model."""


class DeploymentRefused(Exception):
    """The template reached fail(message): ARM stops the deployment with that message."""


@dataclass(frozen=True)
class Unknown:
    """A value Azure decides at deployment time (an id, an endpoint, an identity's object id)."""

    text: str
    origin: Resource | None = field(default=None, compare=False, repr=False)
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "{" + self.text + "}"


@dataclass(frozen=True)
class Entity:
    """What a role assignment is scoped to: a kind from ENTITY_KINDS and the entity's own name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(eq=False)
class Resource:
    """One resource instance (a loop declares several), with its configuration evaluated."""

    file: str
    symbol: str
    type: str
    name: str
    existing: bool
    deployed: bool
    parent: Resource | None
    scope: Resource | None
    body: dict[str, Any] = field(default_factory=dict)
    values: dict[str, _V] = field(default_factory=dict, repr=False)
    api_version: str = ""
    # Every property path the template reads from this resource (`properties.defaultHostName`,
    # `identity.principalId`, `id`), wherever it is read: outputs, other resources, names.
    reads: set[tuple[str, ...]] = field(default_factory=set, repr=False)

    def __repr__(self) -> str:
        return f"<Resource {self.type} {self.full_name} ({self.file})>"

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.body.get("properties") or {})

    @property
    def full_name(self) -> str:
        return self.name if self.parent is None else f"{self.parent.full_name}/{self.name}"

    @property
    def entity(self) -> Entity:
        return Entity(ENTITY_KINDS.get(self.type, self.type), self.name)


@dataclass(frozen=True)
class RoleAssignment:
    """Who (the function's identity, a relay by object id, an Event Grid topic's identity by the
    topic's name) holds which role on what."""

    principal_kind: str
    principal: str
    role: str
    scope: Entity
    file: str

    @property
    def role_name(self) -> str:
        return ROLES.get(self.role, self.role)

    def __str__(self) -> str:
        who = {
            FUNCTION_PRINCIPAL: self.principal_kind,
            RELAY_PRINCIPAL: self.principal,
        }.get(self.principal_kind, f"{self.principal_kind} {self.principal}")
        return f"{who}: {self.role_name} on {self.scope} ({self.file})"


@dataclass
class Model:
    """infra/bicep as deployed with `parameters`: only resources whose condition holds."""

    parameters: dict[str, Any]
    resources: list[Resource]
    role_assignments: list[RoleAssignment]
    app_settings: dict[str, str]  # name -> LITERAL | PARAMETER | RESOURCE | KEYVAULT_REFERENCE
    app_setting_values: dict[str, Any]
    variables: dict[str, Any]  # main.bicep's variables
    outputs: dict[str, Any]  # main.bicep's outputs
    relay_principals: dict[str, str]  # relay object id -> its domain
    # Every resource instance evaluated, `existing` ones and those whose condition does not hold
    # included: what the compiler type-checks.
    declared: list[Resource] = field(default_factory=list)

    def of_type(self, resource_type: str) -> list[Resource]:
        return [r for r in self.resources if r.type == resource_type]

    def one(self, resource_type: str) -> Resource:
        (found,) = self.of_type(resource_type)
        return found

    @property
    def queues(self) -> dict[str, dict[str, Any]]:
        return {
            r.name: r.properties for r in self.of_type("Microsoft.ServiceBus/namespaces/queues")
        }

    def granted(self, principal_kind: str, principal: str | None = None) -> set[tuple[str, Entity]]:
        """(role, scope) pairs held by every principal of a kind (`principal` None) or by one."""
        return {
            (a.role, a.scope)
            for a in self.role_assignments
            if a.principal_kind == principal_kind and principal in (None, a.principal)
        }


def bicep_files(root: Path = BICEP_ROOT) -> list[Path]:
    return sorted(root.rglob("*.bicep"))


def parse(path: Path) -> dict[str, Any]:
    """pycep's syntax tree of one file; raises on a syntax pycep does not accept."""
    return dict(_parser().parse(text=path.read_text(encoding="utf-8")))


def example_parameters(root: Path = BICEP_ROOT) -> dict[str, Any]:
    document = json.loads((root / EXAMPLE_PARAMETERS).read_text(encoding="utf-8"))
    return {name: entry["value"] for name, entry in document["parameters"].items()}


def load(
    root: Path = BICEP_ROOT,
    parameters: Mapping[str, Any] | None = None,
    *,
    example: bool = True,
) -> Model:
    """Evaluate root/main.bicep and its modules: the example parameters (unless `example` is
    False), updated by `parameters`."""
    values = {**(example_parameters(root) if example else {}), **(parameters or {})}
    main = _Instance(_Loader(root), root / "main.bicep", {}, deployed=True, given=values)
    main.evaluate_all()
    resources = [r for r in main.loader.resources if r.deployed and not r.existing]
    relays = {
        principal: domain["name"]
        for domain in values.get("domains", [])
        for principal in domain["relayPrincipalIds"]
    }
    settings: dict[str, _V] = {}
    for site in (r for r in resources if r.type == "Microsoft.Web/sites"):
        site_config = site.body.get("properties", {}).get("siteConfig", {})
        if "appSettings" not in site_config:
            continue
        for entry in _get(site.values, "properties", "siteConfig", "appSettings").data:
            settings[_plain(entry.data["name"])] = entry.data["value"]
    return Model(
        parameters=values,
        resources=resources,
        role_assignments=[
            _role_assignment(r, relays)
            for r in resources
            if r.type == "Microsoft.Authorization/roleAssignments"
        ],
        app_settings={name: _value_kind(v) for name, v in settings.items()},
        app_setting_values={name: _plain(v) for name, v in settings.items()},
        variables={name: _plain(main.lookup(name, {})) for name in main.ast.get("variables", {})},
        outputs={name: _plain(main.output(name)) for name in main.ast.get("outputs", {})},
        relay_principals=relays,
        declared=list(main.loader.resources),
    )


def least_privilege_violations(model: Model) -> list[str]:
    """Every role assignment broader than the contract allows, as sentences; empty when none.

    A data-plane role must sit on one queue, secret, table, container, event hub or topic; the
    storage account is only for the Functions host's own roles, held by the function's identity;
    a role outside ALLOWED_SCOPES (Owner, Contributor, any Data Owner but the host's ...) is one
    by itself.
    """
    found = []
    for grant in model.role_assignments:
        allowed = ALLOWED_SCOPES.get(grant.role)
        if allowed is None:
            found.append(f"{grant}: a role outside the contract")
        elif grant.scope.kind not in allowed:
            found.append(f"{grant}: must be scoped to a {' or '.join(sorted(allowed))}")
        elif grant.scope.kind == "storage-account" and (
            grant.role not in HOST_STORAGE_ROLES or grant.principal_kind != FUNCTION_PRINCIPAL
        ):
            found.append(f"{grant}: only the Functions host's identity may hold it on the account")
    return found


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _V:
    """An evaluated value and what it depends on (PARAMETER, RESOURCE, _DEPLOYMENT)."""

    data: Any
    deps: frozenset[str] = frozenset()


@cache
def _parser() -> BicepParser:
    return BicepParser()


@cache
def _expression(text: str) -> Any:
    """The syntax tree of an expression inside `${...}` (pycep leaves interpolations as text)."""
    return _parser().parse(text=f"var expression = {text}\n")["variables"]["expression"]["value"]


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.resources: list[Resource] = []
        self.loaded: set[Path] = set()  # the files load*Content() read
        self._trees: dict[Path, dict[str, Any]] = {}

    def tree(self, path: Path) -> dict[str, Any]:
        if path not in self._trees:
            self._trees[path] = parse(path)
        return self._trees[path]


class _Outputs:
    def __init__(self, instance: _Instance) -> None:
        self.instance = instance


class _Instance:
    """One evaluation of one file: main.bicep, or a module with its parameters."""

    def __init__(
        self,
        loader: _Loader,
        path: Path,
        args: dict[str, _V],
        *,
        deployed: bool,
        given: Mapping[str, Any] | None = None,
    ) -> None:
        self.loader, self.path, self.args, self.deployed = loader, path, args, deployed
        self.file = path.relative_to(loader.root).as_posix()
        self.ast = loader.tree(path)
        self.top = given is not None
        if given is not None:
            unknown = set(given) - set(self.ast.get("parameters", {}))
            if unknown:
                raise UnsupportedExpression(f"{self.file}: no parameters {sorted(unknown)}")
            self.args = {name: _tag(_wrap(value), PARAMETER) for name, value in given.items()}
        self._symbols: dict[str, _V] = {}
        self._busy: set[str] = set()

    def evaluate_all(self) -> None:
        for name in self.ast.get("resources", {}):
            self.lookup(name, {})
        for name in self.ast.get("modules", {}):
            module = self.lookup(name, {}).data
            for instance in [m.data for m in module] if isinstance(module, list) else [module]:
                instance.evaluate_all()
        for name in self.ast.get("outputs", {}):
            self.output(name)

    def output(self, name: str) -> _V:
        return self.ev(self.ast["outputs"][name]["value"], {})

    def lookup(self, name: str, frame: Mapping[str, _V]) -> _V:
        if name in frame:
            return frame[name]
        if name not in self._symbols:
            if name in self._busy:
                raise UnsupportedExpression(f"{self.file}: {name} refers to itself")
            self._busy.add(name)
            try:
                self._symbols[name] = self._symbol(name)
            finally:
                self._busy.discard(name)
        return self._symbols[name]

    def _symbol(self, name: str) -> _V:
        ast = self.ast
        if name in ast.get("parameters", {}):
            if name in self.args:
                return self.args[name]
            default = ast["parameters"][name]["default"]
            if default is None:
                raise UnsupportedExpression(f"{self.file}: parameter {name} has no value")
            value = self.ev(default, {})
            return _tag(value, PARAMETER) if self.top else value
        if name in ast.get("variables", {}):
            return self.ev(ast["variables"][name]["value"], {})
        if name in ast.get("resources", {}):
            return self._resources(name)
        if name in ast.get("modules", {}):
            return self._modules(name)
        raise UnsupportedExpression(f"{self.file}: unknown name {name}")

    def _each(
        self, declaration: Any, frame: Mapping[str, _V]
    ) -> Iterator[tuple[Any, dict[str, _V], bool]]:
        """(body, frame, condition) for each instance of a plain, conditional or looped body."""
        if isinstance(declaration, dict) and "loop_type" in declaration:
            loop = declaration["loop_type"]
            if loop["type"] not in ("array", "array_index"):
                raise UnsupportedExpression(f"{self.file}: loop {loop['type']}")
            detail = loop["detail"]
            items = self.ev(detail["array_name"], frame)
            if not isinstance(items.data, list):
                raise UnsupportedExpression(f"{self.file}: loop over {items.data!r}")
            for index, item in enumerate(items.data):
                inner = {**frame, detail["item_name"]: _V(item.data, item.deps | items.deps)}
                if "index_name" in detail:
                    inner[detail["index_name"]] = _V(index, items.deps)
                condition = declaration["condition"]
                holds = condition is None or self._truth(condition, inner)
                yield declaration["config"], inner, holds
        elif isinstance(declaration, dict) and set(declaration) == {"condition", "config"}:
            yield declaration["config"], dict(frame), self._truth(declaration["condition"], frame)
        else:
            yield declaration, dict(frame), True

    def _truth(self, node: Any, frame: Mapping[str, _V]) -> bool:
        value = self.ev(node, frame).data
        if not isinstance(value, bool):
            raise UnsupportedExpression(f"{self.file}: condition {value!r} is not known")
        return value

    def _resources(self, symbol: str) -> _V:
        declaration = self.ast["resources"][symbol]
        looped = "loop_type" in declaration["config"]
        made = [
            self._resource(symbol, declaration, body, frame, holds)
            for body, frame, holds in self._each(declaration["config"], {})
        ]
        deps = frozenset({RESOURCE})
        return _V([_V(r, deps) for r in made], deps) if looped else _V(made[0], deps)

    def _resource(
        self,
        symbol: str,
        declaration: dict[str, Any],
        body: dict[str, Any],
        frame: dict[str, _V],
        holds: bool,
    ) -> Resource:
        parent = self._reference(body.get("parent"), frame)
        # Microsoft Graph resources (the Graph Bicep extension) have no name and no deployment
        # scope: `uniqueName` (or the appId of an existing one) names them, and `scope` is a
        # property of theirs (an OAuth2 grant's scopes).
        graph = declaration["type"].startswith(GRAPH_NAMESPACE)
        key = next((k for k in ("name", "uniqueName", "appId") if k in body), None)
        resource = Resource(
            file=self.file,
            symbol=symbol,
            type=declaration["type"],
            name=symbol if key is None else _text(self.ev(body[key], frame).data),
            existing=declaration["existing"],
            deployed=self.deployed and holds,
            parent=parent,
            scope=None if graph else self._reference(body.get("scope"), frame),
            api_version=declaration["api_version"],
        )
        skipped = {"parent", "dependsOn"} | (set() if graph else {"scope"})
        resource.values = {k: self.ev(v, frame) for k, v in body.items() if k not in skipped}
        resource.body = {k: _plain(v) for k, v in resource.values.items()}
        self.loader.resources.append(resource)
        return resource

    def _reference(self, node: Any, frame: Mapping[str, _V]) -> Resource | None:
        if node is None:
            return None
        value = self.ev(node, frame).data
        if not isinstance(value, Resource):
            raise UnsupportedExpression(f"{self.file}: parent or scope {value!r} is not a resource")
        return value

    def _modules(self, symbol: str) -> _V:
        declaration = self.ast["modules"][symbol]
        if declaration["type"] != "local":
            raise UnsupportedExpression(f"{self.file}: module {symbol} is not a local file")
        path = (self.path.parent / declaration["detail"]["path"]).resolve()
        made = []
        for body, frame, holds in self._each(declaration["config"], {}):
            args = {k: self.ev(v, frame) for k, v in (body.get("params") or {}).items()}
            made.append(_Instance(self.loader, path, args, deployed=self.deployed and holds))
        looped = "loop_type" in declaration["config"]
        return _V([_V(m) for m in made]) if looped else _V(made[0])

    # expressions

    def ev(self, node: Any, frame: Mapping[str, _V]) -> _V:
        if isinstance(node, BicepElement):
            return self.lookup(str(node), frame)
        if isinstance(node, str):
            return self._string(node, frame)
        if node is None or isinstance(node, bool | int):
            return _V(node)
        if isinstance(node, list):
            return _V([self.ev(item, frame) for item in node])
        if isinstance(node, dict):
            if isinstance(node.get("operator"), dict) and "operands" in node["operator"]:
                return self._operator(node["operator"]["type"], node["operator"]["operands"], frame)
            if isinstance(node.get("function"), dict) and "type" in node["function"]:
                function = node["function"]
                if function["type"] == "load_json_content":
                    return self._load_json(function["parameters"])
                if function["type"] == "load_text_content":
                    return _V(self._loaded(function["parameters"], "loadTextContent"))
                args = [self.ev(a, frame) for a in (function.get("parameters") or {}).values()]
                return self._call(function["type"], args)
            if "loop_type" in node:
                return _V(
                    [
                        self.ev(body, inner)
                        for body, inner, holds in self._each(node, frame)
                        if holds
                    ]
                )
            return _V({key.strip("'"): self.ev(value, frame) for key, value in node.items()})
        raise UnsupportedExpression(f"{self.file}: {node!r}")

    def _load_json(self, parameters: Mapping[str, Any]) -> _V:
        """loadJsonContent(path): the file beside this one, read at compile time (a literal)."""
        return _wrap(json.loads(self._loaded(parameters, "loadJsonContent")))

    def _loaded(self, parameters: Mapping[str, Any], function: str) -> str:
        """The text of a file a load*Content() call names, relative to this file."""
        if parameters.get("json_path") or parameters.get("encoding"):
            raise UnsupportedExpression(f"{self.file}: {function} with a path or encoding")
        path = (self.path.parent / parameters["file_path"]).resolve()
        if not path.is_relative_to(self.loader.root.resolve()):
            # Outside the template's folder (the app registration manifest): a copy of
            # infra/bicep, which tests mutate, reads it from the repository.
            folder = self.path.parent.resolve().relative_to(self.loader.root.resolve())
            path = (BICEP_ROOT / folder / parameters["file_path"]).resolve()
        self.loader.loaded.add(path)
        return path.read_text(encoding="utf-8")

    def _string(self, text: str, frame: Mapping[str, _V]) -> _V:
        """A literal string: escapes decoded, `${...}` evaluated."""
        out, deps, i = [], frozenset[str](), 0
        while i < len(text):
            if text[i] == "\\" and i + 1 < len(text):
                out.append({"n": "\n", "r": "\r", "t": "\t"}.get(text[i + 1], text[i + 1]))
                i += 2
            elif text.startswith("${", i):
                end = _closing_brace(text, i + 2)
                value = self.ev(_expression(text[i + 2 : end]), frame)
                out.append(_text(value.data))
                deps |= _all_deps(value)
                i = end + 1
            else:
                out.append(text[i])
                i += 1
        return _V("".join(out), deps)

    def _operator(self, kind: str, operands: dict[str, Any], frame: Mapping[str, _V]) -> _V:
        if kind == "property_accessor":
            return self._path(self.ev(operands["operand_1"], frame), operands["operand_2"], frame)
        if kind == "index_accessor":
            return _index(
                self.ev(operands["operand_1"], frame), self.ev(operands["operand_2"], frame)
            )
        if kind == "conditional":
            condition = self.ev(operands["condition"], frame)
            if not isinstance(condition.data, bool):
                raise UnsupportedExpression(
                    f"{self.file}: condition {condition.data!r} is not known"
                )
            chosen = self.ev(operands["true_value" if condition.data else "false_value"], frame)
            return _V(chosen.data, chosen.deps | condition.deps)
        values = [self.ev(operand, frame) for operand in operands.values()]
        deps = frozenset().union(*(_all_deps(v) for v in values))
        data = [_plain(v) for v in values]
        if any(isinstance(d, Unknown) for d in data):
            return _V(Unknown(_call_text(kind, data)), deps)
        operations: dict[str, Callable[..., Any]] = {
            "not": lambda a: not a,
            "and": lambda *a: all(a),
            "or": lambda *a: any(a),
            "equals": lambda a, b: a == b,
            "not_equals": lambda a, b: a != b,
            "less_than": lambda a, b: a < b,
            "less_than_or_equals": lambda a, b: a <= b,
            "greater_than": lambda a, b: a > b,
            "greater_than_or_equals": lambda a, b: a >= b,
            "minus": lambda a: -a,
        }
        if kind not in operations:
            raise UnsupportedExpression(f"{self.file}: operator {kind}")
        return _V(operations[kind](*data), deps)

    def _path(self, base: _V, chain: Any, frame: Mapping[str, _V]) -> _V:
        """Apply an accessor chain (pycep nests `a.b[c].d` to the right) to `base`."""
        if isinstance(chain, str):
            return _property(base, chain)
        operator = chain["operator"]
        first, rest = operator["operands"]["operand_1"], operator["operands"]["operand_2"]
        if operator["type"] == "property_accessor":
            return self._path(self._path(base, first, frame), rest, frame)
        if operator["type"] == "index_accessor":
            return _index(self._path(base, first, frame), self.ev(rest, frame))
        raise UnsupportedExpression(f"{self.file}: accessor {operator['type']}")

    def _call(self, name: str, args: list[_V]) -> _V:
        if name == "items" and isinstance(args[0].data, dict):  # keeps each value's own deps
            obj = args[0]
            return _V(
                [
                    _V({"key": _V(key, obj.deps), "value": obj.data[key]}, obj.deps)
                    for key in sorted(obj.data, key=str.lower)
                ],
                obj.deps,
            )
        deps = frozenset().union(*(_all_deps(a) for a in args))
        data = [_plain(a) for a in args]
        while data and data[-1] is None:  # pycep lists omitted optional arguments as None
            data.pop()
        if name in _OPAQUE:
            return _wrap(_OPAQUE[name](data), deps | {_DEPLOYMENT})
        if name not in _FUNCTIONS:
            raise UnsupportedExpression(f"{self.file}: function {name}")
        if any(isinstance(d, Unknown) for d in data):
            return _V(Unknown(_call_text(name, data)), deps)
        return _wrap(_FUNCTIONS[name](*data), deps)


def _property(base: _V, name: str) -> _V:
    data = base.data
    if isinstance(data, dict):
        if name not in data:
            raise UnsupportedExpression(f"no property {name} in {sorted(data)}")
        return _V(data[name].data, data[name].deps | base.deps)
    if isinstance(data, Resource):
        data.reads.add((name,))
        if name == "name":
            return _V(data.name, base.deps)
        return _V(Unknown(f"{data.symbol}('{data.full_name}').{name}", data, (name,)), base.deps)
    if isinstance(data, Unknown):
        if data.origin is not None:
            data.origin.reads.add((*data.path, name))
        return _V(Unknown(f"{data.text}.{name}", data.origin, (*data.path, name)), base.deps)
    if isinstance(data, _Instance) and name == "outputs":
        return _V(_Outputs(data), base.deps)
    if isinstance(data, _Outputs):
        value = data.instance.output(name)
        return _V(value.data, value.deps | base.deps)
    raise UnsupportedExpression(f"no property {name} of {data!r}")


def _index(base: _V, index: _V) -> _V:
    if isinstance(base.data, Unknown) or isinstance(index.data, Unknown):
        return _V(Unknown(f"{_text(base.data)}[{_text(index.data)}]"), base.deps | index.deps)
    item = base.data[index.data]
    return _V(item.data, item.deps | base.deps | index.deps)


def _closing_brace(text: str, start: int) -> int:
    depth, quoted = 0, False
    for i in range(start, len(text)):
        char = text[i]
        if char == "'" and text[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and char == "{":
            depth += 1
        elif not quoted and char == "}":
            if depth == 0:
                return i
            depth -= 1
    raise UnsupportedExpression(f"unclosed interpolation in {text!r}")


def _unique_string(args: list[Any]) -> str:
    """The shape of ARM's uniqueString(): 13 lower-case letters and digits, stable per input."""
    digest = hashlib.sha256("|".join(_text(a) for a in args).encode()).digest()
    return base64.b32encode(digest).decode().lower()[:13]


_OPAQUE: dict[str, Callable[[list[Any]], Any]] = {
    "unique_string": _unique_string,
    "guid": lambda args: Unknown(_call_text("guid", args)),
    "utc_now": lambda args: Unknown(_call_text("utc_now", args)),
    "date_time_add": lambda args: Unknown(_call_text("date_time_add", args)),
    "date_time_to_epoch": lambda args: Unknown(_call_text("date_time_to_epoch", args)),
    "resource_group": lambda args: {
        key: Unknown(f"resourceGroup().{key}") for key in ("id", "name", "location")
    },
    "tenant": lambda args: {key: Unknown(f"tenant().{key}") for key in ("tenantId",)},
    "subscription": lambda args: {
        key: Unknown(f"subscription().{key}") for key in ("id", "subscriptionId", "tenantId")
    },
}


def _contains(container: Any, item: Any) -> bool:
    return item in container


def _fail(message: str) -> Any:
    raise DeploymentRefused(message)


def _union(*parts: Any) -> Any:
    if all(isinstance(p, dict) for p in parts):
        return {key: value for part in parts for key, value in part.items()}
    return list(dict.fromkeys(item for part in parts for item in part))


def _intersection(first: list[Any], *others: list[Any]) -> list[Any]:
    return [item for item in dict.fromkeys(first) if all(item in other for other in others)]


def _concat(*parts: Any) -> Any:
    if all(isinstance(p, list) for p in parts):
        return [item for part in parts for item in part]
    return "".join(_text(p) for p in parts)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "to_lower": lambda s: s.lower(),
    "to_upper": lambda s: s.upper(),
    "replace": lambda s, old, new: s.replace(old, new),
    "take": lambda value, count: value[:count],
    "join": lambda items, delimiter: delimiter.join(_text(i) for i in items),
    "split": lambda s, delimiter: s.split(delimiter),
    "string": lambda value: value if isinstance(value, str) else _text(value),
    "contains": _contains,
    "empty": lambda value: value is None or len(value) == 0,
    "length": len,
    "concat": _concat,
    "first": lambda items: items[0],
    "fail": _fail,
    "union": _union,
    "intersection": _intersection,
    "flatten": lambda lists: [item for inner in lists for item in inner],
    "trim": lambda s: s.strip(),
    "starts_with": lambda s, prefix: s.lower().startswith(prefix.lower()),
    "ends_with": lambda s, suffix: s.lower().endswith(suffix.lower()),
    "index_of": lambda items, item: items.index(item) if item in items else -1,
    "last": lambda items: items[-1],
    "subscription_resource_id": lambda kind, *names: "/".join(
        ["/subscriptions/{subscription}/providers", kind, *names]
    ),
}


def _wrap(data: Any, deps: frozenset[str] = frozenset()) -> _V:
    if isinstance(data, list):
        return _V([_wrap(item, deps) for item in data], deps)
    if isinstance(data, dict):
        return _V({key: _wrap(value, deps) for key, value in data.items()}, deps)
    return _V(data, deps)


def _tag(value: _V, dep: str) -> _V:
    data = value.data
    if isinstance(data, list):
        data = [_tag(item, dep) for item in data]
    elif isinstance(data, dict):
        data = {key: _tag(item, dep) for key, item in data.items()}
    return _V(data, value.deps | {dep})


def _plain(value: _V) -> Any:
    data = value.data
    if isinstance(data, list):
        return [_plain(item) for item in data]
    if isinstance(data, dict):
        return {key: _plain(item) for key, item in data.items()}
    return data


def _all_deps(value: _V) -> frozenset[str]:
    data, deps = value.data, value.deps
    items = data if isinstance(data, list) else data.values() if isinstance(data, dict) else []
    return deps.union(*(_all_deps(item) for item in items))


def _get(values: Mapping[str, _V], *path: str) -> _V:
    value = values[path[0]]
    for key in path[1:]:
        value = value.data[key]
    return value


def _call_text(function: str, args: list[Any]) -> str:
    """`toLower(x.name)` for pycep's `to_lower`: how an unknown call reads in messages."""
    head, *rest = function.split("_")
    name = head + "".join(part.title() for part in rest)
    shown = [a.text if isinstance(a, Unknown) else json.dumps(a).replace('"', "'") for a in args]
    return f"{name}({', '.join(shown)})"


def _text(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, bool):
        return "True" if data else "False"
    if isinstance(data, int):
        return str(data)
    if isinstance(data, Unknown):
        return str(data)
    if isinstance(data, Resource):
        return data.name
    return json.dumps(data)


def _value_kind(value: _V) -> str:
    data, deps = _plain(value), _all_deps(value)
    if isinstance(data, str) and data.startswith("@Microsoft.KeyVault("):
        return KEYVAULT_REFERENCE
    if RESOURCE in deps or isinstance(data, Unknown):
        return RESOURCE
    if PARAMETER in deps:
        return PARAMETER
    return LITERAL


def _role_assignment(resource: Resource, relays: Mapping[str, str]) -> RoleAssignment:
    properties = resource.properties
    principal = properties["principalId"]
    if (
        isinstance(principal, Unknown)
        and principal.origin is not None
        and principal.origin.type == "Microsoft.Web/sites"
        and principal.path == ("identity", "principalId")
    ):
        kind, who = FUNCTION_PRINCIPAL, FUNCTION_PRINCIPAL
    elif (
        isinstance(principal, Unknown)
        and principal.origin is not None
        and principal.origin.type == "Microsoft.EventGrid/topics"
        and principal.path == ("identity", "principalId")
    ):
        kind, who = TOPIC_PRINCIPAL, principal.origin.name
    elif isinstance(principal, str) and principal in relays:
        kind, who = RELAY_PRINCIPAL, principal
    else:
        kind, who = UNKNOWN_PRINCIPAL, _text(principal)
    scope = resource.scope.entity if resource.scope is not None else Entity("resource-group", "")
    role = _text(properties["roleDefinitionId"]).rsplit("/", 1)[-1]
    return RoleAssignment(kind, who, role, scope, resource.file)
