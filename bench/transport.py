"""Request/reply through the transport: round-trip latency and throughput, and a backlog drain.

Ours is the Service Bus transport (the unmodified azure-servicebus SDK, async, AMQP) against the
local broker on loopback. The baseline, in the same process, is the in-process transport on the
same queue model without AMQP, so the ratio is what the SDK and the wire add. A round trip is:
the cloud sends a request, a relay receives it, answers on the session the request names (the
cloud instance's reply session) and completes it, and the cloud's one long-lived reply-session
receiver hands the outcome to the waiter. The relay side behaves like the agent: it asks for
the next request as soon as it has handed one on. The backlog drain times a relay emptying a
queue of requests that were waiting before it started, asking one at a time (as the relay does)
and, for comparison, in SDK batches of 16 (which wait a further 0.2 s after the first message).
Run with `python -m bench.transport`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from azure.servicebus.aio import ServiceBusClient

from devstack.servicebus import LocalServiceBus, writeback_queues
from writeback.transport import CloudTransport, Delivery, RelayTransport, requests_queue
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig
from writeback.transport.servicebus import ServiceBusCloud, ServiceBusRelay
from writeback.transport.settings import ServiceBusSettings

DOMAIN = "corp.example.test"


def queues() -> list[QueueConfig]:
    return writeback_queues([DOMAIN])


async def relay_loop(relay: RelayTransport, stop: asyncio.Event) -> None:
    """Answer every request as fast as it comes, handing each to its own task like the agent."""
    answering: set[asyncio.Task[None]] = set()

    async def answer(delivery: Delivery) -> None:
        # The body stands in for the signed request: it names the session to answer on.
        await relay.send_outcome(delivery.message_id, "outcome", delivery.body)
        await relay.complete(delivery)

    while not stop.is_set():
        for delivery in await relay.receive(32, 0.2):
            task = asyncio.create_task(answer(delivery))
            answering.add(task)
            task.add_done_callback(answering.discard)
    await asyncio.gather(*answering)


async def round_trip(cloud: CloudTransport) -> float:
    request_id = f"bench-{uuid.uuid4()}"
    started = time.perf_counter()
    await cloud.send_request(DOMAIN, request_id, cloud.reply_session, time.time() + 60)
    if await cloud.wait_for_outcome(request_id, time.time() + 30) != "outcome":
        raise SystemExit(f"no outcome for {request_id}")
    return (time.perf_counter() - started) * 1000


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


async def measure(
    cloud: CloudTransport, relay: RelayTransport, rounds: int, concurrency: int
) -> tuple[float, float, float, float, float]:
    """(p50, p95 one at a time; p50, p95 and round trips/s at `concurrency`)."""
    stop = asyncio.Event()
    answering = asyncio.create_task(relay_loop(relay, stop))
    await cloud.start([DOMAIN])
    await round_trip(cloud)  # warm up: every link open
    sequential = [await round_trip(cloud) for _ in range(rounds * 5)]
    loaded: list[float] = []
    started = time.perf_counter()
    for _ in range(rounds):
        loaded += await asyncio.gather(*(round_trip(cloud) for _ in range(concurrency)))
    throughput = len(loaded) / (time.perf_counter() - started)
    stop.set()
    await answering
    await cloud.close()
    await relay.close()
    return (*percentiles(sequential), *percentiles(loaded), throughput)


async def drain_one_at_a_time(connection_string: str, count: int) -> float:
    """Seconds for our relay transport to take and complete `count` waiting requests."""
    settings = ServiceBusSettings(connection_string=connection_string)
    relay = ServiceBusRelay(settings, None, DOMAIN)
    await relay.receive(1, 0.01)  # open the link (on the empty queue) before the backlog
    await fill(settings, count)
    started, done = time.perf_counter(), 0
    while done < count:
        for delivery in await relay.receive(16, 1.0):
            await relay.complete(delivery)
            done += 1
    elapsed = time.perf_counter() - started
    await relay.close()
    return elapsed


async def drain_in_batches(connection_string: str, count: int) -> float:
    """The same with the SDK asked for 16 at a time (what the relay did before)."""
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        receiver = client.get_queue_receiver(requests_queue(DOMAIN), prefetch_count=0)
        async with receiver:
            await fill(ServiceBusSettings(connection_string=connection_string), count)
            started, done = time.perf_counter(), 0
            while done < count:
                for message in await receiver.receive_messages(
                    max_message_count=16, max_wait_time=1.0
                ):
                    await receiver.complete_message(message)
                    done += 1
            return time.perf_counter() - started


async def fill(settings: ServiceBusSettings, count: int) -> None:
    """Put `count` requests on the domain's queue (nobody waits for their outcomes)."""
    cloud = ServiceBusCloud(settings, None)
    for _ in range(count):
        await cloud.send_request(DOMAIN, f"backlog-{uuid.uuid4()}", "x", time.time() + 600)
    await cloud.close()


async def main_async(rounds: int, concurrency: int, backlog: int) -> None:
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
        one_at_a_time = await drain_one_at_a_time(bus.connection_string, backlog)
        batched = await drain_in_batches(bus.connection_string, backlog)
    print(
        f"{'transport':<28}{'p50 ms':>8}{'p95 ms':>8}"
        f"{f'p50@{concurrency}':>9}{f'p95@{concurrency}':>9}{'round trips/s':>15}"
    )
    for name, (p50, p95, p50_loaded, p95_loaded, rate) in (
        ("in-process (baseline)", baseline),
        ("SDK over AMQP, local broker", ours),
    ):
        print(f"{name:<28}{p50:>8.1f}{p95:>8.1f}{p50_loaded:>9.1f}{p95_loaded:>9.1f}{rate:>15.1f}")
    print(
        f"ratio p50 {ours[0] / baseline[0]:.1f}x; throughput at concurrency {concurrency}: "
        f"{ours[4] / baseline[4]:.2f}x of the baseline ({rounds} rounds)"
    )
    print(
        f"backlog of {backlog}: drained in {one_at_a_time:.2f} s one at a time "
        f"({backlog / one_at_a_time:.0f}/s), {batched:.2f} s in SDK batches of 16 "
        f"({backlog / batched:.0f}/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backlog", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main_async(args.rounds, args.concurrency, args.backlog))


if __name__ == "__main__":
    main()
