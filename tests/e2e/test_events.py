"""Writeback requests as CloudEvents end to end on the local stack: function_app's Event Grid
trigger, called in this process over a Cloud built from the local app settings
(`bootstrap.build`), → Service Bus (local broker) → relay process → Samba AD DC → signed outcome
→ Completed event, with the audit trail in Azurite. The local Functions host runs beside it for
what the host does here: recording the relay's heartbeats in the agents table."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from joserfc.jwk import ECKey

import function_app
from devstack import cloud, seed
from devstack.azurite import Azurite
from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.stack import write_full_relay_config
from tests.testbed import TestBed
from writeback import sealing
from writeback.cloud import events, http
from writeback.cloud.bootstrap import Cloud, build
from writeback.protocol import Operation
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay.keys import KeyStore

pytestmark = pytest.mark.timeout(300)
PASSWORD = "Sealed-Grid-Pa55w0rd!"
HEARTBEAT_SECONDS = 1
SOURCE = "/portals/e2e"


@dataclasses.dataclass
class EventStack:
    """The local stack for events: the app settings a Cloud is built from, and the logs."""

    settings: dict[str, str]
    domain: str
    logs: Path

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))


class Captured(func.Out[str]):
    """The Event Grid output binding: what the function sets is what would be published."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def set(self, val: str) -> None:
        self.values.append(val)

    def get(self) -> str:
        return self.values[-1]

    def data(self) -> dict[str, Any]:
        (value,) = self.values
        return dict(json.loads(value)["data"])


@pytest.fixture(scope="module")
def event_stack(
    testbed: TestBed, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EventStack]:
    """Its own broker, relay process and local host on the session's DC and Azurite."""
    state = tmp_path_factory.mktemp("events")
    logs = state / "logs"
    logs.mkdir()
    domain = testbed.domain.dns_domain
    cloud_key = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.events", "use": "sig"})
    with LocalServiceBus(writeback_queues([domain])) as bus:
        relay_dir = state / "relay"
        config, _ = write_full_relay_config(
            testbed.dc, testbed.domain, relay_dir, bus.connection_string,
            relay_id="relay-events", cloud_key=cloud_key,
        )  # fmt: skip
        relay_jwks: dict[str, Any] = KeyStore(relay_dir / "keys").public_jwks()
        secrets_dir = cloud.write_cloud_secrets(state / "secrets", cloud_key, {domain: relay_jwks})
        settings = cloud.cloud_settings(
            domains=[domain], servicebus=bus.connection_string,
            storage=azurite.connection_string, secrets_dir=secrets_dir,
            api_key=secrets.token_urlsafe(32), wait_seconds=10,
            heartbeat_interval=HEARTBEAT_SECONDS,
        )  # fmt: skip
        host = cloud.start_host(settings, cloud.free_port(), logs / "host.log")
        environ = {**os.environ, "WRITEBACK_RELAY_HEARTBEAT_INTERVAL": str(HEARTBEAT_SECONDS)}
        with (logs / "relay.log").open("ab") as output:
            relay = subprocess.Popen(
                [sys.executable, "-m", "writeback.relay.cli", "run", "--config", str(config)],
                stdout=output, stderr=subprocess.STDOUT, env=environ,
            )  # fmt: skip
        try:
            yield EventStack(settings, domain, logs)
        finally:
            cloud.stop_process(relay)
            cloud.stop_process(host)


@pytest.fixture
async def local(event_stack: EventStack) -> AsyncIterator[Cloud]:
    """A Cloud for this process, built from the stack's settings and served by function_app,
    once the relay's heartbeat has reached the agents table."""
    instance = await build(event_stack.settings)
    http.use(instance)
    try:
        deadline = time.monotonic() + 60
        while True:
            (health,) = await instance.service.health()
            if health.state == "ok":
                break
            assert time.monotonic() < deadline, "no heartbeat from the relay"
            await asyncio.sleep(0.2)
        yield instance
    finally:
        http.use(None)
        await instance.close()


def sealed_reset(instance_keys: dict[str, object], domain: str, upn: str, event_id: str) -> Any:
    """A requested CloudEvent whose password is sealed to the domain's published relay keys and
    bound to the request id derived from the event, as a portal would publish it."""
    request_id = events.request_id(SOURCE, event_id)
    expires = int(time.time()) + 120
    binding = RequestMessage(
        id=request_id, domain=domain, operation=Operation.RESET, user=upn, issued_at=0,
        expires_at=expires,
    ).binding()  # fmt: skip
    sealed = sealing.seal(
        Secrets(new_password=PASSWORD), binding, sealing.public_keyset(instance_keys, "jwks")
    )
    return func.CloudEvent(
        id=event_id, source=SOURCE, type="Writeback.PasswordReset.Requested", specversion="1.0",
        datacontenttype="application/json", subject=f"users/{upn}",
        data={"user": upn, "initiator": "self-service", "sealedPassword": sealed,
              "requestId": request_id, "expiresAt": expires},
    )  # fmt: skip


async def deliver(event: Any) -> Captured:
    completed = Captured()
    await function_app.writeback_event.build().get_user_function()(event, completed)
    return completed


class TestEventsEndToEnd:
    async def test_a_sealed_event_delivered_twice_changes_the_password_once(
        self,
        event_stack: EventStack,
        local: Cloud,
        new_user: Callable[..., seed.Account],
        can_bind: Callable[[seed.Account, str], bool],
        read: Callable[[str, list[str]], dict[str, str]],
    ) -> None:
        """Event Grid delivers the same event twice: the DC's password is set once (pwdLastSet
        does not move on the second delivery), both deliveries answer the same Completed
        event, the audit table holds one request, and no log holds the password."""
        account = new_user("cloudev")
        started = time.time()
        keys = await local.service.encryption_keys(event_stack.domain)
        event = sealed_reset(keys, event_stack.domain, account.upn, str(uuid.uuid4()))

        first = await deliver(event)
        assert (first.data()["status"], first.data()["reason"]) == ("applied", "applied")
        assert can_bind(account, PASSWORD)
        assert not can_bind(account, account.password)
        stamp = read(account.dn, ["pwdLastSet"])

        second = await deliver(event)
        assert second.data() == first.data()
        assert read(account.dn, ["pwdLastSet"]) == stamp

        records = await local.service.audit.for_user(account.upn, started - 5, time.time() + 5)
        assert [record.request_id for record in records] == [first.data()["requestId"]]
        (record,) = records
        assert (record.status, record.caller_kind, record.caller, record.sealed_by_caller) == (
            "applied", "event", f"event-grid:{SOURCE}", True,
        )  # fmt: skip
        assert PASSWORD not in event_stack.log_text()
