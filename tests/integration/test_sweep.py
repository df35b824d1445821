"""The sweeper on real components: cloud instances on the azure-servicebus SDK talking to the
local broker, the audit and agents tables in Azurite, and a real relay (agent, pipeline,
journal) answering over the SDK on the in-memory directory (no DC is needed to answer).

An instance that dies with a request in flight leaves the relay's outcome on its reply session;
another instance's sweep adopts that session and the audit record ends with the relay's verified
outcome. A live instance's session is not adopted, and its caller still gets the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.azurite import Azurite
from devstack.servicebus import LocalServiceBus, writeback_queues
from tests.unit.cloud_stack import (
    CLOUD_KEY,
    DOMAIN,
    ENC_KEY,
    RELAY,
    SIG_KEY,
    DictSecrets,
    relay_agent,
)
from writeback.cloud.agents import AgentRecord, TableAgentRegistry
from writeback.cloud.audit import AuditRecord, TableAuditTrail
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, relay_keys_secret
from writeback.cloud.service import ServiceSettings, WritebackService
from writeback.cloud.submissions import Submission, parse
from writeback.cloud.sweep import SweepSummary, sweep
from writeback.protocol import Operation
from writeback.routing import Routes
from writeback.testing import FakeDirectory
from writeback.transport.servicebus import ServiceBusCloud, ServiceBusRelay
from writeback.transport.settings import ServiceBusSettings

pytestmark = pytest.mark.timeout(120)
PASSWORD = "Sweep-Integration-Pa55word!"


@dataclass(frozen=True)
class Caller:
    kind: str = "api-key"
    identity: str = "api-key:sweep-test"


@dataclass
class World:
    """The shared parts of the cloud (tables, keys, the bus) and the relay's directory."""

    bus: ServiceBusSettings
    audit: TableAuditTrail
    agents: TableAgentRegistry
    keys: CloudKeys
    directory: FakeDirectory
    tmp: Path

    def instance(self, wait: float) -> WritebackService:
        """A cloud instance of its own (its own reply session) on the shared parts."""
        return WritebackService(
            routes=Routes.build([DOMAIN], {}),
            transport=ServiceBusCloud(self.bus, None),
            keys=self.keys,
            audit=self.audit,
            agents=self.agents,
            settings=ServiceSettings(
                wait_seconds=wait, lifetime_seconds=60, heartbeat_interval=60, poll_wait_seconds=1
            ),
        )

    @contextlib.asynccontextmanager
    async def relay(self) -> AsyncIterator[None]:
        """A relay serving the domain's queue over the SDK while the block runs."""
        transport = ServiceBusRelay(self.bus, None, DOMAIN)
        stop = asyncio.Event()
        task = asyncio.create_task(relay_agent(transport, self.directory, self.tmp).run(stop))
        try:
            yield
        finally:
            stop.set()
            await task


@pytest.fixture(scope="module")
def bus() -> Iterator[LocalServiceBus]:
    with LocalServiceBus(writeback_queues([DOMAIN])) as local:
        yield local


@pytest.fixture
async def world(bus: LocalServiceBus, azurite: Azurite, tmp_path: Path) -> AsyncIterator[World]:
    suffix = uuid.uuid4().hex[:12]
    audit = TableAuditTrail.from_connection_string(azurite.connection_string, f"Audit{suffix}")
    agents = TableAgentRegistry.from_connection_string(azurite.connection_string, f"Agents{suffix}")
    secrets = DictSecrets(
        {
            SIGNING_KEY_SECRET: json.dumps(CLOUD_KEY.as_dict(private=True)),
            relay_keys_secret(DOMAIN): json.dumps(
                {"keys": [k.as_dict(private=False) for k in (ENC_KEY, SIG_KEY)]}
            ),
        }
    )
    now = time.time()
    # The relay's heartbeat, as the heartbeat trigger would have recorded it.
    await agents.record(AgentRecord(DOMAIN, RELAY, "test", now, now, {}, None, None))
    yield World(
        ServiceBusSettings(connection_string=bus.connection_string),
        audit,
        agents,
        CloudKeys(secrets),
        FakeDirectory(),
        tmp_path,
    )
    await audit.close()
    await agents.close()


def reset() -> Submission:
    body = {"user": f"u{uuid.uuid4().hex[:10]}@{DOMAIN}", "newPassword": PASSWORD}
    return parse(Operation.RESET, {**body, "initiator": "admin", "requestId": str(uuid.uuid4())})


async def stored(world: World, request_id: str) -> AuditRecord:
    record = await world.audit.get(request_id)
    assert record is not None
    return record


async def test_a_dead_instances_outcome_is_adopted_and_recorded(world: World) -> None:
    """The instance sends a reset and dies before the relay answers on its reply session; a
    second instance's sweep adopts the session and the audit record ends `applied`, with the
    relay that verified-signed it, after AD was written once."""
    dead, heir = world.instance(wait=1.0), world.instance(wait=1.0)
    try:
        answer = await dead.submit(reset(), Caller())
        assert answer.state == "pending"
        session = dead.transport.reply_session
        assert (await stored(world, answer.request_id)).reply_session == session
        await dead.transport.close()
        summaries: list[SweepSummary] = []
        async with world.relay():
            deadline = time.monotonic() + 60
            while (await stored(world, answer.request_id)).status == "pending":
                assert time.monotonic() < deadline, f"still pending after {summaries}"
                summaries.append(await sweep(heir))
    finally:
        await heir.transport.close()
    record = await stored(world, answer.request_id)
    assert (record.status, record.reason, record.relay) == ("applied", "applied", RELAY)
    assert sum(summary.moved for summary in summaries) == 1
    assert all(summary.adopted == (session,) for summary in summaries)
    assert len(world.directory.applied) == 1


async def test_a_live_instances_session_is_left_to_it(world: World) -> None:
    """A sweep running while a live instance's caller still waits finds the session held and
    takes nothing from it; once the relay answers, that caller gets `applied`."""
    live, sweeper = world.instance(wait=30.0), world.instance(wait=0.2)
    try:
        await live.transport.start()
        submission = reset()
        waiting = asyncio.create_task(live.submit(submission, Caller()))  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while (summary := await sweep(sweeper)).pending == 0:
            assert time.monotonic() < deadline, "the request was never pending"
            assert not waiting.done(), waiting
        assert summary == SweepSummary(pending=1, held=1)
        async with world.relay():
            answer = await waiting
    finally:
        await sweeper.transport.close()
        await live.transport.close()
    assert (answer.state, answer.status) == ("completed", "applied")
    assert (await stored(world, answer.request_id)).status == "applied"
