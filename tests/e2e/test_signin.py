"""A user signed in at the local Entra ID stand-in calls the API through the local Functions host
with the stand-in's token, and acts only on their own account in the Samba DC."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack import cloud, entra, entra_users, seed, tls
from devstack.entra_tokens import Tenant
from tests.e2e.conftest import LocalCloud
from tests.integration.test_local_entra import PAGES_CLIENT, REDIRECT, StandIn, sign_in
from tests.testbed import TestBed

pytestmark = pytest.mark.timeout(180)

TENANT_ID = "8e4f3b21-5c7d-4f9e-8a12-3456789abcde"
API_CLIENT = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
NEW = "Signed-In-Pa55!"


def post(url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any], str]:
    """POST JSON with a bearer token: status, JSON body, WWW-Authenticate."""
    call = urllib.request.Request(  # noqa: S310 - plain http to the loopback host
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(call, timeout=60) as response:  # noqa: S310 - see above
            return response.status, json.loads(response.read()), ""
    except urllib.error.HTTPError as error:
        challenge = error.headers.get("WWW-Authenticate", "")
        return error.code, json.loads(error.read() or b"{}"), challenge


def cloud_user(account: seed.Account) -> entra_users.CloudUser:
    """A cloud user synchronized from `account`, without onprem_sid (named by UPN)."""
    return entra_users.CloudUser(
        username=account.upn, name=account.sam, oid=str(uuid.uuid4()),
        password=account.password, tap=entra_users.tap_of(account.sam),
        roles=entra_users.SELF_ROLES, ad_upn=account.upn,
    )  # fmt: skip


def test_a_signed_in_user_changes_and_resets_only_their_own_password(
    ready: LocalCloud,
    testbed: TestBed,
    new_user: Callable[..., seed.Account],
    can_bind: Callable[[seed.Account, str], bool],
    tmp_path: Path,
) -> None:
    """Signed in as one user, a change of another user's password is refused (403) and leaves
    it as it was; the user's own change applies in AD; an own reset needs the context the
    deployment asks for (401 with a claims challenge), and applies with it."""
    me, other = new_user("signin"), new_user("other")
    files = tls.issue_server_certificate(tmp_path / "tls", ["localhost"], ("127.0.0.1",))
    port = cloud.free_port()
    tenant = Tenant(
        authority=f"https://localhost:{port}", tenant_id=TENANT_ID, api_client_id=API_CLIENT,
        api_identifier_uri=f"api://{TENANT_ID}/writeback-e2e", pages_client_id=PAGES_CLIENT,
        redirect_uris=(REDIRECT,), access_token_claims=(),  # the API routes by UPN
    )  # fmt: skip
    app = entra.create_app(tenant, [cloud_user(me), cloud_user(other)], ["https://localhost:7072"])
    settings = {
        **ready.settings,
        "WRITEBACK_AUTH_TENANT_ID": TENANT_ID,
        "WRITEBACK_AUTH_AUDIENCES": API_CLIENT,
        "WRITEBACK_AUTH_AUTHORITY": tenant.authority,
        "WRITEBACK_SELF_SERVICE_ACRS": "c1",
        "SSL_CERT_FILE": str(files.ca_file),
    }
    api_port = cloud.free_port()
    api = f"http://127.0.0.1:{api_port}/api/v1"
    with entra.serving(app, files, port):
        host = cloud.start_host(settings, api_port, ready.logs / "signin-host.log")
        try:
            stand_in = StandIn(tenant, files.ca_file)
            token = sign_in(stand_in, me.upn, me.password)["access_token"]
            change = {"oldPassword": other.password, "newPassword": NEW}
            status, answer, _ = post(
                f"{api}/passwords/change", {"user": other.upn, **change}, token
            )
            assert (status, answer["error"]) == (403, "auth.other_user"), answer
            assert can_bind(other, other.password)
            change = {"oldPassword": me.password, "newPassword": NEW}
            status, answer, _ = post(f"{api}/passwords/change", {"user": me.upn, **change}, token)
            assert (status, answer["reason"]) == (200, "applied"), answer
            assert can_bind(me, NEW)

            reset = {"user": me.upn, "newPassword": NEW + "2", "initiator": "self-service"}
            status, answer, challenge = post(f"{api}/passwords/reset", reset, token)
            assert (status, answer["error"]) == (401, "auth.step_up_required"), answer
            assert 'error="insufficient_claims"' in challenge
            claims = {"access_token": {"acrs": {"essential": True, "value": "c1"}}}
            strong = sign_in(
                stand_in, me.upn, entra_users.tap_of(me.sam), strong=True, claims=claims
            )
            status, answer, _ = post(f"{api}/passwords/reset", reset, strong["access_token"])
            assert (status, answer["reason"]) == (200, "applied"), answer
            assert can_bind(me, NEW + "2")
        finally:
            cloud.stop_process(host)
