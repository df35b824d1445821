"""What the browser tests of the pages need: a tiny HTTPS authority that records the requests a
browser sends it (OpenID metadata and the authorize redirect), and headless Chromium."""

from __future__ import annotations

import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from devstack.tls import issue_server_certificate

TENANT = "00000000-0000-4000-8000-00000000beef"


class Recorder(ThreadingHTTPServer):
    requests: list[str]
    base: str


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        base = self.server.base
        if urlsplit(self.path).path.endswith("/.well-known/openid-configuration"):
            body = json.dumps({
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code"],
            }).encode()  # fmt: skip
            kind = "application/json"
        else:
            body, kind = b"<!doctype html><title>sign-in</title>", "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def authority(directory: Path) -> Iterator[Recorder]:
    """An HTTPS server on 127.0.0.1 standing for the authority `<url>/<tenant>`."""
    tls = issue_server_certificate(directory, ["localhost"])
    server = Recorder(("127.0.0.1", 0), _Handler)
    server.requests = []
    server.base = f"https://127.0.0.1:{server.server_address[1]}/{TENANT}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def chromium() -> webdriver.Chrome:
    """Headless Chromium; the test authority's certificate is self-issued, so not checked."""
    options = webdriver.ChromeOptions()
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary, "the browser tests need Chromium (Debian: apt-get install chromium)"
    assert driver, "the browser tests need its driver (Debian: apt-get install chromium-driver)"
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--ignore-certificate-errors", "--window-size=760,900"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))
