"""`writeback login` / `whoami` and `--auth` through azure-identity's own credential classes.

ClientSecretCredential and DeviceCodeCredential accept a custom `authority` (with instance
discovery disabled), so they talk to a local HTTPS OpenID Connect authority served here with the
standard library and a certificate from devstack/tls.py. The authority records every request, so
the tests see the scope and the client id the client asks with (its tokens name that client in
`appid`, as Entra ID's do) and whether a second run reached the token endpoint at all or was
answered from azure-identity's persistent token cache.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devstack.tls import issue_server_certificate
from writeback.client.cli import main

pytestmark = pytest.mark.timeout(60)
TENANT = "11111111-2222-3333-4444-555555555555"
API_APP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
AUTOMATION_APP = "99999999-8888-7777-6666-555555555555"
ADMIN_CLIENT = "12121212-3434-5656-7878-909090909090"
USER_OID = "0f0f0f0f-1e1e-2d2d-3c3c-4b4b4b4b4b4b"
SECRET = "unit-test-client-secret-0123456789"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    """A token shaped like Entra ID's (unsigned: the client only decodes it for display)."""
    return f"{_b64({'typ': 'JWT', 'alg': 'RS256'})}.{_b64(claims)}.c2lnbmF0dXJl"


@dataclass
class Authority:
    """The local authority: its base URL and what it received and issued."""

    url: str
    token_requests: list[dict[str, str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    device_scope: str = ""  # a device code grant's scope is the one asked for its code


def _handler(authority: Authority) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            tenant, _, rest = self.path.strip("/").partition("/")
            if rest != "v2.0/.well-known/openid-configuration":
                self._send(404, {"error": "not_found"})
            elif tenant != TENANT:
                self._send(
                    400,
                    {
                        "error": "invalid_tenant",
                        "error_description": f"AADSTS90002: Tenant '{tenant}' not found.",
                    },
                )
            else:
                base = f"{authority.url}/{TENANT}"
                self._send(
                    200,
                    {
                        "issuer": f"{base}/v2.0",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    },
                )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            if self.path.endswith("/devicecode"):
                authority.device_scope = form.get("scope", "")
                self._send(
                    200,
                    {
                        "device_code": "device-code-1",
                        "user_code": "ABCD-EFGH",
                        "verification_uri": "https://microsoft.com/devicelogin",
                        "expires_in": 900,
                        "interval": 1,
                        "message": "enter ABCD-EFGH",
                    },
                )
                return
            authority.token_requests.append(form)
            now = int(time.time())
            scope = form.get("scope", authority.device_scope).split()
            audience = next((s.removesuffix("/.default") for s in scope if "/" in s), "")
            common = {"aud": audience, "tid": TENANT, "iat": now, "exp": now + 3600}
            if form.get("grant_type") == "client_credentials":
                token = _jwt(
                    {
                        **common,
                        "appid": form.get("client_id", AUTOMATION_APP),
                        "oid": "77777777-6666-5555-4444-333333333333",
                        "roles": ["Writeback.Read", "Writeback.Unlock"],
                    }
                )
                authority.issued.append(token)
                self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
                return
            # The device code grant: a delegated token for a user, with the account's id token.
            token = _jwt(
                {
                    **common,
                    "appid": form.get("client_id", ADMIN_CLIENT),
                    "upn": "helpdesk@corp.example.com",
                    "oid": USER_OID,
                    "scp": "user_impersonation",
                    "roles": ["Writeback.Reset.Admin"],
                }
            )
            id_token = _jwt(
                {
                    "iss": f"{authority.url}/{TENANT}/v2.0",
                    "aud": form.get("client_id"),
                    "sub": "subject-1",
                    "oid": USER_OID,
                    "tid": TENANT,
                    "preferred_username": "helpdesk@corp.example.com",
                    "iat": now,
                    "exp": now + 3600,
                }
            )
            authority.issued += [token, "refresh-token-1"]
            self._send(
                200,
                {
                    "access_token": token,
                    "refresh_token": "refresh-token-1",
                    "id_token": id_token,
                    "client_info": _b64({"uid": USER_OID, "utid": TENANT}),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "scope": " ".join(scope),
                },
            )

    return Handler


@pytest.fixture
def authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Authority]:
    """An HTTPS OpenID Connect authority on localhost, trusted through REQUESTS_CA_BUNDLE;
    HOME is a fresh directory, so azure-identity's persistent cache starts empty."""
    tls = issue_server_certificate(tmp_path / "tls", ["localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    found = Authority(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    found.url = f"https://localhost:{server.server_address[1]}"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


def _environ(authority: Authority, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "AZURE_AUTHORITY_HOST": authority.url,
        "AZURE_TENANT_ID": TENANT,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        **extra,
    }


def _automation(authority: Authority, tmp_path: Path, **extra: str) -> dict[str, str]:
    return _environ(
        authority,
        tmp_path,
        AZURE_CLIENT_ID=AUTOMATION_APP,
        AZURE_CLIENT_SECRET=SECRET,
        WRITEBACK_API_APP_ID=API_APP,
        **extra,
    )


def _run(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str]
) -> tuple[int, str, str]:
    code = main(argv, environ)
    out, err = capsys.readouterr()
    return code, out, err


def _facts(out: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _libsecret_usable() -> bool:
    try:
        import msal_extensions  # noqa: PLC0415

        msal_extensions.LibsecretPersistence("/nonexistent/probe", "probe", {"k": "v"})
    except Exception:  # any failure means no keyring here
        return False
    return True


UNENCRYPTED = ["--unencrypted-cache"]


class TestScope:
    def test_scope_is_the_api_app_id_default(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """WRITEBACK_API_APP_ID gives the scope <app id>/.default, shown and requested."""
        environ = _automation(authority, tmp_path)
        code, out, _ = _run(capsys, ["whoami", "--auth", "client-secret", *UNENCRYPTED], environ)
        assert code == 0
        assert _facts(out)["scope"] == f"{API_APP}/.default"
        assert authority.token_requests[-1]["scope"] == f"{API_APP}/.default"

    def test_an_application_id_uri_gets_default(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """WRITEBACK_API_SCOPE, an application ID URI, wins over the app id and gets /.default."""
        environ = _automation(
            authority, tmp_path, WRITEBACK_API_SCOPE=f"api://{TENANT}/writeback-contoso"
        )
        code, out, _ = _run(capsys, ["whoami", "--auth", "client-secret", *UNENCRYPTED], environ)
        assert code == 0
        assert _facts(out)["scope"] == f"api://{TENANT}/writeback-contoso/.default"
        assert authority.token_requests[-1]["scope"] == f"api://{TENANT}/writeback-contoso/.default"

    def test_no_scope_configured_names_the_setting(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With neither the app id nor a scope, the client names both and sends nothing."""
        environ = _environ(authority, tmp_path)
        code, _out, err = _run(capsys, ["login", "--auth", "device-code"], environ)
        assert code == 2
        assert "WRITEBACK_API_APP_ID: is not set" in err
        assert "WRITEBACK_API_SCOPE" in err
        assert authority.token_requests == []

    def test_help_names_the_scope_settings(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--help says where the scope comes from, the one configured now, and the sign-ins."""
        monkeypatch.setenv("COLUMNS", "250")  # no line break inside the scope
        assert main(["--help"], {}) == 0
        assert "now: not configured" in " ".join(capsys.readouterr().out.split())
        assert main(["whoami", "--help"], {"WRITEBACK_API_APP_ID": API_APP}) == 0
        out = capsys.readouterr().out
        assert f"now: {API_APP}/.default" in " ".join(out.split())
        assert "<WRITEBACK_API_APP_ID>/.default" in out
        assert "WRITEBACK_API_SCOPE" in out
        assert "device-code" in out
        assert "azure-cli" in out
        assert "browser" in out

    def test_an_app_id_that_is_not_one_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An application id that is not a GUID is a usage error naming the setting."""
        environ = {"WRITEBACK_API_APP_ID": "writeback-api", "XDG_CONFIG_HOME": str(tmp_path)}
        code, _, err = _run(capsys, ["whoami", "--auth", "device-code"], environ)
        assert code == 2
        assert err.startswith("writeback: WRITEBACK_API_APP_ID: must be the API app registration")


class TestCache:
    def test_a_second_run_uses_the_cached_token(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """ClientSecretCredential's persistent cache answers the second run: one token request."""
        environ = _automation(authority, tmp_path)
        for _ in range(2):
            code, _, _ = _run(capsys, ["whoami", "--auth", "client-secret", *UNENCRYPTED], environ)
            assert code == 0
        assert len(authority.token_requests) == 1
        cached = tmp_path / "home" / ".IdentityService" / "writeback.nocae"
        assert cached.is_file()

    def test_login_once_then_silent(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`login --auth device-code` signs in once; `whoami` then asks the authority nothing."""
        environ = _environ(authority, tmp_path, WRITEBACK_API_APP_ID=API_APP)
        args = ["--auth", "device-code", "--client-id", ADMIN_CLIENT, *UNENCRYPTED]
        code, out, err = _run(capsys, ["login", *args], environ)
        assert code == 0, err
        assert "ABCD-EFGH" in err  # the device code prompt, on stderr
        assert _facts(out)["signed in"] == "--auth device-code"
        assert len(authority.token_requests) == 1
        record = tmp_path / "config" / "writeback" / "device-code-account.json"
        assert record.stat().st_mode & 0o077 == 0
        code, out, _ = _run(capsys, ["whoami", *args], environ)
        assert code == 0
        assert _facts(out)["user"] == "helpdesk@corp.example.com"
        assert len(authority.token_requests) == 1

    def test_no_keyring_without_opt_in_is_a_clear_error(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Where libsecret cannot encrypt the cache, the client says so and names the opt-in."""
        if _libsecret_usable():
            pytest.skip("a keyring is usable here, so the cache is encrypted")
        environ = _automation(authority, tmp_path)
        code, out, err = _run(capsys, ["whoami", "--auth", "client-secret"], environ)
        assert code == 1
        assert "--unencrypted-cache" in err
        assert "libsecret" in err
        assert "Traceback" not in err
        assert out == ""


class TestClientId:
    """Which application signs in: the deployment's admin client for device code and browser
    (WRITEBACK_CLIENT_ID, its adminClientId), never for the automation's sign-ins."""

    OTHER_APP = "34343434-5656-7878-9090-121212121212"

    def _login(
        self, authority: Authority, capsys: pytest.CaptureFixture[str], environ: dict[str, str]
    ) -> str:
        """`writeback login --auth device-code`; the client id the token request named."""
        argv = ["login", "--auth", "device-code", *UNENCRYPTED]
        code, _, err = _run(capsys, argv, environ)
        assert code == 0, err
        return authority.token_requests[-1]["client_id"]

    def test_device_code_signs_in_through_writeback_client_id(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """WRITEBACK_CLIENT_ID names the public client, ahead of an AZURE_CLIENT_ID set for
        other tools; the saved account is the admin client's."""
        environ = _environ(
            authority,
            tmp_path,
            WRITEBACK_API_APP_ID=API_APP,
            WRITEBACK_CLIENT_ID=ADMIN_CLIENT,
            AZURE_CLIENT_ID=self.OTHER_APP,
        )
        assert self._login(authority, capsys, environ) == ADMIN_CLIENT
        record = tmp_path / "config" / "writeback" / "device-code-account.json"
        assert json.loads(record.read_text())["clientId"] == ADMIN_CLIENT
        code, out, _ = _run(capsys, ["whoami", "--auth", "device-code", *UNENCRYPTED], environ)
        assert code == 0
        assert _facts(out)["app"] == ADMIN_CLIENT
        assert len(authority.token_requests) == 1  # silent: the same client's cached account

    def test_the_option_wins_then_azure_client_id(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--client-id wins over WRITEBACK_CLIENT_ID; without either, AZURE_CLIENT_ID is used."""
        environ = _environ(authority, tmp_path, WRITEBACK_API_APP_ID=API_APP)
        argv = ["login", "--auth", "device-code", "--client-id", self.OTHER_APP, *UNENCRYPTED]
        code, _, err = _run(capsys, argv, {**environ, "WRITEBACK_CLIENT_ID": ADMIN_CLIENT})
        assert code == 0, err
        assert authority.token_requests[-1]["client_id"] == self.OTHER_APP
        only_azure = {**environ, "AZURE_CLIENT_ID": ADMIN_CLIENT}
        assert self._login(authority, capsys, only_azure) == ADMIN_CLIENT

    def test_client_secret_ignores_the_admin_client(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The admin client is public (no secret): client-secret keeps AZURE_CLIENT_ID's app."""
        environ = _automation(authority, tmp_path, WRITEBACK_CLIENT_ID=ADMIN_CLIENT)
        code, out, err = _run(capsys, ["whoami", "--auth", "client-secret", *UNENCRYPTED], environ)
        assert code == 0, err
        assert authority.token_requests[-1]["client_id"] == AUTOMATION_APP
        assert _facts(out)["app"] == AUTOMATION_APP

    def test_a_client_id_that_is_not_one_is_refused(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """WRITEBACK_CLIENT_ID must be an application id: exit 2 naming it, nothing sent."""
        environ = _environ(
            authority, tmp_path, WRITEBACK_API_APP_ID=API_APP, WRITEBACK_CLIENT_ID="writeback"
        )
        argv = ["login", "--auth", "device-code", *UNENCRYPTED]
        code, _, err = _run(capsys, argv, environ)
        assert code == 2
        assert err.startswith("writeback: WRITEBACK_CLIENT_ID:")
        assert authority.token_requests == []


class TestWhoami:
    def test_app_only_token(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An app-only token shows the application, its oid, tenant and app roles, no user."""
        environ = _automation(authority, tmp_path)
        code, out, _ = _run(capsys, ["whoami", "--auth", "client-secret", *UNENCRYPTED], environ)
        facts = _facts(out)
        assert code == 0
        assert facts["app"] == AUTOMATION_APP
        assert "user" not in facts
        assert facts["acts as"] == "app-only (an application)"
        assert facts["tid"] == TENANT
        assert facts["roles"] == "Writeback.Read Writeback.Unlock"
        assert facts["scopes"] == "-"
        assert "without verifying" in facts["note"]

    def test_delegated_token_as_json(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A delegated token shows the user, the oid, its scopes and roles, also with --json."""
        environ = _environ(authority, tmp_path, WRITEBACK_API_APP_ID=API_APP)
        args = ["--auth", "device-code", "--client-id", ADMIN_CLIENT, *UNENCRYPTED]
        assert _run(capsys, ["login", *args], environ)[0] == 0
        code, out, _ = _run(capsys, ["whoami", "--json", *args], environ)
        facts = json.loads(out)
        assert code == 0
        assert facts["user"] == "helpdesk@corp.example.com"
        assert facts["oid"] == USER_OID
        assert facts["acts as"] == "delegated (a user)"
        assert facts["scopes"] == "user_impersonation"
        assert facts["roles"] == "Writeback.Reset.Admin"
        assert facts["credential"] == "--auth device-code"

    def test_api_key_has_no_claims(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With an API key, whoami names the variable and where its roles come from."""
        environ = {"WRITEBACK_API_KEY": "unit-test-api-key-0123456789"}
        code, out, _ = _run(capsys, ["whoami", "--auth", "api-key"], environ)
        assert code == 0
        assert _facts(out)["credential"] == "WRITEBACK_API_KEY"
        assert "unit-test-api-key" not in out


class TestErrors:
    def test_no_credential_available(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the Azure CLI, --auth azure-cli says to run `az login`: exit 1, no traceback."""
        monkeypatch.setenv("PATH", str(tmp_path))
        environ = {"WRITEBACK_API_APP_ID": API_APP}
        code, out, err = _run(capsys, ["whoami", "--auth", "azure-cli"], environ)
        assert code == 1
        assert err.startswith("writeback: --auth azure-cli: no credential available")
        assert "az login" in err
        assert "Traceback" not in err
        assert out == ""

    def test_wrong_tenant(
        self, authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A tenant the authority does not know is one line naming --tenant: exit 1."""
        environ = _automation(authority, tmp_path)
        argv = ["whoami", "--auth", "client-secret", "--tenant", "contoso.example", *UNENCRYPTED]
        code, out, err = _run(capsys, argv, environ)
        assert code == 1
        assert "--tenant" in err
        assert "Traceback" not in err
        assert out == ""
        assert len(err.strip().splitlines()) == 1

    def test_unknown_auth_setting(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown WRITEBACK_AUTH is a usage error naming the setting and the choices."""
        code, _, err = _run(capsys, ["whoami"], {"WRITEBACK_AUTH": "kerberos"})
        assert code == 2
        assert "WRITEBACK_AUTH" in err
        assert "device-code" in err

    def test_login_needs_an_entra_sign_in(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`login` with an API key is refused, naming the sign-ins it takes."""
        code, _, err = _run(capsys, ["login", "--auth", "api-key"], {"WRITEBACK_API_KEY": "k" * 20})
        assert code == 2
        assert "--auth" in err
        assert "device-code" in err


def test_no_token_in_output_or_logs(
    authority: Authority,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No access or refresh token, nor the client secret, appears in output or any log record."""
    caplog.set_level(logging.DEBUG)
    environ = _environ(authority, tmp_path, WRITEBACK_API_APP_ID=API_APP)
    args = ["--auth", "device-code", "--client-id", ADMIN_CLIENT, *UNENCRYPTED]
    seen = [_run(capsys, ["login", *args], environ), _run(capsys, ["whoami", *args], environ)]
    automation = _automation(authority, tmp_path)
    seen.append(_run(capsys, ["whoami", "--auth", "client-secret", *UNENCRYPTED], automation))
    assert authority.issued
    text = "".join(out + err for _, out, err in seen) + caplog.text
    for secret in [*authority.issued, SECRET]:
        assert secret not in text
    assert os.environ.get("AZURE_CLIENT_SECRET") is None


def test_a_command_sends_the_entra_token(
    authority: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --auth client-secret, `health` sends azure-identity's token as Bearer, not the key."""
    from tests.unit.test_client import HEALTH, FakeApi, serve  # noqa: PLC0415

    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), serve(fake))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        fake.answer("GET", HEALTH, 200, {"status": "ok", "domains": []})
        environ = _automation(
            authority,
            tmp_path,
            WRITEBACK_API_URL=f"http://127.0.0.1:{server.server_address[1]}/api",
            WRITEBACK_API_KEY="unit-test-api-key-0123456789",
        )
        code, out, err = _run(capsys, ["health", "--auth", "client-secret", *UNENCRYPTED], environ)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert out.startswith("health:   ok")
    sent = fake.requests[0].headers
    assert sent["authorization"] == f"Bearer {authority.issued[0]}"
    assert "x-functions-key" not in sent
