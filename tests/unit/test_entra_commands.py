"""The `writeback entra` commands against a stand-in for Microsoft Graph (tests/graph_standin.py:
a real local HTTP server that records what it receives and checks every application, service
principal and grant body against the Graph Bicep extension's type data; what it does not
emulate is listed there). They prove what each command sends (method, path, headers, body), that
nothing is sent on a bad argument or a dry run, how Graph's refusals become one line naming the
permission and the role, and that the Graph token never reaches the output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.graph_standin import GRAPH_APP_ID, GraphStandIn, graph_standin
from writeback.client.cli import main
from writeback.entra import manifest as entra_manifest
from writeback.entra.graph import Graph, GraphError
from writeback.entra.registration import APPLICATIONS, UPSERT

pytestmark = pytest.mark.timeout(60)
TOKEN = "eyJ0eXAiOiJKV1QifQ.graph-unit-test-token.signature"
PAGES = "https://func-wbtest-abc12345.azurewebsites.net/api/pages/"


@pytest.fixture
def graph() -> Iterator[GraphStandIn]:
    with graph_standin() as standin:
        yield standin


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "graph.token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of `writeback <argv>`; the token is in neither."""
    code = main(list(argv), environ={})
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, out, err


def link(graph: GraphStandIn, token_file: Path, *extra: str) -> list[str]:
    return [
        "entra", "link-sign-in", *extra,
        "--graph-url", graph.url, "--graph-token-file", str(token_file),
    ]  # fmt: skip


def registration(graph: GraphStandIn, token_file: Path, *extra: str) -> list[str]:
    return [
        "entra", "app-registration", "--name-prefix", "wbtest",
        "--host", "func-wbtest-abc12345.azurewebsites.net", *extra,
        "--graph-url", graph.url, "--graph-token-file", str(token_file),
    ]  # fmt: skip


class TestLinkSignIn:
    def test_sets_the_default_brandings_link(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The organization is looked up, then the default branding (Accept-Language: 0) is
        patched with exactly customAccountResetCredentialsUrl, with the bearer token."""
        url = PAGES + "forgot"
        code, out, _ = run(capsys, *link(graph, token_file, "--url", url))
        assert code == 0
        assert url in out
        first, second = graph.received
        assert (first.method, first.path) == ("GET", "/v1.0/organization?$select=id")
        assert (second.method, second.path) == (
            "PATCH",
            f"/v1.0/organization/{graph.tenant_id}/branding",
        )
        assert second.headers["accept-language"] == "0"
        assert second.headers["content-type"] == "application/json"
        assert second.headers["authorization"] == f"Bearer {TOKEN}"
        assert second.body == {"customAccountResetCredentialsUrl": url}
        assert graph.branding_url == url

    def test_clear_gives_the_link_back(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--clear sends null, which gives the link back to Microsoft's own page."""
        graph.branding_url = PAGES
        code, _, _ = run(capsys, *link(graph, token_file, "--clear"))
        assert code == 0
        assert graph.writes()[0].body == {"customAccountResetCredentialsUrl": None}
        assert graph.branding_url is None

    def test_dry_run_sends_nothing(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dry-run prints the request, default branding header and body, and sends none."""
        code, out, _ = run(capsys, *link(graph, token_file, "--url", PAGES, "--dry-run"))
        assert code == 0
        assert graph.received == []
        assert f"PATCH {graph.url}/organization/{{organization id}}/branding" in out
        assert "Accept-Language: 0" in out
        assert json.dumps(PAGES) in out

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("http://func.example.net/api/pages/", "https://"),
            ("https://func.example.net/" + "p" * 104, "at most 128"),
            ("https://func.example.net/pagés/", "ASCII"),
            ("https://func.example.net/api pages/", "spaces"),
            ("https://admin:pw@func.example.net/", "user name"),
            ("https:///api/pages/", "https://"),
            ("javascript:alert(1)", "https://"),
        ],
        ids=["http", "129 characters", "not ascii", "space", "user info", "no host", "script"],
    )
    def test_a_bad_url_is_refused_before_anything_is_sent(
        self,
        graph: GraphStandIn,
        token_file: Path,
        capsys: pytest.CaptureFixture[str],
        url: str,
        problem: str,
    ) -> None:
        """A URL the sign-in page cannot take ends with exit 2, a message naming --url and
        the rule, and no request at all."""
        code, _, err = run(capsys, *link(graph, token_file, "--url", url))
        assert code == 2
        assert err.startswith("writeback: --url:")
        assert problem in err
        assert graph.received == []

    def test_128_characters_are_accepted(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The limit is inclusive: a URL of exactly 128 characters is sent."""
        url = "https://func.example.net/" + "p" * 103
        assert len(url) == 128
        code, _, _ = run(capsys, *link(graph, token_file, "--url", url))
        assert code == 0
        assert graph.branding_url == url

    def test_forbidden_names_the_permission_and_role(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A 403 becomes one line with Graph's code, the permission and the directory role."""
        graph.deny(f"organization/{graph.tenant_id}/branding")
        code, out, err = run(capsys, *link(graph, token_file, "--url", PAGES))
        assert code == 1
        assert out == ""
        assert "Authorization_RequestDenied" in err
        assert "OrganizationalBranding.ReadWrite.All" in err
        assert "Organizational Branding Administrator" in err
        assert "request-id" in err
        assert len(err.strip().splitlines()) == 1

    def test_no_default_branding_says_what_to_do(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A tenant without a default branding (404) is told to create one first."""
        graph.branding = False
        code, _, err = run(capsys, *link(graph, token_file, "--url", PAGES))
        assert code == 1
        assert "no default company branding" in err
        assert "Company branding" in err

    def test_an_invalid_token_says_to_sign_in(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A 401 says the token is not valid for Graph and how to get another."""
        graph.deny("organization", 401)
        code, _, err = run(capsys, *link(graph, token_file, "--url", PAGES))
        assert code == 1
        assert "InvalidAuthenticationToken" in err
        assert "az login" in err

    def test_unreachable_graph(self, token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """No server at the Graph URL: exit 1 and 'cannot reach', naming the URL."""
        with graph_standin() as stopped:
            url = stopped.url
        argv = ["entra", "link-sign-in", "--url", PAGES, "--graph-url", url]
        code, _, err = run(capsys, *argv, "--graph-token-file", str(token_file))
        assert code == 1
        assert f"cannot reach {url}" in err

    def test_graph_over_http_elsewhere_is_refused(
        self, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The token is never sent in clear: http:// only to the loopback host."""
        argv = ["entra", "link-sign-in", "--url", PAGES, "--graph-url", "http://graph.test/v1.0"]
        code, _, err = run(capsys, *argv, "--graph-token-file", str(token_file))
        assert code == 2
        assert "--graph-url" in err

    def test_a_missing_token_file_is_named(
        self, graph: GraphStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unreadable --graph-token-file is a usage error naming the option."""
        code, _, err = run(capsys, *link(graph, tmp_path / "absent", "--url", PAGES))
        assert code == 2
        assert "--graph-token-file" in err
        assert graph.received == []


class TestLinkHelpdesk:
    def test_prints_the_admin_center_steps(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Graph has no SSPR API: the command prints the steps, with the URL to enter."""
        code, out, _ = run(capsys, "entra", "link-helpdesk", "--url", PAGES + "helpdesk")
        assert code == 0
        assert "Customize helpdesk link" in out
        assert f"enter: {PAGES}helpdesk" in out
        assert "no API" in out

    def test_a_bad_url_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The helpdesk URL must be https too."""
        code, _, err = run(capsys, "entra", "link-helpdesk", "--url", "ftp://x.example/")
        assert code == 2
        assert "--url" in err


def _apps(graph: GraphStandIn) -> dict[str, dict[str, Any]]:
    return graph.applications


class TestAppRegistration:
    def test_print_sends_nothing_and_shows_every_request(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --apply nothing is sent; the JSON lists the upserts and grants in order."""
        code, out, _ = run(capsys, *registration(graph, token_file, "--json"))
        assert code == 0
        assert graph.received == []
        document = json.loads(out)
        assert document["applied"] is False
        steps = [(r["method"], r["path"].partition("(")[0]) for r in document["requests"]]
        keyed = [r["path"] for r in document["requests"] if r["method"] == "PATCH"]
        assert keyed == [
            "/applications(uniqueName='writeback-api-wbtest')",
            "/servicePrincipals(appId='<appId of writeback-api-wbtest>')",
            "/applications(uniqueName='writeback-pages-wbtest')",
            "/servicePrincipals(appId='<appId of writeback-pages-wbtest>')",
            "/applications(uniqueName='writeback-admin-client-wbtest')",
            "/servicePrincipals(appId='<appId of writeback-admin-client-wbtest>')",
        ]

        def grant(client: str, resource: str) -> list[tuple[str, str]]:
            query = (
                f"/oauth2PermissionGrants?$filter=clientId eq '<service principal id of {client}>'"
                f" and resourceId eq '<service principal id of {resource}>' and consentType eq "
                "'AllPrincipals'"
            )
            return [("GET", query), ("POST", "/oauth2PermissionGrants")]

        assert steps == [
            *[("PATCH", "/applications"), ("PATCH", "/servicePrincipals")] * 3,
            ("GET", "/servicePrincipals"),
            *grant("writeback-pages-wbtest", "writeback-api-wbtest"),
            *grant("writeback-pages-wbtest", GRAPH_APP_ID),
            *grant("writeback-admin-client-wbtest", "writeback-api-wbtest"),
            *grant("writeback-admin-client-wbtest", GRAPH_APP_ID),
        ]
        assert document["requests"][0]["headers"] == {"Prefer": "create-if-missing"}
        assert "Application.ReadWrite.All" in document["requests"][0]["needs"]

    def test_apply_creates_what_infra_declares(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--apply makes the API, the pages and the admin client (bodies Graph's types
        accept), their service principals and both clients' two consents, and prints the
        settings to deploy with and the client's."""
        code, out, err = run(capsys, *registration(graph, token_file, "--apply"))
        assert (code, err) == (0, "")
        manifest = entra_manifest.load()
        api = graph.applications["writeback-api-wbtest"]
        pages = graph.applications["writeback-pages-wbtest"]
        client = graph.applications["writeback-admin-client-wbtest"]
        assert api["identifierUris"] == [f"api://{graph.tenant_id}/writeback-wbtest"]
        assert api["appRoles"] == manifest["api"]["appRoles"]
        assert pages["spa"] == {"redirectUris": [PAGES]}
        assert pages["requiredResourceAccess"][0]["resourceAppId"] == api["appId"]
        assert client["requiredResourceAccess"][0]["resourceAppId"] == api["appId"]
        apps = {api["appId"], pages["appId"], client["appId"]}
        assert set(graph.principals) == {GRAPH_APP_ID, *apps}
        principal = {app_id: graph.principals[app_id]["id"] for app_id in graph.principals}
        scopes = {
            (g["clientId"], g["resourceId"], g["scope"], g["consentType"])
            for g in graph.grants.values()
        }
        assert len(graph.grants) == 4
        assert scopes == {
            (principal[app_id], principal[resource], scope, "AllPrincipals")
            for app_id in (pages["appId"], client["appId"])
            for resource, scope in (
                (api["appId"], "Writeback.Self"),
                (GRAPH_APP_ID, "openid profile offline_access"),
            )
        }
        assert f"authAudiences / auth_audiences = {api['appId']},api://" in out
        assert f"pagesClientId / pages_client_id = {pages['appId']}" in out
        assert f"authTenantId / auth_tenant_id = {graph.tenant_id}" in out
        assert f"WRITEBACK_CLIENT_ID={client['appId']}" in out
        assert f"WRITEBACK_API_APP_ID={api['appId']}" in out
        assert f"AZURE_TENANT_ID={graph.tenant_id}" in out

    def test_the_admin_client_is_a_public_client(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The admin client's body: a fallback public client with the loopback redirect, no
        secret, no web or SPA redirect, asking for the API's Writeback.Self and sign-in; the
        JSON document gives its client id with the API's and the tenant."""
        code, out, _ = run(capsys, *registration(graph, token_file, "--json"))
        assert code == 0
        document = json.loads(out)
        (request,) = [
            r
            for r in document["requests"]
            if r["path"].endswith("'writeback-admin-client-wbtest')")
        ]
        manifest = entra_manifest.load()
        scope_id = manifest["api"]["scope"]["id"]
        assert request["body"] == {
            "displayName": "Writeback admin client (wbtest)",
            "signInAudience": "AzureADMyOrg",
            "isFallbackPublicClient": True,
            "publicClient": {"redirectUris": ["http://localhost"]},
            "requiredResourceAccess": [
                {
                    "resourceAppId": "<appId of writeback-api-wbtest>",
                    "resourceAccess": [{"id": scope_id, "type": "Scope"}],
                },
                {
                    "resourceAppId": GRAPH_APP_ID,
                    "resourceAccess": [
                        {"id": s["id"], "type": "Scope"} for s in manifest["graphSignInScopes"]
                    ],
                },
            ],
        }
        assert document["client"] == {
            "WRITEBACK_API_APP_ID": "<appId of writeback-api-wbtest>",
            "WRITEBACK_CLIENT_ID": "<appId of writeback-admin-client-wbtest>",
            "AZURE_TENANT_ID": "{tenant id}",
        }

    def test_apply_again_changes_nothing_twice(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A second --apply updates the same objects: no second application, principal or
        grant, and the same client ids."""
        assert run(capsys, *registration(graph, token_file, "--apply"))[0] == 0
        before = {k: v["appId"] for k, v in graph.applications.items()}
        grants = set(graph.grants)
        assert run(capsys, *registration(graph, token_file, "--apply"))[0] == 0
        assert {k: v["appId"] for k, v in graph.applications.items()} == before
        assert set(graph.grants) == grants
        assert len(graph.principals) == 4

    def test_a_tenant_that_is_not_the_signed_in_one(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--tenant-id that differs from Graph's organization stops before any write."""
        other = "00000000-0000-0000-0000-0000000000ff"
        code, _, err = run(
            capsys, *registration(graph, token_file, "--apply", "--tenant-id", other)
        )
        assert code == 2
        assert "--tenant-id" in err
        assert graph.writes() == []

    def test_forbidden_names_application_administrator(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without the right to create applications, the message names the permission and
        the role, and nothing was created."""
        graph.deny("applications")
        code, _, err = run(capsys, *registration(graph, token_file, "--apply"))
        assert code == 1
        assert "Application.ReadWrite.All" in err
        assert "Application Administrator" in err
        assert graph.applications == {}

    @pytest.mark.parametrize(
        ("argument", "value"),
        [
            ("--name-prefix", "Bad_Prefix"),
            ("--host", "func wb.azurewebsites.net"),
            ("--pages-path", "api/pages"),
            ("--tenant-id", "contoso.com"),
        ],
    )
    def test_bad_arguments_are_named(
        self,
        graph: GraphStandIn,
        token_file: Path,
        capsys: pytest.CaptureFixture[str],
        argument: str,
        value: str,
    ) -> None:
        """Each bad argument is named in the message, and nothing is sent."""
        good = ["--pages-path", "/api/pages/", "--tenant-id", graph.tenant_id]
        argv = registration(graph, token_file, "--apply", *good)
        argv[argv.index(argument) + 1] = value
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert f"writeback: {argument}:" in err
        assert graph.received == []

    def test_what_is_printed_is_what_apply_sends(
        self, graph: GraphStandIn, token_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The printed plan and --apply send the same requests, in the same order, with the
        same application bodies (only the ids Entra ID assigns differ)."""
        tenant = ["--tenant-id", graph.tenant_id]
        code, out, _ = run(capsys, *registration(graph, token_file, "--json", *tenant))
        assert code == 0
        printed = json.loads(out)["requests"]
        assert run(capsys, *registration(graph, token_file, "--apply", *tenant))[0] == 0
        sent = [r for r in graph.received if r.path != "/v1.0/organization?$select=id"]
        assert [r["method"] for r in printed] == [r.method for r in sent]
        assert printed[0]["path"] == sent[0].path.removeprefix("/v1.0")
        assert printed[0]["body"] == sent[0].body
        api_id = graph.applications["writeback-api-wbtest"]["appId"]
        for index in (2, 4):  # the pages and the admin client
            client_printed, client_sent = printed[index]["body"], sent[index].body
            assert client_sent["requiredResourceAccess"][0]["resourceAppId"] == api_id
            client_printed["requiredResourceAccess"][0]["resourceAppId"] = api_id
            assert client_printed == client_sent


class TestTheStandIn:
    def test_it_refuses_what_graphs_types_do_not_have(
        self, graph: GraphStandIn, token_file: Path
    ) -> None:
        """The stand-in's body check is live: an application property Graph's type data does
        not have is refused with 400 and named, and nothing is created."""
        client = Graph(TOKEN, graph.url)
        body = {"displayName": "x", "spa": {"redirectUri": ["https://x.example/"]}}
        with pytest.raises(GraphError) as refused:
            client.call("PATCH", "applications(uniqueName='x')", APPLICATIONS, body, UPSERT)
        assert refused.value.status == 400
        assert "spa.redirectUri: no such property" in str(refused.value)
        assert "(HTTP 400)" in str(refused.value)
        assert graph.applications == {}
        assert TOKEN not in str(refused.value)
        assert TOKEN not in repr(client)
