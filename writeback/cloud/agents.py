"""The agents registry: the last heartbeat of every relay, in Azure Table Storage.

The cloud fails fast (agent.unavailable) when no relay of a domain has a fresh heartbeat, so this
table answers "which relays serve this domain, and when were they last seen": PartitionKey is the
domain (one partition query per request), RowKey the relay id. Heartbeats can arrive late, twice
or out of order, and several cloud instances may record them at once; an older heartbeat (smaller
`last_seen`) must never replace a newer one. `record` therefore reads the entity, compares, and
writes only if the entity is still the one it read (If-Match on its ETag; an insert when there is
none). A writer that loses the race (412, or 409 on the insert) reads again and compares again, so
whatever the interleaving, the newest heartbeat is what stays. Capabilities and policy are stored
as JSON text; the domain's NetBIOS name and SID, which route users named by them, as text (absent
from relays that do not announce them). Nothing here is secret (the relay's public keys live
elsewhere).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core import exceptions as azure
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from writeback.cloud.tables import SDK_ERRORS, Credential, Table, check_key, error_code
from writeback.errors import StorageError

AGENTS_TABLE = "WritebackAgents"
# Each lost race means another writer succeeded in between, and only writers of one relay's
# heartbeats ever meet on an entity; 24 writers at once on one entity needed at most 6 tries.
_ATTEMPTS = 16

Capabilities = dict[str, str | int | bool | None]


@dataclasses.dataclass(frozen=True)
class AgentRecord:
    """A relay's last heartbeat: `last_seen` is when the relay sent it (its sentAt),
    `received_at` when the cloud recorded it (both epoch seconds)."""

    domain: str
    relay_id: str
    version: str
    last_seen: float
    received_at: float
    capabilities: Capabilities
    policy: dict[str, object] | None
    last_error: str | None
    netbios: str | None = None  # the domain's NetBIOS name, as the relay announces it
    domain_sid: str | None = None  # the domain's SID, as the relay announces it


class AgentRegistry(Protocol):
    """Where relays' heartbeats are kept."""

    async def record(self, agent: AgentRecord) -> None:
        """Keep `agent` unless a newer heartbeat of the same relay is already kept."""

    async def list(self, domain: str | None = None) -> builtins.list[AgentRecord]:
        """The relays of `domain` (all relays when None), ordered by domain and relay id."""

    async def close(self) -> None: ...


def to_entity(agent: AgentRecord) -> dict[str, Any]:
    """The Table entity for a record. ValueError if the domain or relay id cannot be a key."""
    entity: dict[str, Any] = {
        "PartitionKey": check_key(agent.domain, "domain"),
        "RowKey": check_key(agent.relay_id, "relay id"),
        "version": agent.version,
        "last_seen": float(agent.last_seen),
        "received_at": float(agent.received_at),
        "capabilities": json.dumps(agent.capabilities, sort_keys=True),
    }
    if agent.policy is not None:
        entity["policy"] = json.dumps(agent.policy, sort_keys=True)
    for name in ("last_error", "netbios", "domain_sid"):
        if getattr(agent, name) is not None:
            entity[name] = getattr(agent, name)
    return entity


def from_entity(entity: Mapping[str, Any]) -> AgentRecord:
    """The record a Table entity holds; ValueError (naming the field) if it is not one."""
    try:
        capabilities = json.loads(entity["capabilities"])
        policy = json.loads(entity["policy"]) if entity.get("policy") is not None else None
        record = AgentRecord(
            domain=str(entity["PartitionKey"]),
            relay_id=str(entity["RowKey"]),
            version=str(entity["version"]),
            last_seen=float(entity["last_seen"]),
            received_at=float(entity["received_at"]),
            capabilities=capabilities,
            policy=policy,
            last_error=entity.get("last_error"),
            netbios=_text(entity.get("netbios")),
            domain_sid=_text(entity.get("domain_sid")),
        )
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]} is missing") from None
    except (TypeError, ValueError):
        raise ValueError("a field does not have its type") from None
    if not isinstance(capabilities, dict) or not (policy is None or isinstance(policy, dict)):
        raise ValueError("capabilities or policy is not a JSON object")
    return record


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _last_seen(entity: Mapping[str, Any]) -> float:
    """When the kept heartbeat was sent; an entity without a readable one is older than any."""
    try:
        return float(entity["last_seen"])
    except (KeyError, TypeError, ValueError):
        return -math.inf


class TableAgentRegistry:
    """The agents registry in Azure Table Storage (table `WritebackAgents` unless told
    otherwise)."""

    def __init__(self, table: Table | TableClient) -> None:
        self._table = table if isinstance(table, Table) else Table(table)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, table_name: str = AGENTS_TABLE, **client_options: Any
    ) -> TableAgentRegistry:
        return cls(Table.from_connection_string(connection_string, table_name, **client_options))

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str,
        credential: Credential,
        table_name: str = AGENTS_TABLE,
        **client_options: Any,
    ) -> TableAgentRegistry:
        """Identity-based access: the table service URL and, in Azure, a managed identity."""
        return cls(Table.from_endpoint(endpoint, credential, table_name, **client_options))

    async def record(self, agent: AgentRecord) -> None:
        entity = to_entity(agent)
        client = await self._table.client()
        try:
            for _ in range(_ATTEMPTS):
                if await self._write_if_newer(client, agent, entity):
                    return
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "record a heartbeat") from exc
        raise StorageError(
            self._table.name, f"record a heartbeat: the entity kept changing ({_ATTEMPTS} tries)"
        )

    async def _write_if_newer(
        self, client: TableClient, agent: AgentRecord, entity: dict[str, Any]
    ) -> bool:
        """One read-compare-write; False when another writer got in between (try again)."""
        try:
            kept = await client.get_entity(agent.domain, agent.relay_id)
        except azure.ResourceNotFoundError as exc:
            if error_code(exc) == "TableNotFound":
                raise
            try:
                await client.create_entity(entity)
            except azure.ResourceExistsError:
                return False  # another writer inserted first: compare with theirs
            return True
        if _last_seen(kept) >= agent.last_seen:
            return True  # what is kept is as new or newer: an old or repeated heartbeat
        try:
            await client.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=kept.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except azure.ResourceModifiedError:
            return False  # changed since we read it: compare with the newer one
        return True

    async def list(self, domain: str | None = None) -> builtins.list[AgentRecord]:
        if domain is not None:
            check_key(domain, "domain")
        client = await self._table.client()
        try:
            if domain is None:
                entities = client.list_entities()
            else:
                # A parameter, not string formatting: the SDK quotes it for OData.
                entities = client.query_entities(
                    "PartitionKey eq @domain", parameters={"domain": domain}
                )
            found = [entity async for entity in entities]
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "list relays") from exc
        try:
            return [from_entity(entity) for entity in found]
        except ValueError as exc:
            raise StorageError(self._table.name, f"list relays: malformed entity: {exc}") from exc

    async def close(self) -> None:
        await self._table.close()
