"""The account index's rows in the audit table (`writeback.cloud.accounts` says what it is for).

Two partition families, which no request id can name (they start with `~`): `~name-<digest of a
name key>` holds one row per GUID the name was seen for (RowKey the GUID), `~guid-<GUID>` one row
per name the account was seen by (RowKey the name key's digest, `name` the name). Writes are
idempotent upserts, the account's own rows in one transaction: a name seen again changes nothing.
Reads are single-partition queries with the partition as a parameter, never pasted into the
filter. Only the audit trail uses it, on the same `Table`; storage errors become `StorageError`
there and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from azure.data.tables import UpdateMode

from writeback.cloud.accounts import key_digest, name_key
from writeback.cloud.tables import SDK_ERRORS, Table, check_key


def names_partition(key: str) -> str:
    """The partition of a name key: one row per GUID the name was seen for."""
    return "~name-" + key_digest(key)


def guid_partition(guid: str) -> str:
    """The partition of a GUID: one row per name the account was seen by."""
    return "~guid-" + guid


class TableAccountIndex:
    """The account index in the audit table."""

    def __init__(self, table: Table) -> None:
        self._table = table

    async def link(self, guid: str, names: Iterable[str]) -> None:
        """Link each of `names` to the account `guid`, both ways."""
        check_key(guid, "account GUID")
        by_name, of_guid = [], {}
        for name in names:
            key = name_key(name)
            by_name.append({"PartitionKey": names_partition(key), "RowKey": guid})
            of_guid[key_digest(key)] = {"PartitionKey": guid_partition(guid),
                                        "RowKey": key_digest(key), "name": name}  # fmt: skip
        client = await self._table.client()
        try:
            # A name's row is in a partition of its own; the account's rows share one, so they
            # are one transaction (at most 100 operations: an account has a handful of names).
            await asyncio.gather(
                *(client.upsert_entity(row, mode=UpdateMode.REPLACE) for row in by_name),
                *(
                    [client.submit_transaction(
                        [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in of_guid.values()]
                    )] if of_guid else []
                ),
            )  # fmt: skip
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "index an account") from exc

    async def guids_of(self, key: str) -> list[str]:
        """The GUIDs the name key was seen for."""
        rows = await self._rows(names_partition(key))
        return [str(row["RowKey"]) for row in rows]

    async def names_of(self, guid: str) -> list[str]:
        """The names the account `guid` was seen by."""
        rows = await self._rows(guid_partition(guid))
        return [str(row["name"]) for row in rows if isinstance(row.get("name"), str)]

    async def _rows(self, partition: str) -> list[Mapping[str, Any]]:
        client = await self._table.client()
        try:
            entities = client.query_entities("PartitionKey eq @p", parameters={"p": partition})
            return [entity async for entity in entities]
        except SDK_ERRORS as exc:
            raise self._table.error(exc, "read the account index") from exc
