"""The pages' answers (writeback.cloud.pages) through function_app's route, as the worker calls
it: files, config, headers and refusals."""

from __future__ import annotations

import json

import pytest

import function_app
from tests.functions import HttpCall, http
from writeback.cloud import pages
from writeback.cloud.settings import PagesSettings
from writeback.errors import ConfigurationError

CLIENT = "6f1c3d2a-1111-4222-8333-944445555666"
ENV = {
    "WRITEBACK_PAGES_CLIENT_ID": CLIENT,
    "WRITEBACK_AUTH_TENANT_ID": "00000000-0000-4000-8000-00000000beef",
    "WRITEBACK_AUTH_AUDIENCES": "11111111-2222-4333-8444-555555555555,api://t/writeback-x",
}


async def get(path: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] = ENV) -> tuple:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    call = HttpCall("GET", f"pages/{path}", route_params={"path": path})
    return await http(function_app.pages, call)


async def test_the_config_names_entra_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without WRITEBACK_AUTH_AUTHORITY the pages sign in with Entra ID for the tenant."""
    monkeypatch.delenv("WRITEBACK_AUTH_AUTHORITY", raising=False)
    status, body, headers = await get("config", monkeypatch)
    assert status == 200
    assert json.loads(body) == {
        "clientId": CLIENT,
        "authority": "https://login.microsoftonline.com/00000000-0000-4000-8000-00000000beef",
        "scopes": ["api://t/writeback-x/Writeback.Self"],
        "redirectPath": "/api/pages/",
    }
    assert (
        "connect-src 'self' https://login.microsoftonline.com;"
        in headers["content-security-policy"]
    )


async def test_a_set_authority_is_the_only_other_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    """WRITEBACK_AUTH_AUTHORITY (the API's) with the tenant is handed to MSAL; its origin is the
    CSP's one other origin."""
    env = {**ENV, "WRITEBACK_AUTH_AUTHORITY": "https://127.0.0.1:7443/"}
    _, body, headers = await get("config", monkeypatch, env)
    assert (
        json.loads(body)["authority"]
        == "https://127.0.0.1:7443/00000000-0000-4000-8000-00000000beef"
    )
    assert "connect-src 'self' https://127.0.0.1:7443;" in headers["content-security-policy"]


@pytest.mark.parametrize("page", [*pages.PAGES, ""])
async def test_each_page_is_html_under_the_csp(monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    """Each page is HTML naming itself, with no inline script and the security headers."""
    status, body, headers = await get(page, monkeypatch)
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert f'data-page="{page or "index"}"'.encode() in body
    assert b"<script>" not in body
    assert b"style=" not in body
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


@pytest.mark.parametrize("path", ["nope", "static/nope.js", "static/../__init__.py", "page.html"])
async def test_anything_else_is_404(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Only the pages and the shipped files are served: no other file of the package."""
    status, _, _ = await get(path, monkeypatch)
    assert status == 404


async def test_the_script_is_served_as_javascript(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vendored MSAL.js is served with a JavaScript type (nosniff would refuse others)."""
    status, body, headers = await get("static/msal-browser.min.js", monkeypatch)
    assert status == 200
    assert headers["content-type"].startswith("text/javascript")
    assert b"PublicClientApplication" in body


async def test_a_missing_client_id_is_a_generic_503_and_named_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the pages' client id, the config answers a generic 503 (anyone may ask); the
    setting is named in the log for the operator."""
    monkeypatch.delenv("WRITEBACK_PAGES_CLIENT_ID", raising=False)
    env = {k: v for k, v in ENV.items() if k != "WRITEBACK_PAGES_CLIENT_ID"}
    status, body, _ = await get("config", monkeypatch, env)
    assert status == 503
    answer = json.loads(body)
    assert answer["error"] == "service.misconfigured"
    assert "WRITEBACK_" not in json.dumps(answer)
    assert any(
        getattr(record, "setting", None) == "WRITEBACK_PAGES_CLIENT_ID" for record in caplog.records
    )


@pytest.mark.parametrize(
    "authority",
    ["http://login.example", "https://x.example/a b", "https://x'", "https://x.example/tenant"],
)
def test_an_authority_that_is_not_a_plain_https_url_is_refused(authority: str) -> None:
    """The authority goes into a header: only an https:// scheme and host, no spaces or quotes."""
    with pytest.raises(ConfigurationError) as raised:
        PagesSettings.from_env({**ENV, "WRITEBACK_AUTH_AUTHORITY": authority})
    assert raised.value.setting == "WRITEBACK_AUTH_AUTHORITY"


def test_the_pages_need_a_tenant() -> None:
    """With API keys only there is nobody to sign in with: the tenant is named."""
    env = {"WRITEBACK_PAGES_CLIENT_ID": CLIENT, "WRITEBACK_API_KEYS": "k" * 40}
    with pytest.raises(ConfigurationError) as raised:
        PagesSettings.from_env(env)
    assert raised.value.setting == "WRITEBACK_AUTH_TENANT_ID"
