"""The audit trail and the agents registry against a real Azure Table service (Azurite).

Each test works in tables of its own (unique names), so tests never see each other's entities.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableServiceClient

from devstack.azurite import Azurite
from writeback.cloud.agents import AgentRecord, TableAgentRegistry
from writeback.cloud.audit import AuditRecord, TableAuditTrail
from writeback.errors import StorageError


def table_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def request(**overrides: object) -> AuditRecord:
    record = AuditRecord(
        request_id=str(uuid.uuid4()),
        received_at=1_767_225_600.125,
        domain="corp.example.test",
        user=f"user-{uuid.uuid4().hex[:8]}@corp.example.test",
        operation="reset",
        initiator="admin",
        caller="3f1c2c39-62cf-4bd4-a40e-d6b0d3c1f3a1",
        caller_kind="entra",
    )
    return dataclasses.replace(record, **overrides)  # type: ignore[arg-type]


def heartbeat(domain: str, relay_id: str, last_seen: float, **overrides: object) -> AgentRecord:
    agent = AgentRecord(
        domain=domain,
        relay_id=relay_id,
        version="0.1.0",
        last_seen=last_seen,
        received_at=last_seen + 0.25,
        capabilities={"policyHints": True, "dc": "dc1.corp.example.test", "pso": 3, "x": None},
        policy={"minLength": 12, "complexity": True, "history": 24, "maxAge": None},
        last_error=None,
    )
    return dataclasses.replace(agent, **overrides)  # type: ignore[arg-type]


def closed_port_connection_string(azurite: Azurite) -> str:
    """Azurite's connection string with its table endpoint moved to a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return azurite.connection_string.replace(
        azurite.endpoint("table"), f"http://127.0.0.1:{port}/devstoreaccount1"
    )


@pytest.fixture
async def audit(azurite: Azurite) -> AsyncIterator[TableAuditTrail]:
    trail = TableAuditTrail.from_connection_string(azurite.connection_string, table_name("Audit"))
    yield trail
    await trail.close()


@pytest.fixture
async def agents(azurite: Azurite) -> AsyncIterator[TableAgentRegistry]:
    registry = TableAgentRegistry.from_connection_string(
        azurite.connection_string, table_name("Agents")
    )
    yield registry
    await registry.close()


async def table_names(azurite: Azurite) -> set[str]:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        return {table.name async for table in service.list_tables()}


class TestAuditTrail:
    async def test_round_trip_keeps_every_field(self, audit: TableAuditTrail) -> None:
        """A record with every field set reads back equal, floats and booleans included."""
        record = request(
            source="event",
            unlock=True,
            force_change_at_next_logon=True,
            sealed_by_caller=True,
            status="rejected",
            reason="policy.history",
            message="Choose a password you have not used recently.",
            detail="0000052D: Constraint violation (samba: password is in history)",
            relay="relay-a",
            completed_at=1_767_225_600.875,
            duration_ms=750,
            trace_id="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            expires_at=1_767_225_660.0,
            reply_session="cloud-0123456789abcdef0123456789abcdef",
        )
        await audit.record(record)
        assert await audit.get(record.request_id) == record

    async def test_round_trip_keeps_none_fields(self, audit: TableAuditTrail) -> None:
        """A pending record's unset fields read back as None, and its defaults as themselves."""
        record = request(initiator=None, received_at=1_767_225_600)
        await audit.record(record)
        assert await audit.get(record.request_id) == record

    async def test_completed_entry_replaces_the_pending_one(self, audit: TableAuditTrail) -> None:
        """Recording a request again replaces its entry whole: the outcome is added and what
        only the pending entry had is gone."""
        pending = request(message="Your request is being processed.")
        await audit.record(pending)
        done = pending.completed("applied", "applied", pending.received_at + 0.5, relay="relay-b")
        await audit.record(done)
        stored = await audit.get(pending.request_id)
        assert stored == done
        assert stored is not None
        assert (stored.status, stored.message, stored.duration_ms) == ("applied", None, 500)

    async def test_a_duration_beyond_int32_is_stored(self, audit: TableAuditTrail) -> None:
        """A drift found a month after the Entra reset has a duration over 2**31 ms, which the
        SDK would refuse as an Int32: it is stored and reads back exactly."""
        record = request(status="failed", reason="password.drift", duration_ms=2_678_400_123)
        await audit.record(record)
        assert await audit.get(record.request_id) == record

    async def test_unknown_id_is_none(self, audit: TableAuditTrail) -> None:
        """An id never recorded reads as None, not as an error."""
        assert await audit.get(str(uuid.uuid4())) is None

    async def test_the_table_is_created_on_first_use(self, azurite: Azurite) -> None:
        """The table does not exist until the adapter's first operation creates it."""
        name = table_name("Audit")
        trail = TableAuditTrail.from_connection_string(azurite.connection_string, name)
        try:
            assert name not in await table_names(azurite)
            assert await trail.get(str(uuid.uuid4())) is None
            assert name in await table_names(azurite)
        finally:
            await trail.close()

    async def test_an_existing_table_is_used_as_it_is(self, azurite: Azurite) -> None:
        """A second adapter on a table that already exists (another instance, or infra/) reads
        what the first recorded."""
        name, record = table_name("Audit"), request()
        first = TableAuditTrail.from_connection_string(azurite.connection_string, name)
        second = TableAuditTrail.from_connection_string(azurite.connection_string, name)
        try:
            await first.record(record)
            assert await second.get(record.request_id) == record
        finally:
            await first.close()
            await second.close()

    @pytest.mark.parametrize("request_id", ["a/b", "a\\b", "a#b", "a?b", "a\nb", ""])
    async def test_ids_tables_cannot_key_are_refused_before_any_call(
        self, azurite: Azurite, request_id: str
    ) -> None:
        """An id with a character Table keys forbid is a ValueError, raised before the adapter
        touches the network (here, an endpoint where nothing listens)."""
        trail = TableAuditTrail.from_connection_string(
            closed_port_connection_string(azurite), table_name("Audit")
        )
        try:
            with pytest.raises(ValueError, match="request id"):
                await trail.record(request(request_id=request_id))
            with pytest.raises(ValueError, match="request id"):
                await trail.get(request_id)
        finally:
            await trail.close()

    async def test_a_deleted_table_is_a_storage_error(self, azurite: Azurite) -> None:
        """A table that vanished after first use is an error, not an unknown request."""
        name = table_name("Audit")
        trail = TableAuditTrail.from_connection_string(azurite.connection_string, name)
        try:
            await trail.record(request())
            async with TableServiceClient.from_connection_string(
                azurite.connection_string
            ) as service:
                await service.delete_table(name)
            with pytest.raises(StorageError, match="TableNotFound"):
                await trail.get(str(uuid.uuid4()))
        finally:
            await trail.close()


class TestAgentRegistry:
    async def test_round_trip_keeps_dicts_and_none(self, agents: TableAgentRegistry) -> None:
        """Capabilities and policy (JSON in the table) and None fields read back equal."""
        with_policy = heartbeat("corp.example.test", "relay-a", 1_767_225_600.5)
        without = heartbeat(
            "corp.example.test", "relay-b", 1_767_225_601.0, policy=None, last_error="LDAP down"
        )
        await agents.record(with_policy)
        await agents.record(without)
        assert await agents.list("corp.example.test") == [with_policy, without]

    async def test_the_domains_names_round_trip(self, agents: TableAgentRegistry) -> None:
        """A heartbeat's NetBIOS name and domain SID are kept and read back; a relay that named
        neither reads back None for both."""
        named = heartbeat(
            "corp.example.test", "relay-n", 10.0, netbios="CORP", domain_sid="S-1-5-21-1-2-3"
        )
        await agents.record(named)
        await agents.record(heartbeat("corp.example.test", "relay-o", 10.0))
        kept = {agent.relay_id: agent for agent in await agents.list("corp.example.test")}
        assert kept["relay-n"] == named
        assert (kept["relay-o"].netbios, kept["relay-o"].domain_sid) == (None, None)

    async def test_list_by_domain_and_all(self, agents: TableAgentRegistry) -> None:
        """`list(domain)` gives that domain's relays only; `list()` gives every relay."""
        corp = heartbeat("corp.example.test", "relay-a", 100.0)
        lab = heartbeat("lab.example.test", "relay-a", 100.0)
        await agents.record(lab)
        await agents.record(corp)
        assert await agents.list("corp.example.test") == [corp]
        assert await agents.list("lab.example.test") == [lab]
        assert await agents.list("none.example.test") == []
        assert await agents.list() == [corp, lab]

    async def test_older_heartbeat_never_replaces_a_newer_one(
        self, agents: TableAgentRegistry
    ) -> None:
        """A late heartbeat (smaller last_seen) is ignored; a newer one replaces the record."""
        newer = heartbeat("corp.example.test", "relay-a", 200.0, version="0.2.0")
        await agents.record(newer)
        await agents.record(heartbeat("corp.example.test", "relay-a", 100.0, version="0.1.0"))
        assert await agents.list("corp.example.test") == [newer]
        newest = heartbeat("corp.example.test", "relay-a", 300.0, last_error="bind failed")
        await agents.record(newest)
        assert await agents.list("corp.example.test") == [newest]

    async def test_racing_writers_keep_the_newest_heartbeat(self, azurite: Azurite) -> None:
        """Heartbeats recorded at once, out of order, by two instances: the newest stays."""
        name = table_name("Agents")
        instances = [
            TableAgentRegistry.from_connection_string(azurite.connection_string, name)
            for _ in range(2)
        ]
        beats = [heartbeat("corp.example.test", "relay-a", float(n)) for n in range(1, 25)]
        random.Random(7).shuffle(beats)  # noqa: S311 - a fixed test order, not a secret
        try:
            await asyncio.gather(*(instances[n % 2].record(beat) for n, beat in enumerate(beats)))
            kept = await instances[0].list("corp.example.test")
        finally:
            for instance in instances:
                await instance.close()
        assert [agent.last_seen for agent in kept] == [24.0]

    async def test_domains_tables_cannot_key_are_refused(self, agents: TableAgentRegistry) -> None:
        """A domain or relay id with a character Table keys forbid is a ValueError."""
        with pytest.raises(ValueError, match="relay id"):
            await agents.record(heartbeat("corp.example.test", "relay/a", 1.0))
        with pytest.raises(ValueError, match="domain"):
            await agents.list("corp#example")


class TestUnreachable:
    async def test_audit_trail_raises_storage_error(self, azurite: Azurite) -> None:
        """With nothing listening, recording and reading are StorageErrors that keep the SDK's
        exception as the cause and never quote the record."""
        trail = TableAuditTrail.from_connection_string(
            closed_port_connection_string(azurite), "WritebackAudit", retry_total=0
        )
        record = request()
        try:
            with pytest.raises(StorageError, match="unreachable") as recorded:
                await trail.record(record)
            with pytest.raises(StorageError, match="unreachable"):
                await trail.get(record.request_id)
        finally:
            await trail.close()
        assert recorded.value.__cause__ is not None
        assert record.user not in str(recorded.value)

    async def test_agents_registry_raises_storage_error(self, azurite: Azurite) -> None:
        """With nothing listening, recording a heartbeat and listing relays are StorageErrors."""
        registry = TableAgentRegistry.from_connection_string(
            closed_port_connection_string(azurite), "WritebackAgents", retry_total=0
        )
        try:
            with pytest.raises(StorageError, match="WritebackAgents"):
                await registry.record(heartbeat("corp.example.test", "relay-a", 1.0))
            with pytest.raises(StorageError, match="WritebackAgents"):
                await registry.list()
        finally:
            await registry.close()

    async def test_a_wrong_account_key_is_a_storage_error(self, azurite: Azurite) -> None:
        """A key the service refuses is a StorageError saying access was refused."""
        wrong = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=Xby8")
        trail = TableAuditTrail.from_connection_string(wrong, table_name("Audit"))
        try:
            with pytest.raises(StorageError, match="access refused"):
                await trail.get(str(uuid.uuid4()))
        finally:
            await trail.close()
