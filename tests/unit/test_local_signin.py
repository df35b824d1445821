"""The local stack's pages can sign in: the URL `./run demo` prints is one the local Entra ID
stand-in registers (a redirect URI and a CORS origin), the settings the stack gives the local
Functions host hand the pages the stand-in's client id, authority and the scope it issues, and
the pages' CSP lets them reach it. (tests/e2e/test_pages_signin.py signs in there for real.)"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

from devstack import entra_stack, entra_users, localstack
from devstack.__main__ import sign_in_guide
from devstack.seed import SEED_PASSWORD
from writeback.cloud import pages
from writeback.cloud.settings import PagesSettings


def pages_config() -> dict[str, object]:
    """The pages' sign-in config as the local host serves it, from the stack's settings."""
    settings = entra_stack.stand_in(Path("entra")).api_settings()
    return pages.config(PagesSettings.from_env(settings))


def test_the_printed_pages_url_redirects_back_to_a_registered_uri() -> None:
    """The pages' origin is one the stand-in allows, and their redirect URI is registered."""
    tenant = entra_stack.tenant(localstack.API_PORT)
    url = localstack.pages_url()
    assert pages.origin(url) in entra_stack.pages_origins(localstack.API_PORT)
    assert urljoin(url, str(pages_config()["redirectPath"])) in tenant.redirect_uris


def test_the_host_gives_the_pages_the_stand_ins_registration() -> None:
    """Client id, authority (with the tenant) and scope are the ones the stand-in issues for."""
    tenant = entra_stack.tenant(localstack.API_PORT)
    config = pages_config()
    assert config["clientId"] == tenant.pages_client_id
    assert config["authority"] == f"{tenant.authority}/{tenant.tenant_id}"
    assert config["scopes"] == [tenant.api_scope]
    policy = pages.security_headers(str(config["authority"]))["Content-Security-Policy"]
    assert f"connect-src 'self' {tenant.authority};" in policy


def test_the_demo_names_the_url_and_users_to_sign_in_as() -> None:
    """`./run demo` prints the pages' URL, a user with the password, the pass for strong
    verification, the user whose cloud UPN differs and the helpdesk."""
    env = {
        "WRITEBACK_DOMAIN": "corp.example.test",
        "WRITEBACK_PAGES_URL": localstack.pages_url(),
        "WRITEBACK_SIGNIN_AUTHORITY": f"{entra_stack.AUTHORITY}/{entra_stack.TENANT_ID}/v2.0",
        "WRITEBACK_SIGNIN_CA": ".devstack/entra/tls/ca.pem",
    }
    guide = sign_in_guide(env)
    for expected in (
        localstack.pages_url(),
        env["WRITEBACK_SIGNIN_CA"],
        "alice@corp.example.test",
        SEED_PASSWORD,
        entra_users.tap_of("alice"),
        f"pat@{entra_users.CLOUD_SUFFIX}",
        "hana.helpdesk@corp.example.test",
    ):
        assert expected in guide
