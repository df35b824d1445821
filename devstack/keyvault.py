"""A local stand-in for Azure Key Vault's secrets API, so tests run the real azure-keyvault-secrets.

It serves HTTPS on 127.0.0.1 (a free port) with a certificate from a throwaway CA (`devstack.tls`)
for `localhost`, and speaks the part of the Key Vault REST API the cloud uses: the bearer
challenge (an unauthenticated request gets 401 and a `WWW-Authenticate: Bearer authorization=...,
resource="https://vault.azure.net"` header naming a tenant, as the SDK's challenge policy
expects), `PUT /secrets/{name}` (each set makes a new version), `GET /secrets/{name}[/{version}]`
(latest, or that version) and Key Vault's error JSON for unknown secrets and bad requests. Any
`api-version` is accepted, but one must be present. A client connects with:

    SecretClient(vault.url, vault.credential(), connection_verify=str(vault.ca_file),
                 verify_challenge_resource=False)

(the challenge names vault.azure.net, which `localhost` is not a subdomain of).

It is a test fixture, not an emulator: it checks only that the bearer token is the one its
`credential()` hands out (no signatures, no RBAC roles, no tenants), keeps secrets in memory,
and has no deletion, recovery, listing, paging, tags or attribute updates, expiry or
not-before enforcement, throttling, or keys and certificates. It never logs a secret's value.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken

from devstack.tls import issue_server_certificate

HOST = "localhost"  # the name in the certificate; the server listens on 127.0.0.1
TENANT = "00000000-0000-0000-0000-00000000beef"
RESOURCE = "https://vault.azure.net"
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_PATH = re.compile(r"/secrets/(?P<name>[^/]+)/?(?P<version>[^/]*)")


@dataclass
class _Version:
    version: str
    value: str = field(repr=False)
    content_type: str | None
    created: int


class StandInCredential:
    """An async TokenCredential that hands out the stand-in's token and records what it was asked
    for (scopes and tenant), so tests can see the challenge was followed."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.requests: list[tuple[tuple[str, ...], str | None]] = []

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.requests.append((scopes, tenant_id))
        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> StandInCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class KeyVaultStandIn:
    """The stand-in server. `start()` returns once it answers HTTPS; `stop()` closes the port and
    every open connection, so clients see a vault that is down. Usable as a context manager."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._token = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._secrets: dict[str, list[_Version]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_file = directory / "ca.pem"
        self.requests: list[tuple[str, str]] = []  # (method, path): never a value

    @property
    def url(self) -> str:
        """The vault URL to give the SDK."""
        if self._server is None:
            raise RuntimeError("the Key Vault stand-in is not running")
        return f"https://{HOST}:{self._server.server_address[1]}"

    def credential(self, token: str | None = None) -> StandInCredential:
        """A credential the stand-in accepts (or, with another `token`, one it refuses)."""
        return StandInCredential(self._token if token is None else token)

    def start(self, timeout: float = 10.0) -> KeyVaultStandIn:
        files = issue_server_certificate(self._directory, [HOST])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert_file, files.key_file)
        self.ca_file = files.ca_file
        server = _Server(("127.0.0.1", 0), _Handler, context, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="keyvault", daemon=True
        )
        self._thread.start()
        self._wait_until_ready(timeout)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> KeyVaultStandIn:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def set(self, name: str, value: str, content_type: str | None = None) -> str:
        """Store a new version of secret `name` directly (as an administrator would); its id."""
        with self._lock:
            entry = _Version(uuid.uuid4().hex, value, content_type, int(time.time()))
            self._secrets.setdefault(name.lower(), []).append(entry)
            return entry.version

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll until an HTTPS request that validates the certificate gets the bearer challenge."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        port = self._server.server_address[1] if self._server else 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                # The certificate names localhost: connect by address, validate by name.
                raw = socket.create_connection(("127.0.0.1", port), timeout=2)
                connection = http.client.HTTPSConnection(HOST, port, timeout=2)
                connection.sock = context.wrap_socket(raw, server_hostname=HOST)
                try:
                    connection.request("GET", "/secrets/ready?api-version=7.6")
                    if connection.getresponse().status == 401:
                        self.requests.clear()
                        return
                finally:
                    connection.close()
            except OSError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError("the Key Vault stand-in did not answer in time")
            time.sleep(0.05)

    # -- the API, called from handler threads -------------------------------------------------
    def _authorized(self, header: str | None) -> bool:
        return header is not None and secrets.compare_digest(header, f"Bearer {self._token}")

    def _put(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, _error("BadParameter", "The request body is not valid JSON.")
        if not isinstance(request, dict) or not isinstance(request.get("value"), str):
            return 400, _error("BadParameter", "Property 'value' is required.")
        with self._lock:
            entry = _Version(
                uuid.uuid4().hex, request["value"], request.get("contentType"), int(time.time())
            )
            self._secrets.setdefault(name.lower(), []).append(entry)
        return 200, self._bundle(name, entry)

    def _get(self, name: str, version: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            versions = self._secrets.get(name.lower(), [])
            found = [v for v in versions if v.version == version] if version else versions[-1:]
        if not found:
            what = f"{name}/{version}" if version else name
            return 404, _error(
                "SecretNotFound",
                f"A secret with (name/id) {what} was not found in this key vault. If you recently "
                "deleted this secret you may be able to recover it using the correct recovery "
                "command. For help resolving this issue, please see "
                "https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        return 200, self._bundle(name, found[0])

    def _bundle(self, name: str, entry: _Version) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "value": entry.value,
            "id": f"{self.url}/secrets/{name}/{entry.version}",
            "attributes": {
                "enabled": True,
                "created": entry.created,
                "updated": entry.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }
        if entry.content_type is not None:
            bundle["contentType"] = entry.content_type
        return bundle


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        vault: KeyVaultStandIn,
    ) -> None:
        super().__init__(address, handler)
        self.context = context
        self.vault = vault
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = self.socket.accept()
        # The TLS handshake happens in the handler's thread, so a slow client blocks no one.
        wrapped = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(wrapped)
        return wrapped, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a dropped test connection is not worth a traceback."""

    def close_connections(self) -> None:
        """Cut every kept-alive connection: a stopped vault must look down, not half up."""
        with self._open_lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._open.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's aiohttp session expects
    timeout = 10
    server: _Server

    def handle(self) -> None:
        # A client that fails the handshake or goes away mid-request is simply dropped.
        with contextlib.suppress(OSError, ValueError):
            self.request.do_handshake()
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is not the place for request lines."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        vault = self.server.vault
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        vault.requests.append((method, parts.path))
        if not vault._authorized(self.headers.get("Authorization")):
            self._answer(
                401,
                _error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
                {
                    "WWW-Authenticate": f'Bearer authorization="https://login.microsoftonline.com/'
                    f'{TENANT}", resource="{RESOURCE}"'
                },
            )
            return
        if "api-version" not in parse_qs(parts.query):
            self._answer(400, _error("BadParameter", "The 'api-version' parameter is missing."))
            return
        match = _PATH.fullmatch(parts.path)
        if match is None or not _NAME.fullmatch(match["name"]):
            self._answer(400, _error("BadParameter", "Not a secret path or secret name."))
            return
        if method == "PUT" and not match["version"]:
            self._answer(*vault._put(match["name"], body))
        elif method == "GET":
            self._answer(*vault._get(match["name"], match["version"]))
        else:
            self._answer(405, _error("BadParameter", f"{method} is not supported here."))

    def _answer(
        self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
