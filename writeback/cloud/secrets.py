"""The cloud's keys: its signing key and each domain's relay keys, from Key Vault or a directory.

The cloud signs requests with its own ES256 key (a private JWK) and seals passwords to the public
keys its relays registered (one JWKS per AD domain). Both live as secrets behind the small
`SecretSource` port: `KeyVaultSecrets` (azure-keyvault-secrets, the cloud's managed identity) in
Azure, `LocalSecrets` (one owner-only file per secret) in development. `CloudKeys` parses and
caches them and refetches after a refresh interval, so a rotation is picked up without a restart.
azure-core's exceptions become `SecretsUnavailable` in `translate_keyvault_error` and nowhere
else. Nothing here ever puts a secret's value into a message, an exception or a log record.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from azure.core import exceptions as azure
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import DefaultAzureCredential
from azure.keyvault.secrets.aio import SecretClient
from joserfc.jwk import ECKey, KeySet

from writeback.errors import ConfigurationError, SecretsUnavailable
from writeback.sealing import EC_CURVE, SIGNING, public_keyset

log = logging.getLogger(__name__)

SIGNING_KEY_SECRET = "writeback-cloud-signing-key"  # noqa: S105 - a secret's name, not a secret
RELAY_KEYS_PREFIX = "writeback-relays-"
KEYVAULT_URL_ENV = "WRITEBACK_KEYVAULT_URL"
SECRETS_DIR_ENV = "WRITEBACK_SECRETS_DIR"
REFRESH_ENV = "WRITEBACK_KEYS_REFRESH_SECONDS"
UNRESOLVED_REFERENCE = "@microsoft.keyvault("
DEFAULT_REFRESH_SECONDS = 300.0
MAX_REFRESH_SECONDS = 86400.0
# How long cached keys outlive a failed refresh. A Key Vault outage or a token hiccup should not
# stop every password reset at once, but a vault we cannot read for an hour means a broken
# identity or role assignment that must surface, and a rotated-out key must stop being used.
DEFAULT_GRACE_SECONDS = 3600.0
# While serving from grace, how often to try the source again (one caller tries, the rest wait).
DEFAULT_RETRY_SECONDS = 30.0
# Short network timeouts and few retries: a key fetch happens on a caller's request path.
KEYVAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 2,
    "connection_timeout": 5,
    "read_timeout": 10,
}
MAX_SECRET_BYTES = 25 * 1024  # Key Vault's own limit on a secret's value
_SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_DOMAIN = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")

T = TypeVar("T")


def _secret_name(name: str) -> str:
    if not _SECRET_NAME.fullmatch(name):
        raise ConfigurationError(
            "secret name", f"{name[:80]!r} is not 1 to 127 of 0-9 a-z A-Z '-' (Key Vault's rule)"
        )
    return name


def relay_keys_secret(domain: str) -> str:
    """The name of the secret holding `domain`'s relay JWKS: `writeback-relays-` and the domain,
    lower-cased, each dash doubled and each dot made a dash (Key Vault names allow only 0-9 a-z
    A-Z and '-'). Doubling keeps the names apart: `a-b.c` and `a.b-c` would otherwise share one,
    and one domain's requests would be sealed to another's relays."""
    lowered = domain.lower()
    if not _DOMAIN.fullmatch(lowered):
        raise ConfigurationError("domain", f"{domain[:80]!r} is not a DNS domain name")
    return _secret_name(RELAY_KEYS_PREFIX + lowered.replace("-", "--").replace(".", "-"))


class SecretSource(Protocol):
    """Where the cloud's secrets come from. `get` returns the current value of a secret or raises
    `SecretsUnavailable` naming it (missing, refused, unreachable)."""

    async def get(self, name: str) -> str: ...

    async def close(self) -> None: ...


# -- Key Vault --------------------------------------------------------------------------------
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
        _secret_name(name)
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


# -- a local directory ------------------------------------------------------------------------
class LocalSecrets:
    """Secrets as files named after them in `directory`, for development. On POSIX each file must
    be a regular file owned by this user and closed to group and others, as the relay demands of
    its keys: the signing key forges requests. (Windows has no mode bits; protect the directory
    with an ACL there.) Files are small and read synchronously."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def __repr__(self) -> str:
        return f"LocalSecrets({str(self._directory)!r})"

    async def get(self, name: str) -> str:
        path = self._directory / _secret_name(name)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            handle = os.open(path, flags)
        except FileNotFoundError:
            raise SecretsUnavailable(
                name, f"no file {name} in {self._directory}", missing=True
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a link could point anywhere
                raise ConfigurationError(SECRETS_DIR_ENV, f"{path} is a symbolic link") from exc
            raise SecretsUnavailable(name, f"cannot open {path}: {exc.strerror}") from exc
        try:
            # Checked on the open file, so the file read is the file checked.
            _check_private(path, os.fstat(handle))
            data = os.read(handle, MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise SecretsUnavailable(name, f"cannot read {path}: {exc.strerror}") from exc
        finally:
            os.close(handle)
        if len(data) > MAX_SECRET_BYTES:
            raise SecretsUnavailable(name, f"{path} is larger than {MAX_SECRET_BYTES} bytes")
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise SecretsUnavailable(name, f"{path} is not UTF-8 text") from None

    async def close(self) -> None:
        """Nothing to release."""


def _check_private(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ConfigurationError(SECRETS_DIR_ENV, f"{path} is not a regular file")
    if sys.platform == "win32":
        return
    if status.st_uid != os.getuid():
        raise ConfigurationError(
            SECRETS_DIR_ENV, f"{path} is owned by uid {status.st_uid}, not by uid {os.getuid()}"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            SECRETS_DIR_ENV, f"{path} is open to group or others (mode {mode:o}); chmod 600 it"
        )


# -- settings and wiring ----------------------------------------------------------------------
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


# -- parsing ----------------------------------------------------------------------------------
def parse_signing_key(name: str, text: str) -> ECKey:
    """The cloud's private ES256 JWK (P-256, with a kid), from secret `name`'s text."""
    setting = f"secret {name}"
    try:
        key = ECKey.import_key(json.loads(text))
    except Exception:
        # `from None`: a JSON or JWK error may quote the text, which is the private key.
        raise ConfigurationError(setting, "is not a private EC JWK") from None
    if not key.is_private or key.get("crv") != EC_CURVE:
        raise ConfigurationError(setting, f"is not a private {EC_CURVE} key")
    if not key.kid:
        raise ConfigurationError(setting, "has no kid")
    if key.get("use", "sig") != "sig" or key.get("alg", SIGNING) != SIGNING:
        raise ConfigurationError(setting, f"must be a sig key for {SIGNING}")
    return key


def parse_relay_keys(name: str, text: str) -> KeySet:
    """A domain's public relay JWKS from secret `name`'s text; private members are refused."""
    try:
        jwks = json.loads(text)
    except ValueError:
        raise ConfigurationError(f"secret {name}", "is not JSON") from None
    return public_keyset(jwks, f"secret {name}")


# -- the cache --------------------------------------------------------------------------------
@dataclass
class _Cached(Generic[T]):
    value: T = field(repr=False)
    fetched_at: float
    refresh_at: float
    stale_at: float


class CloudKeys:
    """The cloud's keys, parsed and cached per secret for `refresh_seconds`. After that the next
    caller refetches (concurrent callers share one fetch); a value that cannot be parsed raises
    `ConfigurationError` at once, since it is what the administrator stored now. If the source
    fails, the cached keys are served for `grace_seconds` more, retried every `retry_seconds`."""

    def __init__(
        self,
        source: SecretSource,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._refresh = refresh_seconds
        self._grace = grace_seconds
        self._retry = retry_seconds
        self._clock = clock
        self._cache: dict[str, _Cached[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def signing_key(self) -> ECKey:
        """The cloud's private signing key."""
        key: ECKey = await self._get(SIGNING_KEY_SECRET, parse_signing_key)
        return key

    async def relay_keys(self, domain: str) -> KeySet:
        """The public keys of `domain`'s relays (enc keys to seal to, sig keys to verify)."""
        keys: KeySet = await self._get(relay_keys_secret(domain), parse_relay_keys)
        return keys

    async def close(self) -> None:
        await self._source.close()

    async def _get(self, name: str, parse: Callable[[str, str], T]) -> T:
        cached = self._cache.get(name)
        if cached is not None and self._clock() < cached.refresh_at:
            return cast(T, cached.value)
        async with self._locks.setdefault(name, asyncio.Lock()):
            cached = self._cache.get(name)
            now = self._clock()
            if cached is not None and now < cached.refresh_at:
                return cast(T, cached.value)  # another caller refreshed meanwhile
            try:
                text = await self._source.get(name)
            except SecretsUnavailable as exc:
                if cached is None or now >= cached.stale_at:
                    raise
                cached.refresh_at = min(now + self._retry, cached.stale_at)
                log.warning(
                    "keys_refresh_failed",
                    extra={
                        "secret": name,
                        "error": str(exc),
                        "age_seconds": round(now - cached.fetched_at),
                        "grace_left_seconds": round(cached.stale_at - now),
                    },
                )
                return cast(T, cached.value)
            value = parse(name, text)
            self._cache[name] = _Cached(
                value, now, now + self._refresh, now + self._refresh + self._grace
            )
            return value
