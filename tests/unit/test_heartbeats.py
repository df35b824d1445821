"""Heartbeats reaching the cloud: recorded under the domain whose relay keys verify them, even
when another domain's key secret cannot be read."""

from __future__ import annotations

import json
import time

import pytest

from tests.unit.cloud_stack import CLOUD_KEY, DOMAIN, ENC_KEY, RELAY, SIG_KEY, DictSecrets
from writeback import sealing
from writeback.cloud.agents import AgentRecord
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, relay_keys_secret
from writeback.cloud.service import ServiceSettings, WritebackService
from writeback.errors import SecretsUnavailable
from writeback.protocol.messages import Heartbeat
from writeback.routing import Routes
from writeback.testing import MemoryAgentRegistry, MemoryAuditTrail
from writeback.transport.inprocess import InProcessCloud
from writeback.transport.memory import MemoryBroker

BROKEN = "aaa.example.test"  # sorts before DOMAIN


def service(values: dict[str, str]) -> tuple[WritebackService, MemoryAgentRegistry]:
    agents = MemoryAgentRegistry()
    return (
        WritebackService(
            routes=Routes.build([BROKEN, DOMAIN]),
            transport=InProcessCloud(MemoryBroker([])),
            keys=CloudKeys(DictSecrets(values)),
            audit=MemoryAuditTrail(),
            agents=agents,
        ),
        agents,
    )


def beat(domain: str = DOMAIN) -> str:
    message = Heartbeat(
        relay=RELAY, domain=domain, version="test", sent_at=int(time.time()),
        capabilities={}, policy=None, last_error=None,
    )  # fmt: skip
    return sealing.sign_heartbeat(message, SIG_KEY)


class TestHeartbeats:
    async def test_a_broken_domain_does_not_silence_the_others(self) -> None:
        """With one domain's relay JWKS missing, another domain's heartbeat is still recorded."""
        jwks = json.dumps({"keys": [k.as_dict(private=False) for k in (ENC_KEY, SIG_KEY)]})
        svc, agents = service(
            {SIGNING_KEY_SECRET: json.dumps(CLOUD_KEY.as_dict(private=True)),
             relay_keys_secret(DOMAIN): jwks}
        )  # fmt: skip
        recorded = await svc.relays.record_heartbeat(beat())
        assert recorded is not None
        assert [a.relay_id for a in await agents.list(DOMAIN)] == [RELAY]

    async def test_an_unverified_heartbeat_comes_back_while_keys_are_unreadable(self) -> None:
        """A heartbeat no readable keys verify raises (so the trigger retries it) when some
        domain's keys could not be read, instead of being dropped as forged."""
        svc, agents = service({SIGNING_KEY_SECRET: json.dumps(CLOUD_KEY.as_dict(private=True))})
        with pytest.raises(SecretsUnavailable):
            await svc.relays.record_heartbeat(beat())
        assert await agents.list(None) == []


class CountingRegistry(MemoryAgentRegistry):
    """Counts reads of the agents table."""

    reads = 0

    async def list(self, domain: str | None = None) -> list[AgentRecord]:
        self.reads += 1
        return await super().list(domain)


class TestAliveness:
    async def test_a_heartbeat_is_read_once_per_freshness_period(self) -> None:
        """A domain with a fresh heartbeat is alive without a table read on every request, and
        offline as soon as that heartbeat is three intervals old."""
        now = [1_800_000_000.0]
        agents = CountingRegistry()
        await agents.record(AgentRecord(DOMAIN, RELAY, "t", now[0], now[0], {}, None, None))
        svc = WritebackService(
            routes=Routes.build([DOMAIN]),
            transport=InProcessCloud(MemoryBroker([])),
            keys=CloudKeys(DictSecrets({})),
            audit=MemoryAuditTrail(),
            agents=agents,
            settings=ServiceSettings(heartbeat_interval=60),
            clock=lambda: now[0],
        )
        assert await svc.relays.alive(DOMAIN)
        now[0] += 100
        assert await svc.relays.alive(DOMAIN)
        assert agents.reads == 1
        now[0] += 81  # 181 s: more than three intervals since the heartbeat
        assert not await svc.relays.alive(DOMAIN)
        assert agents.reads == 2
