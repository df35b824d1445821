"""The local stack's Entra ID sign-in stand-in (devstack/entra.py): its tenant, its users read
from the local DC, its TLS, and the API settings that make the local Functions host accept its
tokens instead of Entra ID's.

The tenant and both app registrations have fixed local ids, so a page or a token from one run
still names the same tenant in the next; the signing key is made anew each time the stack
starts the API. Nothing here is used in Azure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from devstack import entra_users, seed, tls
from devstack.entra_tokens import Tenant
from devstack.samba import SambaDC

PORT = 7443
HOST = "localhost"
AUTHORITY = f"https://{HOST}:{PORT}"
TENANT_ID = "5e1d2c3b-4a59-4687-9a6b-7c8d9e0f1a2b"
API_CLIENT_ID = "6f7e8d9c-0b1a-4c2d-8e3f-4a5b6c7d8e9f"
API_IDENTIFIER_URI = f"api://{TENANT_ID}/writeback-local"
PAGES_CLIENT_ID = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
CONTEXT = "c1"  # the authentication context strong verification satisfies, and the API asks for


@dataclass(frozen=True)
class SignInStandIn:
    """Where the stand-in's configuration and TLS files are, and what the API needs to know."""

    config: Path
    tls: tls.TlsFiles
    port: int = PORT

    @property
    def authority(self) -> str:
        return f"https://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return ["-m", "devstack.entra", "--config", str(self.config.resolve()), "--port",
                str(self.port), "--cert", str(self.tls.cert_file.resolve()), "--key",
                str(self.tls.key_file.resolve())]  # fmt: skip

    def api_settings(self) -> dict[str, str]:
        """The app settings that point the API's token checks at the stand-in."""
        return {
            "WRITEBACK_AUTH_TENANT_ID": TENANT_ID,
            "WRITEBACK_AUTH_AUDIENCES": f"{API_CLIENT_ID},{API_IDENTIFIER_URI}",
            "WRITEBACK_AUTH_AUTHORITY": self.authority,
            "WRITEBACK_SELF_SERVICE_ACRS": CONTEXT,
            "WRITEBACK_PAGES_CLIENT_ID": PAGES_CLIENT_ID,  # the pages sign in as this app
            # The host fetches the stand-in's keys over HTTPS: trust its CA (the local host
            # makes no other HTTPS call).
            "SSL_CERT_FILE": str(self.tls.ca_file.resolve()),
        }


def pages_origins(api_port: int) -> list[str]:
    """The origins the local Functions host on `api_port` serves the pages from (loopback,
    by address or by name): the stand-in lets them redeem codes (CORS) and redirects to them."""
    return [f"http://127.0.0.1:{api_port}", f"http://localhost:{api_port}"]


def tenant(api_port: int, port: int = PORT) -> Tenant:
    """The local tenant with its two app registrations, the pages' redirecting to the local
    host on `api_port` (the pages' `redirectPath` on each of its origins)."""
    return Tenant(
        authority=f"https://{HOST}:{port}", tenant_id=TENANT_ID, api_client_id=API_CLIENT_ID,
        api_identifier_uri=API_IDENTIFIER_URI, pages_client_id=PAGES_CLIENT_ID,
        redirect_uris=tuple(f"{origin}/api/pages/" for origin in pages_origins(api_port)),
        contexts=(CONTEXT,),
    )  # fmt: skip


def stand_in(directory: Path, port: int = PORT) -> SignInStandIn:
    """The stand-in whose files `prepare` wrote in `directory`, serving on `port`."""
    files = [directory / "tls" / name for name in ("ca.pem", "cert.pem", "key.pem")]
    return SignInStandIn(directory / "entra.json", tls.TlsFiles(*files), port)


def prepare(
    directory: Path, dc: SambaDC, domain: seed.SeededDomain, api_port: int, port: int = PORT
) -> SignInStandIn:
    """Write the stand-in's configuration (users with their SIDs read from the DC) and TLS."""
    directory.mkdir(parents=True, exist_ok=True)
    files = stand_in(directory, port).tls
    if not files.cert_file.exists():
        files = tls.issue_server_certificate(directory / "tls", [HOST], ("127.0.0.1",))
    connection = dc.admin_connection()
    try:
        sids = {
            sam: seed.object_sid(connection, account.dn) for sam, account in domain.users.items()
        }
    finally:
        connection.unbind()
    users = entra_users.cloud_users(TENANT_ID, domain.dns_domain, sids)
    local = tenant(api_port, port)
    config = {
        "authority": local.authority,
        "tenant_id": local.tenant_id,
        "api_client_id": local.api_client_id,
        "api_identifier_uri": local.api_identifier_uri,
        "pages_client_id": local.pages_client_id,
        "redirect_uris": list(local.redirect_uris),
        "origins": pages_origins(api_port),
        "contexts": list(local.contexts),
        "signing_key": local.key.as_dict(private=True),
        "users": entra_users.to_json(users),
    }
    path = directory / "entra.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the signing key
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=2)
    return SignInStandIn(path, files, port)
