"""The doors in Microsoft's own screens that can lead users to Writeback's pages.

- The sign-in page's "Forgot my password" link: company branding's
  `customAccountResetCredentialsUrl` (Graph `organizationalBranding`), set on the tenant's
  default branding with `PATCH /organization/{id}/branding` and `Accept-Language: 0`, the
  default branding's locale in Graph's own example. Graph limits it to 128 ASCII characters.
- SSPR's "Customize helpdesk link", where users SSPR cannot serve are sent: Microsoft Graph has
  no API for SSPR's settings, so `helpdesk_steps` says what to click in the admin center.

A URL is checked before anything is sent, with a message that names the argument.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from writeback.entra.graph import Graph, GraphError, InvalidArgument, Needs

MAX_RESET_URL = 128  # organizationalBranding.customAccountResetCredentialsUrl
DEFAULT_BRANDING = "0"  # the Accept-Language of the default branding (Graph's own example)
BRANDING = Needs("OrganizationalBranding.ReadWrite.All", "Organizational Branding Administrator")
READ_ORGANIZATION = Needs("Organization.Read.All", "Global Reader")


def page_url(url: str, argument: str = "--url", *, limit: int | None = MAX_RESET_URL) -> str:
    """`url` if the sign-in page can link to it: https, a host, ASCII (other characters
    URL-encoded), no spaces, no user name, at most `limit` characters; else InvalidArgument."""
    if not url.isascii():
        raise InvalidArgument(argument, "must be ASCII: URL-encode other characters (%XX)")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument(argument, "must not contain spaces or control characters")
    if limit is not None and len(url) > limit:
        raise InvalidArgument(
            argument, f"is {len(url)} characters; the sign-in page takes at most {limit}"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidArgument(argument, "must be an https:// URL, like https://<app>/api/pages/")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(argument, "must not contain a user name or password")
    return url


@dataclass(frozen=True)
class BrandingChange:
    """The request that points (or, with url None, resets) the "Forgot my password" link."""

    organization_id: str
    url: str | None

    @property
    def path(self) -> str:
        return f"organization/{urllib.parse.quote(self.organization_id, safe='')}/branding"

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept-Language": DEFAULT_BRANDING}

    @property
    def body(self) -> dict[str, Any]:
        return {"customAccountResetCredentialsUrl": self.url}


def organization_id(graph: Graph) -> str:
    """The tenant's organization id (GET /organization lists exactly one)."""
    answer = graph.call("GET", "organization?$select=id", READ_ORGANIZATION)
    found = answer.body.get("value")
    if not isinstance(found, list) or len(found) != 1 or not isinstance(found[0], dict):
        raise GraphError(answer.status, "unexpected", "GET /organization did not list one tenant")
    return str(found[0].get("id", ""))


def link_sign_in(graph: Graph, change: BrandingChange) -> None:
    """Send `change`; a tenant without a default branding gets a message saying what to do."""
    try:
        graph.call("PATCH", change.path, BRANDING, change.body, change.headers)
    except GraphError as exc:
        if exc.status == 404:
            raise GraphError(
                exc.status,
                exc.code,
                f"{exc.message}; the tenant has no default company branding yet: create it in "
                "the Microsoft Entra admin center (Company branding > Default sign-in "
                "experience > Edit, then Review + save), then run this again",
                request_id=exc.request_id,
            ) from None
        raise


def helpdesk_steps(url: str) -> list[str]:
    """What to do in the Microsoft Entra admin center to send SSPR's helpdesk link to `url`
    (Graph has no API for SSPR's customization)."""
    return [
        "Sign in to the Microsoft Entra admin center (https://entra.microsoft.com) as at least "
        "an Authentication Policy Administrator.",
        "Go to Protection > Password reset > Customization (older portals: Entra ID > Password "
        "reset > Customization).",
        "Set 'Customize helpdesk link' to Yes.",
        f"In 'Custom helpdesk email or URL', enter: {url}",
        "Select Save. Users that self-service password reset cannot serve (for example "
        "on-premises users when Microsoft's own writeback is off) now see this link where they "
        "were told to contact their administrator.",
    ]
