"""A small Microsoft Graph client on the standard library, for the `writeback entra` commands.

`Graph` sends one JSON request at a time to a Graph base URL (https://graph.microsoft.com/v1.0,
or a national cloud's) with a bearer token, and turns every answer that is not a success into a
`GraphError` whose message is one line an administrator can act on: for 403, the permission and
the directory role the call needs (`Needs`), for 401 how to sign in. The token comes from
azure-identity (`token_from_azure`: the Azure CLI login, a managed identity, environment
variables) or from a file; it never appears in a message, a repr or a log.

Like writeback.client.api, it never follows a redirect (that would resend the token) and refuses
http:// except to the loopback host (where tests run a stand-in of Graph). The errors:

    EntraError          base; messages are safe to print (never a token)
    ├── InvalidArgument an argument or setting cannot be used (names it); nothing was sent
    └── GraphError      Graph refused a call, or could not be reached
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from writeback import __version__

GRAPH_URL = "https://graph.microsoft.com/v1.0"
TIMEOUT = 60.0
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class Needs:
    """What a Graph call needs of whoever makes it: a permission and a directory role."""

    permission: str
    role: str

    def sentence(self) -> str:
        return (
            f"this needs the Microsoft Graph permission {self.permission} and, for a signed-in "
            f"administrator, the Entra ID role {self.role} (or one above it)"
        )


class EntraError(Exception):
    """Base class. Messages are safe to print: they never contain a token."""


class InvalidArgument(EntraError):
    """`argument` (an option or a setting) cannot be used; raised before anything is sent."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument}: {problem}")
        self.argument = argument
        self.problem = problem


class GraphError(EntraError):
    """Graph refused a call or could not be reached: `status` (0 when unreachable), Graph's
    error `code` and `message`, and its request id for Microsoft support."""

    def __init__(self, status: int, code: str, message: str, *, request_id: str = "") -> None:
        self.status, self.code, self.message, self.request_id = status, code, message, request_id
        where = f" (request-id {request_id})" if request_id else ""
        super().__init__(f"{message}{where}")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass
class Graph:
    """Microsoft Graph at `url` (its versioned base) with `token`."""

    token: str = field(repr=False)
    url: str = GRAPH_URL
    timeout: float = TIMEOUT

    def __post_init__(self) -> None:
        self.url = graph_url(self.url)
        host = urllib.parse.urlsplit(self.url).hostname or ""
        proxies = urllib.request.ProxyHandler({} if is_loopback(host) else None)
        self._opener = urllib.request.build_opener(proxies, _NoRedirect())

    def call(
        self,
        method: str,
        path: str,
        needs: Needs,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request (`path` relative to the base, e.g. `organization`); the answer of a
        2xx, else GraphError naming what to fix."""
        url = f"{self.url}/{path}"
        sent = {
            "Accept": "application/json",
            "Authorization": f"Bearer {self.token}",
            "User-Agent": f"writeback-entra/{__version__}",
            **(headers or {}),
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=sent)  # noqa: S310 - graph_url allows only https, or http to loopback
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read(MAX_ANSWER_BYTES + 1)
                request_id = response.headers.get("request-id", "")
        except urllib.error.HTTPError as error:
            with error:
                status, raw = error.code, error.read(MAX_ANSWER_BYTES + 1)
                request_id = error.headers.get("request-id", "")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise GraphError(0, "unreachable", f"cannot reach {self.url}: {reason}") from None
        parsed = _json(raw)
        if 200 <= status < 300:
            return Answer(status, parsed)
        what = f"Microsoft Graph refused {method} /{path.partition('?')[0]}"
        raise _refusal(status, parsed, request_id, needs, what)


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine (localhost, 127.0.0.0/8 or ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def graph_url(url: str, setting: str = "--graph-url") -> str:
    """Graph's versioned base URL (no trailing slash): https, or http to the loopback host
    only, since the token would travel in clear; no user name, query or fragment."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidArgument(setting, "must be an https:// URL such as " + GRAPH_URL)
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(setting, "must not contain a user name or password")
    if parts.query or parts.fragment:
        raise InvalidArgument(setting, "must not have a query or a fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise InvalidArgument(
            setting, f"http:// is only allowed to the loopback host, not {parts.hostname}: the "
            "token would travel in clear; use https://",
        )  # fmt: skip
    try:
        parts.port  # noqa: B018 - a malformed port raises here, not later inside urllib
    except ValueError:
        raise InvalidArgument(setting, "has an invalid port") from None
    checked = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    if not urllib.parse.urlsplit(checked).path.strip("/"):
        raise InvalidArgument(
            setting, "must name the version, like https://graph.microsoft.com/v1.0"
        )
    return checked


def scope_for(url: str) -> str:
    """The token scope of the Graph at `url`: https://graph.microsoft.com/.default for the
    global cloud, the national cloud's own host otherwise."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def token_from_azure(url: str) -> str:
    """A Graph token from azure-identity's DefaultAzureCredential: the Azure CLI's login
    (`az login`), Azure PowerShell's, a managed identity or the AZURE_* variables."""
    try:
        from azure.core.exceptions import ClientAuthenticationError  # noqa: PLC0415
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415
    except ImportError:
        raise InvalidArgument(
            "azure-identity",
            "is not installed: pip install 'writeback[admin]', or pass --graph-token-file",
        ) from None
    try:
        with DefaultAzureCredential() as credential:
            return credential.get_token(scope_for(url)).token
    except ClientAuthenticationError as exc:
        first = str(exc.message or exc).splitlines()[0]
        raise InvalidArgument(
            "Microsoft Graph sign-in",
            f"no credential found ({first}); run `az login` with an administrator account, or "
            "pass --graph-token-file",
        ) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _json(raw: bytes) -> dict[str, Any]:
    if not raw or len(raw) > MAX_ANSWER_BYTES:
        return {}
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _refusal(
    status: int, body: dict[str, Any], request_id: str, needs: Needs, what: str
) -> GraphError:
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    code = _line(error.get("code")) or f"HTTP {status}"
    said = _line(error.get("message")) or "no message"
    nested = error.get("innerError")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else {}
    request_id = request_id or _line(inner.get("request-id"))
    what = f"{what}: {code}: {said}"
    if status == 401:
        return GraphError(
            status, code, f"{what}; the token is not valid for Microsoft Graph: sign in again "
            "(az login) or renew --graph-token-file", request_id=request_id,
        )  # fmt: skip
    if status == 403:
        return GraphError(status, code, f"{what}; {needs.sentence()}", request_id=request_id)
    return GraphError(status, code, f"{what} (HTTP {status})", request_id=request_id)


def _line(value: object) -> str:
    """Graph's text as one printable line."""
    if not isinstance(value, str):
        return ""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())[:300]
