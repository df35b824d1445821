"""A stand-in for Microsoft Graph v1.0, for the `writeback entra` commands' tests: a real HTTP
server (http.server on 127.0.0.1, a free port) that records every request and answers the few
calls the commands make as Graph's documentation says Graph does.

What it follows: `GET /organization` (one tenant); `PATCH /organization/{id}/branding` (204;
Accept-Language required, `0` is the default branding; 404 when the tenant has no branding);
the application and service principal upserts (`PATCH /applications(uniqueName='…')`,
`PATCH /servicePrincipals(appId='…')` with `Prefer: create-if-missing`: 201 and the object when
created, 204 when updated, 404 without the header), their `GET`, and `oauth2PermissionGrants`
(filtered list, POST, PATCH); error bodies in Graph's shape (`error.code`, `error.message`,
`error.innerError.request-id`) and a `request-id` header. Every application, service principal
and grant body is checked against the Microsoft Graph Bicep extension's type data
(tests/infra/schemas/msgraph-bicep-types), and a property Graph's types do not have is refused
with 400.

What it does not emulate: tokens (any bearer is accepted; `deny` makes a path answer 403 as a
caller without the permission or role would get), directory roles and consent policies,
identifier URI policies, localized brandings, replication delays between Graph's replicas,
throttling (429), paging, and OData beyond the exact queries the commands send.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.infra import bicep_types

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
_KEYED = re.compile(r"^/v1\.0/(applications|servicePrincipals)\((uniqueName|appId)='(.*)'\)$")


@dataclass
class Received:
    method: str
    path: str  # URL-decoded, query included
    headers: dict[str, str]  # names in lower case
    body: Any


@dataclass
class GraphStandIn:
    """The directory's state and what came in; `url` is the versioned base."""

    url: str = ""
    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    branding: bool = True  # the tenant has a default branding
    branding_url: str | None = None
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uniqueName
    principals: dict[str, dict[str, Any]] = field(default_factory=dict)  # by appId
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    denied: dict[str, int] = field(default_factory=dict)  # path prefix -> status
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.principals[GRAPH_APP_ID] = {"id": str(uuid.uuid4()), "appId": GRAPH_APP_ID}

    def deny(self, path_prefix: str, status: int = 403) -> None:
        """Answer requests under `path_prefix` (after /v1.0) with `status`, as Graph does."""
        self.denied[path_prefix] = status

    def writes(self) -> list[Received]:
        return [r for r in self.received if r.method != "GET"]

    # answering

    def answer(self, request: Received) -> tuple[int, Any]:
        path, _, query = request.path.partition("?")
        for prefix, status in self.denied.items():
            if path.startswith(f"/v1.0/{prefix}"):
                code = {401: "InvalidAuthenticationToken", 403: "Authorization_RequestDenied"}
                return status, _error(code.get(status, "Request_Denied"), "Refused.")
        if path == "/v1.0/organization" and request.method == "GET":
            return 200, {"value": [{"id": self.tenant_id}]}
        if path == f"/v1.0/organization/{self.tenant_id}/branding":
            return self._branding(request)
        keyed = _KEYED.match(path)
        if keyed:
            return self._keyed(request, keyed[1], keyed[3].replace("''", "'"))
        if path == "/v1.0/oauth2PermissionGrants":
            return self._grants(request, urllib.parse.parse_qs(query).get("$filter", [""])[0])
        if path.startswith("/v1.0/oauth2PermissionGrants/") and request.method == "PATCH":
            grant = self.grants.get(path.rsplit("/", 1)[1])
            if grant is None:
                return 404, _error("Request_ResourceNotFound", "No such grant.")
            grant.update(request.body)
            return 204, None
        return 404, _error("Request_ResourceNotFound", f"No route {request.method} {path}.")

    def _branding(self, request: Received) -> tuple[int, Any]:
        if request.method != "PATCH":
            return 405, _error("Request_BadRequest", "Only PATCH here.")
        if "accept-language" not in request.headers:
            return 400, _error("Request_BadRequest", "Accept-Language is required.")
        if not self.branding:
            return 404, _error("Request_ResourceNotFound", "No default branding.")
        if request.headers["accept-language"] == "0":
            self.branding_url = request.body.get("customAccountResetCredentialsUrl")
        return 204, None

    def _keyed(self, request: Received, kind: str, key: str) -> tuple[int, Any]:
        store = self.applications if kind == "applications" else self.principals
        if request.method == "GET":
            found = store.get(key)
            return (200, found) if found else (404, _error("Request_ResourceNotFound", key))
        body = dict(request.body)
        type_name, key_name = (
            ("applications", "uniqueName")
            if kind == "applications"
            else ("servicePrincipals", "appId")
        )
        problems = bicep_types.body_problems(
            f"Microsoft.Graph/{type_name}@v1.0", {**body, key_name: key}
        )
        if problems:
            return 400, _error("Request_BadRequest", "; ".join(problems))
        if key in store:
            store[key].update(body)
            return 204, None
        if request.headers.get("prefer") != "create-if-missing":
            return 404, _error("Request_ResourceNotFound", key)
        if kind == "servicePrincipals" and key not in {
            a["appId"] for a in self.applications.values()
        }:
            return 400, _error("Request_BadRequest", f"No application {key}.")
        made = {**body, key_name: key, "id": str(uuid.uuid4())}
        if kind == "applications":
            made["appId"] = str(uuid.uuid4())
        store[key] = made
        return 201, made

    def _grants(self, request: Received, condition: str) -> tuple[int, Any]:
        if request.method == "GET":
            wanted = dict(re.findall(r"(\w+) eq '([^']*)'", condition))
            matches = [
                g for g in self.grants.values() if all(g.get(k) == v for k, v in wanted.items())
            ]
            return 200, {"value": matches}
        problems = bicep_types.body_problems(
            "Microsoft.Graph/oauth2PermissionGrants@v1.0", request.body
        )
        if problems:
            return 400, _error("Request_BadRequest", "; ".join(problems))
        made = {**request.body, "id": str(uuid.uuid4())}
        self.grants[made["id"]] = made
        return 201, made


def _error(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"request-id": str(uuid.uuid4()), "date": "2026-12-06T00:00:00"},
        }
    }


@contextmanager
def graph_standin() -> Iterator[GraphStandIn]:
    """A running stand-in; stopped when the block ends."""
    state = GraphStandIn()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Received(
                self.command,
                urllib.parse.unquote(self.path),
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
            with state.lock:
                state.received.append(request)
                status, body = state.answer(request)
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("request-id", str(uuid.uuid4()))
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_POST = _handle  # noqa: N815 - http.server's names

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1.0"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
