"""Scale in simulation: how writeback throughput grows with domains and relays.

Everything real but the network and the DCs: one cloud instance (the real `WritebackService`,
sealing to every relay of the domain, signing, the audit and relay registries in memory) and
`relays` real relays per domain (agent, pipeline, journal on disk with its fsyncs, opening and
verifying every request, signing every outcome), talking through the in-process transport on the
in-memory queue model; each domain's DC is the in-memory directory, which sleeps `dc_ms` per
write the way a DC takes its time (one write per user at a time, any number of users at once).
Callers send admin resets to users spread over all domains, `callers` at a time.

What it shows: the ideal throughput is `domains x relays x concurrency / dc_ms` (each relay
works `concurrency` requests at a time and each waits on its DC), capped by the callers; the
measured throughput against it says where this process's CPU, not the DCs, becomes the limit,
and the CPU milliseconds per writeback (cloud and relay together, in one process) say what a
core of each side can carry. What it does not show: Service Bus's own limits (credits,
throttling, latency) and the Functions host's scale-out; docs/performance.md puts those on paper.

Run with `python -m bench.scale` (a few minutes on two cores); `--quick` runs a small matrix.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import ECKey, KeySet, RSAKey

from writeback.cloud.auth.callers import Caller
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, relay_keys_secret
from writeback.cloud.service import ServiceSettings, WritebackService
from writeback.cloud.submissions import parse
from writeback.errors import SecretsUnavailable
from writeback.protocol import Operation
from writeback.relay.agent import Agent
from writeback.relay.config import RelaySettings
from writeback.relay.journal import Journal
from writeback.relay.pipeline import Pipeline, RelayKeys
from writeback.routing import Routes
from writeback.testing import FakeDirectory, MemoryAgentRegistry, MemoryAuditTrail
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig

RELAY_CONCURRENCY = 4  # the relay's default `concurrency`
CALLER = Caller(
    kind="api-key", identity="api-key:bench", roles=frozenset({"Writeback.Reset.Admin"})
)


class Secrets:
    """The SecretSource port over a dict."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    async def get(self, name: str) -> str:
        if name not in self.values:
            raise SecretsUnavailable(name, "no such secret", missing=True)
        return self.values[name]

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Result:
    domains: int
    relays: int
    callers: int
    dc_ms: float
    writebacks: int
    seconds: float
    latencies_ms: list[float]
    cpu_ms_per_writeback: float

    @property
    def throughput(self) -> float:
        return self.writebacks / self.seconds

    @property
    def ideal(self) -> float:
        relay_bound = self.domains * self.relays * RELAY_CONCURRENCY * 1000 / self.dc_ms
        return min(relay_bound, self.callers * 1000 / self.dc_ms)


class Material:
    """Keys generated once (RSA-3072 takes its time), each relay given a kid of its own."""

    def __init__(self) -> None:
        self.cloud = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.a", "use": "sig"})
        self._enc = [RSAKey.generate_key(3072, private=True) for _ in range(2)]
        self._sig = [ECKey.generate_key("P-256", private=True) for _ in range(2)]

    def relay(self, index: int, relay_id: str) -> tuple[RSAKey, ECKey]:
        enc = self._enc[index % 2].as_dict(private=True) | {
            "kid": f"{relay_id}.enc.a",
            "use": "enc",
        }
        sig = self._sig[index % 2].as_dict(private=True) | {
            "kid": f"{relay_id}.sig.a",
            "use": "sig",
        }
        return RSAKey.import_key(enc), ECKey.import_key(sig)


async def simulate(
    material: Material, *, domains: int, relays: int, callers: int, writes: int, dc_ms: float
) -> Result:
    names = [f"d{n:03d}.example.test" for n in range(domains)]
    broker = MemoryBroker(
        [
            *(QueueConfig(requests_queue(d), lock_duration=30) for d in names),
            QueueConfig(OUTCOMES_QUEUE, requires_session=True, default_ttl=300),
            QueueConfig(HEARTBEATS_QUEUE, default_ttl=300),
        ]
    )
    secrets = {SIGNING_KEY_SECRET: json.dumps(material.cloud.as_dict(private=True))}
    agents: list[Agent] = []
    with tempfile.TemporaryDirectory(prefix="writeback-scale-") as tmp:
        for d, domain in enumerate(names):
            directory = FakeDirectory(delay=dc_ms / 1000)
            public: list[object] = []
            for r in range(relays):
                relay_id = f"relay-{d}-{r}"
                enc, sig = material.relay(r, relay_id)
                public += [enc.as_dict(private=False), sig.as_dict(private=False)]
                keys = (enc, sig)
                agents.append(
                    relay(broker, relay_id, domain, directory, material.cloud, keys, Path(tmp))
                )
            secrets[relay_keys_secret(domain)] = json.dumps({"keys": public})
        service = WritebackService(
            routes=Routes.build(names, {}),
            transport=InProcessCloud(broker),
            keys=CloudKeys(Secrets(secrets)),
            audit=MemoryAuditTrail(),
            agents=MemoryAgentRegistry(),
            settings=ServiceSettings(wait_seconds=30, lifetime_seconds=120),
        )
        stop = asyncio.Event()
        running = [asyncio.create_task(agent.run(stop)) for agent in agents]
        try:
            await heartbeats(service, broker, len(agents))
            return await load(
                service, names, relays=relays, callers=callers, writes=writes, dc_ms=dc_ms
            )
        finally:
            stop.set()
            await asyncio.gather(*running)


def relay(  # noqa: PLR0917 - one relay's parts
    broker: MemoryBroker,
    relay_id: str,
    domain: str,
    directory: FakeDirectory,
    cloud: ECKey,
    keys: tuple[RSAKey, ECKey],
    tmp: Path,
) -> Agent:
    """A real relay of `domain` on `directory`, its journal in `tmp`."""
    enc, sig = keys
    transport = InProcessRelay(broker, domain)
    settings = RelaySettings(
        id=relay_id,
        domain=domain,
        keys=tmp,
        journal=tmp,
        cloud_keys=tmp,
        concurrency=RELAY_CONCURRENCY,
        heartbeat_interval=60,
        shutdown_grace=5,
        receive_wait=0.2,
    )
    cloud_public = ECKey.import_key(cloud.as_dict(private=False))
    pipeline = Pipeline(
        relay_id=relay_id,
        domain=domain,
        directory=directory,
        transport=transport,
        journal=Journal(tmp / f"{relay_id}.sqlite3"),
        keys=RelayKeys(KeySet([cloud_public]), KeySet([enc]), sig),
    )
    return Agent(settings, pipeline, transport, directory=directory, signing_key=sig)


async def heartbeats(service: WritebackService, broker: MemoryBroker, expect: int) -> None:
    """Hand every relay's first heartbeat to the cloud, as its Service Bus trigger would."""
    seen, until = 0, time.monotonic() + 60
    while seen < expect:
        if time.monotonic() > until:
            raise SystemExit(f"only {seen} of {expect} relays sent a heartbeat")
        for stored in broker.receive(HEARTBEATS_QUEUE, 100):
            await service.relays.record_heartbeat(stored.body.decode("utf-8"))
            broker.complete(HEARTBEATS_QUEUE, str(stored.lock_token))
            seen += 1
        await asyncio.sleep(0.01)


async def load(
    service: WritebackService,
    names: list[str],
    *,
    relays: int,
    callers: int,
    writes: int,
    dc_ms: float,
) -> Result:
    """`writes` admin resets, `callers` at a time, each to a user of its own, domains in turn."""
    latencies: list[float] = []
    numbers = iter(range(writes))

    async def caller() -> None:
        for number in numbers:
            body = {
                "user": f"user{number}@{names[number % len(names)]}",
                "newPassword": f"Scale-{uuid.uuid4().hex[:12]}!",
                "initiator": "admin",
            }
            started = time.perf_counter()
            answer = await service.submit(parse(Operation.RESET, body), CALLER)
            latencies.append(1000 * (time.perf_counter() - started))
            if answer.reason != "applied":
                raise SystemExit(f"a reset was not applied: {answer.reason}")

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - started
    cpu_ms = 1000 * (time.process_time() - cpu) / writes
    return Result(len(names), relays, callers, dc_ms, writes, seconds, latencies, cpu_ms)


def table(results: list[Result]) -> str:
    rows = [
        "| domains | relays per domain | callers | writebacks/s | ideal/s | of ideal | p50 ms "
        "| p95 ms | CPU ms per writeback |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p50 = statistics.median(r.latencies_ms)
        p95 = statistics.quantiles(r.latencies_ms, n=20)[-1]
        rows.append(
            f"| {r.domains} | {r.relays} | {r.callers} | {r.throughput:.0f} | {r.ideal:.0f} "
            f"| {r.throughput / r.ideal:.0%} | {p50:.0f} | {p95:.0f} "
            f"| {r.cpu_ms_per_writeback:.1f} |"
        )
    return "\n".join(rows)


MATRIX = [(1, 1, 4), (1, 2, 8), (10, 1, 40), (10, 2, 80), (100, 1, 100), (100, 2, 200)]
QUICK = [(1, 1, 4), (10, 2, 40)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dc-ms", type=float, default=23.0, help="a DC's time per write")
    parser.add_argument("--writes", type=int, default=600, help="writebacks per configuration")
    parser.add_argument("--quick", action="store_true", help="a small matrix")
    options = parser.parse_args()
    material = Material()
    results = []
    for domains, relays, callers in QUICK if options.quick else MATRIX:
        # Each relay is a process of its own with its own threads in production; here they share
        # one executor, sized so that no relay waits for a thread another one holds.
        loop_threads = domains * relays * RELAY_CONCURRENCY + 8
        results.append(
            asyncio.run(
                _with_threads(
                    loop_threads,
                    simulate(
                        material,
                        domains=domains,
                        relays=relays,
                        callers=callers,
                        writes=options.writes,
                        dc_ms=options.dc_ms,
                    ),
                )
            )
        )
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(
        f"\nScale in simulation (DC write {options.dc_ms:g} ms, relay concurrency "
        f"{RELAY_CONCURRENCY}, {options.writes} admin resets per row):\n"
    )
    print(table(results))


async def _with_threads(threads: int, run: Coroutine[None, None, Result]) -> Result:
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads)
    )
    return await run


if __name__ == "__main__":
    main()
