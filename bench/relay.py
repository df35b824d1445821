"""The relay's throughput and per-request overhead, and its memory over many requests.

Part 1, on the local Samba DC: N password resets through the whole relay pipeline (signature,
expiry, journal, JWE, directory layer, signed outcome, settlement) on the in-process transport,
against the baseline of N raw ldap3 modifies of unicodePwd over one LDAPS connection, in the same
run. Both are sequential at the directory (the relay's directory layer holds one connection).
Part 2, without a DC: M requests through the pipeline, journal and transport with the in-memory
directory, to show what the relay's own memory does over a long run (RSS and Python heap).
Run with `python -m bench.relay` (part 1 starts the local DC if needed, so it needs root).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import ldap3
from joserfc.jwk import ECKey, KeySet, RSAKey

from devstack import seed, stack
from writeback import sealing
from writeback.protocol import Initiator, Operation
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay.cli import load_directory_settings
from writeback.relay.directory import Directory, LdapDirectory
from writeback.relay.journal import Journal
from writeback.relay.ldap import ValidatingTls
from writeback.relay.pipeline import Pipeline, RelayKeys
from writeback.relay.policy import encode_unicode_pwd
from writeback.testing import FakeDirectory
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig


def keys() -> tuple[RSAKey, ECKey, ECKey]:
    return (
        RSAKey.generate_key(3072, parameters={"kid": "bench.enc.a", "use": "enc"}),
        ECKey.generate_key("P-256", parameters={"kid": "bench.sig.a", "use": "sig"}),
        ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.a", "use": "sig"}),
    )


def public(*items: object) -> KeySet:
    return KeySet([type(k).import_key(k.as_dict(private=False)) for k in items])  # type: ignore[attr-defined]


async def through_pipeline(
    directory: Directory, domain: str, users: list[str], password: str, journal_dir: Path
) -> float:
    """Seconds for every user's reset to be handled and answered."""
    enc, sig, cloud_key = keys()
    broker = MemoryBroker(
        [
            QueueConfig(requests_queue(domain), lock_duration=60, duplicate_detection_window=3600),
            QueueConfig(OUTCOMES_QUEUE, requires_session=True, default_ttl=3600),
            QueueConfig(HEARTBEATS_QUEUE),
        ]
    )
    relay = InProcessRelay(broker, domain)
    journal = Journal(journal_dir / "journal.sqlite3", replay_window=3600)
    pipeline = Pipeline(
        relay_id="bench",
        domain=domain,
        directory=directory,
        transport=relay,
        journal=journal,
        keys=RelayKeys(public(cloud_key), KeySet([enc]), sig),
    )
    cloud = InProcessCloud(broker)
    now = int(time.time())
    for number, user in enumerate(users):
        message = RequestMessage(
            id=f"bench-{number}",
            domain=domain,
            operation=Operation.RESET,
            user=user,
            issued_at=now,
            expires_at=now + 600,
            initiator=Initiator.ADMIN,
        )
        token = sealing.seal_request(message, Secrets(password), public(enc), cloud_key)
        await cloud.send_request(domain, message.id, token, now + 600)
    started = time.perf_counter()
    handled = 0
    while handled < len(users):
        for delivery in await relay.receive(16, 1.0):
            await pipeline.handle(delivery)
            handled += 1
    elapsed = time.perf_counter() - started
    journal.close()
    return elapsed


def part_one(rounds: int) -> None:
    running = stack.up()
    settings = load_directory_settings(running.relay_config)
    admin = running.dc.admin_connection()
    domain = running.domain
    users = [
        seed.create_user(admin, domain.users_ou, domain.dns_domain, seed.unique_name("relaybench"))
        for _ in range(2 * rounds)
    ]
    admin.unbind()
    raw = ldap3.Connection(
        ldap3.Server(
            "localhost",
            port=636,
            use_ssl=True,
            get_info=ldap3.NONE,
            tls=ValidatingTls(str(running.dc.ca_file)),
        ),
        user=domain.relay.upn,
        password=domain.relay.password,
        auto_bind=True,
    )
    value = encode_unicode_pwd("Throughput-Pa55!")
    started = time.perf_counter()
    for user in users[:rounds]:
        raw.modify(user.dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [value])]})
        if raw.result["result"] != 0:
            raise SystemExit(f"baseline failed: {raw.result}")
    baseline = time.perf_counter() - started
    raw.unbind()
    directory = LdapDirectory(settings, settings.bind_password())
    with tempfile.TemporaryDirectory() as state:
        ours = asyncio.run(
            through_pipeline(
                directory,
                domain.dns_domain,
                [u.upn for u in users[rounds:]],
                "Throughput-Pa55!",
                Path(state),
            )
        )
    directory.close()
    print(f"part 1: {rounds} resets on the local DC")
    print(
        f"  raw ldap3 modifies: {rounds / baseline:6.1f}/s  "
        f"({1000 * baseline / rounds:.1f} ms each)"
    )
    print(f"  the relay pipeline: {rounds / ours:6.1f}/s  ({1000 * ours / rounds:.1f} ms each)")
    print(
        f"  overhead per request: {1000 * (ours - baseline) / rounds:.1f} ms "
        f"(ratio {ours / baseline:.2f}x)"
    )


def part_two(count: int) -> None:
    tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    users = [f"user{n % 500}@corp.example.test" for n in range(count)]
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as state:
        asyncio.run(
            through_pipeline(
                FakeDirectory(), "corp.example.test", users[:500], "Memory-Pa55word!", Path(warm)
            )
        )
        heap_warm = tracemalloc.get_traced_memory()[0]
        elapsed = asyncio.run(
            through_pipeline(
                FakeDirectory(), "corp.example.test", users, "Memory-Pa55word!", Path(state)
            )
        )
    heap_after = tracemalloc.get_traced_memory()[0]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"part 2: {count} requests through pipeline + journal + in-process transport "
        f"(in-memory directory): {count / elapsed:.0f}/s"
    )
    print(
        f"  Python heap after 500 requests {heap_warm / 1e6:.1f} MB, after {count} more "
        f"{heap_after / 1e6:.1f} MB; peak RSS {rss_before / 1024:.0f} -> "
        f"{rss_after / 1024:.0f} MB (all requests are queued before the relay starts)"
    )


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="resets on the DC, per side")
    parser.add_argument("--requests", type=int, default=10_000, help="requests for part 2")
    parser.add_argument("--skip-dc", action="store_true", help="only part 2")
    args = parser.parse_args()
    if not args.skip_dc:
        part_one(args.rounds)
    part_two(args.requests)


def main() -> None:
    """Measure on the local stack, and leave it as it was found (running or not)."""
    with stack.borrowed():
        measure()


if __name__ == "__main__":
    main()
