"""The cloud's secrets from an Azure Key Vault, through the async SDK and the app's identity.

azure-core's exceptions become `SecretsUnavailable` in `translate_keyvault_error` and nowhere
else; the text keeps a status and Key Vault's error code, never a response body or a value.
Constructing a source connects nothing.
"""

from __future__ import annotations

from typing import Any

from azure.core import exceptions as azure
from azure.core.credentials_async import AsyncTokenCredential
from azure.keyvault.secrets.aio import SecretClient

from writeback.cloud.secrets.source import secret_name
from writeback.errors import SecretsUnavailable

# Short network timeouts and few retries: a key fetch happens on a caller's request path.
KEYVAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 2,
    "connection_timeout": 5,
    "read_timeout": 10,
}


def translate_keyvault_error(exc: BaseException, name: str) -> SecretsUnavailable:
    """The one conversion from azure-core (and socket) exceptions to ours. The text keeps the
    status and Key Vault's error code, never a response body."""
    if isinstance(exc, SecretsUnavailable):
        return exc
    kind = type(exc).__name__
    if isinstance(exc, azure.ResourceNotFoundError):
        return SecretsUnavailable(name, "not found in the Key Vault", missing=True)
    if isinstance(exc, azure.ClientAuthenticationError):
        return SecretsUnavailable(
            name, f"authentication to Key Vault failed ({kind}): check the app's identity"
        )
    if isinstance(exc, azure.HttpResponseError):
        code = getattr(exc.error, "code", None) or "no error code"
        if exc.status_code == 403:
            return SecretsUnavailable(
                name,
                f"Key Vault refused access ({code}): grant the identity Key Vault Secrets User",
            )
        return SecretsUnavailable(name, f"Key Vault answered {exc.status_code} ({code})")
    if isinstance(exc, azure.ServiceRequestError | azure.ServiceResponseError | OSError):
        return SecretsUnavailable(name, f"Key Vault is unreachable ({kind})")
    return SecretsUnavailable(name, f"Key Vault could not be used ({kind})")


class KeyVaultSecrets:
    """Secrets from an Azure Key Vault through the async SDK. Constructing it connects nothing;
    `client_options` go to `SecretClient` (tests pass `connection_verify`, for example)."""

    def __init__(
        self,
        vault_url: str,
        credential: AsyncTokenCredential,
        *,
        owns_credential: bool = False,
        **client_options: Any,
    ) -> None:
        self._credential = credential
        self._owns_credential = owns_credential
        options = {**KEYVAULT_CLIENT_OPTIONS, **client_options}
        self._client = SecretClient(vault_url, credential, **options)

    def __repr__(self) -> str:
        return f"KeyVaultSecrets({self._client.vault_url!r})"

    async def get(self, name: str) -> str:
        """The latest enabled version's value of secret `name`."""
        secret_name(name)
        try:
            secret = await self._client.get_secret(name)
        except (azure.AzureError, OSError) as exc:
            raise translate_keyvault_error(exc, name) from exc
        if secret.value is None:
            raise SecretsUnavailable(name, "Key Vault returned no value")
        return secret.value

    async def close(self) -> None:
        try:
            await self._client.close()
        finally:
            if self._owns_credential:
                await self._credential.close()
