"""The JWKS fetcher against a real HTTP server: an aiohttp app on loopback serving the keys.

The server plays Entra's keys endpoint: it serves whatever JWKS (or failure) the test sets and
counts the requests, so caching, rotation and outages are observed on the wire.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from writeback.cloud.auth import (
    AUDIENCES_SETTING,
    JWKS_URL_SETTING,
    TENANT_SETTING,
    Authenticator,
    AuthSettings,
    HttpJwksFetcher,
    Role,
    SigningKeys,
)
from writeback.errors import AuthError

TENANT = "6f2a1c9e-3b7d-4e58-9a10-2c4b6d8e0f13"
AUDIENCE = "api://writeback"
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "entra-key-1"})
ROTATED_KEY = RSAKey.generate_key(2048, parameters={"kid": "entra-key-2"})


def keys_document(*keys: RSAKey) -> dict[str, Any]:
    return {"keys": [{**key.as_dict(private=False), "use": "sig"} for key in keys]}


def token(key: RSAKey = SIGNING_KEY) -> str:
    """A v1.0 application token for the API, signed with `key`."""
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "tid": TENANT,
        "oid": "11111111-2222-4333-8444-555555555555",
        "appid": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
        "roles": [Role.READ.value],
        "nbf": now - 60,
        "exp": now + 3600,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, ["RS256"])


class KeysEndpoint:
    """What the loopback server answers on /keys, and how often it was asked."""

    def __init__(self) -> None:
        self.document: object = keys_document(SIGNING_KEY)
        self.status = 200
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.status == 302:
            raise web.HTTPFound("/elsewhere")
        if self.status != 200:
            return web.Response(status=self.status, text="broken")
        if isinstance(self.document, str):
            return web.Response(text=self.document)
        return web.json_response(self.document)


@pytest.fixture
async def endpoint() -> AsyncIterator[KeysEndpoint]:
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving the keys endpoint."""
    keys = KeysEndpoint()
    app = web.Application()
    app.router.add_get("/keys", keys.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    keys.url = f"http://{host}:{port}/keys"
    try:
        yield keys
    finally:
        await runner.cleanup()


def settings(endpoint: KeysEndpoint) -> AuthSettings:
    return AuthSettings.from_env(
        {TENANT_SETTING: TENANT, AUDIENCES_SETTING: AUDIENCE, JWKS_URL_SETTING: endpoint.url}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestHttpJwks:
    async def test_token_verifies_against_keys_served_over_http(
        self, endpoint: KeysEndpoint
    ) -> None:
        """The default wiring fetches the JWKS over HTTP once and verifies tokens with it."""
        auth = Authenticator(settings(endpoint))
        try:
            for _ in range(3):
                caller = await auth.authenticate({"authorization": f"Bearer {token()}"})
                auth.authorize(caller, Role.READ)
        finally:
            await auth.close()
        assert (caller.identity.startswith("entra-app:"), endpoint.requests) == (True, 1)

    async def test_rotated_key_is_fetched_once_over_http(self, endpoint: KeysEndpoint) -> None:
        """A token with a new kid causes one refetch that picks up the rotated key."""
        clock = Clock()
        keys = SigningKeys(endpoint.url, HttpJwksFetcher(), clock=clock)
        auth = Authenticator(settings(endpoint), keys=keys)
        try:
            await auth.authenticate({"Authorization": f"Bearer {token()}"})
            endpoint.document = keys_document(SIGNING_KEY, ROTATED_KEY)
            clock.now += 61
            for _ in range(3):
                await auth.authenticate({"Authorization": f"Bearer {token(ROTATED_KEY)}"})
        finally:
            await auth.close()
        assert endpoint.requests == 2

    @pytest.mark.parametrize(
        ("status", "document", "problem"),
        [
            (500, None, "answered 500"),
            (302, None, "answered 302"),
            (200, "<html>sign in</html>", "no JSON"),
            (200, {"keys": []}, "no RS256 signing key"),
        ],
        ids=["server-error", "redirect", "not-json", "empty-jwks"],
    )
    async def test_bad_answers_are_keys_unavailable(
        self, endpoint: KeysEndpoint, status: int, document: object, problem: str
    ) -> None:
        """An error, a redirect (never followed) or a non-JWKS answer is a 503, not a 401."""
        endpoint.status, endpoint.document = status, document
        auth = Authenticator(settings(endpoint))
        try:
            with pytest.raises(AuthError) as caught:
                await auth.authenticate({"Authorization": f"Bearer {token()}"})
        finally:
            await auth.close()
        assert (caught.value.reason, caught.value.status) == ("auth.keys_unavailable", 503)
        assert problem in caught.value.problem

    async def test_unreachable_endpoint_is_keys_unavailable(self, endpoint: KeysEndpoint) -> None:
        """A 404 or a refused connection is a 503, with the aiohttp error kept as the cause."""
        fetcher = HttpJwksFetcher()
        # A bound socket that does not listen: connecting to it is refused, and nobody else can
        # take its port meanwhile.
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            refused_url = f"http://127.0.0.1:{bound.getsockname()[1]}/keys"
            try:
                with pytest.raises(AuthError) as missing:
                    await fetcher.fetch(endpoint.url.replace("/keys", "/nothing-here"))
                with pytest.raises(AuthError) as refused:
                    await fetcher.fetch(refused_url)
            finally:
                await fetcher.close()
        assert (missing.value.status, missing.value.problem) == (
            503,
            "the JWKS endpoint answered 404",
        )
        assert (refused.value.reason, refused.value.status) == ("auth.keys_unavailable", 503)
        assert "unreachable" in refused.value.problem
        assert refused.value.__cause__ is not None
