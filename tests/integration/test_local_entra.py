"""The local Entra ID stand-in (devstack/entra.py) over real HTTPS: discovery, keys, the
authorization code flow with PKCE driven as a browser would, refresh, and its access tokens
accepted by the API's own validator (writeback.cloud.auth) pointed at it by
WRITEBACK_AUTH_AUTHORITY, with the delegated rules applied to them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from devstack import entra, entra_users, tls
from devstack.entra_tokens import Tenant
from writeback.cloud.auth import (
    AUDIENCES_SETTING,
    AUTHORITY_SETTING,
    SELF_SERVICE_ACRS_SETTING,
    TENANT_SETTING,
    Authenticator,
    AuthSettings,
    HttpJwksFetcher,
    SigningKeys,
)
from writeback.errors import AuthError
from writeback.protocol import Operation

pytestmark = pytest.mark.timeout(60)

TENANT_ID = "7d3f2a10-4b6c-4e8d-9f01-23456789abcd"
API_CLIENT = "0f1e2d3c-4b5a-4968-8776-655443322110"
PAGES_CLIENT = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
REDIRECT = "https://localhost:7072/api/pages/"
DOMAIN = "corp.example.test"
SIDS = {
    "alice": "S-1-5-21-1-2-3-1104",
    "bob": "S-1-5-21-1-2-3-1105",
    "pat.obrien": "S-1-5-21-1-2-3-1111",
    "hana.helpdesk": "S-1-5-21-1-2-3-1112",
}


@dataclass
class StandIn:
    tenant: Tenant
    ca_file: Path

    @property
    def root(self) -> str:
        return f"{self.tenant.authority}/{self.tenant.tenant_id}"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # a REQUESTS_CA_BUNDLE in the environment would win otherwise
        session.verify = str(self.ca_file)
        return session


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """The stand-in on a free loopback port with the devstack's TLS, in a thread."""
    files = tls.issue_server_certificate(
        tmp_path_factory.mktemp("entra-tls"), ["localhost"], ("127.0.0.1",)
    )
    port = _free_port()
    tenant = Tenant(
        authority=f"https://localhost:{port}", tenant_id=TENANT_ID, api_client_id=API_CLIENT,
        api_identifier_uri=f"api://{TENANT_ID}/writeback-local", pages_client_id=PAGES_CLIENT,
        redirect_uris=(REDIRECT,),
    )  # fmt: skip
    users = entra_users.cloud_users(TENANT_ID, DOMAIN, SIDS)
    app = entra.create_app(tenant, users, ["https://localhost:7072"])
    with entra.serving(app, files, port):
        yield StandIn(tenant, files.ca_file)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_in(
    stand_in: StandIn,
    username: str,
    secret: str,
    *,
    strong: bool = False,
    claims: dict[str, object] | None = None,
) -> dict[str, str]:
    """The authorization code flow with PKCE as a single-page application drives it."""
    session = stand_in.session()
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)
    client, redirect = stand_in.tenant.pages_client_id, stand_in.tenant.redirect_uris[0]
    parts = urlsplit(redirect)
    origin = f"{parts.scheme}://{parts.netloc}"
    query = {
        "client_id": client, "response_type": "code", "redirect_uri": redirect,
        "scope": f"openid profile offline_access {stand_in.tenant.api_scope}",
        "state": state, "nonce": uuid.uuid4().hex, "code_challenge": challenge,
        "code_challenge_method": "S256",
    }  # fmt: skip
    if claims is not None:
        query["claims"] = json.dumps(claims)
    url = f"{stand_in.root}/oauth2/v2.0/authorize?{urlencode(query)}"
    form = session.get(url, timeout=10)
    assert form.status_code == 200
    assert '<form method="post">' in form.text
    fields = {"username": username, "secret": secret, **({"strong": "1"} if strong else {})}
    answer = session.post(url, data=fields, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    params = parse_qs(location.query)
    assert params["state"] == [state]
    tokens = session.post(
        f"{stand_in.root}/oauth2/v2.0/token",
        data={"grant_type": "authorization_code", "client_id": client,
              "code": params["code"][0], "redirect_uri": redirect, "code_verifier": verifier},
        headers={"Origin": origin},
        timeout=10,
    )  # fmt: skip
    assert tokens.status_code == 200, tokens.text
    assert tokens.headers["Access-Control-Allow-Origin"] == origin
    return dict(tokens.json())


def authenticator(stand_in: StandIn, **environ: str) -> Authenticator:
    """The API's validator, pointed at the stand-in as the local stack points it."""
    settings = AuthSettings.from_env(
        {
            TENANT_SETTING: TENANT_ID,
            AUDIENCES_SETTING: API_CLIENT,
            AUTHORITY_SETTING: stand_in.tenant.authority,
            **environ,
        }
    )
    context = ssl.create_default_context(cafile=str(stand_in.ca_file))
    fetcher = HttpJwksFetcher(
        session_factory=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    )
    return Authenticator(settings, keys=SigningKeys(settings.jwks_url or "", fetcher))


class TestDiscovery:
    def test_discovery_names_the_entra_shaped_endpoints(self, stand_in: StandIn) -> None:
        """The discovery document has Entra's v2.0 issuer and endpoint paths, S256 only."""
        document = (
            stand_in.session()
            .get(f"{stand_in.root}/v2.0/.well-known/openid-configuration", timeout=10)
            .json()
        )
        assert document["issuer"] == f"{stand_in.tenant.authority}/{TENANT_ID}/v2.0"
        assert document["authorization_endpoint"] == f"{stand_in.root}/oauth2/v2.0/authorize"
        assert document["token_endpoint"] == f"{stand_in.root}/oauth2/v2.0/token"
        assert document["jwks_uri"] == f"{stand_in.root}/discovery/v2.0/keys"
        assert document["code_challenge_methods_supported"] == ["S256"]

    def test_the_keys_are_rsa_signature_keys(self, stand_in: StandIn) -> None:
        """The JWKS holds the RS256 public key, named by kid, without its private part."""
        document = stand_in.session().get(f"{stand_in.root}/discovery/v2.0/keys", timeout=10)
        (key,) = document.json()["keys"]
        assert (key["kty"], key["use"], key["kid"]) == ("RSA", "sig", stand_in.tenant.kid)
        assert "d" not in key
        KeySet.import_key_set(document.json())


class TestSignIn:
    async def test_a_user_signs_in_and_the_api_accepts_the_token(self, stand_in: StandIn) -> None:
        """alice signs in with her password; the API's validator accepts the access token as a
        delegated caller bound to her SID, refusing another user's account."""
        tokens = sign_in(stand_in, f"alice@{DOMAIN}", entra_users.SEED_PASSWORD)
        auth = authenticator(stand_in)
        try:
            caller = await auth.authenticate({"Authorization": f"Bearer {tokens['access_token']}"})
        finally:
            await auth.close()
        assert caller.delegated
        assert (caller.on_premises_sid, caller.name) == (SIDS["alice"], f"alice@{DOMAIN}")
        assert "Writeback.Change" in caller.roles
        auth.authorize_target(caller, Operation.CHANGE, SIDS["alice"])
        with pytest.raises(AuthError, match=r"auth\.other_user"):
            auth.authorize_target(caller, Operation.CHANGE, SIDS["bob"])

    def test_the_tokens_are_entra_shaped(self, stand_in: StandIn) -> None:
        """The v2.0 access token has scp, roles, onprem_sid and no amr; the ID token has amr,
        the nonce and the pages' client id as audience."""
        tokens = sign_in(stand_in, f"pat@{entra_users.CLOUD_SUFFIX}", entra_users.SEED_PASSWORD)
        keys = KeySet.import_key_set(
            stand_in.session().get(f"{stand_in.root}/discovery/v2.0/keys", timeout=10).json()
        )
        access = jwt.decode(tokens["access_token"], keys).claims
        assert access["aud"] == API_CLIENT
        assert access["azp"] == PAGES_CLIENT
        assert (access["scp"], access["ver"], access["tid"]) == ("Writeback.Self", "2.0", TENANT_ID)
        assert access["preferred_username"] == f"pat@{entra_users.CLOUD_SUFFIX}"
        assert access["onprem_sid"] == SIDS["pat.obrien"]
        assert "amr" not in access
        assert "acrs" not in access
        identity = jwt.decode(tokens["id_token"], keys).claims
        assert (identity["aud"], identity["amr"]) == (PAGES_CLIENT, ["pwd"])
        assert identity["nonce"]

    async def test_strong_verification_gives_the_asked_context(self, stand_in: StandIn) -> None:
        """Asked for context c1 (a claims request), a TAP sign-in with strong verification gets
        acrs c1 and amr mfa; the API then lets alice reset her own password."""
        claims = {"access_token": {"acrs": {"essential": True, "value": "c1"}}}
        tokens = sign_in(
            stand_in, f"alice@{DOMAIN}", entra_users.tap_of("alice"), strong=True, claims=claims
        )
        auth = authenticator(stand_in, **{SELF_SERVICE_ACRS_SETTING: "c1"})
        try:
            caller = await auth.authenticate({"Authorization": f"Bearer {tokens['access_token']}"})
        finally:
            await auth.close()
        assert caller.acrs == {"c1"}
        auth.authorize_target(caller, Operation.RESET, SIDS["alice"])

    async def test_a_password_sign_in_is_refused_the_step_up(self, stand_in: StandIn) -> None:
        """Without strong verification the token has no acrs, and the API's step-up refuses an
        own reset; the form refuses a sign-in that was asked for a context."""
        tokens = sign_in(stand_in, f"alice@{DOMAIN}", entra_users.SEED_PASSWORD)
        auth = authenticator(stand_in, **{SELF_SERVICE_ACRS_SETTING: "c1"})
        try:
            caller = await auth.authenticate({"Authorization": f"Bearer {tokens['access_token']}"})
        finally:
            await auth.close()
        with pytest.raises(AuthError, match=r"auth\.step_up_required"):
            auth.authorize_target(caller, Operation.RESET, SIDS["alice"])
        _, challenge = pkce()
        query = urlencode({
            "client_id": PAGES_CLIENT, "response_type": "code", "redirect_uri": REDIRECT,
            "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256",
            "claims": json.dumps({"access_token": {"acrs": {"essential": True, "value": "c1"}}}),
        })  # fmt: skip
        refused = stand_in.session().post(
            f"{stand_in.root}/oauth2/v2.0/authorize?{query}",
            data={"username": f"alice@{DOMAIN}", "secret": entra_users.SEED_PASSWORD},
            allow_redirects=False,
            timeout=10,
        )
        assert refused.status_code == 401
        assert "needs strong verification" in refused.text

    async def test_the_helpdesk_acts_on_other_users(self, stand_in: StandIn) -> None:
        """hana.helpdesk's token holds Writeback.Reset.Admin and acts on bob's account."""
        tokens = sign_in(stand_in, f"hana.helpdesk@{DOMAIN}", entra_users.SEED_PASSWORD)
        auth = authenticator(stand_in)
        try:
            caller = await auth.authenticate({"Authorization": f"Bearer {tokens['access_token']}"})
        finally:
            await auth.close()
        assert "Writeback.Reset.Admin" in caller.roles
        auth.authorize_target(caller, Operation.RESET, SIDS["bob"])

    def test_a_refresh_token_gets_new_tokens_once(self, stand_in: StandIn) -> None:
        """A refresh token is exchanged for a new access token and refresh token, once."""
        tokens = sign_in(stand_in, f"bob@{DOMAIN}", entra_users.SEED_PASSWORD)
        session = stand_in.session()
        form = {"grant_type": "refresh_token", "client_id": PAGES_CLIENT,
                "refresh_token": tokens["refresh_token"]}  # fmt: skip
        refreshed = session.post(f"{stand_in.root}/oauth2/v2.0/token", data=form, timeout=10)
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["access_token"] != tokens["access_token"]
        assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
        again = session.post(f"{stand_in.root}/oauth2/v2.0/token", data=form, timeout=10)
        assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")


class TestRefusals:
    def test_pkce_is_required_and_checked(self, stand_in: StandIn) -> None:
        """No code_challenge, or plain, is refused at the authorize endpoint."""
        session = stand_in.session()
        base = {"client_id": PAGES_CLIENT, "response_type": "code", "redirect_uri": REDIRECT,
                "scope": "openid"}  # fmt: skip
        for extra in ({}, {"code_challenge": "a" * 43, "code_challenge_method": "plain"}):
            url = f"{stand_in.root}/oauth2/v2.0/authorize?{urlencode({**base, **extra})}"
            answer = session.get(url, timeout=10, allow_redirects=False)
            assert answer.status_code in (302, 400)
            assert "code_challenge" in (answer.headers.get("Location", "") + answer.text)

    def test_a_wrong_password_or_redirect_is_refused(self, stand_in: StandIn) -> None:
        """A wrong password stays on the form (401); an unregistered redirect URI is a 400."""
        session = stand_in.session()
        _, challenge = pkce()
        query = {"client_id": PAGES_CLIENT, "response_type": "code", "redirect_uri": REDIRECT,
                 "scope": "openid", "code_challenge": challenge,
                 "code_challenge_method": "S256"}  # fmt: skip
        url = f"{stand_in.root}/oauth2/v2.0/authorize?{urlencode(query)}"
        wrong = session.post(url, data={"username": f"alice@{DOMAIN}", "secret": "nope"},
                             allow_redirects=False, timeout=10)  # fmt: skip
        assert wrong.status_code == 401
        query["redirect_uri"] = "https://evil.example/"
        url = f"{stand_in.root}/oauth2/v2.0/authorize?{urlencode(query)}"
        assert session.get(url, allow_redirects=False, timeout=10).status_code == 400

    def test_a_wrong_code_verifier_is_refused(self, stand_in: StandIn) -> None:
        """The token endpoint refuses a code with a verifier that does not match."""
        session = stand_in.session()
        _, challenge = pkce()
        query = {"client_id": PAGES_CLIENT, "response_type": "code", "redirect_uri": REDIRECT,
                 "scope": "openid", "code_challenge": challenge,
                 "code_challenge_method": "S256"}  # fmt: skip
        url = f"{stand_in.root}/oauth2/v2.0/authorize?{urlencode(query)}"
        answer = session.post(url, data={"username": f"bob@{DOMAIN}",
                              "secret": entra_users.SEED_PASSWORD}, allow_redirects=False,
                              timeout=10)  # fmt: skip
        code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
        tokens = session.post(
            f"{stand_in.root}/oauth2/v2.0/token",
            data={"grant_type": "authorization_code", "client_id": PAGES_CLIENT, "code": code,
                  "redirect_uri": REDIRECT, "code_verifier": secrets.token_urlsafe(48)},
            timeout=10,
        )  # fmt: skip
        assert (tokens.status_code, tokens.json()["error"]) == (400, "invalid_grant")
