"""The audit trail: every writeback request and its outcome, one Azure Table entity per request.

The service records a request as `pending` when it is accepted and records it again, complete, when
its outcome arrives (insert-or-replace, so the second write also clears what the first had and the
outcome has not). PartitionKey is the request id and RowKey is empty: every read is a point read by
id (what polling `GET /requests/{id}` needs), and random UUIDs spread the writes evenly over
partitions; reports over time belong to a log query, not to this table. Two questions need more than
a point read, and each has rows of its own in the same table, in partitions no request id can name
(they start with `~`): "which requests are still pending" (the sweeper) reads one partition of
marks, each a copy of a pending entry, removed as outcomes arrive; "this account's requests around
this time" (drift detection, the user history) reads a copy of each completed entry in the partition
of the name the caller typed and, once a relay resolved the account, of its GUID, ordered by time,
and the marks of that time (only the requests in flight); the account index
(`writeback.cloud.accounts`) links the names an account was seen by to its GUID, in rows of its own
(`~name-`, `~guid-`). None of them scans the table. What a caller waits for is one round trip per
record: an entry and its mark, or a completed entry and its copies, are written side by side, and
what only those lookups read (the account index, a mark's removal) is written after the answer,
before this trail's next lookup. No field can hold a password or a key, and the adapter stores
exactly the record's fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, Protocol

from azure.core import exceptions as azure
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from writeback import tracing
from writeback.cloud.account_table import TableAccountIndex
from writeback.cloud.accounts import account_keys, key_digest, name_key
from writeback.cloud.tables import SDK_ERRORS, Credential, Table, check_key, error_code
from writeback.errors import StorageError
from writeback.tracing import Stage

log = logging.getLogger(__name__)
AUDIT_TABLE = "WritebackAudit"
_ROW = ""  # one entity per partition (request id)


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One request and, once known, its outcome. Times are epoch seconds.

    `caller` is the authenticated identity (object id, app id, or "api-key"), `caller_kind` how
    it authenticated ("entra", "api-key", "event"); `initiator` who asked for it when that is
    someone else (an admin resetting a user); `message` the sentence the caller saw, `detail`
    the admin detail, `relay` the relay that answered, `expires_at` the request's deadline,
    `reply_session` the cloud instance's session the request named for its outcome (None on
    entries written before it was recorded): the sweeper adopts it if that instance is gone.
    `user` is the name the caller typed; `account` the GUID of the account the relay resolved
    it to (None until an outcome names it, and on entries written before accounts travelled).
    """

    request_id: str
    received_at: float
    domain: str
    user: str
    operation: str  # "reset" | "change" | "unlock"
    initiator: str | None
    caller: str
    caller_kind: str  # "entra" | "api-key" | "event"
    source: str = "api"
    unlock: bool = False
    force_change_at_next_logon: bool = False
    sealed_by_caller: bool = False
    status: str = "pending"  # "pending" | "applied" | "rejected" | "failed"
    reason: str | None = None
    message: str | None = None
    detail: str | None = None
    relay: str | None = None
    completed_at: float | None = None
    duration_ms: int | None = None
    trace_id: str | None = None
    expires_at: float | None = None
    reply_session: str | None = None
    account: str | None = None

    def completed(
        self,
        status: str,
        reason: str,
        at: float,
        *,
        message: str | None = None,
        detail: str | None = None,
        relay: str | None = None,
    ) -> AuditRecord:
        """This record with its outcome, completed at `at` (the duration follows)."""
        return dataclasses.replace(
            self,
            status=status,
            reason=reason,
            message=message,
            detail=detail,
            relay=relay,
            completed_at=at,
            duration_ms=max(0, round((at - self.received_at) * 1000)),
        )


class AuditTrail(Protocol):
    """Where requests and their outcomes are recorded."""

    async def record(self, record: AuditRecord) -> None:
        """Insert or replace the entry for `record.request_id`."""

    async def get(self, request_id: str) -> AuditRecord | None:
        """The entry for a request id, or None if there is none."""

    async def for_user(self, user: str, since: float, until: float) -> list[AuditRecord]:
        """The entries for the account `user` names (any of its names, in any spelling AD
        takes for it) received from `since` to `until`, oldest first, each once."""

    async def link(self, guid: str, names: Iterable[str]) -> None:
        """Link each of `names` to the account `guid` in the account index. The rows may be
        written after this returns (never on the caller's answer), but before this trail's next
        `for_user` reads; a failure to write them is logged, not raised."""

    async def pending(self, since: float, until: float) -> list[AuditRecord]:
        """The entries still `pending` that were received from `since` to `until`, oldest
        first."""

    async def close(self) -> None: ...


_FLOATS = {"received_at", "completed_at", "expires_at"}
_INTS = {"duration_ms"}
_BOOLS = {"unlock", "force_change_at_next_logon", "sealed_by_caller"}
_FIELDS = [f.name for f in dataclasses.fields(AuditRecord) if f.name != "request_id"]


def to_entity(record: AuditRecord) -> dict[str, Any]:
    """The Table entity for a record (None fields are left out: tables store no nulls).
    ValueError if the request id cannot be a key."""
    if record.request_id.startswith("~"):
        raise ValueError("request id must not start with ~ (the partitions of marks)")
    entity: dict[str, Any] = {
        "PartitionKey": check_key(record.request_id, "request id"),
        "RowKey": _ROW,
    }
    for name in _FIELDS:
        value = getattr(record, name)
        if value is not None:
            # A Python int is stored as Int32, too small for an epoch or for a drift found weeks
            # after the fact (2**31 ms is under 25 days): numbers are stored as Double, exact up
            # to 2**53. Rows written as Int32 before still read back.
            entity[name] = float(value) if name in _FLOATS | _INTS else value
    return entity


def from_entity(entity: Mapping[str, Any]) -> AuditRecord:
    """The record a Table entity holds; ValueError (naming the field, never its value) if the
    entity is not one."""
    values: dict[str, Any] = {}
    for name in _FIELDS:
        value = entity.get(name)
        try:
            if name in _FLOATS:
                value = None if value is None else float(value)
            elif name in _INTS:
                value = None if value is None else int(value)
            elif name in _BOOLS:
                value = bool(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} is not a number") from None
        values[name] = value
    for name in ("received_at", "domain", "user", "operation", "caller", "caller_kind"):
        if values[name] is None:
            raise ValueError(f"{name} is missing")
    values["source"] = values["source"] or "api"
    values["status"] = values["status"] or "pending"
    # A copy in a user's partition names its request; an entry is keyed by it.
    request_id = entity.get("request_id") or entity.get("PartitionKey")
    return AuditRecord(request_id=str(request_id), **values)


# The partition of the marks of pending entries. No request id starts with "~" (REQUEST_ID), so no
# entry can be in it; every entry has RowKey "", every mark its request id.
PENDING_PARTITION = "~pending"


def user_partition(user: str) -> str:
    """The partition of a name's copies: a digest of the name as AD compares it (`name_key`;
    for a UPN, `upn_key`, as before the account index), so every name makes a valid key and
    spellings of one name meet."""
    return _partition_of_key(name_key(user))


def _partition_of_key(key: str) -> str:
    return "~user-" + key_digest(key)


def once_each_oldest_first(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """One record per request id (a completed copy over a pending one), oldest first."""
    kept: dict[str, AuditRecord] = {}
    for record in records:
        seen = kept.get(record.request_id)
        if seen is None or (seen.status == "pending" and record.status != "pending"):
            kept[record.request_id] = record
    return sorted(kept.values(), key=lambda record: record.received_at)


def user_row(received_at: float, request_id: str) -> str:
    """A copy's RowKey: the time received, zero-padded so that text order is time order."""
    return f"{received_at:020.6f}:{request_id}"


class TableAuditTrail:
    """The audit trail in Azure Table Storage (table `WritebackAudit` unless told otherwise)."""

    def __init__(self, table: Table | TableClient) -> None:
        self._table = table if isinstance(table, Table) else Table(table)
        self._index = TableAccountIndex(self._table)
        self._later: set[asyncio.Task[None]] = set()  # see `_after_the_answer`

    @classmethod
    def from_connection_string(
        cls, connection_string: str, table_name: str = AUDIT_TABLE, **client_options: Any
    ) -> TableAuditTrail:
        return cls(Table.from_connection_string(connection_string, table_name, **client_options))

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str,
        credential: Credential,
        table_name: str = AUDIT_TABLE,
        **client_options: Any,
    ) -> TableAuditTrail:
        """Identity-based access: the table service URL and, in Azure, a managed identity."""
        return cls(Table.from_endpoint(endpoint, credential, table_name, **client_options))

    async def record(self, record: AuditRecord) -> None:
        entity = to_entity(record)
        pending = record.status == "pending"
        if pending:
            # A pending request's copy is its mark: the one partition of requests in flight,
            # which `for_user` reads too (only what is in flight is in it).
            rows = [{**entity, "PartitionKey": PENDING_PARTITION, "RowKey": record.request_id,
                     "request_id": record.request_id}]  # fmt: skip
        else:
            partitions = {user_partition(record.user)}
            if record.account:
                partitions.add(user_partition(record.account))  # filed under the account too
            rows = [
                {**entity, "PartitionKey": partition,
                 "RowKey": user_row(record.received_at, record.request_id),
                 "request_id": record.request_id}
                for partition in sorted(partitions)
            ]  # fmt: skip
        client = await self._table.client()
        try:
            # Replace, not merge: a completed entry must not keep what the pending one had. The
            # entry and its copies (or its mark) are independent rows, written side by side: one
            # round trip on the request's path, whatever their number. A copy or mark whose
            # entry failed misleads no one: `for_user` trusts the entry over a pending copy, and
            # the sweeper drops a mark with no pending entry (it reads only marks older than the
            # callers' wait, never one whose entry is still being written).
            await asyncio.gather(
                client.upsert_entity(entity, mode=UpdateMode.REPLACE),
                *(client.upsert_entity(row, mode=UpdateMode.REPLACE) for row in rows),
            )
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "record a request") from exc
        if not pending:
            # The mark only tells the sweeper what to adopt, and it drops one whose entry is no
            # longer pending: its removal need not delay the answer (404 is fine).
            self._after_the_answer(
                client.delete_entity(PENDING_PARTITION, record.request_id),
                "pending mark not removed", Stage.AUDIT_UNMARK,
            )  # fmt: skip

    async def get(self, request_id: str) -> AuditRecord | None:
        check_key(request_id, "request id")
        client = await self._table.client()
        try:
            entity = await client.get_entity(request_id, _ROW)
        except azure.ResourceNotFoundError as exc:
            if error_code(exc) == "TableNotFound":
                raise self._table.error(exc, "read a request") from exc
            return None
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "read a request") from exc
        return self._records([entity], "read a request")[0]

    async def for_user(self, user: str, since: float, until: float) -> list[AuditRecord]:
        await self._caught_up()
        keys, guids = await account_keys(user, self._index.guids_of, self._index.names_of)
        partitions = {_partition_of_key(key) for key in keys} | {user_partition(g) for g in guids}
        # A range of each partition (";" sorts after ":", so `until` itself is in), and of the
        # requests in flight.
        found = await asyncio.gather(
            self._in_flight(since, until),
            *(
                self._query(
                    "PartitionKey eq @user and RowKey ge @since and RowKey lt @until",
                    {
                        "user": partition,
                        "since": f"{max(0.0, since):020.6f}",
                        "until": f"{max(0.0, until):020.6f};",
                    },
                )
                for partition in sorted(partitions)
            ),
        )
        # The digests are 160 bits; the check keeps a collision from showing another's entry.
        # A request typed by the account's GUID is the account's too (that name is not linked).
        names = keys | guids
        copies = once_each_oldest_first(
            record
            for records in found
            for record in records
            if name_key(record.user) in names or record.account in guids
        )
        # A copy still pending may be behind its entry (the completed copy failed) or have no
        # entry at all (the entry failed, and the caller was told the request was not sent):
        # the entry says which, with one point read for each.
        entries = await asyncio.gather(
            *(self.get(r.request_id) for r in copies if r.status == "pending")
        )
        current = {entry.request_id: entry for entry in entries if entry is not None}
        return [
            current.get(record.request_id, record) if record.status == "pending" else record
            for record in copies
            if record.status != "pending" or record.request_id in current
        ]

    async def _in_flight(self, since: float, until: float) -> list[AuditRecord]:
        """The pending requests received from `since` to `until`, from their marks (a mark
        written before marks held the request, which its copy in the user's partition
        does, is skipped)."""
        marks = await self._marks(since, until, "query requests")
        return self._records([mark for mark in marks if "user" in mark], "query requests")

    async def _marks(self, since: float, until: float, what: str) -> list[Mapping[str, Any]]:
        """The marks of the requests received from `since` to `until` that are (or were, if
        a removal failed) pending: one small partition, whatever the size of the table."""
        client = await self._table.client()
        try:
            marks = client.query_entities(
                "PartitionKey eq @pending and received_at ge @since and received_at le @until",
                parameters={"pending": PENDING_PARTITION, "since": float(since),
                            "until": float(until)},
            )  # fmt: skip
            return [mark async for mark in marks]
        except SDK_ERRORS as exc:
            raise self._table.error(exc, what) from exc

    async def link(self, guid: str, names: Iterable[str]) -> None:
        check_key(guid, "account GUID")
        self._after_the_answer(
            self._index.link(guid, list(names)), "account index not written", Stage.AUDIT_LINK
        )

    def _after_the_answer(self, write: Coroutine[Any, Any, Any], failed: str, stage: Stage) -> None:
        """Run `write` without waiting for it: what only the per-user lookups or the sweeper
        read (the account index, the removal of a pending mark) stays off the caller's answer.
        This trail's reads wait for it first (`_caught_up`), and closing waits for it. A failure
        is logged, as a failed index write always was: the sweeper drops a stale mark, and the
        account's next outcome links its names again."""

        async def quietly() -> None:
            try:
                with tracing.stage(stage):
                    await write
            except Exception as exc:  # a task's failure has no caller to reach
                log.error(failed, extra={"error": str(self._table.error(exc, failed))})

        task = asyncio.ensure_future(quietly())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _caught_up(self) -> None:
        """Wait for the writes this trail left for after the answer until now (not for those
        started meanwhile: under steady traffic that could be forever). A reader cancelled
        while it waits cancels none of them."""
        if self._later:
            await asyncio.wait(set(self._later))

    async def pending(self, since: float, until: float) -> list[AuditRecord]:
        # One partition holds a mark per pending entry, so this reads a few rows whatever the
        # size of the table. A mark whose entry is no longer pending (its removal failed after
        # the outcome was recorded) is removed here, once the entry is filed again.
        await self._caught_up()
        marks = await self._marks(since, until, "list pending requests")
        ids = [str(mark["RowKey"]) for mark in marks]
        client = await self._table.client()
        found = []
        for request_id in ids:
            record = await self.get(request_id)
            if record is not None and record.status == "pending":
                found.append(record)
                continue
            if record is not None:
                # Completed, but the mark stayed: its copies may have failed with it, and the
                # mark is what the per-account lookups still find it by. Recorded again (the
                # same entry, its copies), it loses the mark only after that.
                await self.record(record)
                continue
            try:
                await client.delete_entity(PENDING_PARTITION, request_id)
            except SDK_ERRORS as exc:
                raise self._table.error(exc, "list pending requests") from exc
        await self._caught_up()  # the removals of the marks of entries filed again
        return sorted(found, key=lambda record: record.received_at)

    async def _query(self, query: str, parameters: dict[str, Any]) -> list[AuditRecord]:
        """The entries a parameterised filter selects, oldest first (values are never pasted
        into the filter text)."""
        client = await self._table.client()
        try:
            entities = client.query_entities(query, parameters=parameters)
            found = [entity async for entity in entities]
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "query requests") from exc
        records = self._records(found, "query requests")
        return sorted(records, key=lambda record: record.received_at)

    def _records(self, entities: Iterable[Mapping[str, Any]], what: str) -> list[AuditRecord]:
        """The records the entities hold; StorageError naming `what` (and the field, never its
        value) for one that is not a record."""
        try:
            return [from_entity(entity) for entity in entities]
        except ValueError as exc:
            raise StorageError(self._table.name, f"{what}: malformed entity: {exc}") from exc

    async def close(self) -> None:
        while self._later:  # including writes left while closing
            await self._caught_up()
        await self._table.close()
