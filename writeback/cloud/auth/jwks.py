"""The tenant's token-signing keys: fetched from its JWKS endpoint over HTTPS, cached by kid,
refetched on rotation without letting made-up kids hammer the endpoint.

aiohttp's exceptions and unusable JWKS documents become `AuthError(auth.keys_unavailable)` here.
Only RSA signature keys of at least 2048 bits are ever kept; nothing here reads a caller's token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from writeback.cloud.auth.callers import AuthReason, refuse
from writeback.errors import AuthError

log = logging.getLogger(__name__)

ALGORITHM = "RS256"  # what Entra ID signs access tokens with; nothing else is ever accepted
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 256 * 1024
# What joserfc (and the base64/JSON code beneath it) raises on hostile input.
JOSE_FAILURES = (JoseError, ValueError, TypeError, KeyError, IndexError, AttributeError)


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
                    raise refuse(
                        AuthReason.KEYS_UNAVAILABLE, f"the JWKS endpoint answered {response.status}"
                    )
                body = await response.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise refuse(
                AuthReason.KEYS_UNAVAILABLE,
                f"the JWKS endpoint is unreachable ({type(exc).__name__})",
            ) from exc
        if len(body) > MAX_JWKS_BYTES:
            raise refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS endpoint answered too much")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS endpoint answered no JSON") from exc

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
                raise refuse(
                    AuthReason.KEYS_UNAVAILABLE, "the tenant's signing keys are unavailable"
                )
            if kid not in self._keys:
                raise refuse(AuthReason.INVALID_TOKEN, "the token is signed by an unknown key")
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
        raise refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS endpoint answered no JWKS")
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
        except JOSE_FAILURES:
            log.warning("jwks key skipped: kid=%s problem=unreadable", kid)
            continue
        if key.raw_value.key_size < MIN_RSA_BITS:
            log.warning("jwks key skipped: kid=%s problem=shorter than %d bits", kid, MIN_RSA_BITS)
            continue
        keys[kid] = key
    if not keys:
        raise refuse(AuthReason.KEYS_UNAVAILABLE, "the JWKS holds no RS256 signing key")
    return keys
