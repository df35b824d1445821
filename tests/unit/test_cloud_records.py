"""The audit and agent records as Table entities, the in-memory tables, and the storage errors."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import uuid
from typing import Any

import pytest
from azure.core import exceptions as azure
from azure.data.tables import RequestTooLargeError, TableTransactionError

from writeback.cloud import agents, audit
from writeback.cloud.agents import AgentRecord
from writeback.cloud.audit import AuditRecord
from writeback.cloud.tables import SDK_ERRORS, check_key, translate_storage_error
from writeback.errors import StorageError
from writeback.testing import MemoryAgentRegistry, MemoryAuditTrail
from writeback.tracing import Stage

FORBIDDEN_KEYS = ["", "a/b", "a\\b", "a#b", "a?b", "a\x00b", "a\tb", "a\x7fb", "a\x85b", "x" * 513]


def request(**overrides: Any) -> AuditRecord:
    record = AuditRecord(
        request_id=str(uuid.uuid4()),
        received_at=1_767_225_600.25,
        domain="corp.example.test",
        user="alice@corp.example.test",
        operation="change",
        initiator=None,
        caller="api-key",
        caller_kind="api-key",
    )
    return dataclasses.replace(record, **overrides)


def agent(relay_id: str = "relay-a", last_seen: float = 100.0, **overrides: Any) -> AgentRecord:
    record = AgentRecord(
        domain="corp.example.test",
        relay_id=relay_id,
        version="0.1.0",
        last_seen=last_seen,
        received_at=last_seen + 1,
        capabilities={"policyHints": True, "pso": 2, "dc": "dc1", "site": None},
        policy={"minLength": 12, "rules": ["length", "history"]},
        last_error=None,
    )
    return dataclasses.replace(record, **overrides)


class TestAuditEntity:
    def test_the_record_has_exactly_the_audited_fields(self) -> None:
        """The audit record's fields are a fixed list with no room for a password."""
        assert [field.name for field in dataclasses.fields(AuditRecord)] == [
            "request_id", "received_at", "domain", "user", "operation", "initiator", "caller",
            "caller_kind", "source", "unlock", "force_change_at_next_logon", "sealed_by_caller",
            "status", "reason", "message", "detail", "relay", "completed_at", "duration_ms",
            "trace_id", "expires_at", "reply_session", "account",
        ]  # fmt: skip

    def test_keys_are_the_request_id_and_an_empty_row(self) -> None:
        """PartitionKey is the request id and RowKey is empty: reads are point reads by id."""
        record = request()
        entity = audit.to_entity(record)
        assert (entity["PartitionKey"], entity["RowKey"]) == (record.request_id, "")

    def test_none_fields_are_left_out_and_read_back_as_none(self) -> None:
        """Unset fields are not stored (tables hold no nulls) and come back as None."""
        record = request()
        entity = audit.to_entity(record)
        assert "initiator" not in entity
        assert "completed_at" not in entity
        assert audit.from_entity(entity) == record

    def test_every_field_round_trips(self) -> None:
        """A record with every field set converts to an entity and back unchanged."""
        record = request(initiator="self", status="failed", reason="directory.unavailable",
                         message="Try again later.", detail="no DC answered", relay="relay-a",
                         completed_at=1_767_225_601.0, duration_ms=750, trace_id="00-ab-cd-01",
                         unlock=True, source="event", expires_at=1_767_225_700.0,
                         reply_session="cloud-0123456789abcdef0123456789abcdef")  # fmt: skip
        assert audit.from_entity(audit.to_entity(record)) == record

    def test_an_entry_written_before_reply_sessions_were_recorded_loads(self) -> None:
        """An older entity without `reply_session` reads back with None there."""
        record = request(reply_session="cloud-gone")
        entity = audit.to_entity(record)
        del entity["reply_session"]
        assert audit.from_entity(entity) == dataclasses.replace(record, reply_session=None)

    def test_whole_second_times_are_stored_as_doubles(self) -> None:
        """An int epoch is stored as a float, so the table column keeps one type."""
        entity = audit.to_entity(request(received_at=1_767_225_600, duration_ms=2**40))
        assert type(entity["received_at"]) is float
        assert type(entity["duration_ms"]) is float  # an int would be an Int32 in the table

    def test_a_malformed_entity_names_the_field_not_its_value(self) -> None:
        """An entity missing a field or holding a wrong type is a ValueError that names the
        field and never quotes the stored value."""
        entity = audit.to_entity(request())
        del entity["domain"]
        with pytest.raises(ValueError, match="domain is missing"):
            audit.from_entity(entity)
        entity = audit.to_entity(request(duration_ms=5))
        entity["duration_ms"] = "secret-looking-text"
        with pytest.raises(ValueError, match="duration_ms") as raised:
            audit.from_entity(entity)
        assert "secret-looking-text" not in str(raised.value)

    @pytest.mark.parametrize("request_id", FORBIDDEN_KEYS)
    def test_ids_tables_cannot_key_are_refused(self, request_id: str) -> None:
        """An id Table keys cannot hold is a ValueError naming the request id."""
        with pytest.raises(ValueError, match="request id"):
            audit.to_entity(request(request_id=request_id))

    def test_completed_sets_the_outcome_and_the_duration(self) -> None:
        """completed() adds the outcome and derives the duration in milliseconds."""
        record = request().completed(
            "rejected", "policy.length", 1_767_225_601.5, message="Too short.", relay="relay-a"
        )
        assert (record.status, record.reason, record.duration_ms) == (
            "rejected",
            "policy.length",
            1250,
        )
        assert (record.message, record.detail, record.relay) == ("Too short.", None, "relay-a")


class TestAgentEntity:
    def test_keys_are_the_domain_and_the_relay(self) -> None:
        """PartitionKey is the domain and RowKey the relay id: one partition per domain."""
        entity = agents.to_entity(agent())
        assert (entity["PartitionKey"], entity["RowKey"]) == ("corp.example.test", "relay-a")

    def test_dicts_are_stored_as_json_text(self) -> None:
        """Capabilities and policy are JSON strings in the entity, and round-trip."""
        record = agent()
        entity = agents.to_entity(record)
        assert json.loads(entity["capabilities"]) == record.capabilities
        assert json.loads(entity["policy"]) == record.policy
        assert agents.from_entity(entity) == record

    def test_none_policy_and_error_are_left_out(self) -> None:
        """A relay without policy or error stores neither, and reads them back as None."""
        record = agent(policy=None, last_error=None)
        entity = agents.to_entity(record)
        assert "policy" not in entity
        assert "last_error" not in entity
        assert agents.from_entity(entity) == record

    @pytest.mark.parametrize("key", FORBIDDEN_KEYS)
    def test_relays_and_domains_tables_cannot_key_are_refused(self, key: str) -> None:
        """A relay id or domain Table keys cannot hold is a ValueError naming which."""
        with pytest.raises(ValueError, match="relay id"):
            agents.to_entity(agent(relay_id=key))
        with pytest.raises(ValueError, match="domain"):
            agents.to_entity(agent(domain=key))

    def test_a_malformed_entity_is_a_value_error(self) -> None:
        """Capabilities that are not a JSON object make the entity unreadable."""
        entity = agents.to_entity(agent())
        entity["capabilities"] = "[1, 2]"
        with pytest.raises(ValueError, match="JSON object"):
            agents.from_entity(entity)


class TestKeys:
    @pytest.mark.parametrize("key", [str(uuid.uuid4()), "relay-01.corp", "é" * 512])
    def test_usual_keys_pass(self, key: str) -> None:
        """UUIDs, host-like names and non-ASCII text up to 512 characters are valid keys."""
        assert check_key(key, "key") == key


class TestMemoryAuditTrail:
    async def test_records_replace_by_id(self) -> None:
        """Recording an id again replaces the record, as insert-or-replace does."""
        trail = MemoryAuditTrail()
        pending = request()
        await trail.record(pending)
        done = pending.completed("applied", "applied", pending.received_at + 1)
        await trail.record(done)
        assert await trail.get(pending.request_id) == done
        assert len(trail.records) == 1

    async def test_unknown_id_is_none(self) -> None:
        """An id never recorded reads as None."""
        assert await MemoryAuditTrail().get(str(uuid.uuid4())) is None

    async def test_bad_ids_are_refused(self) -> None:
        """The fake refuses the ids the table adapter refuses."""
        trail = MemoryAuditTrail()
        with pytest.raises(ValueError, match="request id"):
            await trail.record(request(request_id="a/b"))
        with pytest.raises(ValueError, match="request id"):
            await trail.get("a#b")

    async def test_pending_in_a_window(self) -> None:
        """pending() gives the pending records received within [since, until], both ends
        included, oldest first, as the table adapter does."""
        trail = MemoryAuditTrail()
        t0 = 1_767_225_600.0
        inside = [
            request(received_at=t0 + 10),
            request(received_at=t0),
            request(received_at=t0 + 60),
        ]
        outside = [
            request(received_at=t0 - 0.5),
            request(received_at=t0 + 60.5),
            request(received_at=t0 + 5).completed("applied", "applied", t0 + 6),
        ]
        for record in inside + outside:
            await trail.record(record)
        found = await trail.pending(t0, t0 + 60)
        assert found == sorted(inside, key=lambda record: record.received_at)

    async def test_close(self) -> None:
        """close() is recorded, so tests can check that the service closes its adapters."""
        trail = MemoryAuditTrail()
        await trail.close()
        assert trail.closed


class TestWritesAfterTheAnswer:
    async def test_a_reader_waits_for_earlier_writes_and_cancels_none(self) -> None:
        """The Table trail's reads wait for the writes left for after earlier answers, not for
        those started while they wait; a reader cancelled meanwhile leaves them running."""
        trail = audit.TableAuditTrail.from_connection_string("UseDevelopmentStorage=true")
        first, second = asyncio.Event(), asyncio.Event()
        written: list[str] = []

        async def write(name: str, go: asyncio.Event) -> None:
            await go.wait()
            written.append(name)

        trail._after_the_answer(write("first", first), "not written", Stage.AUDIT_LINK)
        reader = asyncio.create_task(trail._caught_up())
        await asyncio.sleep(0)  # the reader is waiting
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        reader = asyncio.create_task(trail._caught_up())
        await asyncio.sleep(0)
        trail._after_the_answer(write("second", second), "not written", Stage.AUDIT_LINK)
        first.set()
        await asyncio.wait_for(reader, 10)  # done without the second
        assert written == ["first"]
        second.set()
        await trail.close()  # waits for the rest
        assert written == ["first", "second"]


class TestMemoryAgentRegistry:
    async def test_older_heartbeat_never_replaces_a_newer_one(self) -> None:
        """An older or repeated heartbeat is ignored; a newer one replaces the record."""
        registry = MemoryAgentRegistry()
        await registry.record(agent(last_seen=200.0, version="0.2.0"))
        await registry.record(agent(last_seen=100.0, version="0.1.0"))
        await registry.record(agent(last_seen=200.0, version="0.1.0"))
        assert [a.version for a in await registry.list()] == ["0.2.0"]
        await registry.record(agent(last_seen=300.0, version="0.3.0"))
        assert [a.version for a in await registry.list()] == ["0.3.0"]

    async def test_list_by_domain_and_all_in_key_order(self) -> None:
        """list(domain) gives that domain's relays; list() every relay, by domain then relay."""
        registry = MemoryAgentRegistry()
        lab = agent("relay-a", domain="lab.example.test")
        corp_b, corp_a = agent("relay-b"), agent("relay-a")
        for record in (lab, corp_b, corp_a):
            await registry.record(record)
        assert await registry.list("corp.example.test") == [corp_a, corp_b]
        assert await registry.list() == [corp_a, corp_b, lab]
        assert await registry.list("none.example.test") == []

    async def test_bad_keys_are_refused(self) -> None:
        """The fake refuses the domains and relay ids the table adapter refuses."""
        registry = MemoryAgentRegistry()
        with pytest.raises(ValueError, match="relay id"):
            await registry.record(agent("relay#1"))
        with pytest.raises(ValueError, match="domain"):
            await registry.list("corp/example")


class _Response:
    """Just enough of an HTTP response for the azure-core exceptions that insist on one."""

    request = "GET http://127.0.0.1/devstoreaccount1/Tables"
    status_code = 500
    reason = "Server Error"
    headers: dict[str, str] = {}  # noqa: RUF012 - a read-only stand-in

    def text(self) -> str:
        return '{"odata.error": {"code": "InternalError", "message": {"value": "body-text"}}}'


def instantiate(cls: type[Exception]) -> Exception:
    """An SDK exception: some take a message, some only keywords, some a response."""
    for attempt in (
        lambda: cls("boom"),
        lambda: cls(message="boom"),  # type: ignore[call-arg]
        lambda: cls(_Response()),
    ):
        try:
            return attempt()
        except (TypeError, AttributeError):
            continue
    raise AssertionError(f"cannot build {cls.__name__}")


AZURE_EXCEPTIONS = [
    cls
    for _, cls in inspect.getmembers(azure, inspect.isclass)
    if issubclass(cls, Exception) and cls.__module__ == azure.__name__
] + [TableTransactionError, RequestTooLargeError]


class TestErrorMapping:
    @pytest.mark.parametrize("cls", AZURE_EXCEPTIONS, ids=lambda c: c.__name__)
    def test_every_azure_exception_is_mapped(self, cls: type[Exception]) -> None:
        """Whatever azure-core or the Tables SDK raises becomes a StorageError naming the table
        and the operation, without the service's response body."""
        translated = translate_storage_error(instantiate(cls), "WritebackAudit", "read a request")
        assert isinstance(translated, StorageError)
        assert str(translated).startswith("table WritebackAudit: read a request: ")
        assert "body-text" not in str(translated)

    def test_the_adapters_catch_every_azure_exception(self) -> None:
        """Every exception above is one the adapters catch (and so translate): none escapes
        them as a raw SDK error."""
        assert all(
            any(issubclass(cls, caught) for caught in SDK_ERRORS) for cls in AZURE_EXCEPTIONS
        )

    def test_a_refusal_says_what_to_check(self) -> None:
        """403 names the error code and the role or key to check."""
        error = azure.HttpResponseError(message="refused")
        error.status_code = 403
        error.error_code = "AuthorizationFailure"  # type: ignore[attr-defined]
        text = str(translate_storage_error(error, "WritebackAgents", "list relays"))
        assert "AuthorizationFailure" in text
        assert "Storage Table Data Contributor" in text

    def test_unreachable_is_said_so(self) -> None:
        """A connection failure is reported as an unreachable table service."""
        text = str(translate_storage_error(azure.ServiceRequestError("refused"), "T", "op"))
        assert "unreachable" in text

    def test_a_storage_error_passes_through(self) -> None:
        """Translating our own error returns it unchanged."""
        error = StorageError("T", "already ours")
        assert translate_storage_error(error, "T", "op") is error
