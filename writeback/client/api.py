"""A small client of the writeback HTTP API (docs/api.md), on the standard library alone.

`Client` resets, changes and unlocks, reads a request's state (and waits for it), and reads the
relays' health. An outcome the API answers (applied, rejected, failed or pending, whatever the
HTTP status) is an `Answer`; everything else is an exception, each with a message that names
what to fix and never holds a secret:

    ClientError             base of everything below
    ├── InvalidSetting      the URL or a credential cannot be used (names the option or
    │                       environment variable); raised before anything is sent
    ├── Unreachable         no HTTP answer: connection refused, DNS, TLS, timeout (names the URL;
    │                       `request_id` is set for a write, which may still be applied)
    ├── Refused             the API answered an error body (`error`, `message`, `field`):
    │                       400, 401, 403, 404, 409, 500, 503 (service.*, auth.*)
    └── UnexpectedAnswer    an answer that is not the API's: not JSON, a redirect, a proxy's page

What it must never do: send a key or token over plain HTTP to anything but the loopback host,
follow a redirect (urllib would carry the credential to the new address), or put a password
anywhere but the JSON body of the one request that needs it (not in a repr, an exception or a
log).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from writeback import __version__

DEFAULT_TIMEOUT = 230.0  # the API may be configured to wait up to 200 s for the relay
MAX_ANSWER_BYTES = 1 << 20
POLL_SECONDS = 1.0  # between two reads of a pending request
# The API's request ids (docs/api.md): 8 to 128 characters of A-Z a-z 0-9 . _ : -
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
_TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # what an HTTP header value may carry


class ClientError(Exception):
    """Base class. Messages are safe to print: they never contain a password, key or token."""


class InvalidSetting(ClientError):
    """The URL or a credential cannot be used; `setting` names the option or variable."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class Unreachable(ClientError):
    """No HTTP answer came from `url`. A write's `request_id` may still be applied."""

    def __init__(self, url: str, problem: str, *, timed_out: bool = False) -> None:
        super().__init__(f"cannot reach {url}: {problem}")
        self.url = url
        self.problem = problem
        self.timed_out = timed_out
        self.request_id: str | None = None


class Refused(ClientError):
    """The API answered an error: `http_status`, its `code` (`error`), `message` and `field`."""

    def __init__(self, http_status: int, body: dict[str, Any]) -> None:
        self.http_status = http_status
        self.body = body
        self.code = str(body.get("error", ""))
        self.message = str(body.get("message", ""))
        self.field = None if body.get("field") is None else str(body["field"])
        super().__init__(f"HTTP {http_status} {self.code}: {self.message}")


class UnexpectedAnswer(ClientError):
    """What answered is not the writeback API, or not as documented."""

    def __init__(self, url: str, http_status: int, problem: str) -> None:
        super().__init__(f"unexpected answer from {url}: HTTP {http_status}, {problem}")
        self.url = url
        self.http_status = http_status
        self.problem = problem


@dataclass(frozen=True)
class Credential:
    """How the client authenticates: an API key or an Entra ID bearer token, and where it came
    from (`source`, for messages). The value never appears in a repr."""

    header: str
    value: str = field(repr=False)
    source: str

    @classmethod
    def api_key(cls, value: str, source: str) -> Credential:
        return cls("x-functions-key", _checked(value, source), source)

    @classmethod
    def bearer(cls, token: str, source: str) -> Credential:
        return cls("Authorization", f"Bearer {_checked(token, source)}", source)


def _checked(value: str, source: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidSetting(source, "is empty")
    if not _TOKEN_CHARACTERS.fullmatch(value):
        raise InvalidSetting(source, "contains spaces or characters a key or token cannot have")
    return value


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine (localhost, 127.0.0.0/8 or ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_url(url: str, setting: str = "--url") -> str:
    """The API's base URL (…/api, no trailing slash), refusing what would leak a credential."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidSetting(setting, "must be an https:// URL such as https://<app>/api")
    if parts.username is not None or parts.password is not None:
        raise InvalidSetting(setting, "must not contain a user name or password")
    if parts.query or parts.fragment:
        raise InvalidSetting(setting, "must not have a query or a fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise InvalidSetting(
            setting,
            f"http:// is only allowed to the loopback host, not {parts.hostname}: the API key "
            "or token would travel in clear; use https://",
        )
    try:
        parts.port  # noqa: B018 - a malformed port raises here, not later inside urllib
    except ValueError:
        raise InvalidSetting(setting, "has an invalid port") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def new_request_id() -> str:
    """A fresh request id: every write carries one, so a lost answer can still be polled."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Answer:
    """The API's answer about one request: its outcome, or `pending` while the relay works."""

    http_status: int
    request_id: str
    state: str
    status: str
    reason: str | None
    message: str | None
    duration_ms: int | None
    body: dict[str, Any]

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    @property
    def pending(self) -> bool:
        return self.state == "pending"


@dataclass(frozen=True)
class Health:
    """The relays' health: `status` is ok, degraded or offline; `domains` as the API sent them."""

    status: str
    domains: list[dict[str, Any]]
    body: dict[str, Any]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect becomes an answer of its own: following it would resend the credential."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """The writeback API at `url` (its base, e.g. https://<app>.azurewebsites.net/api)."""

    def __init__(
        self, url: str, credential: Credential, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = api_url(url)
        self.credential = credential
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # No proxy for the loopback host: over http:// a proxy would see the key in clear.
        proxies = urllib.request.ProxyHandler({} if is_loopback(host) else None)
        self._opener = urllib.request.build_opener(proxies, _NoRedirect())

    def reset(
        self,
        user: str,
        new_password: str,
        *,
        initiator: str = "admin",
        unlock: bool = False,
        force_change: bool = False,
        request_id: str | None = None,
    ) -> Answer:
        """Reset `user`'s password (initiator `admin` or `self-service`)."""
        body = {
            "user": user, "newPassword": new_password, "initiator": initiator,
            "unlock": unlock, "forceChangeAtNextLogon": force_change,
        }  # fmt: skip
        return self._write("v1/passwords/reset", body, request_id)

    def change(
        self, user: str, old_password: str, new_password: str, *, request_id: str | None = None
    ) -> Answer:
        """Change `user`'s password; the directory checks the old one."""
        body = {"user": user, "oldPassword": old_password, "newPassword": new_password}
        return self._write("v1/passwords/change", body, request_id)

    def unlock(self, user: str, *, request_id: str | None = None) -> Answer:
        """Unlock `user`'s account."""
        return self._write("v1/accounts/unlock", {"user": user}, request_id)

    def expire(self, user: str, *, request_id: str | None = None) -> Answer:
        """Make `user` choose a new password at next logon (the password is not changed)."""
        return self._write("v1/passwords/expire", {"user": user}, request_id)

    def request(self, request_id: str) -> Answer:
        """The state of one request (Refused 404 `request.unknown` if the API has no record)."""
        if not REQUEST_ID.fullmatch(request_id):
            raise InvalidSetting("request id", "must be 8 to 128 of A-Z a-z 0-9 . _ : -")
        status, body = self._call("GET", f"v1/requests/{urllib.parse.quote(request_id)}")
        return _answer(self._url("v1/requests"), status, body)

    def wait(self, request_id: str, seconds: float, *, interval: float | None = None) -> Answer:
        """Poll a request until it is completed or `seconds` have passed; the last answer."""
        interval = POLL_SECONDS if interval is None else interval
        deadline = time.monotonic() + seconds
        while True:
            answer = self.request(request_id)
            remaining = deadline - time.monotonic()
            if not answer.pending or remaining <= 0:
                return answer
            time.sleep(min(interval, remaining))

    def health(self) -> Health:
        """Each domain's relays and whether they are alive."""
        status, body = self._call("GET", "v1/health")
        if status != 200 or not isinstance(body.get("domains"), list):
            raise UnexpectedAnswer(self._url("v1/health"), status, "not a health report")
        return Health(str(body.get("status")), list(body["domains"]), body)

    def history(self, user: str, hours: int = 24) -> list[dict[str, Any]]:
        """`user`'s requests of the last `hours`, newest first, as the API lists them."""
        path = f"v1/users/{urllib.parse.quote(user, safe='')}/requests?hours={int(hours)}"
        status, body = self._call("GET", path)
        if status != 200 or not isinstance(body.get("requests"), list):
            raise UnexpectedAnswer(self._url("v1/users"), status, "not a request history")
        return [entry for entry in body["requests"] if isinstance(entry, dict)]

    def _write(self, path: str, body: dict[str, Any], request_id: str | None) -> Answer:
        body["requestId"] = request_id or new_request_id()
        try:
            status, answer = self._call("POST", path, body)
        except Unreachable as exc:
            exc.request_id = body["requestId"]
            raise
        return _answer(self._url(path), status, answer)

    def _url(self, path: str) -> str:
        return f"{self.url}/{path}"

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP exchange: the status and the JSON object answered (Refused if an error)."""
        url = self._url(path)
        headers = {
            "Accept": "application/json",
            "User-Agent": f"writeback-client/{__version__}",
            self.credential.header: self.credential.value,
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - api_url allows only https, or http to loopback
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as error:
            with error:
                status, raw = error.code, error.read(MAX_ANSWER_BYTES + 1)
            if 300 <= status < 400:
                where = error.headers.get("Location", "elsewhere")
                raise UnexpectedAnswer(
                    url, status, f"a redirect to {where} (not followed: set the final URL)"
                ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _unreachable(self.url, exc, self.timeout) from exc
        answer = _json_object(url, status, raw)
        if isinstance(answer.get("error"), str):
            raise Refused(status, answer)
        return status, answer


def _json_object(url: str, status: int, raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_ANSWER_BYTES:
        raise UnexpectedAnswer(url, status, f"an answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        raise UnexpectedAnswer(
            url, status, "not JSON (is the URL the API's base, …/api?)"
        ) from None
    if not isinstance(answer, dict):
        raise UnexpectedAnswer(url, status, "not a JSON object")
    return answer


def _answer(url: str, status: int, body: dict[str, Any]) -> Answer:
    request_id, state = body.get("requestId"), body.get("state")
    if not isinstance(request_id, str) or state not in ("completed", "pending"):
        raise UnexpectedAnswer(url, status, "not an outcome (no requestId or state)")
    duration = body.get("durationMs")
    return Answer(
        http_status=status,
        request_id=request_id,
        state=str(state),
        status=str(body.get("status") or "pending"),
        reason=None if body.get("reason") is None else str(body["reason"]),
        message=None if body.get("message") is None else str(body["message"]),
        duration_ms=duration if isinstance(duration, int) else None,
        body=body,
    )


def _unreachable(url: str, exc: BaseException, timeout: float) -> Unreachable:
    """One line for a network failure: what went wrong, never the request."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return Unreachable(url, f"no answer within {timeout:g} s", timed_out=True)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return Unreachable(url, f"TLS certificate not trusted ({reason.verify_message})")
    if isinstance(reason, ssl.SSLError):
        return Unreachable(url, f"TLS failed ({reason.reason or reason.strerror})")
    if isinstance(reason, socket.gaierror):
        return Unreachable(url, "the host name does not resolve")
    if isinstance(reason, ConnectionRefusedError):
        return Unreachable(url, "connection refused")
    if isinstance(reason, ConnectionError | http.client.HTTPException):
        return Unreachable(url, "the connection was closed before an answer")
    if isinstance(reason, OSError) and reason.strerror:
        return Unreachable(url, reason.strerror.lower())
    if isinstance(reason, str) and reason:
        return Unreachable(url, reason)
    return Unreachable(url, type(reason).__name__)
