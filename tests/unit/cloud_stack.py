"""An in-process cloud side for unit tests: function_app's registered handlers over the real
service, the in-memory queue model, in-memory tables and a real relay (pipeline, journal,
agent) on the in-memory directory. Nothing here replaces our own adapters with mocks: the
fakes are the ports' in-memory implementations from writeback.testing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

import function_app
from tests import functions
from writeback.cloud import http
from writeback.cloud.auth import Authenticator, AuthSettings
from writeback.cloud.bootstrap import Cloud
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, relay_keys_secret
from writeback.cloud.service import ServiceSettings, WritebackService
from writeback.cloud.settings import EventSettings
from writeback.cloud.telemetry import Telemetry
from writeback.errors import SecretsUnavailable
from writeback.relay.agent import Agent
from writeback.relay.config import RelaySettings
from writeback.relay.journal import Journal
from writeback.relay.pipeline import Pipeline, RelayKeys
from writeback.routing import Routes
from writeback.testing import FakeDirectory, MemoryAgentRegistry, MemoryAuditTrail
from writeback.transport import (
    HEARTBEATS_QUEUE,
    OUTCOMES_QUEUE,
    RelayTransport,
    requests_queue,
)
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig

DOMAIN = "corp.example.test"
API_KEY = "unit-test-api-key-0123456789abcdefghij"
RELAY = "relay-1"


class DictSecrets:
    """The SecretSource port over a dict (a rotation is an assignment)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    async def get(self, name: str) -> str:
        if name not in self.values:  # as the real sources answer a missing secret
            raise SecretsUnavailable(name, "no such secret", missing=True)
        return self.values[name]

    async def close(self) -> None:
        return None


def public(*keys: Any) -> KeySet:
    return KeySet([type(k).import_key(k.as_dict(private=False)) for k in keys])


@dataclass
class Stack:
    broker: MemoryBroker
    service: WritebackService
    directory: FakeDirectory
    audit: MemoryAuditTrail
    agents: MemoryAgentRegistry
    enc: RSAKey
    relay_sig: ECKey
    tmp: Path
    agent: Agent | None = None
    _stop: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    def relay(self) -> Agent:
        transport = InProcessRelay(self.broker, DOMAIN)
        return relay_agent(transport, self.directory, self.tmp, self.enc, self.relay_sig)

    def instance(self) -> WritebackService:
        """Another cloud instance: the same tables, keys and queues, its own reply session."""
        first = self.service
        return WritebackService(
            routes=first.routes,
            transport=InProcessCloud(self.broker),
            keys=first.keys,
            audit=first.audit,
            agents=first.agents,
            settings=first.settings,
        )

    async def start_relay(self) -> None:
        self.agent = self.relay()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.agent.run(self._stop))
        await self.deliver_heartbeats(expect=1)

    async def stop_relay(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
            self._stop = self._task = None

    async def deliver_heartbeats(self, expect: int = 0, deadline: float = 10.0) -> int:
        """Hand the heartbeats queue to function_app's Service Bus trigger, as the host would."""
        delivered, until = 0, time.monotonic() + deadline
        while True:
            for stored in self.broker.receive(HEARTBEATS_QUEUE, 10):
                await functions.service_bus(
                    function_app.record_heartbeat, stored.body, message_id=str(stored.message_id)
                )
                self.broker.complete(HEARTBEATS_QUEUE, str(stored.lock_token))
                delivered += 1
            if delivered >= expect or time.monotonic() > until:
                return delivered
            await asyncio.sleep(0.02)


def relay_agent(
    transport: RelayTransport,
    directory: FakeDirectory,
    tmp: Path,
    enc: RSAKey | None = None,
    sig: ECKey | None = None,
) -> Agent:
    """A real relay (agent, pipeline, journal in `tmp`) of DOMAIN on `directory`, answering
    through `transport`, with its keys (by default the ones the stack's cloud knows)."""
    enc, sig = enc or ENC_KEY, sig or SIG_KEY
    settings = RelaySettings(
        id=RELAY,
        domain=DOMAIN,
        keys=tmp,
        journal=tmp,
        cloud_keys=tmp,
        concurrency=4,
        heartbeat_interval=30,
        shutdown_grace=2,
        receive_wait=0.1,
    )
    pipeline = Pipeline(
        relay_id=RELAY,
        domain=DOMAIN,
        directory=directory,
        transport=transport,
        journal=Journal(tmp / "journal.sqlite3"),
        keys=RelayKeys(
            KeySet([ECKey.import_key(CLOUD_KEY.as_dict(private=False))]),
            KeySet([enc]),
            sig,
        ),
    )
    return Agent(settings, pipeline, transport, directory=directory, signing_key=sig)


CLOUD_KEY = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.a", "use": "sig"})
ENC_KEY = RSAKey.generate_key(2048, parameters={"kid": f"{RELAY}.enc.a", "use": "enc"})
SIG_KEY = ECKey.generate_key("P-256", parameters={"kid": f"{RELAY}.sig.a", "use": "sig"})


@contextlib.asynccontextmanager
async def cloud_stack(
    tmp: Path,
    *,
    wait: float = 5.0,
    api_key_roles: str | None = None,
    more_domains: Sequence[str] = (),
    authenticator: Authenticator | None = None,
) -> AsyncIterator[Stack]:
    """The cloud over in-memory adapters for DOMAIN (relays start on demand), and for
    `more_domains`, which route but have no queue; event settings come from os.environ.
    Callers are checked by `authenticator`, else by the API key alone."""
    broker = MemoryBroker(
        [
            QueueConfig(requests_queue(DOMAIN), lock_duration=10, duplicate_detection_window=600),
            QueueConfig(OUTCOMES_QUEUE, requires_session=True, default_ttl=300),
            QueueConfig(HEARTBEATS_QUEUE, default_ttl=300),
        ]
    )
    secrets = DictSecrets(
        {
            SIGNING_KEY_SECRET: json.dumps(CLOUD_KEY.as_dict(private=True)),
            relay_keys_secret(DOMAIN): json.dumps(
                {"keys": [k.as_dict(private=False) for k in (ENC_KEY, SIG_KEY)]}
            ),
        }
    )
    audit, agents = MemoryAuditTrail(), MemoryAgentRegistry()
    service = WritebackService(
        routes=Routes.build([DOMAIN, *more_domains], {"example.test": DOMAIN}),
        transport=InProcessCloud(broker),
        keys=CloudKeys(secrets),
        audit=audit,
        agents=agents,
        settings=ServiceSettings(
            wait_seconds=wait, lifetime_seconds=60, heartbeat_interval=60, poll_wait_seconds=0.3
        ),
    )
    environ = {"WRITEBACK_API_KEYS": API_KEY}
    if api_key_roles is not None:
        environ["WRITEBACK_API_KEY_ROLES"] = api_key_roles
    authenticator = authenticator or Authenticator(AuthSettings.from_env(environ))
    events = EventSettings.from_env(os.environ, service.routes.domains)
    http.use(Cloud(service, authenticator, Telemetry(), events))
    stack = Stack(broker, service, FakeDirectory(), audit, agents, ENC_KEY, SIG_KEY, tmp)
    try:
        yield stack
    finally:
        await stack.stop_relay()
        http.use(None)


def request(
    method: str,
    path: str,
    body: object = None,
    *,
    key: str | None = API_KEY,
    route_params: dict[str, str] | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> functions.HttpCall:
    sent = dict(headers or {})
    if key is not None:
        sent["x-functions-key"] = key
    payload = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    return functions.HttpCall(
        method, path, payload, sent, route_params=route_params or {}, query=params or {}
    )


async def call(function: Any, req: functions.HttpCall) -> tuple[int, dict[str, Any]]:
    """`req` through function_app's `function` as Azure calls it: status and JSON body."""
    status, body, _ = await functions.http(function, req)
    return status, functions.json_body(body)
