"""`writeback entra`: the commands that point Microsoft's sign-in screens at Writeback's pages
and make the app registrations a deployment could not (docs/self-service.md).

    link-sign-in      the sign-in page's "Forgot my password" link (company branding), via Graph
    link-helpdesk     SSPR's custom helpdesk link: the admin center steps (Graph has no API)
    app-registration  print, or with --apply create, the API's, the pages' and the admin
                      client's registrations

Thin like `cli`: parse, check every argument before anything is sent (a message naming the
argument, exit 2), call writeback.entra, print, map errors to exit codes (1: Graph refused or
could not be reached). The Graph token comes from azure-identity or --graph-token-file and is
never printed; --dry-run and app-registration without --apply send nothing at all.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from writeback.client import signin
from writeback.client.api import Credential, InvalidSetting
from writeback.entra import doors, registration
from writeback.entra.graph import (
    GRAPH_URL,
    Graph,
    GraphError,
    InvalidArgument,
    graph_url,
    token_from_azure,
)
from writeback.entra.manifest import DEFAULT_PAGES_PATH

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
_PREFIX = re.compile(r"[a-z0-9]{3,11}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")


def add_commands(commands: Any) -> None:
    """Add `entra` and its commands to the top-level parser's subcommands."""
    entra = commands.add_parser(
        "entra",
        help="point Microsoft's sign-in screens at the self-service pages; app registrations",
        description="Microsoft Entra ID administration for the self-service pages.",
        allow_abbrev=False,
    )
    sub = entra.add_subparsers(dest="entra_command", required=True, metavar="COMMAND")
    link = sub.add_parser(
        "link-sign-in",
        help="point the sign-in page's 'Forgot my password' link at the pages",
        description="Set company branding's customAccountResetCredentialsUrl (the default "
        "branding) through Microsoft Graph. Needs OrganizationalBranding.ReadWrite.All and the "
        "Organizational Branding Administrator role.",
        allow_abbrev=False,
    )
    target = link.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", dest="page_url", metavar="URL", help="https://<app>/api/pages/…")
    target.add_argument("--clear", action="store_true", help="give the link back to Microsoft")
    link.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    _graph_options(link)
    helpdesk = sub.add_parser(
        "link-helpdesk",
        help="print the steps that point SSPR's helpdesk link at the pages",
        description="Microsoft Graph has no API for SSPR's customization: this checks the URL "
        "and prints the Microsoft Entra admin center steps.",
        allow_abbrev=False,
    )
    helpdesk.add_argument("--url", dest="page_url", metavar="URL", required=True)
    apps = sub.add_parser(
        "app-registration",
        help="print (or --apply) the API's, the pages' and the admin client's app registrations",
        description="The registrations the Bicep and Terraform deployments make with "
        "createAppRegistration, for deployers who cannot create applications: printed as the "
        "Graph requests, or made "
        "with --apply (Application Administrator). Then deploy with createAppRegistration=false "
        "and the settings printed at the end.",
        allow_abbrev=False,
    )
    apps.add_argument("--name-prefix", required=True, help="the deployment's namePrefix")
    apps.add_argument(
        "--host", required=True, help="the pages' host: the Function App's <app>.azurewebsites.net"
    )
    apps.add_argument("--pages-path", default=DEFAULT_PAGES_PATH, help="default %(default)s")
    apps.add_argument("--tenant-id", help="the tenant (with --apply: checked against Graph's)")
    apps.add_argument("--apply", action="store_true", help="create or update them through Graph")
    apps.add_argument("--json", action="store_true", help="print one JSON document")
    _graph_options(apps)


def _graph_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--graph-url", default=GRAPH_URL, help="Microsoft Graph (a national cloud's: its own)"
    )
    parser.add_argument(
        "--graph-token-file",
        type=Path,
        metavar="PATH",
        help="a file holding a Microsoft Graph access token (default: azure-identity, e.g. "
        "the Azure CLI's login)",
    )


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run one `entra` command; the exit code. Problems are one line on stderr."""
    commands = {
        "link-sign-in": _link_sign_in,
        "link-helpdesk": _link_helpdesk,
        "app-registration": _app_registration,
    }
    try:
        return commands[args.entra_command](args)
    except (InvalidSetting, InvalidArgument) as exc:
        print(f"writeback: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GraphError as exc:
        print(f"writeback: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


def _graph(args: argparse.Namespace) -> Graph:
    url = graph_url(args.graph_url)
    if args.graph_token_file is None:
        return Graph(token_from_azure(url), url)
    path: Path = args.graph_token_file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InvalidSetting("--graph-token-file", f"cannot read {path}: {problem}") from None
    # Checked like the API's tokens: one word of visible ASCII, never echoed.
    credential = Credential.bearer(text, "--graph-token-file")
    return Graph(credential.value.removeprefix("Bearer "), url)


def _link_sign_in(args: argparse.Namespace) -> int:
    url = None if args.clear else doors.page_url(args.page_url, "--url")
    if args.dry_run:
        base = graph_url(args.graph_url)
        change = doors.BrandingChange("{organization id}", url)
        print(f"GET {base}/organization?$select=id   (the organization id)")
        print(f"PATCH {base}/organization/{change.organization_id}/branding")
        for name, value in change.headers.items():
            print(f"{name}: {value}")
        print("Content-Type: application/json\n")
        print(json.dumps(change.body, indent=2))
        return EXIT_OK
    graph = _graph(args)
    doors.link_sign_in(graph, doors.BrandingChange(doors.organization_id(graph), url))
    if url is None:
        print("The sign-in page's 'Forgot my password' link is Microsoft's again.")
    else:
        print(f"The sign-in page's 'Forgot my password' link now leads to {url}")
        print("(default branding: a language-specific branding with a link of its own keeps it)")
    return EXIT_OK


def _link_helpdesk(args: argparse.Namespace) -> int:
    url = doors.page_url(args.page_url, "--url", limit=None)
    print("Microsoft Graph has no API for SSPR's helpdesk link. In the admin center:")
    for number, step in enumerate(doors.helpdesk_steps(url), 1):
        print(f"  {number}. {step}")
    return EXIT_OK


def _app_registration(args: argparse.Namespace) -> int:
    redirect = _registration_arguments(args)
    if args.apply:
        graph = _graph(args)
        tenant = doors.organization_id(graph)
        if args.tenant_id is not None and args.tenant_id.lower() != tenant.lower():
            raise InvalidSetting("--tenant-id", f"is not the tenant signed in to ({tenant})")
        plan = registration.Registration(tenant, args.name_prefix, redirect)
        made, requests = registration.register(graph, plan), []
    else:
        recorder = registration.Recorder()
        tenant = args.tenant_id or "{tenant id}"
        plan = registration.Registration(tenant, args.name_prefix, redirect)
        made, requests = registration.register(recorder, plan), recorder.requests
    settings = {
        "authTenantId / auth_tenant_id": made.tenant_id,
        "authAudiences / auth_audiences": made.audiences,
        "pagesClientId / pages_client_id": made.pages_client_id,
        "createAppRegistration / create_app_registration": "false",
    }
    # What `writeback login --auth device-code|browser` needs (the deployment's outputs
    # apiClientId and adminClientId when it makes the registrations itself).
    client = {
        signin.APP_ID_ENV: made.api_client_id,
        signin.CLIENT_ID_ENV: made.admin_client_id,
        "AZURE_TENANT_ID": made.tenant_id,
    }
    if args.json:
        document = {
            "applied": args.apply,
            "requests": requests,
            "settings": settings,
            "client": client,
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    _print_requests(args.graph_url, requests)
    print("Deploy with these parameters (Bicep / Terraform):")
    for name, value in settings.items():
        print(f"  {name} = {value}")
    print(
        "\nSign the writeback command line in with the admin client (writeback login --auth "
        "device-code):"
    )
    for name, value in client.items():
        print(f"  {name}={value}")
    return EXIT_OK


def _registration_arguments(args: argparse.Namespace) -> str:
    """Check app-registration's arguments; the pages' redirect URI."""
    if not _PREFIX.fullmatch(args.name_prefix):
        raise InvalidSetting("--name-prefix", "must be 3 to 11 lower-case letters or digits")
    if not _HOST.fullmatch(args.host):
        raise InvalidSetting("--host", "must be a host name, like <app>.azurewebsites.net")
    if not (args.pages_path.startswith("/") and args.pages_path.endswith("/")):
        raise InvalidSetting("--pages-path", "must start and end with a slash, like /api/pages/")
    if args.tenant_id is not None and not _is_guid(args.tenant_id):
        raise InvalidSetting("--tenant-id", "must be the tenant (directory) ID, a GUID")
    return doors.page_url(f"https://{args.host}{args.pages_path}", "--pages-path", limit=None)


def _print_requests(graph: str, requests: list[dict[str, Any]]) -> None:
    if not requests:
        print("The app registrations are created or updated.")
        return
    print(f"The requests to Microsoft Graph ({graph}), in order; nothing was sent:")
    for request in requests:
        print(f"\n{request['method']} {request['path']}   needs {request['needs']}")
        for name, value in request.get("headers", {}).items():
            print(f"{name}: {value}")
        if "body" in request:
            print(json.dumps(request["body"], indent=2))
    print()


def _is_guid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
