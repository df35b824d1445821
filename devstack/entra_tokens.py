"""The OAuth 2.0 half of the local Entra ID stand-in (devstack/entra.py): authlib's
authorization server with the authorization code grant (PKCE with S256 required, public
clients only, as for a single-page application; the code in the query or, as `response_mode`
asks, the fragment), refresh tokens, and OpenID Connect ID tokens,
issuing tokens shaped as Entra ID's v2.0 ones.

Access tokens for the API carry what an Entra v2.0 access token carries: `aud` (the API's client
id), `iss`, `iat`/`nbf`/`exp`, `azp`/`azpacr`, `name`, `oid`, `preferred_username`, `scp`,
`roles`, `sub`, `tid`, `uti`, `ver` "2.0", the optional claims configured (`onprem_sid`), and
`acrs` when the sign-in was asked for authentication contexts and satisfied them. Never `amr`:
Entra puts it in ID tokens and v1.0 access tokens only. Everything is held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.grants.util import create_response_mode_response
from joserfc import jwt
from joserfc.jwk import RSAKey

from devstack.entra_users import CloudUser

ACCESS_TOKEN_SECONDS = 3600  # Entra's default lies between 60 and 90 minutes
CODE_SECONDS = 600


@dataclass(frozen=True)
class Tenant:
    """What the stand-in issues tokens as: the authority, tenant, API and pages' registrations."""

    authority: str  # https://host:port, standing in for https://login.microsoftonline.com
    tenant_id: str
    api_client_id: str
    api_identifier_uri: str
    pages_client_id: str
    redirect_uris: tuple[str, ...]
    scope: str = "Writeback.Self"
    contexts: tuple[str, ...] = ("c1",)  # the authentication contexts strong sign-in satisfies
    strong_amr: tuple[str, ...] = ("pwd", "mfa")
    access_token_claims: tuple[str, ...] = ("onprem_sid",)  # optional claims, as the manifest
    id_token_claims: tuple[str, ...] = ("onprem_sid",)
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, private=True))

    @property
    def issuer(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0"

    @property
    def kid(self) -> str:
        return self.key.thumbprint()

    @property
    def api_scope(self) -> str:
        return f"{self.api_identifier_uri}/{self.scope}"


@dataclass(frozen=True)
class SignIn:
    """One completed sign-in: who, when, and how strongly (the contexts it satisfied)."""

    user: CloudUser
    strong: bool
    acrs: tuple[str, ...] = ()
    auth_time: int = field(default_factory=lambda: int(time.time()))

    @property
    def amr(self) -> list[str]:
        return ["pwd", "mfa"] if self.strong else ["pwd"]


@dataclass
class PagesClient:
    """A single-page application: public (no secret), PKCE, registered redirect URIs."""

    client_id: str
    redirect_uris: tuple[str, ...]
    scopes: frozenset[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(part for part in scope.split() if part in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class Grant:
    """An authorization code or a refresh token, and the sign-in it carries."""

    value: str
    client_id: str
    scope: str
    sign_in: SignIn
    redirect_uri: str = ""
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    expires_at: float = field(default_factory=lambda: time.time() + CODE_SECONDS)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.sign_in.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return self.sign_in.amr

    def check_client(self, client: PagesClient) -> bool:
        return client.client_id == self.client_id


class S256Required(CodeChallenge):
    """PKCE on every authorization request, with S256 only (Entra's SPAs must use PKCE)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib's class attribute
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required: send code_challenge with S256")
        super().validate_code_challenge(grant, redirect_uri)


def build_server(app: Any, tenant: Tenant) -> AuthorizationServer:
    """authlib's authorization server for `app`, issuing `tenant`'s tokens."""
    codes: dict[str, Grant] = {}
    refresh_tokens: dict[str, Grant] = {}
    client = PagesClient(
        tenant.pages_client_id,
        tenant.redirect_uris,
        frozenset({"openid", "profile", "offline_access", tenant.api_scope}),
    )

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["none"]  # noqa: RUF012 - authlib's class attribute

        def save_authorization_code(self, code: str, request: Any) -> None:
            data = request.payload.data
            codes[code] = Grant(
                code, client.client_id, request.payload.scope, request.user,
                redirect_uri=request.payload.redirect_uri, nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            )  # fmt: skip

        def query_authorization_code(self, code: str, client: PagesClient) -> Grant | None:
            found = codes.get(code)
            usable = found and found.check_client(client) and found.expires_at > time.time()
            return found if usable else None

        def delete_authorization_code(self, code: Grant) -> None:
            codes.pop(code.value, None)

        def authenticate_user(self, code: Grant) -> SignIn:
            return code.sign_in

        def create_authorization_response(
            self, redirect_uri: str, grant_user: SignIn
        ) -> tuple[int, str, list[tuple[str, str]]]:
            """authlib's answer, with the code in the fragment when `response_mode` asks for
            it, as Entra ID does (MSAL.js asks for it and reads only the fragment)."""
            status, body, headers = super().create_authorization_response(redirect_uri, grant_user)
            mode = self.request.payload.data.get("response_mode", "query")
            if status != 302 or mode == "query":
                return status, body, headers
            sent = parse_qsl(urlsplit(dict(headers)["Location"]).query)
            params = [(name, value) for name, value in sent if name in ("code", "state")]
            return create_response_mode_response(redirect_uri, params, mode)  # type: ignore[no-any-return]

    class RefreshGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["none"]  # noqa: RUF012 - authlib's class attribute
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> Grant | None:
            return refresh_tokens.get(refresh_token)

        def authenticate_user(self, refresh_token: Grant) -> SignIn:
            return refresh_token.sign_in

        def revoke_old_credential(self, refresh_token: Grant) -> None:
            refresh_tokens.pop(refresh_token.value, None)

    class IdTokens(OpenIDCode):
        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return any(code.nonce == nonce for code in codes.values())

        def resolve_client_private_key(self, client: PagesClient) -> RSAKey:
            return tenant.key

        def get_client_algorithm(self, client: PagesClient) -> str:
            return "RS256"

        def get_encode_header(self, client: PagesClient) -> dict[str, str]:
            return {"typ": "JWT", "alg": "RS256", "kid": tenant.kid}

        def get_client_claims(self, client: PagesClient) -> dict[str, Any]:
            now = int(time.time())
            return {"iss": tenant.issuer, "aud": client.client_id, "iat": now, "nbf": now,
                    "exp": now + ACCESS_TOKEN_SECONDS}  # fmt: skip

        def generate_user_info(self, sign_in: SignIn, scope: str) -> dict[str, Any]:
            claims = _user_claims(tenant, sign_in, client.client_id, tenant.id_token_claims)
            return {**claims, "amr": sign_in.amr}

    def save_token(token: dict[str, Any], request: Any) -> None:
        if "refresh_token" in token:
            refresh_tokens[token["refresh_token"]] = Grant(
                token["refresh_token"], client.client_id, token["scope"], request.user,
                expires_at=time.time() + 86400,
            )  # fmt: skip

    def query_client(client_id: str) -> PagesClient | None:
        return client if client_id == client.client_id else None

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_grant(CodeGrant, [S256Required(required=True), IdTokens(require_nonce=False)])
    server.register_grant(RefreshGrant)

    def generate(*, grant_type: str, client: PagesClient, user: SignIn | None = None,
                 scope: str | None = None, expires_in: int | None = None,
                 include_refresh_token: bool = True) -> dict[str, Any]:  # fmt: skip
        scope = scope or ""
        token: dict[str, Any] = {"token_type": "Bearer", "scope": scope,
                                 "expires_in": ACCESS_TOKEN_SECONDS}  # fmt: skip
        if user is not None and tenant.api_scope in scope.split():
            token["access_token"] = access_token(tenant, user, client.client_id)
        else:  # Entra's tokens for Microsoft Graph (openid/profile only) are opaque to others
            token["access_token"] = secrets.token_urlsafe(32)
        if include_refresh_token and "offline_access" in scope.split():
            token["refresh_token"] = secrets.token_urlsafe(48)
        return token

    server.register_token_generator("default", generate)
    return server


def access_token(tenant: Tenant, sign_in: SignIn, client_id: str) -> str:
    """A v2.0 access token for the API, signed RS256 with the tenant's key."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": tenant.api_client_id, "iss": tenant.issuer, "iat": now, "nbf": now,
        "exp": now + ACCESS_TOKEN_SECONDS, "azp": client_id, "azpacr": "0",
        "scp": tenant.scope, "ver": "2.0", "uti": secrets.token_urlsafe(16),
        **_user_claims(tenant, sign_in, tenant.api_client_id, tenant.access_token_claims),
    }  # fmt: skip
    if sign_in.user.roles:
        claims["roles"] = list(sign_in.user.roles)
    if sign_in.acrs:
        claims["acrs"] = list(sign_in.acrs)
    header = {"typ": "JWT", "alg": "RS256", "kid": tenant.kid}
    return jwt.encode(header, claims, tenant.key, algorithms=["RS256"])


def _user_claims(
    tenant: Tenant, sign_in: SignIn, audience: str, optional: tuple[str, ...]
) -> dict[str, Any]:
    user = sign_in.user
    # sub is pairwise: the same user has another subject in every application.
    digest = hashlib.sha256(f"{tenant.tenant_id}/{audience}/{user.oid}".encode()).digest()
    claims: dict[str, Any] = {
        "sub": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
        "oid": user.oid, "tid": tenant.tenant_id, "name": user.name,
        "preferred_username": user.username,
    }  # fmt: skip
    if "onprem_sid" in optional and user.onprem_sid:
        claims["onprem_sid"] = user.onprem_sid
    if "upn" in optional:
        claims["upn"] = user.username
    return claims
