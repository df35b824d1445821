"""The audit trail's two queries against a real Azure Table service (Azurite), each test in a
table of its own: "which requests for this UPN between t1 and t2" (drift detection) and "which
requests received between t1 and t2 are still pending" (the sweeper, which reads the marks of
pending entries, not the whole table)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.azurite import Azurite
from tests.integration.test_tables import closed_port_connection_string
from writeback.cloud.accounts import name_key
from writeback.cloud.audit import (
    PENDING_PARTITION,
    AuditRecord,
    TableAuditTrail,
    to_entity,
    user_partition,
    user_row,
)
from writeback.errors import StorageError

T0 = 1_767_225_600.0


def record(user: str, received_at: float, **overrides: object) -> AuditRecord:
    base = AuditRecord(
        request_id=str(uuid.uuid4()),
        received_at=received_at,
        domain="corp.example.test",
        user=user,
        operation="reset",
        initiator="admin",
        caller="api-key:0a1b2c3d",
        caller_kind="api-key",
        status="applied",
        reason="applied",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def audit(azurite: Azurite) -> AsyncIterator[TableAuditTrail]:
    trail = TableAuditTrail.from_connection_string(
        azurite.connection_string, f"Audit{uuid.uuid4().hex[:16]}"
    )
    yield trail
    await trail.close()


class TestForUser:
    async def test_the_users_requests_in_the_range_oldest_first(
        self, audit: TableAuditTrail
    ) -> None:
        """Only the user's entries inside [since, until] (both ends included) come back, in
        any case of the UPN, oldest first, with every field."""
        alice = "Alice.Example@corp.example.test"
        inside = [
            record(alice, T0 + 60, operation="change"),
            record(alice.lower(), T0, status="pending", reason=None),
            record(alice.upper(), T0 + 300),
        ]
        outside = [
            record(alice, T0 - 0.5),
            record(alice, T0 + 300.5),
            record("bob@corp.example.test", T0 + 10),
        ]
        for entry in inside + outside:
            await audit.record(entry)
        found = await audit.for_user(alice, T0, T0 + 300)
        assert found == sorted(inside, key=lambda entry: entry.received_at)

    async def test_it_reads_the_users_partition_not_the_table(self, audit: TableAuditTrail) -> None:
        """An entry written without its copy in the user's partition is not found: the query
        reads that partition only. A full-width spelling of the UPN finds the same copies, and
        an entry recorded again (its outcome) leaves one copy, complete."""
        user = "alice@corp.example.test"
        stray = record(user, T0 + 5)
        client = await audit._table.client()
        await client.upsert_entity(to_entity(stray))
        pending = record(user, T0, status="pending", reason=None)
        await audit.record(pending)
        done = dataclasses.replace(pending, status="applied", reason="applied")
        await audit.record(done)
        full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in user)
        assert await audit.for_user(full_width, T0 - 1, T0 + 10) == [done]

    async def test_a_pending_copy_is_read_as_its_entry_says(self, audit: TableAuditTrail) -> None:
        """The entry and its mark (a pending request's copy) are written side by side, so a
        mark can outlive a failed entry or lag behind a completed one. A pending mark whose
        entry completed reads as completed; one with no entry (the caller was told it was not
        sent) is not shown."""
        user = "alice@corp.example.test"
        lagging = record(user, T0, status="pending", reason=None)
        await audit.record(lagging)
        done = dataclasses.replace(lagging, status="applied", reason="applied")
        client = await audit._table.client()
        await client.upsert_entity(to_entity(done))  # the entry only: no copy, the mark stays
        orphan = record(user, T0 + 1, status="pending", reason=None)
        await audit.record(orphan)
        await client.delete_entity(orphan.request_id, "")  # as if only the entry had failed
        assert await audit.for_user(user, T0 - 1, T0 + 10) == [done]

    async def test_a_completed_record_and_its_copies_then_the_mark_goes(
        self, audit: TableAuditTrail
    ) -> None:
        """A completed record with an account: once `record` returns, its entry and a copy under
        the typed name and one under the account are written; the pending mark is removed
        after (the sweeper's read waits for that), and only then are the rows all final."""
        guid = str(uuid.uuid4())
        waiting = record("S-1-5-21-4-5-6-1107", T0, status="pending", reason=None)
        await audit.record(waiting)
        done = dataclasses.replace(waiting, status="applied", reason="applied", account=guid)
        await audit.record(done)
        client = await audit._table.client()
        rows = [row async for row in client.list_entities()]
        copies = [row for row in rows if str(row["PartitionKey"]).startswith("~user-")]
        assert [row["status"] for row in copies] == ["applied", "applied"]
        assert await audit.get(done.request_id) == done
        assert await audit.pending(T0 - 1, T0 + 1) == []
        rows = [row async for row in client.list_entities()]
        assert not [row for row in rows if row["PartitionKey"] == PENDING_PARTITION]

    async def test_an_index_write_that_fails_is_logged_not_raised(
        self, azurite: Azurite, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The links are written after `link` returns: a table service that is down costs the
        caller nothing, and the failure is logged with the service's answer, never a name."""
        trail = TableAuditTrail.from_connection_string(
            closed_port_connection_string(azurite), "AuditDown", retry_total=0
        )
        try:
            await trail.link(str(uuid.uuid4()), ["dana@corp.example.test"])
            await trail._caught_up()
        finally:
            await trail.close()
        [logged] = [r for r in caplog.records if r.getMessage() == "account index not written"]
        assert "unreachable" in logged.__dict__["error"]
        assert "dana" not in str(logged.__dict__)

    async def test_a_pending_request_is_its_mark_and_no_copy(self, audit: TableAuditTrail) -> None:
        """Pending, a request is two rows, its entry and its mark (which holds the record), and
        is found through the mark; completed, its copies are in the user's partition. A pending
        copy in the user's partition and a bare mark, as written before marks held the record,
        are read as before."""
        user = "erin@corp.example.test"
        waiting = record(user, T0, status="pending", reason=None)
        await audit.record(waiting)
        client = await audit._table.client()
        rows = [row async for row in client.list_entities()]
        assert sorted(str(row["PartitionKey"]) for row in rows) == sorted(
            [waiting.request_id, PENDING_PARTITION]
        )
        assert await audit.for_user(user.upper(), T0 - 1, T0 + 1) == [waiting]
        older = record(user, T0 - 10, status="pending", reason=None)
        await client.upsert_entity(to_entity(older))
        await client.upsert_entity(
            {**to_entity(older), "PartitionKey": user_partition(user),
             "RowKey": user_row(older.received_at, older.request_id),
             "request_id": older.request_id}
        )  # fmt: skip
        bare = {"received_at": older.received_at}  # a mark as written before it held the record
        await client.upsert_entity(
            {"PartitionKey": PENDING_PARTITION, "RowKey": older.request_id, **bare}
        )
        assert await audit.for_user(user, T0 - 20, T0 + 1) == [older, waiting]
        assert await audit.pending(T0 - 20, T0 + 1) == [older, waiting]

    async def test_nothing_found_is_an_empty_list(self, audit: TableAuditTrail) -> None:
        """A fresh table (created on first use) answers with no entries."""
        assert await audit.for_user("nobody@corp.example.test", T0, T0 + 600) == []

    async def test_an_unreachable_table_service_is_a_storage_error(self, azurite: Azurite) -> None:
        """Nothing listening on the table endpoint: StorageError naming the operation."""
        trail = TableAuditTrail.from_connection_string(
            closed_port_connection_string(azurite), "AuditDown", retry_total=0
        )
        try:
            with pytest.raises(StorageError, match="unreachable"):
                await trail.for_user("alice@corp.example.test", T0, T0 + 1)
        finally:
            await trail.close()


class TestPending:
    async def test_the_pending_requests_in_the_range_oldest_first(
        self, audit: TableAuditTrail
    ) -> None:
        """Only pending entries inside [since, until] (both ends included) come back, oldest
        first, with every field, an older entry without a reply session included."""
        user = "alice@corp.example.test"
        pending = {"status": "pending", "reason": None}
        inside = [
            record(user, T0 + 60, reply_session="cloud-a", **pending),
            record(user, T0, reply_session="cloud-b", **pending),
            record("bob@corp.example.test", T0 + 300, **pending),
        ]
        outside = [
            record(user, T0 + 30, reply_session="cloud-a"),  # applied
            record(user, T0 + 31, status="failed", reason="agent.timeout"),
            record(user, T0 - 0.5, **pending),
            record(user, T0 + 300.5, **pending),
        ]
        for entry in inside + outside:
            await audit.record(entry)
        found = await audit.pending(T0, T0 + 300)
        assert found == sorted(inside, key=lambda entry: entry.received_at)

    async def test_nothing_pending_is_an_empty_list(self, audit: TableAuditTrail) -> None:
        """A table with only completed entries answers with no entries."""
        await audit.record(record("alice@corp.example.test", T0))
        assert await audit.pending(T0 - 60, T0 + 60) == []

    async def test_an_entry_completed_leaves_the_pending_list(self, audit: TableAuditTrail) -> None:
        """Pending, then its outcome recorded: the mark goes with it, and the user's query never
        sees the marks."""
        user = "alice@corp.example.test"
        waiting = record(user, T0, status="pending", reason=None)
        await audit.record(waiting)
        assert await audit.pending(T0 - 1, T0 + 1) == [waiting]
        done = dataclasses.replace(waiting, status="applied", reason="applied")
        await audit.record(done)
        assert await audit.pending(T0 - 1, T0 + 1) == []
        assert await audit.for_user(user, T0 - 1, T0 + 1) == [done]

    async def test_a_stale_mark_is_dropped(self, audit: TableAuditTrail) -> None:
        """A mark left behind (its copies and its removal failed after the entry was completed)
        does not list a completed entry; the read that finds it files the entry's copies
        again, then removes it, so the user's requests still show it."""
        done = record("alice@corp.example.test", T0)
        await audit.record(dataclasses.replace(done, status="pending", reason=None))
        client = await audit._table.client()
        await client.upsert_entity(to_entity(done))  # the outcome, without copies or removal
        assert await audit.pending(T0 - 1, T0 + 1) == []
        marks = client.query_entities("PartitionKey eq @p", parameters={"p": PENDING_PARTITION})
        assert [mark async for mark in marks] == []
        assert await audit.for_user(done.user, T0 - 1, T0 + 1) == [done]

    def test_no_request_id_can_fall_into_the_marks(self) -> None:
        with pytest.raises(ValueError, match="must not start with ~"):
            to_entity(record("alice@corp.example.test", T0, request_id="~pending"))


class TestAccountIndex:
    async def test_an_accounts_records_are_found_by_any_of_its_names(
        self, audit: TableAuditTrail
    ) -> None:
        """Records filed under a SID and a UPN, each resolved to one GUID, and a pending one
        under DOMAIN\\sam: once the names are linked, a lookup by any name or the GUID returns
        all three, each once, and another account's record none of them."""
        guid = str(uuid.uuid4())
        sid, upn, sam = "S-1-5-21-1-2-3-1104", "Alice@corp.example.test", "CORP\\alice"
        by_sid = record(sid, T0, account=guid)
        by_upn = record(upn, T0 + 10, account=guid)
        waiting = record("corp\\ALICE", T0 + 20, status="pending", reason=None)
        stranger = record("S-1-5-21-1-2-3-1105", T0 + 5, account=str(uuid.uuid4()))
        for entry in (by_sid, by_upn, waiting, stranger):
            await audit.record(entry)
        await audit.link(guid, [sid, upn, sam, guid])
        expected = [by_sid.request_id, by_upn.request_id, waiting.request_id]
        for name in (sid, upn.upper(), sam.lower(), guid.upper()):
            found = await audit.for_user(name, T0 - 1, T0 + 60)
            assert [r.request_id for r in found] == expected, name
        assert [r.account for r in await audit.for_user(upn, T0, T0 + 60)][:2] == [guid, guid]

    async def test_a_completed_copy_wins_over_the_pending_one(self, audit: TableAuditTrail) -> None:
        """A request recorded pending under its typed name, then completed with its account:
        the lookup by the GUID returns it once, completed."""
        guid = str(uuid.uuid4())
        pending = record("S-1-5-21-7-8-9-500", T0, status="pending", reason=None)
        await audit.record(pending)
        await audit.record(dataclasses.replace(pending, status="applied", account=guid))
        await audit.link(guid, ["S-1-5-21-7-8-9-500"])
        [found] = await audit.for_user(guid, T0 - 1, T0 + 1)
        assert (found.request_id, found.status, found.account) == (
            pending.request_id, "applied", guid,
        )  # fmt: skip

    async def test_requests_typed_by_the_guid_are_the_accounts(
        self, audit: TableAuditTrail
    ) -> None:
        """A request named by the account's objectGUID, pending or ended without an outcome
        naming the account (a timeout), is found by the account's other names: the GUID is
        the account, though it is never linked as a name."""
        guid, upn = str(uuid.uuid4()), "frank@corp.example.test"
        waiting = record(guid, T0, status="pending", reason=None)
        timed_out = record(guid, T0 + 1, status="failed", reason="agent.timeout")
        for entry in (waiting, timed_out):
            await audit.record(entry)
        await audit.link(guid, [upn])
        assert await audit.for_user(upn, T0 - 1, T0 + 2) == [waiting, timed_out]

    async def test_records_written_before_the_index_are_read(self, audit: TableAuditTrail) -> None:
        """A copy filed under a UPN as before the index (no account field) is still found by
        the UPN, and by the GUID once the UPN is linked to it."""
        guid = str(uuid.uuid4())
        old = record("bob@corp.example.test", T0)
        await audit.record(old)
        assert "account" not in to_entity(old)
        assert [r.request_id for r in await audit.for_user("BOB@corp.example.test", T0, T0)] == [
            old.request_id
        ]
        assert await audit.for_user(guid, T0, T0) == []
        await audit.link(guid, ["bob@corp.example.test"])
        assert [r.request_id for r in await audit.for_user(guid, T0, T0)] == [old.request_id]

    async def test_an_accounts_own_rows_are_one_transaction(self, audit: TableAuditTrail) -> None:
        """The rows of the account's partition go as one batch (Azure Tables' entity group
        transaction): every name is read back from it, and linking again changes nothing."""
        guid = str(uuid.uuid4())
        names = ["carol@corp.example.test", "S-1-5-21-1-2-3-1109", "CORP\\carol", guid]
        client = await audit._table.client()
        batches: list[list[Any]] = []
        submit = client.submit_transaction

        async def counted(operations: list[Any], **kwargs: Any) -> Any:
            batches.append(list(operations))
            return await submit(operations, **kwargs)

        client.submit_transaction = counted  # type: ignore[method-assign]
        await audit.link(guid, names)
        await audit.link(guid, names)
        assert await audit.for_user(guid, T0, T0) == []  # waits for the links
        assert [len(batch) for batch in batches] == [len(names), len(names)]
        assert sorted(await audit._index.names_of(guid)) == sorted(names)
        for name in names:
            assert await audit._index.guids_of(name_key(name)) == [guid], name
