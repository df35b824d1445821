"""The app registrations: one manifest (writeback/entra/app-registration.json) that infra/bicep,
infra/terraform and `writeback entra app-registration` all read, what it declares (the API's
roles are the code's, the Writeback.Self scope, v2 tokens, the onprem_sid claim, a secret-less
SPA, the admin client: a secret-less public client), and both deployments using every part of
it the same way, behind the same switch.
Nothing here reaches Entra ID: what only a tenant can prove is listed in
tests/infra/schemas/README.md."""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.infra import bicep_model, terraform_model
from writeback.cloud.auth.callers import Role
from writeback.entra import manifest as entra_manifest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
MODULE = bicep_model.BICEP_ROOT / "modules" / "app-registration.bicep"
TF_FILE = TERRAFORM / "app-registration.tf"
MANIFEST: dict[str, Any] = json.loads(bicep_model.MANIFEST.read_text(encoding="utf-8"))
GRAPH = "Microsoft.Graph/"
ROLE_ID = "44444444-4444-4444-4444-444444444444"
# Microsoft Graph's own delegated permission ids for sign-in (the same in every tenant).
SIGN_IN_SCOPES = {
    "openid": "37f7f235-527c-4136-accd-4a02d197296e",
    "profile": "14dad69e-099b-42c9-810b-d002981feec1",
    "offline_access": "7427e0e9-2fba-42fe-b0c0-848c9e6a8182",
}
SECRETS = {"passwordCredentials", "keyCredentials", "web"}


@pytest.fixture(scope="module")
def created() -> bicep_model.Model:
    """The Bicep deployment with the registrations created and a helpdesk group given a role."""
    return bicep_model.load(
        parameters={
            "appRoleAssignments": [{"role": "Writeback.Reset.Admin", "principalId": ROLE_ID}]
        }
    )


@pytest.fixture(scope="module")
def terraform() -> terraform_model.TerraformModel:
    return terraform_model.load(TERRAFORM)


def _graph(model: bicep_model.Model, kind: str) -> list[bicep_model.Resource]:
    return model.of_type(GRAPH + kind)


class TestManifest:
    def test_the_roles_are_the_codes(self) -> None:
        """The API's app roles are exactly writeback.cloud.auth.callers.Role, each enabled, for
        users (groups) and applications."""
        roles = MANIFEST["api"]["appRoles"]
        assert [role["value"] for role in roles] == [role.value for role in Role]
        for role in roles:
            assert role["isEnabled"] is True
            assert set(role["allowedMemberTypes"]) <= {"User", "Application"}
            assert role["allowedMemberTypes"], role["value"]

    def test_ids_are_fixed_unique_guids(self) -> None:
        """Every role and scope id is a GUID written in the manifest, none twice: ids are how
        assignments and consent refer to them, so they must never change between deployments."""
        ids = [role["id"] for role in MANIFEST["api"]["appRoles"]]
        ids.append(MANIFEST["api"]["scope"]["id"])
        assert len(set(ids)) == len(ids)
        for value in ids:
            assert str(uuid.UUID(value)) == value

    def test_the_pages_scope_and_tokens(self) -> None:
        """One delegated scope, Writeback.Self, needing admin consent; v2 access tokens; the
        onprem_sid claim in the API's access and ID tokens and in the pages' ID tokens."""
        api = MANIFEST["api"]
        assert api["scope"]["value"] == "Writeback.Self"
        assert api["scope"]["type"] == "Admin"
        assert api["requestedAccessTokenVersion"] == 2
        for token in ("accessToken", "idToken"):
            assert [c["name"] for c in api["optionalClaims"][token]] == ["onprem_sid"]
        assert [c["name"] for c in MANIFEST["pages"]["optionalClaims"]["idToken"]] == ["onprem_sid"]
        assert MANIFEST["pages"]["redirectPath"] == "/api/pages/"

    def test_the_admin_client(self) -> None:
        """The admin client's loopback redirect is the one InteractiveBrowserCredential uses
        (any port: Entra ID ignores a loopback redirect's port); both clients ask for Graph's
        sign-in scopes by their fixed ids."""
        client = MANIFEST["adminClient"]
        assert client["redirectUris"] == ["http://localhost"]
        assert client["uniqueNamePrefix"] not in (
            MANIFEST["api"]["uniqueNamePrefix"],
            MANIFEST["pages"]["uniqueNamePrefix"],
        )
        assert {s["value"]: s["id"] for s in MANIFEST["graphSignInScopes"]} == SIGN_IN_SCOPES

    def test_the_package_reads_the_same_file(self) -> None:
        """The commands read the file infra/ reads (the package's own copy is the file)."""
        assert entra_manifest.MANIFEST_PATH.resolve() == bicep_model.MANIFEST.resolve()
        assert entra_manifest.load() == MANIFEST


class TestBicep:
    def test_the_module_loads_the_manifest(self) -> None:
        """modules/app-registration.bicep reads the manifest with loadJsonContent, and nothing
        else; the model read it from there."""
        calls = re.findall(r"loadJsonContent\('([^']+)'\)", MODULE.read_text())
        assert len(calls) == 1
        assert (MODULE.parent / calls[0]).resolve() == bicep_model.MANIFEST.resolve()

    def test_the_api_is_the_manifests(self, created: bicep_model.Model) -> None:
        """The API application carries the manifest's roles, scope, token version and claims,
        an api://<tenant>/writeback-<prefix> identifier URI and a service principal."""
        api = next(a for a in _graph(created, "applications") if "identifierUris" in a.body)
        prefix = created.parameters["namePrefix"]
        assert api.body["identifierUris"] == [f"api://{{tenant().tenantId}}/writeback-{prefix}"]
        assert api.body["appRoles"] == MANIFEST["api"]["appRoles"]
        assert api.body["api"] == {
            "requestedAccessTokenVersion": 2,
            "oauth2PermissionScopes": [MANIFEST["api"]["scope"]],
        }
        assert api.body["optionalClaims"] == MANIFEST["api"]["optionalClaims"]
        assert api.body["signInAudience"] == "AzureADMyOrg"
        principals = list(_graph(created, "servicePrincipals"))
        assert {p.body["appId"].origin.symbol for p in principals} == {
            "api",
            "pages",
            "adminClient",
        }

    def test_the_pages_are_a_spa_without_secrets(self, created: bicep_model.Model) -> None:
        """The pages' application is a single-page application redirecting to the function
        app's /api/pages/, not a fallback public client, with no password or certificate, asking
        for Writeback.Self and sign-in (openid, profile, offline_access)."""
        pages = next(a for a in _graph(created, "applications") if "spa" in a.body)
        host = f"{created.outputs['functionAppName']}.azurewebsites.net"
        assert pages.body["spa"] == {"redirectUris": [f"https://{host}/api/pages/"]}
        assert created.outputs["pagesRedirectUri"] == f"https://{host}/api/pages/"
        assert pages.body["isFallbackPublicClient"] is False
        assert not (SECRETS | {"publicClient"}) & set(pages.body)
        _asks_for_self_and_sign_in(pages)

    def test_the_admin_client_is_a_public_client_without_secrets(
        self, created: bicep_model.Model
    ) -> None:
        """The admin client allows public client flows (device code) and redirects to the
        loopback host (the browser), with no password, certificate, web or SPA redirect; it asks
        for Writeback.Self and sign-in, and the deployment reports its client id."""
        (client,) = [a for a in _graph(created, "applications") if a.symbol == "adminClient"]
        prefix = created.parameters["namePrefix"]
        assert client.body["uniqueName"] == f"writeback-admin-client-{prefix}"
        assert client.body["displayName"] == f"Writeback admin client ({prefix})"
        assert client.body["signInAudience"] == "AzureADMyOrg"
        assert client.body["isFallbackPublicClient"] is True
        assert client.body["publicClient"] == {"redirectUris": ["http://localhost"]}
        assert not (SECRETS | {"spa", "identifierUris", "appRoles", "api"}) & set(client.body)
        _asks_for_self_and_sign_in(client)
        output = created.outputs["adminClientId"]
        assert (output.origin, output.path) == (client, ("appId",))

    def test_consent_and_role_assignments(self, created: bicep_model.Model) -> None:
        """The pages and the admin client each get tenant-wide consent to Writeback.Self and
        to sign-in, and nothing else; a role given by parameter is assigned by the manifest's
        role id."""
        grants = {
            (
                g.body["clientId"].origin.symbol,
                g.body["resourceId"].origin.symbol,
                g.body["scope"],
                g.body["consentType"],
            )
            for g in _graph(created, "oauth2PermissionGrants")
        }
        assert len(_graph(created, "oauth2PermissionGrants")) == len(grants) == 4
        assert grants == {
            (f"{client}Principal", resource, scope, "AllPrincipals")
            for client in ("pages", "adminClient")
            for resource, scope in (
                ("apiPrincipal", "Writeback.Self"),
                ("graphPrincipal", "openid profile offline_access"),
            )
        }
        (assignment,) = _graph(created, "appRoleAssignedTo")
        roles = {r["value"]: r["id"] for r in MANIFEST["api"]["appRoles"]}
        assert assignment.body["appRoleId"] == roles["Writeback.Reset.Admin"]
        assert assignment.body["principalId"] == ROLE_ID

    def test_settings_come_from_the_registrations(self, created: bicep_model.Model) -> None:
        """The function app's pages client id is the created SPA's, its audiences start with
        the created API's client id and identifier URI."""
        values = created.app_setting_values
        assert str(values["WRITEBACK_PAGES_CLIENT_ID"]) == str(created.outputs["pagesClientId"])
        audiences = values["WRITEBACK_AUTH_AUDIENCES"].split(",")
        created_ones = [str(created.outputs["apiClientId"]), created.outputs["apiIdentifierUri"]]
        assert audiences[:2] == created_ones

    def test_without_the_registration(self) -> None:
        """createAppRegistration=false deploys no Graph resource; the settings and outputs carry
        the values given by hand, and the empty ids say what is left to fill in."""
        given = "55555555-5555-5555-5555-555555555555"
        model = bicep_model.load(
            parameters={"createAppRegistration": False, "pagesClientId": given}
        )
        assert not [r for r in model.resources if r.type.startswith(GRAPH)]
        values = model.app_setting_values
        assert values["WRITEBACK_PAGES_CLIENT_ID"] == given
        assert values["WRITEBACK_AUTH_AUDIENCES"] == model.parameters["authAudiences"]
        assert values["WRITEBACK_AUTH_TENANT_ID"] == model.parameters["authTenantId"]
        assert model.outputs["apiClientId"] == ""
        assert model.outputs["apiIdentifierUri"] == ""
        assert model.outputs["adminClientId"] == ""

    def test_a_custom_host_and_path(self) -> None:
        """pagesHostName and pagesPath change the SPA's redirect URI."""
        model = bicep_model.load(
            parameters={"pagesHostName": "password.example.com", "pagesPath": "/self/"}
        )
        (pages,) = [a for a in _graph(model, "applications") if "spa" in a.body]
        assert pages.body["spa"]["redirectUris"] == ["https://password.example.com/self/"]


def _asks_for_self_and_sign_in(app: bicep_model.Resource) -> None:
    """`app` asks for the created API's Writeback.Self and for Graph's sign-in scopes."""
    api_access, graph_access = app.body["requiredResourceAccess"]
    scope_id = MANIFEST["api"]["scope"]["id"]
    assert api_access["resourceAppId"].origin.symbol == "api"
    assert api_access["resourceAccess"] == [{"id": scope_id, "type": "Scope"}]
    assert graph_access["resourceAppId"] == MANIFEST["graphAppId"]
    assert graph_access["resourceAccess"] == [
        {"id": s["id"], "type": "Scope"} for s in MANIFEST["graphSignInScopes"]
    ]


def _sections(text: str, prefix: str) -> set[str]:
    """The manifest's parts a source reads, two levels deep (`api.appRoles`, `graphAppId`)."""
    paths = re.findall(rf"(?<![\w.]){re.escape(prefix)}((?:\.\w+)+)", text)
    return {".".join(path.strip(".").split(".")[:2]) for path in paths}


class TestTerraform:
    def test_it_reads_the_same_manifest(self, terraform: terraform_model.TerraformModel) -> None:
        """app-registration.tf decodes the manifest file Bicep loads."""
        (path,) = re.findall(r'file\("\$\{path\.module\}/([^"]+)"\)', TF_FILE.read_text())
        assert (TERRAFORM / path).resolve() == bicep_model.MANIFEST.resolve()
        assert "jsondecode(file(" in terraform.locals["manifest"]

    def test_every_item_field_is_mapped(self) -> None:
        """Bicep passes the manifest's roles, scope and claims to Graph whole; Terraform names
        each field, so every field of every item must be mapped there (a field added to the
        manifest and not to app-registration.tf fails here)."""
        text = TF_FILE.read_text()
        for field in {k for role in MANIFEST["api"]["appRoles"] for k in role}:
            assert f"app_role.value.{field}" in text, field
        for field in MANIFEST["api"]["scope"]:
            assert f"local.manifest.api.scope.{field}" in text, field
        for token, claims in MANIFEST["api"]["optionalClaims"].items():
            block = {"accessToken": "access_token", "idToken": "id_token"}[token]
            assert f"local.manifest.api.optionalClaims.{token}" in text
            for field in {k for claim in claims for k in claim}:
                assert f"{block}.value.{field}" in text, (token, field)
        assert "local.manifest.pages.optionalClaims.idToken" in text
        assert "resource_access.value.id" in text
        assert "local.manifest.adminClient.redirectUris" in text

    def test_the_same_manifest_sections(self) -> None:
        """Both use the same top-level parts of the manifest (Bicep's uniqueName prefixes
        aside: azuread has no alternate key)."""
        bicep = _sections(MODULE.read_text(), "manifest")
        terraform = _sections(TF_FILE.read_text(), "local.manifest")
        assert "api.appRoles" in bicep
        unique_names = {f"{app}.uniqueNamePrefix" for app in ("api", "pages", "adminClient")}
        assert bicep - unique_names == terraform

    def test_everything_is_behind_the_switch(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Every azuread resource and data source loops over local.create_app (one instance or
        none) or over the role assignments, which are empty without the registration."""
        for kind, named in terraform.resources.items():
            if not kind.removeprefix("data.").startswith("azuread_"):
                continue
            for name, body in named.items():
                assert body["for_each"] in (
                    "${local.create_app}",
                    "${local.role_assignment}",
                ), f"{kind}.{name}"
        assert "var.create_app_registration" in terraform.locals["create_app"]
        assert "var.create_app_registration" in terraform.locals["role_assignment"]

    def test_the_admin_client_is_bicep_s(
        self, terraform: terraform_model.TerraformModel, created: bicep_model.Model
    ) -> None:
        """The admin client as Bicep declares it: a public client (fallback_public_client_enabled)
        redirecting to the manifest's loopback URI, no secret or other platform, asking for the
        created API's Writeback.Self and Graph's sign-in scopes, with a service principal and
        the same two consents; the output is its client id, empty without the registration."""
        client = terraform.resources["azuread_application"]["admin_client"]
        assert set(client) == {
            "for_each",
            "display_name",
            "sign_in_audience",
            "fallback_public_client_enabled",
            "public_client",
            "required_resource_access",
        }
        assert client["display_name"] == (
            "${local.manifest.adminClient.displayName} (${var.name_prefix})"
        )
        assert client["sign_in_audience"] == "AzureADMyOrg"
        assert client["fallback_public_client_enabled"] is True
        assert client["public_client"] == [
            {"redirect_uris": "${local.manifest.adminClient.redirectUris}"}
        ]
        pages = terraform.resources["azuread_application"]["pages"]
        assert client["required_resource_access"] == pages["required_resource_access"]
        api_access, graph_access = client["required_resource_access"]
        assert api_access["resource_app_id"] == '${azuread_application.api["main"].client_id}'
        assert graph_access["dynamic"][0]["resource_access"]["for_each"] == (
            "${local.manifest.graphSignInScopes}"
        )
        principal = terraform.resources["azuread_service_principal"]["admin_client"]
        assert principal["client_id"] == '${azuread_application.admin_client["main"].client_id}'
        grants = terraform.resources["azuread_service_principal_delegated_permission_grant"]
        for what in ("api", "sign_in"):
            pages_grant, client_grant = grants[f"pages_{what}"], grants[f"admin_client_{what}"]
            assert client_grant["service_principal_object_id"] == (
                '${azuread_service_principal.admin_client["main"].object_id}'
            )
            for field in ("resource_service_principal_object_id", "claim_values", "for_each"):
                assert client_grant[field] == pages_grant[field], (what, field)
        assert terraform.outputs["admin_client_id"]["value"] == (
            '${var.create_app_registration ? azuread_application.admin_client["main"].client_id'
            ' : ""}'
        )
        bicep_client = next(a for a in _graph(created, "applications") if a.symbol == "adminClient")
        assert bicep_client.body["isFallbackPublicClient"] is True
        assert (
            bicep_client.body["publicClient"]["redirectUris"]
            == MANIFEST["adminClient"]["redirectUris"]
        )

    def test_the_same_redirect_host(self, terraform: terraform_model.TerraformModel) -> None:
        """The SPA's redirect is the function app's default host name, built from the same
        name the app is given, unless a host name is given."""
        (app,) = terraform.resources["azurerm_function_app_flex_consumption"].values()
        assert f"{app['name']}.azurewebsites.net" in terraform.locals["function_host"]
        assert (
            terraform.locals["pages_redirect"] == "https://${local.function_host}${var.pages_path}"
        )


class TestCommands:
    def test_the_commands_send_what_bicep_declares(self, created: bicep_model.Model) -> None:
        """`writeback entra app-registration` builds the same application bodies as infra/bicep
        (uniqueName aside, which the command puts in the upsert's URL)."""
        prefix = created.parameters["namePrefix"]
        names = entra_manifest.unique_names(MANIFEST, prefix)
        # Copies: the module's model stays as Bicep declared it for the other tests.
        bodies = {
            a.body["uniqueName"]: copy.deepcopy(dict(a.body))
            for a in _graph(created, "applications")
        }
        assert set(bodies) == set(names)
        api, pages, client = (bodies[name] for name in names)
        for body in (api, pages, client):
            del body["uniqueName"]
        tenant = "{tenant().tenantId}"
        assert entra_manifest.api_application(MANIFEST, tenant, prefix) == api
        for body in (pages, client):
            body["requiredResourceAccess"][0]["resourceAppId"] = "<api app id>"
        redirect = created.outputs["pagesRedirectUri"]
        assert entra_manifest.pages_application(MANIFEST, prefix, "<api app id>", redirect) == pages
        assert entra_manifest.admin_client_application(MANIFEST, prefix, "<api app id>") == client
        sign_in = [
            g.body["scope"]
            for g in _graph(created, "oauth2PermissionGrants")
            if g.body["scope"] != MANIFEST["api"]["scope"]["value"]
        ]
        assert sign_in == [entra_manifest.sign_in_scopes(MANIFEST)] * 2
