"""How callers authenticate, as configured: `AuthSettings.from_env` reads and validates the
WRITEBACK_AUTH_* (Entra ID tenant, audiences, authority, JWKS URL), WRITEBACK_API_KEY* and
WRITEBACK_SELF_SERVICE_* (the strong verification a user's own reset needs) settings once.

A message about a bad setting names the setting and never its value: the API keys are secrets.
Nothing here connects anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from writeback.cloud.auth.callers import ALL_ROLES, Role
from writeback.errors import ConfigurationError

TENANT_SETTING = "WRITEBACK_AUTH_TENANT_ID"
AUDIENCES_SETTING = "WRITEBACK_AUTH_AUDIENCES"
JWKS_URL_SETTING = "WRITEBACK_AUTH_JWKS_URL"
AUTHORITY_SETTING = "WRITEBACK_AUTH_AUTHORITY"
SELF_SERVICE_ACRS_SETTING = "WRITEBACK_SELF_SERVICE_ACRS"
SELF_SERVICE_AMR_SETTING = "WRITEBACK_SELF_SERVICE_AMR"
API_KEYS_SETTING = "WRITEBACK_API_KEYS"
API_KEY_ROLES_SETTING = "WRITEBACK_API_KEY_ROLES"

MIN_API_KEY_LENGTH = 32
_UNRESOLVED_REFERENCE = "@microsoft.keyvault("
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
ENTRA_AUTHORITY = "https://login.microsoftonline.com"  # Entra ID's global cloud
# Conditional Access authentication context ids, c1 to c99 (authenticationContextClassReference).
_CONTEXT_ID = re.compile(r"c[1-9][0-9]?")
# amr values are short lower-case words (RFC 8176, Entra's pwd, mfa, rsa, ngcmfa, ...).
_AMR_VALUE = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class AuthSettings:
    """How callers authenticate: Entra ID tokens (tenant + audiences), API keys, or both."""

    tenant_id: str | None = None
    audiences: tuple[str, ...] = ()
    jwks_url: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_roles: frozenset[Role] = ALL_ROLES
    leeway_seconds: int = 60  # clock skew allowed on exp, nbf and iat
    authority: str = ENTRA_AUTHORITY
    self_service_acrs: tuple[str, ...] = ()
    self_service_amr: tuple[str, ...] = ()

    @property
    def issuers(self) -> tuple[str, ...]:
        """The issuers a token may name: v2.0 tokens, and with Entra's own authority the v1.0
        ones (an app registration's default accessTokenAcceptedVersion)."""
        if self.tenant_id is None:
            return ()
        issuers = [f"{self.authority}/{self.tenant_id}/v2.0"]
        if self.authority == ENTRA_AUTHORITY:
            issuers.append(f"https://sts.windows.net/{self.tenant_id}/")
        return tuple(issuers)

    @property
    def step_up_required(self) -> bool:
        """Whether a user's own reset needs strong verification shown in the token."""
        return bool(self.self_service_acrs or self.self_service_amr)

    @property
    def entra_enabled(self) -> bool:
        return self.tenant_id is not None

    @property
    def api_keys_enabled(self) -> bool:
        return bool(self.api_keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AuthSettings:
        """Read and validate the WRITEBACK_AUTH_* and WRITEBACK_API_KEY* settings."""
        tenant = _read(environ, TENANT_SETTING)
        audiences = tuple(_split(_read(environ, AUDIENCES_SETTING)))
        jwks_url = _read(environ, JWKS_URL_SETTING)
        authority = _read(environ, AUTHORITY_SETTING).rstrip("/")
        acrs, amr = _step_up(environ)
        keys = tuple(dict.fromkeys(_split(_read(environ, API_KEYS_SETTING))))
        key_roles = _split(_read(environ, API_KEY_ROLES_SETTING))
        if tenant and not audiences:
            raise ConfigurationError(AUDIENCES_SETTING, f"is required when {TENANT_SETTING} is")
        if audiences and not tenant:
            raise ConfigurationError(TENANT_SETTING, f"is required when {AUDIENCES_SETTING} is")
        if not tenant and not keys:
            raise ConfigurationError(
                TENANT_SETTING,
                f"no way to authenticate callers: set {TENANT_SETTING} and {AUDIENCES_SETTING} "
                f"(Entra ID tokens), {API_KEYS_SETTING} (API keys), or both",
            )
        for name, value in (
            (JWKS_URL_SETTING, jwks_url),
            (AUTHORITY_SETTING, authority),
            (SELF_SERVICE_ACRS_SETTING, acrs),
            (SELF_SERVICE_AMR_SETTING, amr),
        ):
            if value and not tenant:
                raise ConfigurationError(name, f"has no effect without {TENANT_SETTING}")
        _check_keys(keys, key_roles)
        if tenant:
            if not _GUID.fullmatch(tenant):
                # Tokens name their tenant by ID (tid, iss), never by domain: a domain here
                # would silently refuse every token.
                raise ConfigurationError(
                    TENANT_SETTING, "must be the directory (tenant) ID, a GUID"
                )
            tenant = tenant.lower()
            authority = _check_authority(authority) or ENTRA_AUTHORITY
            jwks_url = _check_url(jwks_url, JWKS_URL_SETTING) or tenant_jwks_url(tenant, authority)
        for audience in audiences:
            if any(char.isspace() for char in audience):
                raise ConfigurationError(AUDIENCES_SETTING, "audiences are separated by commas")
        return cls(
            tenant_id=tenant or None,
            audiences=audiences,
            jwks_url=jwks_url or None,
            api_keys=keys,
            api_key_roles=frozenset(Role(role) for role in key_roles) or ALL_ROLES,
            authority=authority or ENTRA_AUTHORITY,
            self_service_acrs=acrs,
            self_service_amr=amr,
        )


def tenant_jwks_url(tenant: str, authority: str = ENTRA_AUTHORITY) -> str:
    """Where Entra ID (or the authority standing in for it) publishes `tenant`'s signing keys."""
    return f"{authority}/{tenant}/discovery/v2.0/keys"


def _check_keys(keys: tuple[str, ...], key_roles: list[str]) -> None:
    if key_roles and not keys:
        raise ConfigurationError(API_KEY_ROLES_SETTING, f"has no effect without {API_KEYS_SETTING}")
    for number, key in enumerate(keys, start=1):
        if len(key) < MIN_API_KEY_LENGTH or not key.isprintable() or " " in key:
            raise ConfigurationError(  # says which key, never what it is
                API_KEYS_SETTING,
                f"key {number} of {len(keys)} must be at least {MIN_API_KEY_LENGTH} "
                "printable characters without spaces",
            )
    unknown = sorted(set(key_roles) - set(ALL_ROLES))
    if unknown:
        raise ConfigurationError(
            API_KEY_ROLES_SETTING,
            f"unknown roles {', '.join(unknown)}; known: {', '.join(sorted(ALL_ROLES))}",
        )


def _step_up(environ: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The authentication contexts and methods a user's own reset needs, checked."""
    acrs = tuple(dict.fromkeys(_split(_read(environ, SELF_SERVICE_ACRS_SETTING))))
    amr = tuple(dict.fromkeys(_split(_read(environ, SELF_SERVICE_AMR_SETTING))))
    if not all(_CONTEXT_ID.fullmatch(context) for context in acrs):
        raise ConfigurationError(
            SELF_SERVICE_ACRS_SETTING,
            "lists authentication context ids, c1 to c99, separated by commas",
        )
    if not all(_AMR_VALUE.fullmatch(method) for method in amr):
        raise ConfigurationError(
            SELF_SERVICE_AMR_SETTING,
            "lists authentication methods (amr values such as mfa), separated by commas",
        )
    return acrs, amr


def _read(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if value.lower().startswith(_UNRESOLVED_REFERENCE):
        raise ConfigurationError(  # App Service leaves the reference in place when it fails
            name,
            "is an unresolved Key Vault reference: the Function App could not read the secret "
            "(check its managed identity, its Key Vault Secrets User role and the reference)",
        )
    return value


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _check_url(url: str, setting: str) -> str:
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url  # a local test server
    raise ConfigurationError(setting, "must be an https:// URL (http:// only on loopback)")


def _check_authority(authority: str) -> str:
    """An authority is a scheme and a host (and port): the tenant and paths are added to it."""
    if not authority:
        return authority
    _check_url(authority, AUTHORITY_SETTING)
    if any(char.isspace() or char in "'\"<>;,\\" for char in authority):
        # It also goes into the pages' Content-Security-Policy header.
        raise ConfigurationError(AUTHORITY_SETTING, "must be a plain URL (no quotes or spaces)")
    parts = urlsplit(authority)
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            AUTHORITY_SETTING,
            "must be only a scheme and a host, such as https://login.microsoftonline.com",
        )
    return authority
