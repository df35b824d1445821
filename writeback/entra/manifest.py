"""The app registrations' manifest (app-registration.json beside this file) and the Microsoft
Graph objects it describes for one deployment: the API, the pages' single-page application and
the admin client (the `writeback` command line's public client).

The same file is read by infra/bicep (loadJsonContent) and infra/terraform (jsondecode(file())),
so a registration made by `writeback entra app-registration --apply` is the one a deployment with
createAppRegistration would have made: same uniqueName, identifier URI, role and scope ids.
Pure: no I/O beyond reading the file.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

MANIFEST_PATH = Path(__file__).resolve().parent / "app-registration.json"
DEFAULT_PAGES_PATH = "/api/pages/"


@cache
def _cached() -> str:
    return MANIFEST_PATH.read_text(encoding="utf-8")


def load() -> dict[str, Any]:
    """The manifest, a fresh copy each call (callers may change it)."""
    manifest: dict[str, Any] = json.loads(_cached())
    return manifest


def identifier_uri(manifest: dict[str, Any], tenant_id: str, name_prefix: str) -> str:
    """api://<tenant>/writeback-<prefix>: unique in the tenant, and a form Entra ID's identifier
    URI restrictions accept (it carries the tenant id)."""
    return f"api://{tenant_id}/{manifest['api']['identifierUriPrefix']}{name_prefix}"


def unique_names(manifest: dict[str, Any], name_prefix: str) -> tuple[str, str, str]:
    """The API's, the pages' and the admin client's uniqueName (Graph's alternate key, as
    infra/bicep sets it)."""
    return (
        f"{manifest['api']['uniqueNamePrefix']}{name_prefix}",
        f"{manifest['pages']['uniqueNamePrefix']}{name_prefix}",
        f"{manifest['adminClient']['uniqueNamePrefix']}{name_prefix}",
    )


def api_application(manifest: dict[str, Any], tenant_id: str, name_prefix: str) -> dict[str, Any]:
    """The API application's body, as modules/app-registration.bicep writes it (uniqueName is
    in the upsert's URL, not the body)."""
    api = manifest["api"]
    return {
        "displayName": f"{api['displayName']} ({name_prefix})",
        "signInAudience": "AzureADMyOrg",
        "identifierUris": [identifier_uri(manifest, tenant_id, name_prefix)],
        "appRoles": api["appRoles"],
        "api": {
            "requestedAccessTokenVersion": api["requestedAccessTokenVersion"],
            "oauth2PermissionScopes": [api["scope"]],
        },
        "optionalClaims": api["optionalClaims"],
    }


def pages_application(
    manifest: dict[str, Any], name_prefix: str, api_app_id: str, redirect_uri: str
) -> dict[str, Any]:
    """The pages' single-page application: a redirect URI, no secret, no fallback public client,
    asking for the API's Writeback.Self and for sign-in."""
    pages = manifest["pages"]
    return {
        "displayName": f"{pages['displayName']} ({name_prefix})",
        "signInAudience": "AzureADMyOrg",
        "isFallbackPublicClient": False,
        "spa": {"redirectUris": [redirect_uri]},
        "requiredResourceAccess": _self_and_sign_in(manifest, api_app_id),
        "optionalClaims": pages["optionalClaims"],
    }


def admin_client_application(
    manifest: dict[str, Any], name_prefix: str, api_app_id: str
) -> dict[str, Any]:
    """The admin client: a public client (device code; the browser's loopback redirect), no
    secret, asking for the API's Writeback.Self and for sign-in. Its delegated token acts on
    the signed-in user's own account unless the user holds the helpdesk's app role."""
    client = manifest["adminClient"]
    return {
        "displayName": f"{client['displayName']} ({name_prefix})",
        "signInAudience": "AzureADMyOrg",
        "isFallbackPublicClient": True,
        "publicClient": {"redirectUris": client["redirectUris"]},
        "requiredResourceAccess": _self_and_sign_in(manifest, api_app_id),
    }


def sign_in_scopes(manifest: dict[str, Any]) -> str:
    """The Graph scopes the pages and the admin client are consented to, space separated (an
    OAuth2 grant's scope)."""
    return " ".join(scope["value"] for scope in manifest["graphSignInScopes"])


def _self_and_sign_in(manifest: dict[str, Any], api_app_id: str) -> list[dict[str, Any]]:
    """requiredResourceAccess of both clients: the API's Writeback.Self and Graph's sign-in."""
    return [
        {
            "resourceAppId": api_app_id,
            "resourceAccess": [{"id": manifest["api"]["scope"]["id"], "type": "Scope"}],
        },
        {
            "resourceAppId": manifest["graphAppId"],
            "resourceAccess": [
                {"id": scope["id"], "type": "Scope"} for scope in manifest["graphSignInScopes"]
            ],
        },
    ]
