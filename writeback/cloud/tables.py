"""Azure Table Storage plumbing shared by the audit trail and the agents registry.

`Table` wraps one async `TableClient`: built from a connection string (Azurite, or an account key)
or from the table service endpoint and a credential (in Azure, the Function's managed identity and
`AzureWebJobsStorage__tableServiceUri`); nothing connects before the first operation, which creates
the table if it is missing. Keys are checked before any call (Table keys forbid `/ \\ # ?` and
control characters). azure-core exceptions become `StorageError` in `translate_storage_error` and
nowhere else; the message keeps the HTTP status and the service's error code, never a response
body, never an entity's contents.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from azure.core import exceptions as azure
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableClient

from writeback.errors import StorageError

Credential = AsyncTokenCredential | AzureNamedKeyCredential | AzureSasCredential

# What the Table service refuses in PartitionKey and RowKey, plus its 1 KiB (UTF-16) size limit.
_FORBIDDEN_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY_CHARS = 512
# The exceptions the SDK raises besides AzureError: its (de)serialisers are ValueErrors.
SDK_ERRORS = (azure.AzureError, azure.SerializationError, azure.DeserializationError)


def check_key(value: str, what: str) -> str:
    """`value` if it can be a PartitionKey or RowKey; ValueError (naming `what`) if not."""
    if not value or len(value) > _MAX_KEY_CHARS or _FORBIDDEN_IN_KEYS.search(value):
        raise ValueError(
            f"{what} must be 1 to {_MAX_KEY_CHARS} characters without / \\ # ? or control "
            "characters"
        )
    return value


def error_code(exc: BaseException) -> str | None:
    """The service's error code (`TableNotFound`, `AuthorizationFailure`, ...), if it sent one."""
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))


def translate_storage_error(exc: BaseException, table: str, operation: str) -> StorageError:
    """The one conversion from azure-core (and socket) exceptions to ours."""
    if isinstance(exc, StorageError):
        return exc
    kind = type(exc).__name__
    if isinstance(exc, azure.ClientAuthenticationError):
        return StorageError(
            table,
            f"{operation}: authentication failed ({kind}): check the account key or the "
            "identity's role (Storage Table Data Contributor)",
        )
    if isinstance(exc, azure.HttpResponseError):
        code = error_code(exc) or "no error code"
        if exc.status_code == 403:
            return StorageError(
                table,
                f"{operation}: access refused ({code}): check the account key, or grant the "
                "identity Storage Table Data Contributor",
            )
        return StorageError(table, f"{operation}: the service answered {exc.status_code} ({code})")
    if isinstance(exc, azure.ServiceRequestError | azure.ServiceResponseError | OSError):
        return StorageError(table, f"{operation}: the table service is unreachable ({kind})")
    return StorageError(table, f"{operation}: the table service could not be used ({kind})")


class Table:
    """One table behind an SDK client, created on first use. `client_options` go to the
    SDK's `TableClient` (`retry_total`, `connection_timeout`, ...)."""

    def __init__(self, client: TableClient) -> None:
        self._client = client
        self._created = False
        self._creating = asyncio.Lock()

    @classmethod
    def from_connection_string(
        cls, connection_string: str, table_name: str, **client_options: Any
    ) -> Table:
        """A table reached with a connection string (Azurite, or an account key)."""
        return cls(
            TableClient.from_connection_string(connection_string, table_name, **client_options)
        )

    @classmethod
    def from_endpoint(
        cls, endpoint: str, credential: Credential, table_name: str, **client_options: Any
    ) -> Table:
        """A table reached with a credential (in Azure, the Function's managed identity);
        `endpoint` is the table service URL, https://<account>.table.core.windows.net."""
        return cls(TableClient(endpoint, table_name, credential=credential, **client_options))

    @property
    def name(self) -> str:
        return self._client.table_name

    def error(self, exc: BaseException, operation: str) -> StorageError:
        """`translate_storage_error` for this table."""
        return translate_storage_error(exc, self.name, operation)

    async def client(self) -> TableClient:
        """The SDK client, once the table exists (created here on first use)."""
        if not self._created:
            async with self._creating:
                if not self._created:
                    try:
                        await self._client.create_table()
                    except azure.ResourceExistsError:
                        pass  # created by an earlier run, another instance, or infra/
                    except SDK_ERRORS as exc:
                        raise self.error(exc, "create the table") from exc
                    self._created = True
        return self._client

    async def close(self) -> None:
        await self._client.close()
