"""Who is calling the writeback API, and may they: Entra ID access tokens, API keys, app roles.

A caller presents `Authorization: Bearer <Entra ID access token>` (RS256 only, verified against
the tenant's published keys; issuer, audience, tenant and lifetime checked; app roles from the
`roles` claim) or `x-functions-key: <key>` (compared in constant time with every configured key;
such a caller gets the configured key roles). The result is a `Caller` that says who called, for
the audit, and never how they proved it: no token, key or part of either ever reaches a `Caller`,
an exception message or a log record. joserfc's and aiohttp's exceptions become `AuthError` here
and nowhere else.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import RSAKey

from writeback.errors import AuthError, ConfigurationError
from writeback.protocol import Initiator, Operation

__all__ = [  # AuthError is re-exported: the entry point catches it from here
    "ALL_ROLES",
    "API_KEYS_SETTING",
    "API_KEY_ROLES_SETTING",
    "AUDIENCES_SETTING",
    "JWKS_URL_SETTING",
    "READ",
    "TENANT_SETTING",
    "AuthError",
    "AuthReason",
    "AuthSettings",
    "Authenticator",
    "Caller",
    "HttpJwksFetcher",
    "JwksFetcher",
    "Role",
    "SigningKeys",
    "required_role",
]

log = logging.getLogger(__name__)

TENANT_SETTING = "WRITEBACK_AUTH_TENANT_ID"
AUDIENCES_SETTING = "WRITEBACK_AUTH_AUDIENCES"
JWKS_URL_SETTING = "WRITEBACK_AUTH_JWKS_URL"
API_KEYS_SETTING = "WRITEBACK_API_KEYS"
API_KEY_ROLES_SETTING = "WRITEBACK_API_KEY_ROLES"

ALGORITHM = "RS256"  # what Entra ID signs access tokens with; nothing else is ever accepted
MIN_API_KEY_LENGTH = 32
MIN_RSA_BITS = 2048
MAX_TOKEN_LENGTH = 32 * 1024  # Entra tokens are a few KiB; group overage keeps them small
MAX_JWKS_BYTES = 256 * 1024
_UNRESOLVED_REFERENCE = "@microsoft.keyvault("
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# RS256 only, and unregistered header members (Entra adds x5t, Graph tokens a nonce) tolerated.
_REGISTRY = jws.JWSRegistry(algorithms=[ALGORITHM], strict_check_header=False)
# What joserfc (and the base64/JSON code beneath it) raises on hostile input.
_JOSE_FAILURES = (JoseError, ValueError, TypeError, KeyError, IndexError, AttributeError)
_HOSTILE_INPUT = (*_JOSE_FAILURES, RecursionError)


class Role(enum.StrEnum):
    """The app roles of the API's app registration; each call needs exactly one of them."""

    RESET_SELF_SERVICE = "Writeback.Reset.SelfService"
    RESET_ADMIN = "Writeback.Reset.Admin"
    CHANGE = "Writeback.Change"
    UNLOCK = "Writeback.Unlock"
    EXPIRE = "Writeback.Expire"
    READ = "Writeback.Read"


ALL_ROLES = frozenset(Role)
READ = "read"  # the operation of every read: request status, health, relay keys, policy


def required_role(
    operation: Operation | Literal["read"], initiator: Initiator | None = None
) -> Role:
    """The role a call needs. A reset must say who started it: an admin reset needs more."""
    if operation == Operation.RESET:
        if initiator is None:
            raise ValueError("a reset needs its initiator to choose the role")
        return Role.RESET_ADMIN if initiator == Initiator.ADMIN else Role.RESET_SELF_SERVICE
    if operation == Operation.CHANGE:
        return Role.CHANGE
    if operation == Operation.UNLOCK:
        return Role.UNLOCK
    if operation == Operation.EXPIRE:
        return Role.EXPIRE
    if operation == READ:
        return Role.READ
    raise ValueError(f"no role is defined for operation {operation!r}")


class AuthReason(enum.StrEnum):
    """Why a caller was refused; `status` is the HTTP status to answer with."""

    MISSING = "auth.missing"
    INVALID_TOKEN = "auth.invalid_token"  # noqa: S105 - a reason code, not a credential
    INVALID_KEY = "auth.invalid_key"
    FORBIDDEN = "auth.forbidden"
    KEYS_UNAVAILABLE = "auth.keys_unavailable"  # our problem, not the caller's: retry later

    @property
    def status(self) -> int:
        return {"auth.forbidden": 403, "auth.keys_unavailable": 503}.get(self.value, 401)


def _refuse(reason: AuthReason, problem: str) -> AuthError:
    return AuthError(reason.value, problem, reason.status)


# -- settings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthSettings:
    """How callers authenticate: Entra ID tokens (tenant + audiences), API keys, or both."""

    tenant_id: str | None = None
    audiences: tuple[str, ...] = ()
    jwks_url: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_roles: frozenset[Role] = ALL_ROLES
    leeway_seconds: int = 60  # clock skew allowed on exp, nbf and iat

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
        if jwks_url and not tenant:
            raise ConfigurationError(JWKS_URL_SETTING, f"has no effect without {TENANT_SETTING}")
        if key_roles and not keys:
            raise ConfigurationError(
                API_KEY_ROLES_SETTING, f"has no effect without {API_KEYS_SETTING}"
            )
        if tenant:
            if not _GUID.fullmatch(tenant):
                # Tokens name their tenant by ID (tid, iss), never by domain: a domain here
                # would silently refuse every token.
                raise ConfigurationError(
                    TENANT_SETTING, "must be the directory (tenant) ID, a GUID"
                )
            tenant = tenant.lower()
            jwks_url = _check_url(jwks_url) or _tenant_jwks_url(tenant)
        for audience in audiences:
            if any(char.isspace() for char in audience):
                raise ConfigurationError(AUDIENCES_SETTING, "audiences are separated by commas")
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
        return cls(
            tenant_id=tenant or None,
            audiences=audiences,
            jwks_url=jwks_url or None,
            api_keys=keys,
            api_key_roles=frozenset(Role(role) for role in key_roles) or ALL_ROLES,
        )


def _tenant_jwks_url(tenant: str) -> str:
    return f"https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"


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


def _check_url(url: str) -> str:
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url  # a local test server
    raise ConfigurationError(JWKS_URL_SETTING, "must be an https:// URL (http:// only on loopback)")


# -- callers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who called, as the audit records it; never the token or key that proved it.

    `identity` is one readable string: `entra-user:<upn> oid=<oid>`, `entra-app:<client id>
    oid=<oid>` (an application calling as itself) or `api-key:<fingerprint>` (a short hash that
    tells keys apart and cannot be reversed). `client_id` is the application that obtained the
    token (`azp`/`appid`), `token_id` Entra's `uti`, to find the token in the sign-in logs.
    """

    kind: Literal["entra", "api-key"]
    identity: str
    roles: frozenset[str]
    tenant: str | None = None
    object_id: str | None = None
    client_id: str | None = None
    name: str | None = None
    application: bool = False
    token_id: str | None = None

    def audit_fields(self) -> dict[str, str]:
        """The caller as flat string fields for an audit record (absent ones left out)."""
        fields = {
            "caller_kind": self.kind,
            "caller": self.identity,
            "caller_roles": ",".join(sorted(self.roles)),
            "caller_tenant": self.tenant,
            "caller_object_id": self.object_id,
            "caller_client_id": self.client_id,
            "caller_name": self.name,
            "caller_token_id": self.token_id,
        }
        return {key: value for key, value in fields.items() if value is not None}


def _fingerprint(key: str) -> str:
    return hashlib.sha256(b"writeback api key fingerprint\0" + _bytes(key)).hexdigest()[:12]


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never fails, whatever a header held


# -- the tenant's signing keys -------------------------------------------------------------------
class JwksFetcher(Protocol):
    """Gets a JWKS document; raises AuthError(auth.keys_unavailable) when it cannot."""

    async def fetch(self, url: str) -> object: ...

    async def close(self) -> None: ...


class HttpJwksFetcher:
    """Fetches a JWKS over HTTPS with aiohttp (certificates verified, no redirects followed)."""

    def __init__(
        self,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._session_factory = session_factory
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str) -> object:
        if self._session is None:  # made on first use, inside the running loop
            self._session = self._session_factory()
        try:
            async with self._session.get(
                url, allow_redirects=False, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    raise _refuse(
                        AuthReason.KEYS_UNAVAILABLE, f"the JWKS endpoint answered {response.status}"
                    )
                body = await response.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _refuse(
                AuthReason.KEYS_UNAVAILABLE,
                f"the JWKS endpoint is unreachable ({type(exc).__name__})",
            ) from exc
        if len(body) > MAX_JWKS_BYTES:
            raise _refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS endpoint answered too much")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _refuse(
                AuthReason.KEYS_UNAVAILABLE, "the JWKS endpoint answered no JSON"
            ) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SigningKeys:
    """The tenant's token-signing keys, by kid: fetched on first use and every `max_age` seconds.

    A token naming an unknown kid triggers an early refetch (keys rotate), but no fetch of any
    kind happens within `min_interval` of the last attempt, so tokens with made-up kids cannot
    make us hammer the endpoint. If a scheduled refetch fails, the keys we have stay in use for
    up to `max_stale` seconds (logged); a kid we do not have is then a 503, not a 401.
    """

    def __init__(
        self,
        url: str,
        fetcher: JwksFetcher | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = 3600.0,
        min_interval: float = 60.0,
        max_stale: float = 86400.0,
    ) -> None:
        self.url = url
        self._fetcher = fetcher or HttpJwksFetcher()
        self._clock = clock
        self._max_age = max_age
        self._min_interval = min_interval
        self._max_stale = max_stale
        self._keys: dict[str, RSAKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> RSAKey:
        """The public key for `kid`: AuthError auth.invalid_token if the tenant has none such,
        auth.keys_unavailable if the keys cannot be fetched."""
        if kid in self._keys and self._age(self._clock()) < self._max_age:
            return self._keys[kid]
        async with self._lock:  # one fetch at a time; waiters see its result
            now = self._clock()
            wanted = kid not in self._keys or self._age(now) >= self._max_age
            allowed = self._attempted_at is None or now - self._attempted_at >= self._min_interval
            if wanted and allowed:
                await self._refetch(kid, now)
            if not self._keys or self._age(now) >= self._max_stale:
                raise _refuse(
                    AuthReason.KEYS_UNAVAILABLE, "the tenant's signing keys are unavailable"
                )
            if kid not in self._keys:
                raise _refuse(AuthReason.INVALID_TOKEN, "the token is signed by an unknown key")
            return self._keys[kid]

    async def _refetch(self, kid: str, now: float) -> None:
        self._attempted_at = now
        try:
            keys = _import_jwks(await self._fetcher.fetch(self.url))
        except AuthError as error:
            log.warning("jwks fetch failed: url=%s problem=%s", self.url, error.problem)
            if kid in self._keys and self._age(now) < self._max_stale:
                return  # keep verifying with the keys we have
            raise
        self._keys, self._fetched_at = keys, now
        log.info("jwks fetched: url=%s kids=%s", self.url, ",".join(sorted(keys)))

    def _age(self, now: float) -> float:
        return float("inf") if self._fetched_at is None else now - self._fetched_at

    async def close(self) -> None:
        await self._fetcher.close()


def _import_jwks(document: object) -> dict[str, RSAKey]:
    """The RSA signature keys of a JWKS, by kid; anything else in it is skipped."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise _refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS endpoint answered no JWKS")
    keys: dict[str, RSAKey] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if not (isinstance(kid, str) and kid and entry.get("kty") == "RSA"):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:  # only the public members: x5c and friends are not needed to verify
            key = RSAKey.import_key({"kty": "RSA", "n": entry["n"], "e": entry["e"], "kid": kid})
        except _JOSE_FAILURES:
            log.warning("jwks key skipped: kid=%s problem=unreadable", kid)
            continue
        if key.raw_value.key_size < MIN_RSA_BITS:
            log.warning("jwks key skipped: kid=%s problem=shorter than %d bits", kid, MIN_RSA_BITS)
            continue
        keys[kid] = key
    if not keys:
        raise _refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS holds no RS256 signing key")
    return keys


# -- the authenticator --------------------------------------------------------------------------
_CLAIM_PROBLEMS = {
    "nbf": "the token is not yet valid",
    "iat": "the token was issued in the future",
    "iss": "the token has the wrong issuer",
    "aud": "the token has the wrong audience",
}


class Authenticator:
    """Turns a request's headers into a `Caller`, and checks a caller's roles."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        keys: SigningKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._tenant = (settings.tenant_id or "").lower()
        self._keys: SigningKeys | None = None
        self._issuers: list[str] = []
        if self._tenant:
            tenant = self._tenant
            self._keys = keys or SigningKeys(settings.jwks_url or _tenant_jwks_url(tenant))
            # v2.0 tokens, and v1.0 ones (an app registration's default accessTokenAcceptedVersion).
            self._issuers = [
                f"https://login.microsoftonline.com/{tenant}/v2.0",
                f"https://sts.windows.net/{tenant}/",
            ]
        # Keep digests, not keys: equal length for compare_digest, and no key in our memory dumps.
        self._key_digests = [hashlib.sha256(_bytes(key)).digest() for key in settings.api_keys]
        self._key_roles = frozenset(str(role) for role in settings.api_key_roles)

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """Who is calling (header names are case-insensitive); AuthError if nobody provably is."""
        try:
            authorization = _header(headers, "authorization")
            api_key = _header(headers, "x-functions-key")
            if authorization is not None and self._keys is not None:
                caller = await self._verify_token(authorization, self._keys)
            elif api_key is not None and self._key_digests:
                caller = self._verify_key(api_key)
            else:
                raise _refuse(AuthReason.MISSING, self._accepted())
        except AuthError as error:
            log.info("caller refused: reason=%s problem=%s", error.reason, error.problem)
            raise
        log.debug("caller authenticated: kind=%s caller=%s", caller.kind, caller.identity)
        return caller

    def authorize(self, caller: Caller, role: Role) -> None:
        """Raise AuthError auth.forbidden (403) unless the caller holds `role`."""
        if role not in caller.roles:
            log.info("caller forbidden: caller=%s role=%s", caller.identity, role)
            raise _refuse(AuthReason.FORBIDDEN, f"the caller does not have the {role} role")

    async def close(self) -> None:
        if self._keys is not None:
            await self._keys.close()

    def _accepted(self) -> str:
        ways = []
        if self._keys is not None:
            ways.append("Authorization: Bearer <Entra ID access token>")
        if self._key_digests:
            ways.append("x-functions-key")
        return "no credentials: send " + " or ".join(ways)

    def _verify_key(self, presented: str) -> Caller:
        digest = hashlib.sha256(_bytes(presented)).digest()
        matched = False
        for known in self._key_digests:  # every key, so timing says nothing about which matched
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise _refuse(AuthReason.INVALID_KEY, "the API key is not valid")
        return Caller(
            kind="api-key",
            identity=f"api-key:{_fingerprint(presented)}",
            roles=self._key_roles,
            tenant=self._settings.tenant_id,
        )

    async def _verify_token(self, authorization: str, keys: SigningKeys) -> Caller:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _invalid("the Authorization header is not a Bearer token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("the token is too long")
        try:
            header = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY).headers()
            _REGISTRY.check_header(header)  # crit and registered members, before any fetch
        except _HOSTILE_INPUT as exc:
            raise _invalid("the token is not a well-formed JWT") from exc
        if not isinstance(header, Mapping) or header.get("alg") != ALGORITHM:
            raise _invalid(f"the token is not signed with {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token does not name its signing key (kid)")
        key = await keys.key(kid)
        try:
            claims = jwt.decode(token, key, registry=_REGISTRY).claims
        except BadSignatureError as exc:
            raise _invalid("the token's signature does not verify") from exc
        except _HOSTILE_INPUT as exc:
            raise _invalid("the token is not a well-formed JWT") from exc
        self._check_claims(claims)
        return self._entra_caller(claims)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self._settings.leeway_seconds,
            exp={"essential": True},
            iss={"essential": True, "values": self._issuers},
            aud={"essential": True, "values": list(self._settings.audiences)},
            tid={"essential": True},
            oid={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise _invalid("the token has expired") from exc
        except MissingClaimError as exc:  # names our essential claims only
            raise _invalid(f"the token lacks claims: {exc.claim}") from exc
        except ClaimError as exc:  # names a registered claim or one of ours
            problem = _CLAIM_PROBLEMS.get(exc.claim, f"the token's {exc.claim} claim is invalid")
            raise _invalid(problem) from exc
        except _HOSTILE_INPUT as exc:
            raise _invalid("the token's claims are not well-formed") from exc
        tid = claims["tid"]
        if not isinstance(tid, str) or tid.lower() != self._tenant:
            raise _invalid("the token is from another tenant")
        if not isinstance(claims["oid"], str):
            raise _invalid("the token's oid claim is invalid")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise _invalid("the token's roles claim is invalid")
        # Access tokens name the client application (v2.0 azp, v1.0 appid); ID tokens do not,
        # so an ID token that happens to carry our client ID as audience is refused here.
        if not isinstance(claims.get("azp", claims.get("appid")), str):
            raise _invalid("the token is not an access token (it names no client application)")

    def _entra_caller(self, claims: dict[str, Any]) -> Caller:
        object_id: str = claims["oid"]
        client_id = str(claims.get("azp", claims.get("appid")))  # checked to be a string
        name = claims.get("upn", claims.get("preferred_username"))
        name = name if isinstance(name, str) and name else None
        # Delegated (user) tokens always carry scp; an application calling as itself never does.
        application = "scp" not in claims
        if application:
            identity = f"entra-app:{client_id} oid={object_id}"
        else:
            identity = f"entra-user:{name + ' ' if name else ''}oid={object_id}"
        token_id = claims.get("uti")
        return Caller(
            kind="entra",
            identity=identity,
            roles=frozenset(claims.get("roles", [])),
            tenant=self._settings.tenant_id,
            object_id=object_id,
            client_id=client_id,
            name=name,
            application=application,
            token_id=token_id if isinstance(token_id, str) else None,
        )


def _invalid(problem: str) -> AuthError:
    return _refuse(AuthReason.INVALID_TOKEN, problem)


def _header(headers: Mapping[str, str], wanted: str) -> str | None:
    """A header's value, by case-insensitive name; blank counts as absent, twice as invalid."""
    values = [value for name, value in headers.items() if name.lower() == wanted]
    if len(values) > 1:  # two different proxies' ideas of the caller: trust neither
        reason = AuthReason.INVALID_KEY if wanted == "x-functions-key" else AuthReason.INVALID_TOKEN
        raise _refuse(reason, f"the {wanted} header is repeated")
    value = values[0].strip() if values else ""
    return value or None
