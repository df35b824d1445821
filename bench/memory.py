"""The relay's memory over a long run, with requests arriving at a steady rate.

A relay process (agent, pipeline, journal on disk, the Service Bus transport with the unmodified
SDK) serves the local broker, which runs in a process of its own; the in-memory directory stands
in for the DC so that the run is about the relay's own memory, not the DC's pace. This process
sends signed, sealed resets at a steady rate (never queued ahead: each is sent at its moment,
whatever the relay does) and waits for each outcome on its reply session, as a cloud instance
does. Every `--sample` outcomes it reads the relay process's resident set size (VmRSS in /proc).
At the end: the samples, how much the RSS moved after the warm-up, and with `--trace-heap` the
relay's top heap allocations (tracemalloc, which costs memory and time of its own: use it to find
a growth, not to size one).

Run with `python -m bench.memory` (50,000 requests at 100/s: about nine minutes); `--requests`,
`--rate` and `--sample` change the shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import ECKey, KeySet, RSAKey

from devstack.servicebus import writeback_queues
from writeback import sealing
from writeback.errors import WritebackError
from writeback.protocol import Command, Initiator, Operation, Outcome, Reason
from writeback.protocol.accounts import Account
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay.agent import Agent
from writeback.relay.config import RelaySettings
from writeback.relay.journal import Journal
from writeback.relay.pipeline import Pipeline, RelayKeys
from writeback.testing import FakeDirectory
from writeback.transport.servicebus import ServiceBusCloud, ServiceBusRelay
from writeback.transport.settings import ServiceBusSettings

DOMAIN = "corp.example.test"
USERS = 500  # requests cycle over this many users
WARM_UP = 0.2  # the share of the run before the RSS is expected to be flat
HEAP_TOP = 10


@dataclass(frozen=True)
class Keys:
    enc: RSAKey
    sig: ECKey
    cloud: ECKey

    @classmethod
    def generate(cls) -> Keys:
        return cls(
            RSAKey.generate_key(3072, parameters={"kid": "memory.enc.a", "use": "enc"}),
            ECKey.generate_key("P-256", parameters={"kid": "memory.sig.a", "use": "sig"}),
            ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.a", "use": "sig"}),
        )

    def save(self, path: Path) -> None:
        keys: dict[str, RSAKey | ECKey] = {"enc": self.enc, "sig": self.sig, "cloud": self.cloud}
        path.write_text(json.dumps({k: v.as_dict(private=True) for k, v in keys.items()}))
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> Keys:
        raw = json.loads(path.read_text())
        return cls(
            RSAKey.import_key(raw["enc"]),
            ECKey.import_key(raw["sig"]),
            ECKey.import_key(raw["cloud"]),
        )


class ForgetfulDirectory(FakeDirectory):
    """The in-memory directory without its records of every lookup and command (kept for tests'
    assertions; here they would be the stand-in's memory growing, not the relay's: a run that
    kept them grew by about 100 bytes a request, the lookups' names, which tracemalloc showed)."""

    def resolve(self, user: str | Account) -> Account | Outcome:
        found = super().resolve(user)
        self.resolved.clear()
        return found

    def apply(self, command: Command, account: Account | None = None) -> Outcome:
        outcome = super().apply(command, account)
        self.applied.clear()
        return outcome


def public(key: RSAKey | ECKey) -> KeySet:
    return KeySet([type(key).import_key(key.as_dict(private=False))])


# -- the relay process ---------------------------------------------------------------------------
async def serve(state: Path, connection_string: str, trace_heap: bool) -> None:
    """The relay: serve until SIGTERM; then print the heap's top allocations if traced."""
    if trace_heap:
        tracemalloc.start()
    keys = Keys.load(state / "keys.json")
    directory = ForgetfulDirectory()
    transport = ServiceBusRelay(
        ServiceBusSettings(connection_string=connection_string), None, DOMAIN
    )
    settings = RelaySettings(
        id="memory",
        domain=DOMAIN,
        keys=state,
        journal=state,
        cloud_keys=state,
        concurrency=4,
        heartbeat_interval=60,
        shutdown_grace=5,
        receive_wait=1.0,
    )
    pipeline = Pipeline(
        relay_id="memory",
        domain=DOMAIN,
        directory=directory,
        transport=transport,
        journal=Journal(state / "journal.sqlite3"),
        keys=RelayKeys(public(keys.cloud), KeySet([keys.enc]), keys.sig),
    )
    agent = Agent(settings, pipeline, transport, directory=directory, signing_key=keys.sig)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await agent.run(stop)
    if trace_heap:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        for stat in snapshot.statistics("lineno")[:HEAP_TOP]:
            print(
                f"heap: {stat.size / 1024:8.1f} KiB in {stat.count:6d} blocks at {stat.traceback}"
            )


# -- the sending side ----------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def drive(
    cloud: ServiceBusCloud, keys: Keys, pid: int, options: argparse.Namespace
) -> list[float]:
    """Send `requests` resets at `rate`, wait for every outcome; RSS every `sample` outcomes."""
    samples: list[float] = []
    answered = 0
    failures: list[str] = []
    relay_keys = public(keys.sig)

    async def one(number: int) -> None:
        nonlocal answered
        now = int(time.time())
        message = RequestMessage(
            id=f"memory-{number}",
            domain=DOMAIN,
            operation=Operation.RESET,
            user=f"user{number % USERS}@{DOMAIN}",
            issued_at=now,
            expires_at=now + 120,
            initiator=Initiator.ADMIN,
            reply_session=cloud.reply_session,
        )
        token = sealing.seal_request(
            message, Secrets(f"Memory-{number:06d}!aA"), public(keys.enc), keys.cloud
        )
        try:
            await cloud.send_request(DOMAIN, message.id, token, now + 120)
            body = await cloud.wait_for_outcome(message.id, time.time() + 60)
        except WritebackError as exc:  # the sending side's own trouble: count it, go on
            body, problem = None, type(exc).__name__
        else:
            problem = "no outcome"
        outcome = None if body is None else sealing.verify_outcome(body, relay_keys)
        if outcome is None or outcome.reason is not Reason.APPLIED:
            failures.append(f"{message.id} ({outcome.reason if outcome else problem})")
        answered += 1
        if answered % options.sample == 0:
            samples.append(rss_mb(pid))
            print(f"  {answered:6d} answered: relay RSS {samples[-1]:.1f} MB", flush=True)

    started = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    for number in range(options.requests):
        await asyncio.sleep(max(0.0, started + number / options.rate - time.monotonic()))
        task = asyncio.create_task(one(number))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    if failures:
        raise SystemExit(f"{len(failures)} requests not applied, the first {failures[0]}")
    return samples


def report(samples: list[float], options: argparse.Namespace) -> str:
    warm_up = max(1, int(len(samples) * WARM_UP)) if len(samples) > 1 else 0
    warm = samples[warm_up:]
    moved = max(warm) - min(warm)
    rows = [f"| {options.sample * (i + 1)} | {mb:.1f} |" for i, mb in enumerate(samples)]
    return "\n".join(
        [
            f"Relay memory, {options.requests} resets at {options.rate:g}/s through the local "
            f"broker (RSS every {options.sample} outcomes):",
            "",
            "| outcomes | relay RSS (MB) |",
            "|---|---|",
            *rows,
            "",
            f"After the warm-up (the first {warm_up} samples): {min(warm):.1f} to "
            f"{max(warm):.1f} MB, moved {moved:.1f} MB (flat within 5 MB: "
            f"{'yes' if moved <= 5 else 'no'}); peak {max(samples):.1f} MB (at most 80 MB: "
            f"{'yes' if max(samples) <= 80 else 'no'}).",
        ]
    )


@contextlib.contextmanager
def broker_process(state: Path) -> Iterator[str]:
    """The local broker in a process of its own (`python -m devstack.servicebus`): in this one
    it would share a core with the sender, and lose its sessions' locks when that core is
    saturated. Yields its connection string; stopped on the way out."""
    config = state / "queues.json"
    queues = writeback_queues([DOMAIN], lock_duration=30)
    config.write_text(json.dumps({"queues": [dataclasses.asdict(q) for q in queues]}))
    broker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "devstack.servicebus", "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        connection_string = broker.stdout.readline().strip() if broker.stdout else ""
        if not connection_string.startswith("Endpoint="):
            raise SystemExit("the local broker did not start")
        yield connection_string
    finally:
        broker.terminate()
        broker.communicate(timeout=30)


async def run(options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="writeback-memory-") as tmp:
        state = Path(tmp)
        with broker_process(state) as connection_string:
            await measure(state, connection_string, options)


async def measure(state: Path, connection_string: str, options: argparse.Namespace) -> None:
    keys = Keys.generate()
    keys.save(state / "keys.json")
    command = [sys.executable, "-m", "bench.memory", "--relay", str(state)]
    command += ["--trace-heap"] if options.trace_heap else []
    relay = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        command,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"WRITEBACK_MEMORY_CONNECTION": connection_string},
    )
    if relay.stdout is None or relay.stdout.readline().strip() != "ready":
        raise SystemExit("the relay process did not start")
    cloud = ServiceBusCloud(ServiceBusSettings(connection_string=connection_string), None)
    try:
        await cloud.start([DOMAIN])
        samples = await drive(cloud, keys, relay.pid, options)
    finally:
        await cloud.close()
        relay.terminate()
        heap, _ = relay.communicate(timeout=60)
        if heap.strip():  # also when the run failed: that is when it is wanted most
            print("\nThe relay's top heap allocations at the end:\n" + heap)
    print()
    print(report(samples, options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=100.0, help="requests sent per second")
    parser.add_argument("--sample", type=int, default=1_000, help="outcomes between RSS samples")
    parser.add_argument(
        "--trace-heap", action="store_true", help="list the relay's top heap allocations"
    )
    parser.add_argument("--relay", type=Path, help=argparse.SUPPRESS)  # the relay process's side
    options = parser.parse_args()
    if options.relay is not None:
        asyncio.run(
            serve(options.relay, os.environ["WRITEBACK_MEMORY_CONNECTION"], options.trace_heap)
        )
        return
    asyncio.run(run(options))


if __name__ == "__main__":
    main()
