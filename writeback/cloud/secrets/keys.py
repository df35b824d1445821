"""The cloud's keys: its private signing key and each domain's public relay keys, parsed from
their secrets and cached, refetched after a refresh interval so a rotation is picked up without
a restart, and served from the cache for a grace period while the source fails.

A value that cannot be parsed is a `ConfigurationError` at once, never quoting the value: it may
be the private key. Nothing here puts a secret's value into a message, an exception or a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from joserfc.jwk import ECKey, KeySet

from writeback.cloud.secrets.settings import DEFAULT_REFRESH_SECONDS
from writeback.cloud.secrets.source import SIGNING_KEY_SECRET, SecretSource, relay_keys_secret
from writeback.errors import ConfigurationError, SecretsUnavailable
from writeback.sealing import EC_CURVE, SIGNING, public_keyset

log = logging.getLogger(__name__)

# How long cached keys outlive a failed refresh. A Key Vault outage or a token hiccup should not
# stop every password reset at once, but a vault we cannot read for an hour means a broken
# identity or role assignment that must surface, and a rotated-out key must stop being used.
DEFAULT_GRACE_SECONDS = 3600.0
# While serving from grace, how often to try the source again (one caller tries, the rest wait).
DEFAULT_RETRY_SECONDS = 30.0

T = TypeVar("T")


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
