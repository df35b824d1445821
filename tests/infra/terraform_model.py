"""A normalised model of infra/terraform, built from python-hcl2's output, for structural tests.

Terraform is not evaluated: resources that loop over the AD domains are kept once, their names
written with the placeholder `{domain}` (`writeback-requests-{domain}`,
`writeback-relays-{domain}`), and role assignments become (principal kind, role, scope entity)
triples such as ("relay", "Azure Service Bus Data Receiver", queue:writeback-requests-{domain}).
A Bicep model that uses the same vocabulary can be compared with this one. The module is pure:
it reads .tf files or takes their text, and never runs Terraform or touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hcl2

from writeback.cloud.secrets import RELAY_KEYS_PREFIX, relay_keys_secret
from writeback.transport import REQUESTS_PREFIX, requests_queue

DOMAIN = "{domain}"
FUNCTION, RELAY, DEPLOYER = "function", "relay", "deployer"
TOPIC_IDENTITY = "topic-identity"  # an Event Grid topic's system-assigned identity

# Built-in role definition IDs, for templates that name roles by ID rather than by name.
ROLE_IDS = {
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "Azure Event Hubs Data Owner": "f526a384-b230-433a-b45c-95f59c4a2dec",
    "EventGrid Data Sender": "d5a91429-5739-47e2-a06b-3470a27159e7",
}
# Roles that open a data plane: these must sit on the entity they are for.
DATA_PLANE_ROLE_PREFIXES = (
    "Azure Service Bus Data ",
    "Azure Event Hubs Data ",
    "EventGrid Data ",
    "Key Vault ",
    "Storage ",
)
# Scopes that hold many entities (a role there reaches all of them).
WIDE_SCOPES = frozenset(
    {
        "servicebus-namespace",
        "eventhub-namespace",
        "key-vault",
        "storage-account",
        "resource-group",
        "subscription",
    }
)
# The only data-plane roles allowed on a wide scope, each with the reason it cannot be narrower.
ALLOWED_WIDE_SCOPES = {
    (FUNCTION, "Storage Blob Data Owner", "storage-account"): (
        "the Functions host creates its own containers (azure-webjobs-hosts, -secrets) at run time"
    ),
    (FUNCTION, "Storage Queue Data Contributor", "storage-account"): (
        "the Functions host creates its own queues at run time"
    ),
    (DEPLOYER, "Key Vault Secrets Officer", "key-vault"): (
        "azurerm writes the secrets through the data plane, before they exist"
    ),
    (DEPLOYER, "Storage Table Data Contributor", "storage-account"): (
        "azurerm 4.x creates the tables through the data plane, before they exist"
    ),
}
# Kinds with one instance per deployment: their entities carry no name.
SINGLETONS = WIDE_SCOPES | {"application-insights"}
# resource type -> (entity kind, attributes that are its Resource Manager ID).
ENTITY_TYPES = {
    "azurerm_servicebus_queue": ("queue", {"id"}),
    "azurerm_key_vault_secret": ("secret", {"resource_versionless_id", "resource_id"}),
    "azurerm_storage_table": ("table", {"resource_manager_id"}),
    "azurerm_storage_container": ("blob-container", {"resource_manager_id"}),
    "azurerm_application_insights": ("application-insights", {"id"}),
    "azurerm_eventgrid_topic": ("eventgrid-topic", {"id"}),
    "azurerm_eventhub": ("event-hub", {"id"}),
    "azurerm_servicebus_namespace": ("servicebus-namespace", {"id"}),
    "azurerm_eventhub_namespace": ("eventhub-namespace", {"id"}),
    "azurerm_key_vault": ("key-vault", {"id"}),
    "azurerm_storage_account": ("storage-account", {"id"}),
    "data.azurerm_resource_group": ("resource-group", {"id"}),
    "data.azurerm_subscription": ("subscription", {"id"}),
}
# for_each expressions whose keys are the lower-case domain names.
DOMAIN_LOOPS = frozenset({"local.domains", "local.relay_jwks_domains"})
# How each kind of per-domain entity writes its domain into `{domain}`: the code's own rules,
# which the infra tests check Terraform's evaluation of the name templates against.
DOMAIN_ENCODINGS = {
    "queue": lambda domain: requests_queue(domain).removeprefix(REQUESTS_PREFIX),
    "secret": lambda domain: relay_keys_secret(domain).removeprefix(RELAY_KEYS_PREFIX),
}
# azurerm's values for queue properties a template leaves out.
QUEUE_DEFAULTS = {
    "requires_session": False,
    "requires_duplicate_detection": False,
    "dead_lettering_on_message_expiration": False,
    "max_delivery_count": 10,
    "lock_duration": "PT1M",
}
# App settings azurerm writes from another attribute of the Function App.
PROVIDER_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "application_insights_connection_string"
}
FUNCTION_APP = "azurerm_function_app_flex_consumption"
_SCOPE = re.compile(
    r"\$\{(?P<type>(?:data\.)?azurerm_\w+)\.(?P<name>\w+)(?:\[[^\]]*\])?\.(?P<attr>\w+)\}"
)
_NAME_REF = re.compile(r"\$\{(?P<type>azurerm_\w+)\.(?P<name>\w+)\.name\}")
_ISO = re.compile(r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?")


@dataclass(frozen=True)
class Entity:
    """What a role is scoped to: a kind (queue, secret, ..., key_vault) and, for entities that
    exist more than once, their name."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


@dataclass(frozen=True)
class RoleAssignment:
    """One role for one kind of principal on one entity; `address` and `condition` (the
    resource's for_each or count) say where it comes from and are not compared."""

    principal: str
    role: str
    scope: Entity
    address: str = field(default="", compare=False)
    condition: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TerraformModel:
    """The parts of the configuration the tests reason about. Attribute values are normalised:
    string literals without their quotes, expressions as `${...}`, blocks as lists of dicts."""

    resources: Mapping[str, Mapping[str, Mapping[str, Any]]]  # type -> name -> attributes
    variables: Mapping[str, Mapping[str, Any]]
    locals: Mapping[str, Any]
    outputs: Mapping[str, Mapping[str, Any]]
    queues: Mapping[str, Mapping[str, Any]]  # entity name -> properties, defaults filled in
    secrets: Mapping[str, str | None]  # entity name -> its for_each or count
    role_assignments: tuple[RoleAssignment, ...]
    # name -> literal | parameter (from input variables only) | resource | keyvault-reference |
    # empty; the same words as the Bicep model, plus `empty` for a setting given as "".
    app_settings: Mapping[str, str]
    app_setting_values: Mapping[str, Any]  # name -> normalised value (a literal's text)
    local_only_settings: tuple[str, ...]

    def entity_name(self, resource_type: str, name: str) -> str:
        """The name of resource `resource_type.name`, with `{domain}` for a per-domain one."""
        attributes = self.resources[resource_type][name]
        return _entity_name(attributes["name"], attributes.get("for_each"))


def read_directory(path: str | Path) -> dict[str, str]:
    """The text of every .tf file in `path`, by file name."""
    return {tf.name: tf.read_text(encoding="utf-8") for tf in sorted(Path(path).glob("*.tf"))}


def parse_texts(texts: Mapping[str, str]) -> dict[str, list[Any]]:
    """python-hcl2's output for each file, merged by top-level block type."""
    merged: dict[str, list[Any]] = {}
    for text in texts.values():
        for block_type, blocks in hcl2.loads(text).items():
            merged.setdefault(block_type, []).extend(blocks)
    return merged


def load(path: str | Path) -> TerraformModel:
    """The model of the configuration in directory `path`."""
    return build(parse_texts(read_directory(path)))


def build(parsed: Mapping[str, list[Any]]) -> TerraformModel:
    """The model of python-hcl2's merged output (see `parse_texts`)."""
    resources: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, prefix in (("resource", ""), ("data", "data.")):
        for block in parsed.get(kind, []):
            for type_label, named in block.items():
                for name_label, body in named.items():
                    resources.setdefault(prefix + _unquote(type_label), {})[
                        _unquote(name_label)
                    ] = normalise(body)
    local_values = {k: normalise(v) for block in parsed.get("locals", []) for k, v in block.items()}
    model = TerraformModel(
        resources=resources,
        variables=_labelled(parsed.get("variable", [])),
        locals={k: v for k, v in local_values.items() if not k.startswith("__")},
        outputs=_labelled(parsed.get("output", [])),
        queues={},
        secrets={},
        role_assignments=(),
        app_settings={},
        app_setting_values={},
        local_only_settings=tuple(local_values.get("local_only_settings", ())),
    )
    queues = {
        model.entity_name("azurerm_servicebus_queue", name): _queue_properties(attributes)
        for name, attributes in resources.get("azurerm_servicebus_queue", {}).items()
    }
    secrets = {
        model.entity_name("azurerm_key_vault_secret", name): _condition(attributes)
        for name, attributes in resources.get("azurerm_key_vault_secret", {}).items()
    }
    roles = tuple(
        _role_assignment(model, name, attributes)
        for name, attributes in resources.get("azurerm_role_assignment", {}).items()
    )
    values = {
        name: _resolve_name(model, value) for name, value in _app_setting_values(resources).items()
    }
    kinds = {name: _setting_kind(value) for name, value in values.items()}
    return replace(
        model,
        queues=queues,
        secrets=secrets,
        role_assignments=roles,
        app_settings=kinds,
        app_setting_values=values,
    )


def for_domain(entity: Entity, domain: str) -> Entity:
    """`entity` with `{domain}` replaced by `domain`, written as that kind of entity writes it."""
    if DOMAIN not in entity.name:
        return entity
    return Entity(entity.kind, entity.name.replace(DOMAIN, DOMAIN_ENCODINGS[entity.kind](domain)))


def grants(model: TerraformModel, domains: list[str]) -> set[tuple[str, str, Entity]]:
    """(principal kind, role, entity) for a deployment of `domains`, per-domain ones expanded
    (secrets as if every domain's relay JWKS were given): the form to compare with Bicep."""
    return {
        (role.principal, role.role, for_domain(role.scope, domain))
        for role in model.role_assignments
        for domain in domains
    }


def scope_violations(
    model: TerraformModel, allowed: Mapping[tuple[str, str, str], str] = ALLOWED_WIDE_SCOPES
) -> list[str]:
    """Each role assignment that is not scoped to one entity as least privilege wants: a
    data-plane role on a namespace, vault, account or wider (unless `allowed` says why it must
    be), or a scope that is not a Resource Manager ID of anything known."""
    problems = []
    for role in model.role_assignments:
        where = f"{role.address}: {role.principal} has {role.role!r} on {role.scope}"
        if role.scope.kind in {"unresolved", "not-an-arm-id"}:
            problems.append(f"{where} (not an entity's Resource Manager ID)")
        elif (
            role.scope.kind in WIDE_SCOPES
            and role.role.startswith(DATA_PLANE_ROLE_PREFIXES)
            and (role.principal, role.role, role.scope.kind) not in allowed
        ):
            problems.append(f"{where} (scope it to the entity)")
    return problems


def normalise(value: Any) -> Any:
    """python-hcl2 values without its markers: quoted literals unquoted (escapes kept),
    expressions left as `${...}`, nested blocks and objects normalised."""
    if isinstance(value, dict):
        return {_unquote(k): normalise(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return _unquote(value) if isinstance(value, str) else value


def as_hcl(value: str) -> str:
    """A normalised string value back as an HCL expression (for evaluating it with Terraform)."""
    if (
        value.startswith("${")
        and value.endswith("}")
        and _closing_brace(value, 1) == len(value) - 1
    ):
        return value[2:-1]
    return f'"{value}"'


def iso_seconds(duration: str) -> int:
    """Seconds in an ISO 8601 duration such as `PT10M` (days, hours, minutes, seconds only)."""
    match = _ISO.fullmatch(duration)
    if not match or duration in {"P", "PT"}:
        raise ValueError(f"{duration!r} is not an ISO 8601 duration of days to seconds")
    parts = {unit: int(match.group(unit) or 0) for unit in "dhms"}
    return ((parts["d"] * 24 + parts["h"]) * 60 + parts["m"]) * 60 + parts["s"]


# -- the pieces ------------------------------------------------------------------------------
def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def _labelled(blocks: list[Any]) -> dict[str, dict[str, Any]]:
    return {_unquote(label): normalise(body) for block in blocks for label, body in block.items()}


def _closing_brace(text: str, start: int) -> int:
    """The index of the `}` that closes the `{` at `start` (braces inside quotes ignored)."""
    depth, quoted, index = 0, False, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "{":
            depth += 1
        elif not quoted and char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ValueError(f"unbalanced braces in {text!r}")


def _entity_name(name: str, for_each: str | None) -> str:
    """`name` with each interpolation that uses `each` replaced by the loop's placeholder."""
    loop = for_each[2:-1] if isinstance(for_each, str) and for_each.startswith("${") else None
    placeholder = DOMAIN if loop in DOMAIN_LOOPS else "{key}"
    out, index = [], 0
    while (start := name.find("${", index)) != -1:
        end = _closing_brace(name, start + 1)
        inner = name[start + 2 : end]
        out.append(name[index:start])
        out.append(placeholder if re.search(r"\beach\.", inner) else name[start : end + 1])
        index = end + 1
    return "".join(out) + name[index:]


def _condition(attributes: Mapping[str, Any]) -> str | None:
    return attributes.get("for_each") or attributes.get("count")


def _queue_properties(attributes: Mapping[str, Any]) -> dict[str, Any]:
    skip = {"name", "namespace_id", "for_each", "count", "depends_on"}
    return {**QUEUE_DEFAULTS, **{k: v for k, v in attributes.items() if k not in skip}}


def _scope(model: TerraformModel, expression: str) -> Entity:
    match = _SCOPE.fullmatch(expression)
    if not match or match["type"] not in ENTITY_TYPES:
        return Entity("unresolved", expression)
    resource_type, name, attribute = match["type"], match["name"], match["attr"]
    kind, arm_ids = ENTITY_TYPES[resource_type]
    attributes = model.resources.get(resource_type, {}).get(name)
    if attributes is None:
        return Entity("unresolved", expression)
    if resource_type == "azurerm_storage_container" and "storage_account_id" in attributes:
        arm_ids = {*arm_ids, "id"}  # created through Resource Manager: `id` is that ID
    if attribute not in arm_ids:
        return Entity("not-an-arm-id", expression)
    if kind in SINGLETONS:
        return Entity(kind)
    return Entity(kind, model.entity_name(resource_type, name))


def _principal(principal_id: str, for_each: str | None) -> str:
    """function: the app's identity; topic-identity: an Event Grid topic's; deployer: whoever
    runs Terraform; relay: `each.*` of a loop over a `local.relay_*` map (built from
    var.domains[*].relay_principal_ids)."""
    if f"{FUNCTION_APP}." in principal_id and ".identity[0].principal_id" in principal_id:
        return FUNCTION
    if re.fullmatch(
        r"\$\{azurerm_eventgrid_topic\.\w+\.identity\[0\]\.principal_id\}", principal_id
    ):
        return TOPIC_IDENTITY
    if "data.azurerm_client_config." in principal_id:
        return DEPLOYER
    if re.search(r"\beach\.", principal_id) and for_each and "local.relay_" in for_each:
        return RELAY
    return f"unknown:{principal_id}"


def _role_assignment(
    model: TerraformModel, name: str, attributes: Mapping[str, Any]
) -> RoleAssignment:
    role = attributes.get("role_definition_name")
    if role is None:
        role_id = str(attributes.get("role_definition_id", ""))
        role = next((n for n, guid in ROLE_IDS.items() if role_id.endswith(guid)), role_id)
    return RoleAssignment(
        principal=_principal(str(attributes["principal_id"]), attributes.get("for_each")),
        role=role,
        scope=_scope(model, str(attributes["scope"])),
        address=f"azurerm_role_assignment.{name}",
        condition=_condition(attributes),
    )


def _app_setting_values(resources: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for app in resources.get(FUNCTION_APP, {}).values():
        values.update(app.get("app_settings", {}))
        for site_config in app.get("site_config", []):
            for setting, attribute in PROVIDER_SETTINGS.items():
                if attribute in site_config:
                    values[setting] = site_config[attribute]
    return values


def _resolve_name(model: TerraformModel, value: Any) -> Any:
    """`${azurerm_x.y.name}` as the literal name of that resource, when it has one."""
    reference = _NAME_REF.fullmatch(str(value))
    if reference:
        name = model.resources.get(reference["type"], {}).get(reference["name"], {}).get("name")
        if isinstance(name, str) and "${" not in name:
            return name
    return value


def _setting_kind(value: Any) -> str:
    text = str(value)
    if text == "":
        return "empty"
    if "@Microsoft.KeyVault(" in text:
        return "keyvault-reference"
    if "${" not in text:
        return "literal"
    if not re.search(r"\b(?:azurerm_\w+|local|data)\.\w+", re.sub(r"\bvar\.\w+", "", text)):
        return "parameter"
    return "resource"
