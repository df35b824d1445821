"""Where the cloud's keys come from, as configured: a Key Vault URL or a local directory (exactly
one) and how often to refetch, read and validated once; and the source those settings name.

Refuses to start on a Key Vault reference App Service could not resolve, naming the setting and
never echoing its value. Building a source connects nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import DefaultAzureCredential

from writeback.cloud.secrets.keyvault import KeyVaultSecrets
from writeback.cloud.secrets.local import LocalSecrets
from writeback.cloud.secrets.source import (
    KEYVAULT_URL_ENV,
    REFRESH_ENV,
    SECRETS_DIR_ENV,
    SecretSource,
)
from writeback.errors import ConfigurationError

UNRESOLVED_REFERENCE = "@microsoft.keyvault("
DEFAULT_REFRESH_SECONDS = 300.0
MAX_REFRESH_SECONDS = 86400.0


def check_resolved(environ: Mapping[str, str]) -> None:
    """Refuse to start if an app setting is still a Key Vault reference: App Service leaves the
    literal `@Microsoft.KeyVault(...)` in place when it cannot resolve one (no identity, no role,
    wrong name). Names the first such setting, in sorted order; never echoes a value."""
    for name in sorted(environ):
        if environ[name].lstrip().lower().startswith(UNRESOLVED_REFERENCE):
            raise ConfigurationError(
                name,
                "is an unresolved Key Vault reference: check the app's identity, its "
                "Key Vault Secrets User role and the reference's vault and secret names",
            )


@dataclass(frozen=True)
class CloudKeysSettings:
    """Where the cloud's keys come from: a Key Vault URL or a local directory (exactly one), and
    how often to refetch them."""

    vault_url: str | None = None
    secrets_dir: Path | None = None
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CloudKeysSettings:
        """Read and validate WRITEBACK_KEYVAULT_URL / WRITEBACK_SECRETS_DIR and
        WRITEBACK_KEYS_REFRESH_SECONDS."""
        check_resolved(
            {
                k: environ[k]
                for k in (KEYVAULT_URL_ENV, SECRETS_DIR_ENV, REFRESH_ENV)
                if k in environ
            }
        )
        vault_url = environ.get(KEYVAULT_URL_ENV, "").strip() or None
        directory = environ.get(SECRETS_DIR_ENV, "").strip() or None
        if (vault_url is None) == (directory is None):
            raise ConfigurationError(
                KEYVAULT_URL_ENV, f"set exactly one of {KEYVAULT_URL_ENV} and {SECRETS_DIR_ENV}"
            )
        if vault_url is not None:
            parts = urlsplit(vault_url)
            if parts.scheme != "https" or not parts.hostname or parts.path.strip("/"):
                raise ConfigurationError(
                    KEYVAULT_URL_ENV,
                    "must be a vault's https URL, like https://<name>.vault.azure.net",
                )
            if parts.query or parts.fragment or parts.username or parts.password:
                raise ConfigurationError(KEYVAULT_URL_ENV, "must have no query, fragment or user")
        return cls(
            vault_url=vault_url,
            secrets_dir=Path(directory) if directory is not None else None,
            refresh_seconds=_refresh(environ.get(REFRESH_ENV)),
        )


def _refresh(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return DEFAULT_REFRESH_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigurationError(REFRESH_ENV, f"{raw[:40]!r} is not a number of seconds") from None
    if not 1 <= seconds <= MAX_REFRESH_SECONDS:
        raise ConfigurationError(REFRESH_ENV, f"must be between 1 and {MAX_REFRESH_SECONDS:.0f}")
    return seconds


def build_secret_source(
    settings: CloudKeysSettings,
    credential_factory: Callable[[], AsyncTokenCredential] = DefaultAzureCredential,
    **client_options: Any,
) -> SecretSource:
    """The source `settings` name; a Key Vault source gets (and will close) a new credential."""
    if settings.vault_url is not None:
        return KeyVaultSecrets(
            settings.vault_url, credential_factory(), owns_credential=True, **client_options
        )
    if settings.secrets_dir is None:  # from_env guarantees one of the two
        raise ConfigurationError(KEYVAULT_URL_ENV, f"or {SECRETS_DIR_ENV} must be set")
    return LocalSecrets(settings.secrets_dir)
