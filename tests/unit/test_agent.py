"""The relay's loop: parallel work, heartbeats, backoff when Service Bus is down, clean stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, KeySet, RSAKey

from writeback import sealing
from writeback.errors import TransportUnavailable
from writeback.protocol import Initiator, Operation, Reason
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay.agent import Agent
from writeback.relay.config import RelaySettings
from writeback.relay.journal import Journal
from writeback.relay.pipeline import Pipeline, RelayKeys
from writeback.testing import FakeDirectory
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, Delivery, requests_queue
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig

DOMAIN = "corp.example.test"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "relay": RSAKey.generate_key(3072, parameters={"kid": "relay-1.enc.a", "use": "enc"}),
        "relay_sig": ECKey.generate_key("P-256", parameters={"kid": "relay-1.sig.a", "use": "sig"}),
        "cloud": ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.a", "use": "sig"}),
    }


def public(*keys: Any) -> KeySet:
    return KeySet([type(k).import_key(k.as_dict(private=False)) for k in keys])


class FlakyRelay(InProcessRelay):
    """The in-process transport, failing its first `failures` receives like a broken network."""

    def __init__(self, broker: MemoryBroker, failures: int) -> None:
        super().__init__(broker, DOMAIN)
        self.failures = failures
        self.receive_calls: list[float] = []

    async def receive(self, max_messages: int, max_wait: float) -> list[Delivery]:
        self.receive_calls.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            raise TransportUnavailable("receive: connection refused")
        return await super().receive(max_messages, max_wait)


def build(
    keys: dict[str, Any],
    tmp_path: Path,
    *,
    failures: int = 0,
    delay: float = 0.0,
    grace: float = 5.0,
) -> tuple[Agent, InProcessCloud, FlakyRelay, FakeDirectory, Journal]:
    broker = MemoryBroker(
        [
            QueueConfig(requests_queue(DOMAIN), lock_duration=5, duplicate_detection_window=600),
            QueueConfig(OUTCOMES_QUEUE, requires_session=True, default_ttl=300),
            QueueConfig(HEARTBEATS_QUEUE, default_ttl=300),
        ]
    )
    relay = FlakyRelay(broker, failures)
    directory = FakeDirectory(delay=delay)
    for name in ["alice", *(f"user{n}" for n in range(8))]:
        directory.add(f"{name}@{DOMAIN}")
    journal = Journal(tmp_path / "journal.sqlite3")
    settings = RelaySettings(
        id="relay-1",
        domain=DOMAIN,
        keys=tmp_path,
        journal=tmp_path,
        cloud_keys=tmp_path,
        concurrency=4,
        heartbeat_interval=0.5,
        shutdown_grace=grace,
        receive_wait=0.2,
    )
    pipeline = Pipeline(
        relay_id="relay-1",
        domain=DOMAIN,
        directory=directory,
        transport=relay,
        journal=journal,
        keys=RelayKeys(public(keys["cloud"]), KeySet([keys["relay"]]), keys["relay_sig"]),
    )
    agent = Agent(settings, pipeline, relay, directory=directory, signing_key=keys["relay_sig"])
    return agent, InProcessCloud(broker), relay, directory, journal


async def send(cloud: InProcessCloud, keys: dict[str, Any], request_id: str, user: str) -> None:
    now = int(time.time())
    message = RequestMessage(
        id=request_id,
        domain=DOMAIN,
        operation=Operation.RESET,
        user=user,
        issued_at=now,
        expires_at=now + 60,
        initiator=Initiator.ADMIN,
        reply_session=cloud.reply_session,
    )
    token = sealing.seal_request(
        message, Secrets("Agent-Pa55word!"), public(keys["relay"]), keys["cloud"]
    )
    await cloud.send_request(DOMAIN, request_id, token, now + 60)


class TestServing:
    async def test_serves_requests_in_parallel(self, keys: dict[str, Any], tmp_path: Path) -> None:
        """Eight requests for eight users are all applied, faster than one at a time would be."""
        agent, cloud, _, directory, journal = build(keys, tmp_path, delay=0.3)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        ids = [f"req-{n}" for n in range(8)]
        started = time.monotonic()
        for n, request_id in enumerate(ids):
            await send(cloud, keys, request_id, f"user{n}@{DOMAIN}")
        outcomes = await asyncio.gather(*(cloud.wait_for_outcome(i, time.time() + 20) for i in ids))
        elapsed = time.monotonic() - started
        stop.set()
        await running
        journal.close()
        verified = [sealing.verify_outcome(o, public(keys["relay_sig"])) for o in outcomes]
        assert {v.reason for v in verified} == {Reason.APPLIED}
        assert len(directory.applied) == 8
        assert elapsed < 8 * 0.3  # concurrency 4: about two rounds of 0.3 s, not eight

    async def test_heartbeats_are_signed_and_describe_the_directory(
        self, keys: dict[str, Any], tmp_path: Path
    ) -> None:
        """Heartbeats go out on their interval with the DC, the domain policy and the domain's
        NetBIOS name and SID."""
        agent, _, relay, _, journal = build(keys, tmp_path)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 10
        while len(relay.broker.peek(HEARTBEATS_QUEUE, 10)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await running
        journal.close()
        beats = [
            sealing.verify_heartbeat(m.body.decode(), public(keys["relay_sig"]))
            for m in relay.broker.peek(HEARTBEATS_QUEUE, 10)
        ]
        assert len(beats) >= 2
        assert beats[0].capabilities["dc"] == "dc1.example.test"
        assert beats[0].policy is not None
        assert beats[0].policy["minLength"] == 8
        assert (beats[0].netbios, beats[0].domain_sid) == (
            "CORP",
            "S-1-5-21-1004336348-1177238915-682003330",
        )

    async def test_the_journal_is_pruned_with_the_heartbeats(
        self, keys: dict[str, Any], tmp_path: Path
    ) -> None:
        """Each heartbeat round also prunes the journal, so it does not grow forever."""
        agent, _, _, _, journal = build(keys, tmp_path)
        prunes: list[int] = []
        pipeline = agent._pipeline
        original = pipeline.prune

        def counted() -> int:
            prunes.append(1)
            return original()

        pipeline.prune = counted  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 10
        while len(prunes) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await running
        journal.close()
        assert len(prunes) >= 2


class TestOutages:
    async def test_backs_off_while_service_bus_is_down(
        self, keys: dict[str, Any], tmp_path: Path
    ) -> None:
        """Failed receives are retried with growing pauses (no busy loop), then serving resumes."""
        agent, cloud, relay, directory, journal = build(keys, tmp_path, failures=3)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await send(cloud, keys, "req-1", f"alice@{DOMAIN}")
        outcome = await cloud.wait_for_outcome("req-1", time.time() + 30)
        stop.set()
        await running
        journal.close()
        assert outcome is not None
        gaps = [b - a for a, b in zip(relay.receive_calls, relay.receive_calls[1:4], strict=False)]
        assert gaps[0] >= 0.7  # about 1 s, with jitter
        assert gaps[1] >= 1.5  # about 2 s: the pause doubles
        assert "Service Bus" in (agent.last_error or "")
        assert len(directory.applied) == 1


class TestStopping:
    async def test_in_flight_work_finishes_within_the_grace(
        self, keys: dict[str, Any], tmp_path: Path
    ) -> None:
        """On stop, a request being applied still completes and is answered."""
        agent, cloud, _, directory, journal = build(keys, tmp_path, delay=1.0)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await send(cloud, keys, "req-1", f"alice@{DOMAIN}")
        deadline = time.monotonic() + 10
        while not directory._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await running
        outcome = await cloud.wait_for_outcome("req-1", time.time() + 5)
        entry = journal.get("req-1")
        journal.close()
        assert outcome is not None
        assert entry is not None
        assert entry.final
