"""Who may call the writeback API: Entra ID tokens, API keys, app roles, and the tenant's keys.

Tokens are signed here with locally generated RSA keys and verified against a JWKS handed over by
an in-memory fetcher with a hand-driven clock; tests/integration/test_auth_jwks.py serves the
JWKS over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey
from multidict import CIMultiDict

from writeback.cloud.auth import (
    ALL_ROLES,
    API_KEY_ROLES_SETTING,
    API_KEYS_SETTING,
    AUDIENCES_SETTING,
    JWKS_URL_SETTING,
    READ,
    TENANT_SETTING,
    Authenticator,
    AuthReason,
    AuthSettings,
    Caller,
    Role,
    SigningKeys,
    required_role,
)
from writeback.errors import AuthError, ConfigurationError
from writeback.protocol import Initiator, Operation

TENANT = "6f2a1c9e-3b7d-4e58-9a10-2c4b6d8e0f13"
OTHER_TENANT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
CLIENT_ID = "3c1d5e7f-9a2b-4c6d-8e0f-1a3b5c7d9e2f"  # the API's own app registration
APP_ID_URI = "api://writeback"
CALLER_APP = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"  # the portal that obtained the token
USER_OID = "11111111-2222-4333-8444-555555555555"
V2_ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
V1_ISSUER = f"https://sts.windows.net/{TENANT}/"
API_KEY = "k3y-0123456789abcdefghijklmnopqrstuvwxyz"
SECOND_API_KEY = "another-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "entra-key-1"})
ROTATED_KEY = RSAKey.generate_key(2048, parameters={"kid": "entra-key-2"})
ATTACKER_KEY = RSAKey.generate_key(2048, parameters={"kid": "entra-key-1"})  # same kid, other key

ENTRA_ENV = {TENANT_SETTING: TENANT, AUDIENCES_SETTING: f"{APP_ID_URI},{CLIENT_ID}"}
KEY_ENV = {API_KEYS_SETTING: f"{API_KEY},{SECOND_API_KEY}"}
BOTH_ENV = {**ENTRA_ENV, **KEY_ENV}


def jwks(*keys: RSAKey) -> dict[str, Any]:
    """A JWKS as Entra publishes it: public RSA keys with kid, use and x5t."""
    return {"keys": [{**key.as_dict(private=False), "use": "sig", "x5t": "x"} for key in keys]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def v2_claims(**overrides: Any) -> dict[str, Any]:
    """A v2.0 delegated access token's claims for the API (audience = its client id)."""
    now = int(time.time())
    claims = {
        "aud": CLIENT_ID,
        "iss": V2_ISSUER,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "azp": CALLER_APP,
        "oid": USER_OID,
        "preferred_username": "alice@contoso.example",
        "roles": [Role.RESET_SELF_SERVICE.value, Role.READ.value],
        "scp": "access_as_user",
        "sub": "pairwise-subject",
        "tid": TENANT,
        "uti": "AbCdEfGh",
        "ver": "2.0",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def v1_claims(**overrides: Any) -> dict[str, Any]:
    """A v1.0 delegated access token's claims (audience = the app ID URI, appid, upn)."""
    claims = v2_claims(iss=V1_ISSUER, aud=APP_ID_URI, ver="1.0", azp=None, preferred_username=None)
    claims.update({"appid": CALLER_APP, "upn": "bob@contoso.example"})
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def mint(claims: Mapping[str, Any], key: RSAKey = SIGNING_KEY, **header: Any) -> str:
    """Sign claims as Entra would (RS256, kid and x5t in the header)."""
    return jwt.encode(
        {"alg": "RS256", "kid": key.kid, "x5t": "x", **header}, dict(claims), key, ["RS256"]
    )


def forge(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A token put together by hand, as an attacker would."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeFetcher:
    """Serves a JWKS from memory, counts fetches, and can be told to fail."""

    def __init__(self, document: object) -> None:
        self.document = document
        self.fetches = 0
        self.failing = False
        self.closed = False

    async def fetch(self, url: str) -> object:
        self.fetches += 1
        if self.failing:
            raise AuthError("auth.keys_unavailable", "the JWKS endpoint answered 500", 503)
        return self.document

    async def close(self) -> None:
        self.closed = True


class Rig:
    """An authenticator over an in-memory JWKS, with its fetcher and clock at hand."""

    def __init__(self, env: Mapping[str, str] = BOTH_ENV, document: object | None = None) -> None:
        self.settings = AuthSettings.from_env(env)
        self.fetcher = FakeFetcher(jwks(SIGNING_KEY) if document is None else document)
        self.clock = FakeClock()
        self.keys = SigningKeys(self.settings.jwks_url or "", self.fetcher, clock=self.clock)
        self.auth = Authenticator(self.settings, keys=self.keys)

    async def refused(self, headers: Mapping[str, str]) -> AuthError:
        with pytest.raises(AuthError) as caught:
            await self.auth.authenticate(headers)
        return caught.value


@pytest.fixture
def rig() -> Rig:
    return Rig()


class TestEntraTokens:
    async def test_valid_v2_token_gives_a_caller_with_its_roles(self, rig: Rig) -> None:
        """A v2.0 token for the API's client id authenticates the user with the token's roles."""
        caller = await rig.auth.authenticate(bearer(mint(v2_claims())))
        assert caller == Caller(
            kind="entra",
            identity=f"entra-user:alice@contoso.example oid={USER_OID}",
            roles=frozenset({Role.RESET_SELF_SERVICE, Role.READ}),
            tenant=TENANT,
            object_id=USER_OID,
            client_id=CALLER_APP,
            name="alice@contoso.example",
            token_id="AbCdEfGh",
        )

    async def test_valid_v1_token_gives_a_caller_with_its_roles(self, rig: Rig) -> None:
        """A v1.0 token (sts.windows.net issuer, app ID URI audience, appid, upn) is accepted."""
        caller = await rig.auth.authenticate(bearer(mint(v1_claims(roles=[Role.CHANGE.value]))))
        assert (caller.identity, caller.client_id, caller.roles) == (
            f"entra-user:bob@contoso.example oid={USER_OID}",
            CALLER_APP,
            frozenset({Role.CHANGE}),
        )

    async def test_application_token_names_the_application(self, rig: Rig) -> None:
        """A token without scp is an application calling as itself: identity is its client id."""
        claims = v2_claims(scp=None, preferred_username=None, roles=[Role.RESET_ADMIN.value])
        caller = await rig.auth.authenticate(bearer(mint(claims)))
        assert (caller.identity, caller.application, caller.name) == (
            f"entra-app:{CALLER_APP} oid={USER_OID}",
            True,
            None,
        )

    async def test_header_names_are_case_insensitive(self, rig: Rig) -> None:
        """AUTHORIZATION and bearer in any case are read like Authorization: Bearer."""
        caller = await rig.auth.authenticate({"AUTHORIZATION": f"bEaReR {mint(v2_claims())}"})
        assert caller.kind == "entra"

    async def test_token_without_roles_has_none(self, rig: Rig) -> None:
        """A token with no roles claim authenticates, with no roles at all."""
        caller = await rig.auth.authenticate(bearer(mint(v2_claims(roles=None))))
        assert caller.roles == frozenset()

    async def test_clock_skew_within_the_leeway_is_tolerated(self, rig: Rig) -> None:
        """A token that expired 30 s ago, or becomes valid in 30 s, is still accepted."""
        now = int(time.time())
        for claims in (v2_claims(exp=now - 30), v2_claims(nbf=now + 30, iat=now)):
            assert (await rig.auth.authenticate(bearer(mint(claims)))).kind == "entra"

    @pytest.mark.parametrize(
        ("claims", "problem"),
        [
            # Times are offsets from the moment the test runs (collection may be minutes earlier).
            ({"exp": -300}, "the token has expired"),
            ({"nbf": 300}, "the token is not yet valid"),
            (v2_claims(aud="api://someone-else"), "the token has the wrong audience"),
            (v2_claims(iss=f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"), "issuer"),
            (v2_claims(iss="https://login.microsoftonline.com/common/v2.0"), "wrong issuer"),
            (v2_claims(tid=OTHER_TENANT), "the token is from another tenant"),
            (v2_claims(exp=None), "the token lacks claims: exp"),
            (v2_claims(oid=None), "the token lacks claims: oid"),
            (v2_claims(roles="Writeback.Reset.Admin"), "the token's roles claim is invalid"),
            (v2_claims(azp=None), "not an access token"),
        ],
        ids=[
            "expired",
            "not-yet-valid",
            "wrong-audience",
            "other-tenant-issuer",
            "common-issuer",
            "wrong-tenant",
            "no-exp",
            "no-oid",
            "roles-not-a-list",
            "id-token",
        ],
    )
    async def test_invalid_claims_are_refused(
        self, rig: Rig, claims: dict[str, Any], problem: str
    ) -> None:
        """A correctly signed token with a bad lifetime, audience, issuer or tenant is a 401."""
        if set(claims) <= {"exp", "nbf"}:
            claims = v2_claims(**{k: int(time.time()) + v for k, v in claims.items()})
        error = await rig.refused(bearer(mint(claims)))
        assert (error.reason, error.status) == ("auth.invalid_token", 401)
        assert problem in error.problem

    async def test_tampered_payload_does_not_verify(self, rig: Rig) -> None:
        """Granting oneself a role by editing the payload breaks the signature."""
        header, _, signature = mint(v2_claims(roles=[])).split(".")
        payload = b64(json.dumps(v2_claims(roles=[Role.RESET_ADMIN.value])).encode())
        error = await rig.refused(bearer(f"{header}.{payload}.{signature}"))
        assert error.problem == "the token's signature does not verify"

    async def test_token_signed_by_another_key_with_a_known_kid_does_not_verify(
        self, rig: Rig
    ) -> None:
        """Naming a real kid does not help a token signed with some other RSA key."""
        error = await rig.refused(bearer(mint(v2_claims(), key=ATTACKER_KEY)))
        assert error.problem == "the token's signature does not verify"

    async def test_alg_none_is_refused_before_any_key_is_fetched(self, rig: Rig) -> None:
        """An unsigned token (alg none) is refused outright, without a JWKS fetch."""
        token = forge({"alg": "none", "kid": SIGNING_KEY.kid}, v2_claims())
        error = await rig.refused(bearer(token))
        assert (error.problem, rig.fetcher.fetches) == ("the token is not signed with RS256", 0)

    async def test_hs256_with_the_public_key_as_secret_is_refused(self, rig: Rig) -> None:
        """The classic confusion attack (HMAC keyed with the published RSA key) is refused."""
        header = {"alg": "HS256", "kid": SIGNING_KEY.kid, "typ": "JWT"}
        unsigned = forge(header, v2_claims(roles=[Role.RESET_ADMIN.value])).rsplit(".", 1)[0]
        secret = SIGNING_KEY.as_pem(private=False)
        signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        error = await rig.refused(bearer(f"{unsigned}.{b64(signature)}"))
        assert (error.problem, rig.fetcher.fetches) == ("the token is not signed with RS256", 0)

    @pytest.mark.parametrize(
        ("authorization", "problem"),
        [
            ("Basic YWxpY2U6c2VjcmV0", "not a Bearer token"),
            ("Bearer", "not a Bearer token"),
            ("Bearer not.a.jwt", "not a well-formed JWT"),
            ("Bearer a.b", "not a well-formed JWT"),
            (f"Bearer {'A' * 40000}", "too long"),
            (f"Bearer {forge({'alg': 'RS256'}, v2_claims())}", "does not name its signing key"),
            (f"Bearer {forge({'alg': 'RS256', 'kid': 'k', 'crit': ['zz']}, {})}", "well-formed"),
        ],
        ids=["basic", "empty-bearer", "garbage", "two-parts", "huge", "no-kid", "unknown-crit"],
    )
    async def test_malformed_authorization_is_refused(
        self, rig: Rig, authorization: str, problem: str
    ) -> None:
        """Anything but a well-formed RS256 JWT naming its kid is an invalid token."""
        error = await rig.refused({"Authorization": authorization})
        assert (error.reason, error.status) == ("auth.invalid_token", 401)
        assert problem in error.problem

    async def test_repeated_authorization_header_is_refused(self, rig: Rig) -> None:
        """Two Authorization headers (say, one from a proxy) are trusted neither."""
        headers = CIMultiDict([("Authorization", f"Bearer {mint(v2_claims())}")] * 2)
        error = await rig.refused(headers)
        assert error.problem == "the authorization header is repeated"

    async def test_bearer_token_wins_over_an_api_key(self, rig: Rig) -> None:
        """With both headers, the token decides: a bad token is not rescued by a good key."""
        headers = {"Authorization": "Bearer a.b.c", "x-functions-key": API_KEY}
        assert (await rig.refused(headers)).reason == "auth.invalid_token"


class TestSigningKeys:
    async def test_keys_are_fetched_once_and_cached(self, rig: Rig) -> None:
        """Many tokens within the refresh interval cost one JWKS fetch."""
        for _ in range(5):
            await rig.auth.authenticate(bearer(mint(v2_claims())))
        assert rig.fetcher.fetches == 1

    async def test_keys_are_refreshed_after_an_hour(self, rig: Rig) -> None:
        """Once the cache is an hour old, the next token refetches the JWKS."""
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.clock.now += 3600
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        assert rig.fetcher.fetches == 2

    async def test_unknown_kid_refetches_once_and_finds_the_rotated_key(self, rig: Rig) -> None:
        """After Entra rotates its key, the first token with the new kid refetches and verifies."""
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.fetcher.document = jwks(SIGNING_KEY, ROTATED_KEY)
        rig.clock.now += 61
        caller = await rig.auth.authenticate(bearer(mint(v2_claims(), key=ROTATED_KEY)))
        assert (caller.kind, rig.fetcher.fetches) == ("entra", 2)

    async def test_unknown_kids_within_the_rate_limit_fetch_only_once(self, rig: Rig) -> None:
        """Made-up kids cause at most one fetch per minute, and are 401s."""
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.clock.now += 61
        for attempt in range(3):
            rig.clock.now += 10 * attempt
            error = await rig.refused(bearer(mint(v2_claims(), key=ROTATED_KEY)))
            assert (error.problem, error.status) == ("the token is signed by an unknown key", 401)
        assert rig.fetcher.fetches == 2

    async def test_concurrent_unknown_kids_share_one_fetch(self, rig: Rig) -> None:
        """Twenty requests at once naming an unknown kid wait on a single fetch."""
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.fetcher.document = jwks(SIGNING_KEY, ROTATED_KEY)
        rig.clock.now += 61
        token = mint(v2_claims(), key=ROTATED_KEY)
        callers = await asyncio.gather(*(rig.auth.authenticate(bearer(token)) for _ in range(20)))
        assert (len(callers), rig.fetcher.fetches) == (20, 2)

    async def test_unreachable_endpoint_is_a_503_and_is_not_hammered(self, rig: Rig) -> None:
        """With no keys and a failing endpoint callers get 503, and retries wait a minute."""
        rig.fetcher.failing = True
        for _ in range(3):
            error = await rig.refused(bearer(mint(v2_claims())))
            assert (error.reason, error.status) == ("auth.keys_unavailable", 503)
        rig.clock.now += 60
        rig.fetcher.failing = False
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        assert rig.fetcher.fetches == 2

    async def test_known_keys_outlive_a_failed_refresh(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failed hourly refresh keeps known kids working (logged); an unknown kid is a 503."""
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.fetcher.failing = True
        rig.clock.now += 3600
        with caplog.at_level(logging.WARNING, logger="writeback.cloud.auth"):
            assert (await rig.auth.authenticate(bearer(mint(v2_claims())))).kind == "entra"
        assert "jwks fetch failed" in caplog.text
        rig.clock.now += 60
        error = await rig.refused(bearer(mint(v2_claims(), key=ROTATED_KEY)))
        assert error.reason == "auth.keys_unavailable"

    async def test_keys_stale_for_a_day_are_dropped(self, rig: Rig) -> None:
        """After a day of failed refreshes even known kids get a 503, not a stale verification."""
        await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.fetcher.failing = True
        rig.clock.now += 86400
        assert (await rig.refused(bearer(mint(v2_claims())))).reason == "auth.keys_unavailable"

    @pytest.mark.parametrize(
        "document",
        [
            [],
            {"keys": "none"},
            {"keys": []},
            {"keys": [{**SIGNING_KEY.as_dict(private=False), "use": "enc"}]},
            {"keys": [{**SIGNING_KEY.as_dict(private=False), "alg": "RS512"}]},
            {"keys": [{"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}]},
            {"keys": [{"kty": "EC", "kid": "k", "crv": "P-256", "x": "a", "y": "b"}]},
            {"keys": [{k: v for k, v in SIGNING_KEY.as_dict(private=False).items() if k != "kid"}]},
        ],
        ids=["list", "keys-not-list", "empty", "enc-use", "other-alg", "bad-n", "ec", "no-kid"],
    )
    async def test_jwks_without_a_usable_key_is_a_503(self, document: object) -> None:
        """A JWKS answer with no RSA signature key is the endpoint's fault: keys unavailable."""
        error = await Rig(document=document).refused(bearer(mint(v2_claims())))
        assert (error.reason, error.status) == ("auth.keys_unavailable", 503)

    async def test_unusable_keys_beside_a_good_one_are_skipped(self) -> None:
        """Encryption, EC and malformed keys in the JWKS do not spoil the signing key."""
        document = jwks(SIGNING_KEY)
        document["keys"] += [{"kty": "EC", "kid": "ec"}, {"kty": "RSA", "kid": "bad", "n": 1}]
        assert (await Rig(document=document).auth.authenticate(bearer(mint(v2_claims())))).kind

    async def test_close_closes_the_fetcher(self, rig: Rig) -> None:
        """Closing the authenticator closes the JWKS fetcher (and its HTTP session)."""
        await rig.auth.close()
        assert rig.fetcher.closed


class TestApiKeys:
    async def test_valid_key_gives_an_api_key_caller_with_all_roles(self, rig: Rig) -> None:
        """Each configured key authenticates, with every role by default."""
        caller = await rig.auth.authenticate({"x-functions-key": API_KEY})
        other = await rig.auth.authenticate({"X-Functions-Key": SECOND_API_KEY})
        assert (caller.kind, caller.roles, caller.tenant) == ("api-key", ALL_ROLES, TENANT)
        assert caller.identity.startswith("api-key:")
        assert caller.identity != other.identity

    async def test_key_caller_carries_no_key_material(self, rig: Rig) -> None:
        """The caller's identity is a short fingerprint: no part of the key is in the Caller."""
        caller = await rig.auth.authenticate({"x-functions-key": API_KEY})
        assert len(caller.identity) == len("api-key:") + 12
        for chunk in (API_KEY[i : i + 8] for i in range(0, len(API_KEY) - 8)):
            assert chunk not in repr(caller)

    async def test_key_roles_can_be_limited(self) -> None:
        """WRITEBACK_API_KEY_ROLES narrows what a key caller may do."""
        env = {**KEY_ENV, API_KEY_ROLES_SETTING: "Writeback.Read, Writeback.Unlock"}
        caller = await Rig(env).auth.authenticate({"x-functions-key": API_KEY})
        assert caller.roles == frozenset({Role.READ, Role.UNLOCK})

    @pytest.mark.parametrize(
        "presented", [API_KEY[:-1], API_KEY + "x", API_KEY.upper(), "ключ" * 10, "x"]
    )
    async def test_invalid_key_is_refused(self, rig: Rig, presented: str) -> None:
        """A key that is not exactly a configured one is a 401."""
        error = await rig.refused({"x-functions-key": presented})
        assert (error.reason, error.status, error.problem) == (
            "auth.invalid_key",
            401,
            "the API key is not valid",
        )

    @pytest.mark.parametrize("headers", [{}, {"x-functions-key": "  "}, {"Authorization": ""}])
    async def test_no_credentials_is_a_401(self, rig: Rig, headers: dict[str, str]) -> None:
        """No (or blank) credentials is auth.missing, saying what would be accepted."""
        error = await rig.refused(headers)
        assert (error.reason, error.status) == ("auth.missing", 401)
        assert "Bearer" in error.problem
        assert "x-functions-key" in error.problem

    async def test_keys_only_ignores_an_authorization_header(self) -> None:
        """Without Entra ID configured, a key caller's stray Authorization header is ignored."""
        headers = {"Authorization": "Basic Zm9vOmJhcg==", "x-functions-key": API_KEY}
        assert (await Rig(KEY_ENV).auth.authenticate(headers)).kind == "api-key"

    async def test_keys_only_refuses_a_bearer_token_as_missing(self) -> None:
        """Without Entra ID configured, a token alone is no credential the API accepts."""
        error = await Rig(KEY_ENV).refused(bearer(mint(v2_claims())))
        assert (error.reason, error.problem) == (
            "auth.missing",
            "no credentials: send x-functions-key",
        )

    async def test_entra_only_refuses_a_key(self) -> None:
        """Without keys configured, an x-functions-key is no credential the API accepts."""
        error = await Rig(ENTRA_ENV).refused({"x-functions-key": API_KEY})
        assert error.reason == "auth.missing"


OPERATIONS = [
    (Operation.RESET, Initiator.SELF_SERVICE, Role.RESET_SELF_SERVICE),
    (Operation.RESET, Initiator.ADMIN, Role.RESET_ADMIN),
    (Operation.CHANGE, None, Role.CHANGE),
    (Operation.UNLOCK, None, Role.UNLOCK),
    (Operation.EXPIRE, None, Role.EXPIRE),
    (READ, None, Role.READ),
]


class TestAuthorization:
    @pytest.mark.parametrize(("operation", "initiator", "role"), OPERATIONS)
    def test_each_operation_needs_its_role(
        self, operation: Operation, initiator: Initiator | None, role: Role
    ) -> None:
        """Resets by initiator, change, unlock and every read each map to one role."""
        assert required_role(operation, initiator) == role

    def test_reset_without_initiator_has_no_role(self) -> None:
        """A reset whose initiator is unknown is a programming error, not a guess."""
        with pytest.raises(ValueError, match="initiator"):
            required_role(Operation.RESET)

    @pytest.mark.parametrize(("operation", "initiator", "role"), OPERATIONS)
    async def test_caller_without_roles_is_forbidden_everything(
        self, rig: Rig, operation: Operation, initiator: Initiator | None, role: Role
    ) -> None:
        """A token with no roles authenticates but may do nothing: 403 naming the role."""
        caller = await rig.auth.authenticate(bearer(mint(v2_claims(roles=None))))
        with pytest.raises(AuthError) as caught:
            rig.auth.authorize(caller, required_role(operation, initiator))
        assert (caught.value.reason, caught.value.status) == ("auth.forbidden", 403)
        assert caught.value.problem == f"the caller does not have the {role.value} role"

    async def test_self_service_role_does_not_allow_an_admin_reset(self, rig: Rig) -> None:
        """The self-service reset role allows exactly that, not an admin reset."""
        caller = await rig.auth.authenticate(bearer(mint(v2_claims())))
        rig.auth.authorize(caller, required_role(Operation.RESET, Initiator.SELF_SERVICE))
        with pytest.raises(AuthError, match=r"Writeback\.Reset\.Admin"):
            rig.auth.authorize(caller, required_role(Operation.RESET, Initiator.ADMIN))

    def test_reasons_map_to_http_statuses(self) -> None:
        """Credential problems are 401, a missing role or another user's account 403, a missing
        step-up 401 (sign in again), unreachable keys 503."""
        assert {reason.value: reason.status for reason in AuthReason} == {
            "auth.missing": 401,
            "auth.invalid_token": 401,
            "auth.invalid_key": 401,
            "auth.forbidden": 403,
            "auth.other_user": 403,
            "auth.step_up_required": 401,
            "auth.keys_unavailable": 503,
        }


class TestSettings:
    def test_entra_settings_default_the_jwks_url_to_the_tenant(self) -> None:
        """Tenant and audiences enable Entra ID with the tenant's v2.0 keys endpoint."""
        settings = AuthSettings.from_env({**ENTRA_ENV, TENANT_SETTING: TENANT.upper()})
        assert (settings.tenant_id, settings.audiences, settings.jwks_url) == (
            TENANT,
            (APP_ID_URI, CLIENT_ID),
            f"https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys",
        )
        assert (settings.entra_enabled, settings.api_keys_enabled) == (True, False)

    def test_keys_alone_are_enough(self) -> None:
        """API keys alone are a complete configuration, with every role by default."""
        settings = AuthSettings.from_env(KEY_ENV)
        assert (settings.entra_enabled, settings.api_keys, settings.api_key_roles) == (
            False,
            (API_KEY, SECOND_API_KEY),
            ALL_ROLES,
        )

    @pytest.mark.parametrize(
        "url", ["https://keys.example/jwks", "http://127.0.0.1:8080/k", "http://localhost/k"]
    )
    def test_jwks_url_can_be_overridden(self, url: str) -> None:
        """The JWKS URL may point elsewhere over https (or http on loopback, for tests)."""
        assert AuthSettings.from_env({**ENTRA_ENV, JWKS_URL_SETTING: url}).jwks_url == url

    @pytest.mark.parametrize(
        ("env", "setting", "words"),
        [
            ({}, TENANT_SETTING, API_KEYS_SETTING),
            ({TENANT_SETTING: TENANT}, AUDIENCES_SETTING, "required"),
            ({AUDIENCES_SETTING: CLIENT_ID}, TENANT_SETTING, "required"),
            ({**ENTRA_ENV, TENANT_SETTING: "contoso.onmicrosoft.com"}, TENANT_SETTING, "GUID"),
            ({**ENTRA_ENV, JWKS_URL_SETTING: "http://keys.example/k"}, JWKS_URL_SETTING, "https"),
            ({**ENTRA_ENV, JWKS_URL_SETTING: "ftp://x/k"}, JWKS_URL_SETTING, "https"),
            ({**KEY_ENV, JWKS_URL_SETTING: "https://k.example/"}, JWKS_URL_SETTING, "no effect"),
            ({**ENTRA_ENV, API_KEY_ROLES_SETTING: "Writeback.Read"}, API_KEY_ROLES_SETTING, "no"),
            ({**KEY_ENV, API_KEY_ROLES_SETTING: "Writeback.Root"}, API_KEY_ROLES_SETTING, "Root"),
            ({**ENTRA_ENV, AUDIENCES_SETTING: "api://a api://b"}, AUDIENCES_SETTING, "commas"),
        ],
        ids=[
            "neither-mode",
            "no-audiences",
            "no-tenant",
            "domain-tenant",
            "http-url",
            "ftp-url",
            "url-without-entra",
            "roles-without-keys",
            "unknown-role",
            "space-separated-audiences",
        ],
    )
    def test_bad_settings_name_the_setting(
        self, env: dict[str, str], setting: str, words: str
    ) -> None:
        """Each configuration mistake is refused at start-up, naming the setting to fix."""
        with pytest.raises(ConfigurationError) as caught:
            AuthSettings.from_env(env)
        assert caught.value.setting == setting
        assert words in str(caught.value)

    def test_short_key_is_refused_without_echoing_it(self) -> None:
        """A key under 32 characters is refused by position; the message never shows it."""
        short = "too-short-but-secret"
        with pytest.raises(ConfigurationError) as caught:
            AuthSettings.from_env({API_KEYS_SETTING: f"{API_KEY},{short}"})
        assert (caught.value.setting, "key 2 of 2" in caught.value.problem) == (
            API_KEYS_SETTING,
            True,
        )
        assert short not in str(caught.value)
        assert API_KEY not in str(caught.value)

    @pytest.mark.parametrize(
        "setting",
        [
            TENANT_SETTING,
            AUDIENCES_SETTING,
            JWKS_URL_SETTING,
            API_KEYS_SETTING,
            API_KEY_ROLES_SETTING,
        ],
    )
    def test_unresolved_key_vault_reference_names_the_setting(self, setting: str) -> None:
        """A setting left as @Microsoft.KeyVault(...) means Azure could not resolve it: say so."""
        reference = "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/s/)"
        with pytest.raises(ConfigurationError) as caught:
            AuthSettings.from_env({**BOTH_ENV, setting: reference})
        assert caught.value.setting == setting
        assert "unresolved Key Vault reference" in caught.value.problem

    def test_settings_repr_hides_the_keys(self) -> None:
        """Printing the settings (as a start-up log might) shows no API key."""
        assert API_KEY not in repr(AuthSettings.from_env(BOTH_ENV))


class TestSecrecy:
    async def test_no_message_or_log_line_contains_a_token_or_key(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Across successes and every kind of refusal, no token or key is logged or raised."""
        rig = Rig()
        good = mint(v2_claims(roles=None))
        expired = mint(v2_claims(exp=int(time.time()) - 300))
        header, _, signature = good.split(".")
        tampered = f"{header}.{b64(json.dumps(v2_claims(roles=['x'])).encode())}.{signature}"
        tokens = [good, expired, tampered, mint(v2_claims(), key=ROTATED_KEY)]
        texts: list[str] = []
        with caplog.at_level(logging.DEBUG):
            for token in tokens:
                try:
                    caller = await rig.auth.authenticate(bearer(token))
                    rig.auth.authorize(caller, Role.RESET_ADMIN)
                except AuthError as error:
                    texts += [str(error), repr(error), error.problem]
            for key in (API_KEY, API_KEY[:-1] + "!"):
                try:
                    caller = await rig.auth.authenticate({"x-functions-key": key})
                    texts.append(repr(caller))
                except AuthError as error:
                    texts += [str(error), repr(error), error.problem]
            rig.fetcher.failing = True
            rig.clock.now += 86400
            with pytest.raises(AuthError) as caught:
                await rig.auth.authenticate(bearer(good))
            texts.append(str(caught.value))
        texts += [record.getMessage() for record in caplog.records]
        assert len(texts) > 10
        secrets = [API_KEY, API_KEY[:-1] + "!"]
        secrets += [part for token in tokens for part in token.split(".")[1:]]
        leaks = [secret for secret in secrets for text in texts if secret in text]
        assert leaks == []


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )


_segments = st.one_of(
    st.binary(max_size=120).map(b64),
    _json_values().map(lambda value: b64(json.dumps(value).encode())),
    st.text(max_size=40),
)
_headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "none", "HS256", "rs256"]) | st.text(max_size=8)},
    optional={"kid": st.sampled_from(["entra-key-1", "entra-key-2", ""]) | _json_values()},
).map(lambda header: b64(json.dumps(header).encode()))
_authorizations = st.one_of(
    st.text(),
    st.text().map(lambda text: f"Bearer {text}"),
    st.tuples(_segments, _segments, _segments).map(lambda parts: "Bearer " + ".".join(parts)),
    st.tuples(_headers, _segments, _segments).map(lambda parts: "Bearer " + ".".join(parts)),
)


async def _attempt(headers: Mapping[str, str]) -> Caller | AuthError:
    """One authentication on a fresh authenticator: its caller, or the AuthError it raised."""
    try:
        return await Rig(ENTRA_ENV).auth.authenticate(headers)
    except AuthError as error:
        return error


class TestFuzz:
    @settings(max_examples=300, deadline=None)
    @given(authorization=_authorizations)
    def test_any_authorization_header_is_a_401(self, authorization: str) -> None:
        """Whatever the Authorization header holds, the answer is a 401-type AuthError."""
        outcome = asyncio.run(_attempt({"Authorization": authorization}))
        assert isinstance(outcome, AuthError)
        assert outcome.status == 401

    @settings(max_examples=150, deadline=None)
    @given(claims=st.dictionaries(st.sampled_from(sorted(v2_claims())), _json_values()))
    def test_any_signed_claims_give_a_caller_or_a_401(self, claims: dict[str, Any]) -> None:
        """Correctly signed but arbitrary claims never raise anything but a 401 AuthError."""
        outcome = asyncio.run(_attempt(bearer(mint({**v2_claims(), **claims}))))
        assert isinstance(outcome, Caller) or outcome.status == 401
