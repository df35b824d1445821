"""The same writeback over the wire: sealed, signed requests through the local broker to the relay.

Plays the cloud side by hand (the Functions app does this in production): seals each password to
the relay's public key, signs the request, sends it over the local Service Bus broker with the
unmodified SDK and waits on the request's own session for the relay's signed outcome. The relay
is the real agent, built from a generated relay.toml, applying to the local DC.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from joserfc.jwk import ECKey, KeySet

from devstack import seed
from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.stack import STATE, Stack, write_full_relay_config
from writeback import sealing
from writeback.protocol import Initiator, Operation
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay import bootstrap
from writeback.relay.config import Config
from writeback.relay.keys import KeyStore
from writeback.transport.memory import QueueConfig
from writeback.transport.servicebus import ServiceBusCloud
from writeback.transport.settings import ServiceBusSettings

NEW = "Sealed-Delivery!26"


def queues(domain: str) -> list[QueueConfig]:
    """The entities infra/ declares for one domain."""
    return writeback_queues([domain])


async def _ask(
    cloud: ServiceBusCloud,
    relay_keys: KeySet,
    signer: ECKey,
    *,
    domain: str,
    operation: Operation,
    user: str,
    secrets: Secrets | None,
    initiator: Initiator | None,
    unlock: bool = False,
    wait: float = 15.0,
) -> tuple[str, str, float]:
    request_id = f"demo-{uuid.uuid4()}"
    now = int(time.time())
    message = RequestMessage(
        id=request_id,
        domain=domain,
        operation=operation,
        user=user,
        issued_at=now,
        expires_at=now + 120,
        initiator=initiator,
        unlock=unlock,
        reply_session=cloud.reply_session,
    )
    started = time.perf_counter()
    waiting = asyncio.create_task(cloud.wait_for_outcome(request_id, time.time() + wait))
    await cloud.send_request(
        domain, request_id, sealing.seal_request(message, secrets, relay_keys, signer), now + 120
    )
    answer = await waiting
    elapsed = (time.perf_counter() - started) * 1000
    if answer is None:
        return "(no answer)", "dead-lettered by the relay", elapsed
    outcome = sealing.verify_outcome(answer, relay_keys)
    return outcome.reason.value, outcome.message, elapsed


async def _scenario(
    stack: Stack, connection_string: str, out: Callable[[str], None], state: Path
) -> bool:
    domain = stack.domain
    config, cloud_key = write_full_relay_config(stack.dc, domain, state, connection_string)
    relay = bootstrap.build(Config.load(config, environ={}))
    stop = asyncio.Event()
    serving = asyncio.create_task(relay.agent.run(stop))
    relay_keys = sealing.public_keyset(KeyStore(state / "keys").public_jwks(), "relay keys")
    cloud = ServiceBusCloud(ServiceBusSettings(connection_string=connection_string), None)
    admin = stack.dc.admin_connection()
    locked = seed.create_user(
        admin, domain.users_ou, domain.dns_domain, seed.unique_name("wire-locked")
    )
    user = seed.create_user(admin, domain.users_ou, domain.dns_domain, seed.unique_name("wire"))
    admin.unbind()
    seed.lock_out(stack.dc, locked, seed.DOMAIN_POLICY["lockout_threshold"])
    stranger = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.forged", "use": "sig"})
    steps = [
        (
            "admin reset + unlock",
            Operation.RESET,
            locked.upn,
            Secrets(NEW),
            Initiator.ADMIN,
            True,
            cloud_key,
            "applied",
        ),
        (
            "self-service reset",
            Operation.RESET,
            user.upn,
            Secrets(NEW),
            Initiator.SELF_SERVICE,
            False,
            cloud_key,
            "applied",
        ),
        (
            "change, wrong old password",
            Operation.CHANGE,
            user.upn,
            Secrets("Another-Pa55word!", "Not-The-0ld-One!"),
            None,
            False,
            cloud_key,
            "old_password.mismatch",
        ),
        (
            "reset, too short",
            Operation.RESET,
            user.upn,
            Secrets("Sh0rt!"),
            Initiator.ADMIN,
            False,
            cloud_key,
            "policy.length",
        ),
        (
            "request signed by a stranger",
            Operation.RESET,
            user.upn,
            Secrets(NEW),
            Initiator.ADMIN,
            False,
            stranger,
            "(no answer)",
        ),
    ]
    ok = True
    out(
        "\nThe same writeback over the wire (sealed and signed, local Service Bus broker, "
        "relay agent):"
    )
    try:
        for what, operation, upn, secrets, initiator, unlock, signer, expected in steps:
            wait = 3.0 if signer is stranger else 15.0
            reason, message, elapsed = await _ask(
                cloud,
                relay_keys,
                signer,
                domain=domain.dns_domain,
                operation=operation,
                user=upn,
                secrets=secrets,
                initiator=initiator,
                unlock=unlock,
                wait=wait,
            )
            mark = "" if reason == expected else f"  <-- expected {expected}"
            ok = ok and not mark
            shown = f"{elapsed:.0f} ms" if reason != "(no answer)" else "-"
            out(f"  {what:<30} {reason:<22} {shown:>8}  {message}{mark}")
    finally:
        stop.set()
        await serving
        await relay.close()
        await cloud.close()
    return ok


def run(stack: Stack, out: Callable[[str], None] = print, state: Path = STATE / "wire") -> bool:
    """Start the local broker, run the relay against the local DC, drive it as the cloud would."""
    # The relay's own log lines would interleave with the table; its outcomes are the point here.
    logging.getLogger("writeback").addHandler(logging.NullHandler())
    with LocalServiceBus(queues(stack.domain.dns_domain)) as bus:
        return asyncio.run(_scenario(stack, bus.connection_string, out, state))
