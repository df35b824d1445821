"""Turns a request's headers into a `Caller`: an Entra ID access token (RS256 only, verified
against the tenant's published keys; issuer, audience, tenant and lifetime checked; app roles
from the `roles` claim) or an API key (compared in constant time with every configured key; such
a caller gets the configured key roles). Also checks a caller's role.

joserfc's exceptions become `AuthError` here and nowhere else. No token, key or part of either
ever reaches a `Caller`, an exception message or a log record.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, MissingClaimError

from writeback.cloud.auth import delegation
from writeback.cloud.auth.callers import AuthReason, Caller, Role, refuse
from writeback.cloud.auth.jwks import ALGORITHM, JOSE_FAILURES, SigningKeys
from writeback.cloud.auth.settings import AuthSettings, tenant_jwks_url
from writeback.errors import AuthError
from writeback.protocol import Operation

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 32 * 1024  # Entra tokens are a few KiB; group overage keeps them small
# RS256 only, and unregistered header members (Entra adds x5t, Graph tokens a nonce) tolerated.
_REGISTRY = jws.JWSRegistry(algorithms=[ALGORITHM], strict_check_header=False)
_HOSTILE_INPUT = (*JOSE_FAILURES, RecursionError)

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
            self._keys = keys or SigningKeys(
                settings.jwks_url or tenant_jwks_url(self._tenant, settings.authority)
            )
            self._issuers = list(settings.issuers)
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
                raise refuse(AuthReason.MISSING, self._accepted())
        except AuthError as error:
            log.info("caller refused: reason=%s problem=%s", error.reason, error.problem)
            raise
        log.debug("caller authenticated: kind=%s caller=%s", caller.kind, caller.identity)
        return caller

    def authorize(self, caller: Caller, role: Role) -> None:
        """Raise AuthError auth.forbidden (403) unless the caller holds `role`."""
        if role not in caller.roles:
            log.info("caller forbidden: caller=%s role=%s", caller.identity, role)
            raise refuse(AuthReason.FORBIDDEN, f"the caller does not have the {role} role")

    def authorize_target(self, caller: Caller, operation: Operation, user: str) -> None:
        """Raise AuthError unless `caller` may act on `user`: a signed-in user only on their
        own account (a reset of it only with strong verification), the helpdesk on anyone;
        applications and API keys as their roles allow (`delegation`)."""
        try:
            delegation.check_target(caller, self._settings, operation, user)
        except AuthError as error:
            log.info(
                "caller refused for the target: caller=%s reason=%s", caller.identity, error.reason
            )
            raise

    def authorize_read_of(self, caller: Caller, user: str) -> None:
        """Raise AuthError unless `caller` may read about the account `user` names: with the
        READ role any, a signed-in user without it only their own (`delegation`)."""
        try:
            delegation.check_read(caller, user)
        except AuthError as error:
            log.info("caller refused the read: caller=%s reason=%s", caller.identity, error.reason)
            raise

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
            raise refuse(AuthReason.INVALID_KEY, "the API key is not valid")
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
        for list_claim in ("roles", "acrs", "amr"):
            values = claims.get(list_claim, [])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _invalid(f"the token's {list_claim} claim is invalid")
        sid = claims.get("onprem_sid")
        if sid is not None and not isinstance(sid, str):
            raise _invalid("the token's onprem_sid claim is invalid")
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
        sid = claims.get("onprem_sid")  # checked to be a string when present
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
            on_premises_sid=sid or None,
            acrs=frozenset(claims.get("acrs", [])),
            amr=frozenset(claims.get("amr", [])),
        )


def _invalid(problem: str) -> AuthError:
    return refuse(AuthReason.INVALID_TOKEN, problem)


def _header(headers: Mapping[str, str], wanted: str) -> str | None:
    """A header's value, by case-insensitive name; blank counts as absent, twice as invalid."""
    values = [value for name, value in headers.items() if name.lower() == wanted]
    if len(values) > 1:  # two different proxies' ideas of the caller: trust neither
        reason = AuthReason.INVALID_KEY if wanted == "x-functions-key" else AuthReason.INVALID_TOKEN
        raise refuse(reason, f"the {wanted} header is repeated")
    value = values[0].strip() if values else ""
    return value or None


def _fingerprint(key: str) -> str:
    return hashlib.sha256(b"writeback api key fingerprint\0" + _bytes(key)).hexdigest()[:12]


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never fails, whatever a header held
