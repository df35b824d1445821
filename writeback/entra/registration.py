"""The app registrations through Microsoft Graph, for deployers whose infrastructure deployment
may not create applications (createAppRegistration=false): the same objects infra/ declares
(the API, the pages, the admin client), from the same manifest, in the same order.

`register` runs the requests against anything with Graph's `call` signature: `Graph` to create
them (`--apply`), or `Recorder`, which answers with placeholders and keeps the requests, so that
what is printed is exactly what `--apply` would send. Every write is an upsert or a lookup
first, so running it again updates what it made instead of making a second copy; the uniqueName
keys are infra/bicep's, so a later deployment with createAppRegistration adopts them.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from writeback.entra import manifest as entra_manifest
from writeback.entra.graph import Answer, GraphError, Needs

APPLICATIONS = Needs("Application.ReadWrite.All", "Application Administrator")
CONSENT = Needs("DelegatedPermissionGrant.ReadWrite.All", "Cloud Application Administrator")
UPSERT = {"Prefer": "create-if-missing"}


class Sender(Protocol):
    def call(
        self,
        method: str,
        path: str,
        needs: Needs,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer: ...


@dataclass(frozen=True)
class Registration:
    """What one deployment's registrations are called and where the pages live."""

    tenant_id: str
    name_prefix: str
    redirect_uri: str


@dataclass(frozen=True)
class Registered:
    """What the Function App's settings need (WRITEBACK_AUTH_*, WRITEBACK_PAGES_CLIENT_ID), and
    the admin client's id, which the `writeback` command line signs in with."""

    tenant_id: str
    api_client_id: str
    identifier_uri: str
    pages_client_id: str
    admin_client_id: str

    @property
    def audiences(self) -> str:
        return f"{self.api_client_id},{self.identifier_uri}"


@dataclass
class Recorder:
    """A stand-in for Graph that sends nothing: it keeps each request and answers as Graph
    would on a first run, with placeholders (`<appId of writeback-api-x>`) for what Entra ID
    would assign."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        needs: Needs,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        shown = urllib.parse.unquote(path)
        entry: dict[str, Any] = {"method": method, "path": f"/{shown}"}
        if headers:
            entry["headers"] = headers
        if body is not None:
            entry["body"] = body
        entry["needs"] = f"{needs.permission} ({needs.role})"
        self.requests.append(entry)
        inside = shown.partition("(")[2].rpartition(")")[0]
        key = inside.partition("'")[2].rpartition("'")[0].replace("''", "'") or shown
        if method == "GET" and path.startswith("oauth2PermissionGrants"):
            return Answer(200, {"value": []})
        if path.startswith("servicePrincipals"):
            owner = key.removeprefix("<appId of ").removesuffix(">")
            return Answer(201, {"id": f"<service principal id of {owner}>"})
        return Answer(201, {"id": f"<id of {key}>", "appId": f"<appId of {key}>"})


def register(graph: Sender, registration: Registration) -> Registered:
    """Create or update the API, the pages, the admin client, their service principals and the
    two clients' tenant-wide consent."""
    manifest = entra_manifest.load()
    api_name, pages_name, client_name = entra_manifest.unique_names(
        manifest, registration.name_prefix
    )
    api_body = entra_manifest.api_application(
        manifest, registration.tenant_id, registration.name_prefix
    )
    api_app = _upsert_application(graph, api_name, api_body)
    api_principal = _upsert_principal(graph, api_app["appId"], api_body["displayName"])
    pages_body = entra_manifest.pages_application(
        manifest, registration.name_prefix, api_app["appId"], registration.redirect_uri
    )
    pages_app = _upsert_application(graph, pages_name, pages_body)
    pages_principal = _upsert_principal(graph, pages_app["appId"], pages_body["displayName"])
    client_body = entra_manifest.admin_client_application(
        manifest, registration.name_prefix, api_app["appId"]
    )
    client_app = _upsert_application(graph, client_name, client_body)
    client_principal = _upsert_principal(graph, client_app["appId"], client_body["displayName"])
    graph_principal = _principal_id(graph, manifest["graphAppId"])
    # Admin consent for every user, so that neither the pages nor the command line meets a
    # consent prompt (user consent is off in many tenants).
    for client in (pages_principal, client_principal):
        _grant(graph, client, api_principal, manifest["api"]["scope"]["value"])
        _grant(graph, client, graph_principal, entra_manifest.sign_in_scopes(manifest))
    return Registered(
        tenant_id=registration.tenant_id,
        api_client_id=api_app["appId"],
        identifier_uri=api_body["identifierUris"][0],
        pages_client_id=pages_app["appId"],
        admin_client_id=client_app["appId"],
    )


def _quoted(value: str) -> str:
    return urllib.parse.quote(value.replace("'", "''"), safe="")


def _upsert_application(graph: Sender, unique_name: str, body: dict[str, Any]) -> dict[str, str]:
    """PATCH applications(uniqueName=...) with create-if-missing: 201 with the new object, or
    204 when it existed (then read back)."""
    path = f"applications(uniqueName='{_quoted(unique_name)}')"
    answer = graph.call("PATCH", path, APPLICATIONS, body, UPSERT)
    if answer.status != 201:
        answer = graph.call("GET", f"{path}?$select=id,appId", APPLICATIONS)
    return _ids(answer, path, "id", "appId")


def _upsert_principal(graph: Sender, app_id: str, display_name: str) -> str:
    path = f"servicePrincipals(appId='{_quoted(app_id)}')"
    answer = graph.call("PATCH", path, APPLICATIONS, {"displayName": display_name}, UPSERT)
    if answer.status != 201:
        answer = graph.call("GET", f"{path}?$select=id", APPLICATIONS)
    return _ids(answer, path, "id")["id"]


def _principal_id(graph: Sender, app_id: str) -> str:
    path = f"servicePrincipals(appId='{_quoted(app_id)}')"
    return _ids(graph.call("GET", f"{path}?$select=id", APPLICATIONS), path, "id")["id"]


def _grant(graph: Sender, client: str, resource: str, scope: str) -> None:
    """Tenant-wide (AllPrincipals) consent of `client` to `scope` of `resource`: the existing
    grant's scope is replaced, or a grant is created."""
    query = urllib.parse.quote(
        f"clientId eq '{client}' and resourceId eq '{resource}' and consentType eq 'AllPrincipals'"
    )
    found = graph.call("GET", f"oauth2PermissionGrants?$filter={query}", CONSENT).body
    existing = [g for g in found.get("value") or [] if isinstance(g, dict) and g.get("id")]
    if existing:
        grant_id = _quoted(str(existing[0]["id"]))
        graph.call("PATCH", f"oauth2PermissionGrants/{grant_id}", CONSENT, {"scope": scope})
        return
    body = {
        "clientId": client,
        "consentType": "AllPrincipals",
        "resourceId": resource,
        "scope": scope,
    }
    graph.call("POST", "oauth2PermissionGrants", CONSENT, body)


def _ids(answer: Answer, path: str, *names: str) -> dict[str, str]:
    values = {name: answer.body.get(name) for name in names}
    if not all(isinstance(v, str) and v for v in values.values()):
        missing = ", ".join(names)
        raise GraphError(answer.status, "unexpected", f"/{path} answered without {missing}")
    return {name: str(value) for name, value in values.items()}
