"""The self-service and helpdesk pages, served by the Function app under `/api/pages/...`.

Everything here is plain data: `serve` maps a path below `/api/pages/` to a `Reply` (status,
body, content type, headers) and `writeback.cloud.http` turns it into the Functions response.
The pages are static files shipped in the app package (`static/`), MSAL.js vendored beside them
(no CDN); the only dynamic answer is `config`, the sign-in settings the pages read. Every answer
carries a strict Content-Security-Policy: scripts and styles from this origin only, nothing
inline, connections to this origin and the sign-in authority only, never framed.
The API the pages call takes bearer tokens only, never cookies, so a page of another site cannot
make the browser call it with the user's rights (no CSRF to defend against).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from writeback.cloud.settings import PagesSettings
from writeback.errors import ConfigurationError

log = logging.getLogger(__name__)
# Anyone may ask for the config: which setting is wrong goes to the log, not to the caller.
NOT_CONFIGURED = "The pages are not configured correctly. An administrator can see why in the log."

PAGES = ("change", "forgot", "unlock", "helpdesk")
INDEX = "index"
_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _static_files() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in _TYPES)
    }


def origin(url: str) -> str:
    """scheme://host[:port] of `url`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(authority: str | None) -> dict[str, str]:
    """The headers of every answer: the CSP (the authority's origin is the only other origin
    a page may connect to: MSAL fetches its metadata and redeems the code there)."""
    connect = "'self'" + (f" {origin(authority)}" if authority else "")
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def config(settings: PagesSettings) -> dict[str, object]:
    """What the pages need to sign in: the SPA's client id, the authority and the API scope."""
    return {
        "clientId": settings.client_id,
        "authority": settings.authority,
        "scopes": [settings.scope] if settings.scope else [],
        "redirectPath": "/api/pages/",
    }


def serve(path: str, environ: Mapping[str, str]) -> Reply:
    """The answer for GET /api/pages/`path`."""
    try:
        settings: PagesSettings | None = PagesSettings.from_env(environ)
        problem = None
    except ConfigurationError as exc:
        settings, problem = None, exc
    headers = security_headers(settings.authority if settings else None)
    name = path.strip("/")
    if name == "config":
        if settings is None:
            if problem is not None:
                log.error(
                    "pages not configured",
                    extra={"setting": problem.setting, "error": problem.problem},
                )
            body = {"error": "service.misconfigured", "message": NOT_CONFIGURED}
            return Reply(503, json.dumps(body).encode(), _JSON, headers)
        return Reply(200, json.dumps(config(settings)).encode(), _JSON, headers)
    if name.startswith("static/"):
        content = _static_files().get(name.removeprefix("static/"))
        if content is None:
            return Reply(404, b"Not found.", _TYPES[".txt"], headers)
        suffix = name[name.rfind(".") :]
        cached = {**headers, "Cache-Control": "max-age=300"}
        return Reply(200, content, _TYPES[suffix], cached)
    page = name or INDEX
    if page not in (*PAGES, INDEX):
        return Reply(404, b"Not found.", _TYPES[".txt"], headers)
    template = resources.files(__package__).joinpath("page.html").read_text("utf-8")
    return Reply(200, template.replace("__PAGE__", page).encode(), _HTML, headers)
