"""Request/reply through the transport: round-trip latency and throughput.

Ours is the Service Bus transport (the unmodified azure-servicebus SDK, async, AMQP) against the
local broker on loopback. The baseline, in the same process, is the in-process transport on the
same queue model without AMQP, so the ratio is what the SDK and the wire add. A round trip is:
the cloud sends a request, a relay receives it, answers on the request's session and completes
it, and the cloud's session receiver gets the outcome. Run with `python -m bench.transport`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from devstack.servicebus import LocalServiceBus, writeback_queues
from writeback.transport import (
    CloudTransport,
    RelayTransport,
)
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig
from writeback.transport.servicebus import ServiceBusCloud, ServiceBusRelay
from writeback.transport.settings import ServiceBusSettings

DOMAIN = "corp.example.test"


def queues() -> list[QueueConfig]:
    return writeback_queues([DOMAIN])


async def relay_loop(relay: RelayTransport, stop: asyncio.Event) -> None:
    """Answer every request as fast as it comes."""
    while not stop.is_set():
        for delivery in await relay.receive(32, 0.2):
            await relay.send_outcome(delivery.message_id, "outcome")
            await relay.complete(delivery)


async def round_trip(cloud: CloudTransport) -> float:
    request_id = f"bench-{uuid.uuid4()}"
    started = time.perf_counter()
    waiter = asyncio.create_task(cloud.wait_for_outcome(request_id, time.time() + 30))
    await cloud.send_request(DOMAIN, request_id, "request", time.time() + 60)
    if await waiter != "outcome":
        raise SystemExit(f"no outcome for {request_id}")
    return (time.perf_counter() - started) * 1000


async def measure(
    cloud: CloudTransport, relay: RelayTransport, rounds: int, concurrency: int
) -> tuple[float, float, float]:
    stop = asyncio.Event()
    answering = asyncio.create_task(relay_loop(relay, stop))
    await round_trip(cloud)  # warm up: connections, links, sessions
    sequential = [await round_trip(cloud) for _ in range(rounds)]
    started = time.perf_counter()
    total = rounds * concurrency
    for _ in range(rounds):
        await asyncio.gather(*(round_trip(cloud) for _ in range(concurrency)))
    throughput = total / (time.perf_counter() - started)
    stop.set()
    await answering
    await cloud.close()
    await relay.close()
    ordered = sorted(sequential)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], throughput


async def main_async(rounds: int, concurrency: int) -> None:
    broker = MemoryBroker(queues())
    baseline = await measure(
        InProcessCloud(broker), InProcessRelay(broker, DOMAIN), rounds, concurrency
    )
    with LocalServiceBus(queues()) as bus:
        settings = ServiceBusSettings(connection_string=bus.connection_string)
        ours = await measure(
            ServiceBusCloud(settings, None),
            ServiceBusRelay(settings, None, DOMAIN),
            rounds,
            concurrency,
        )
    print(f"{'transport':<28}{'p50 ms':>9}{'p95 ms':>9}{'round trips/s':>15}")
    for name, (p50, p95, rate) in (
        ("in-process (baseline)", baseline),
        ("SDK over AMQP, local broker", ours),
    ):
        print(f"{name:<28}{p50:>9.1f}{p95:>9.1f}{rate:>15.1f}")
    print(
        f"ratio p50 {ours[0] / baseline[0]:.1f}x; throughput at concurrency {concurrency}: "
        f"{ours[2] / baseline[2]:.2f}x of the baseline ({rounds} rounds)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main_async(args.rounds, args.concurrency))


if __name__ == "__main__":
    main()
