"""Heartbeats reaching the cloud: recorded under the domain whose relay keys verify them, even
when another domain's key secret cannot be read."""

from __future__ import annotations

import json
import time

import pytest

from tests.unit.cloud_stack import CLOUD_KEY, DOMAIN, ENC_KEY, RELAY, SIG_KEY, DictSecrets
from writeback import sealing
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, relay_keys_secret
from writeback.cloud.service import WritebackService
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
        recorded = await svc.record_heartbeat(beat())
        assert recorded is not None
        assert [a.relay_id for a in await agents.list(DOMAIN)] == [RELAY]

    async def test_an_unverified_heartbeat_comes_back_while_keys_are_unreadable(self) -> None:
        """A heartbeat no readable keys verify raises (so the trigger retries it) when some
        domain's keys could not be read, instead of being dropped as forged."""
        svc, agents = service({SIGNING_KEY_SECRET: json.dumps(CLOUD_KEY.as_dict(private=True))})
        with pytest.raises(SecretsUnavailable):
            await svc.record_heartbeat(beat())
        assert await agents.list(None) == []
