"""A local stand-in for Microsoft Entra ID's sign-in (the Microsoft identity platform's v2.0
OpenID Connect endpoints), so that Writeback's sign-in works end to end on one machine.

It stands for `https://login.microsoftonline.com/<tenant>/` and follows the contract Entra ID
publishes for it: the discovery document at `/<tenant>/v2.0/.well-known/openid-configuration`,
the signing keys at `/<tenant>/discovery/v2.0/keys`, the authorize and token endpoints at
`/<tenant>/oauth2/v2.0/authorize|token`, issuer `https://<host>/<tenant>/v2.0`, the
authorization code flow with PKCE (S256 required) for a single-page application, refresh
tokens, CORS for the pages' origin, and tokens shaped as Entra's v2.0 ones (devstack/
entra_tokens.py). The OAuth 2.0 and OpenID Connect protocol work is authlib's (its Flask
integration); nothing of it is written here.

Users (devstack/entra_users.py) sign in on a plain form with their password, or with their
Temporary Access Pass and "strong verification", which stands for a Temporary Access Pass or
multifactor sign-in: the ID token then says `amr` ["pwd", "mfa"], and an authorization request
asking for authentication contexts (a `claims` request for `acrs`, as MSAL sends after a claims
challenge) gets them in the access token. A request for contexts without strong verification is
refused on the form, as Conditional Access would.

Not emulated: Conditional Access policies themselves, consent, sessions and single sign-on
(every authorization asks again), logout, the implicit and hybrid flows, confidential clients,
client credentials, v1.0 tokens, token encryption, key rollover, group claims, Graph, the
`login_hint`/`prompt`/`domain_hint` parameters beyond what authlib checks, and password hash
synchronization: the stand-in's passwords are the seed's and do not follow changes made in AD.
"""

from __future__ import annotations

import argparse
import html
import json
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_cors import CORS
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server, run_simple

from devstack import entra_users
from devstack.entra_tokens import SignIn, Tenant, build_server
from devstack.tls import TlsFiles

FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sign in (local Entra ID stand-in)</title></head><body><main>
<h1>Sign in</h1><p>Local stand-in for Microsoft Entra ID. {notice}</p>
<form method="post"><p><label>User name <input name="username" autocomplete="username"
value="{username}" required></label></p>
<p><label>Password, or Temporary Access Pass <input name="secret" type="password"
autocomplete="current-password" required>
</label></p><p><label><input type="checkbox" name="strong" value="1"{checked}> Strong
verification (sign in with the Temporary Access Pass: stands for a TAP or MFA)</label></p>
<p><button>Sign in</button></p></form></main></body></html>"""


def create_app(tenant: Tenant, users: list[entra_users.CloudUser], origins: list[str]) -> Flask:
    """The stand-in's web application for `tenant`, its users and the pages' origins."""
    app = Flask(__name__)
    CORS(app, origins=origins or [], max_age=600)
    server = build_server(app, tenant)
    by_name = {user.username.casefold(): user for user in users}
    base = f"/{tenant.tenant_id}"

    @app.get(f"{base}/v2.0/.well-known/openid-configuration")
    def discovery() -> Response:
        root = f"{tenant.authority}{base}"
        return jsonify(
            issuer=tenant.issuer,
            authorization_endpoint=f"{root}/oauth2/v2.0/authorize",
            token_endpoint=f"{root}/oauth2/v2.0/token",
            jwks_uri=f"{root}/discovery/v2.0/keys",
            response_types_supported=["code"],
            response_modes_supported=["query", "fragment"],
            grant_types_supported=["authorization_code", "refresh_token"],
            subject_types_supported=["pairwise"],
            id_token_signing_alg_values_supported=["RS256"],
            code_challenge_methods_supported=["S256"],
            token_endpoint_auth_methods_supported=["none"],
            scopes_supported=["openid", "profile", "offline_access", tenant.api_scope],
            claims_supported=["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name",
                              "oid", "tid", "preferred_username", "amr", "acrs", "onprem_sid"],
            tenant_region_scope="local",
        )  # fmt: skip

    @app.get(f"{base}/discovery/v2.0/keys")
    def keys() -> Response:
        public = tenant.key.as_dict(private=False)
        return jsonify(keys=[{**public, "kid": tenant.kid, "use": "sig", "issuer": tenant.issuer}])

    @app.route(f"{base}/oauth2/v2.0/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        try:
            grant = server.get_consent_grant(end_user=None)
        except Exception as exc:
            return Response(html.escape(str(exc)), status=400, mimetype="text/plain")
        wanted = _requested_contexts(request.args.get("claims"))
        if request.method == "GET":
            return _form(wanted)
        user = by_name.get(request.form.get("username", "").strip().casefold())
        strong = request.form.get("strong") == "1"
        secret = request.form.get("secret", "")
        if user is None or secret != (user.tap if strong else user.password):
            return _form(wanted, "The user name or the password/pass is wrong.", status=401)
        if wanted and not strong:
            return _form(wanted, "This sign-in needs strong verification.", status=401)
        acrs = tuple(c for c in wanted if c in tenant.contexts) if strong else ()
        return server.create_authorization_response(
            grant=grant, grant_user=SignIn(user, strong, acrs)
        )

    @app.post(f"{base}/oauth2/v2.0/token")
    def token() -> Any:
        return server.create_token_response()

    return app


def _requested_contexts(claims: str | None) -> tuple[str, ...]:
    """The authentication contexts a `claims` request asks for in the access token."""
    if not claims:
        return ()
    try:
        acrs = json.loads(claims).get("access_token", {}).get("acrs", {})
    except (ValueError, AttributeError):
        return ()
    values = acrs.get("values") or ([acrs["value"]] if "value" in acrs else [])
    return tuple(str(value) for value in values)


def _form(wanted: tuple[str, ...], problem: str = "", status: int = 200) -> Response:
    notice = "This application asks for strong verification. " if wanted else ""
    page = FORM.format(
        notice=html.escape(notice + problem),
        username=html.escape(request.form.get("username", "")),
        checked=" checked" if wanted else "",
    )
    return Response(page, status=status, mimetype="text/html")


def load(config: Path) -> tuple[Tenant, list[entra_users.CloudUser], list[str]]:
    """The tenant, users and origins of a stand-in configuration file (written by the stack)."""
    data = json.loads(config.read_text())
    tenant = Tenant(
        authority=data["authority"], tenant_id=data["tenant_id"],
        api_client_id=data["api_client_id"], api_identifier_uri=data["api_identifier_uri"],
        pages_client_id=data["pages_client_id"], redirect_uris=tuple(data["redirect_uris"]),
        contexts=tuple(data.get("contexts", ["c1"])),
        key=RSAKey.import_key(data["signing_key"]),
    )  # fmt: skip
    return tenant, entra_users.from_json(data["users"]), list(data.get("origins", []))


@contextmanager
def serving(app: Flask, files: TlsFiles, port: int) -> Iterator[None]:
    """`app` over HTTPS on 127.0.0.1:`port`, in a thread of this process, while the block runs:
    how tests run the stand-in beside the stack without a process of its own."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.entra")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    app = create_app(*load(args.config))
    context = (str(args.cert), str(args.key))
    run_simple("127.0.0.1", args.port, app, ssl_context=context, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
