"""The whole local stack for e2e tests: the Samba DC (tests/testbed.py), Azurite, the local
Service Bus broker, the relay agent as its own process and function_app.py on the local
Functions host as its own process. Tests speak HTTP to the host, as a caller would."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey
from selenium.webdriver.remote.webdriver import WebDriver

from devstack import cloud
from devstack.azurite import Azurite
from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.stack import write_full_relay_config
from tests.e2e.pages_browser import chromium
from tests.testbed import TestBed
from writeback.relay.keys import KeyStore

HEARTBEAT_SECONDS = 1  # the cloud calls a domain offline after three missed heartbeats
WAIT_SECONDS = 6  # how long an HTTP caller waits for the relay's outcome


@dataclasses.dataclass
class LocalCloud:
    """The running stack: the API's URL and key, and the relay process (stoppable)."""

    url: str
    api_key: str
    domain: str
    relay_config: Path
    logs: Path
    azurite: Azurite
    settings: dict[str, str]  # the host's app settings: a Cloud built in a test uses the same
    relay: subprocess.Popen[bytes] | None = None

    def start_relay(self) -> None:
        if self.relay is None or self.relay.poll() is not None:
            environ = {**os.environ, "WRITEBACK_RELAY_HEARTBEAT_INTERVAL": str(HEARTBEAT_SECONDS)}
            with (self.logs / "relay.log").open("ab") as output:
                self.relay = subprocess.Popen(
                    [sys.executable, "-m", "writeback.relay.cli", "run", "--config",
                     str(self.relay_config)],
                    stdout=output, stderr=subprocess.STDOUT, env=environ,
                )  # fmt: skip

    def stop_relay(self) -> None:
        if self.relay is not None:
            cloud.stop_process(self.relay)
            self.relay = None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))


@pytest.fixture(scope="session")
def local_cloud(
    testbed: TestBed, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCloud]:
    state = tmp_path_factory.mktemp("cloud")
    logs = state / "logs"
    logs.mkdir()
    domain = testbed.domain.dns_domain
    cloud_key = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.e2e", "use": "sig"})
    with LocalServiceBus(writeback_queues([domain])) as bus:
        relay_dir = state / "relay"
        config, _ = write_full_relay_config(
            testbed.dc, testbed.domain, relay_dir, bus.connection_string,
            relay_id="relay-e2e", cloud_key=cloud_key,
        )  # fmt: skip
        relay_jwks: dict[str, Any] = KeyStore(relay_dir / "keys").public_jwks()
        secrets_dir = cloud.write_cloud_secrets(state / "secrets", cloud_key, {domain: relay_jwks})
        api_key = secrets.token_urlsafe(32)
        settings = cloud.cloud_settings(
            domains=[domain], servicebus=bus.connection_string,
            storage=azurite.connection_string, secrets_dir=secrets_dir, api_key=api_key,
            wait_seconds=WAIT_SECONDS, heartbeat_interval=HEARTBEAT_SECONDS,
        )  # fmt: skip
        port = cloud.free_port()
        host = cloud.start_host(settings, port, logs / "host.log")
        stack = LocalCloud(
            f"http://127.0.0.1:{port}/api", api_key, domain, config, logs, azurite, settings
        )
        stack.start_relay()
        try:
            yield stack
        finally:
            stack.stop_relay()
            cloud.stop_process(host)


def wait_until(predicate: Any, seconds: float, what: str) -> None:
    """Poll `predicate` until it is true, failing with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(stack: LocalCloud, state: str) -> bool:
    """Whether the API reports the stack's domain in `state` (ok, degraded, offline)."""
    call = urllib.request.Request(  # noqa: S310 - plain http to the loopback host: the local stack
        f"{stack.url}/v1/health", headers={"x-functions-key": stack.api_key}
    )
    try:
        with urllib.request.urlopen(call, timeout=60) as response:  # noqa: S310 - see above
            raw = response.read()
    except urllib.error.HTTPError as error:
        raw = error.read()
    health = json.loads(raw or b"{}")
    return bool(health.get("domains")) and health["domains"][0]["state"] == state


@pytest.fixture
def ready(local_cloud: LocalCloud) -> LocalCloud:
    """The stack with its relay running and known to the cloud."""
    local_cloud.start_relay()
    wait_until(lambda: healthy(local_cloud, "ok"), 30, "the relay's heartbeat")
    return local_cloud


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium for a module's page tests (tests/e2e/pages_browser.py)."""
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()
