"""The one place the relay's concrete adapters are chosen and wired together.

Nothing connects here: the directory binds on its first request, Service Bus on its first
receive. What can be checked without a network is checked now (key permissions, that the keys
belong to this relay, the cloud's JWKS, the bind password), so a misconfigured relay refuses to
start with the setting's name instead of failing its first request.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from azure.identity.aio import DefaultAzureCredential
from pythonjsonlogger.json import JsonFormatter

from writeback import sealing
from writeback.errors import ConfigurationError
from writeback.relay.agent import Agent
from writeback.relay.config import Config
from writeback.relay.directory import LdapDirectory
from writeback.relay.journal import Journal
from writeback.relay.keys import KeyStore
from writeback.relay.permissions import check_trusted_file
from writeback.relay.pipeline import FAILPOINT_ENV, Pipeline, RelayKeys
from writeback.relay.status import status_path
from writeback.relay.throttle import ChangeThrottle
from writeback.transport.servicebus import ServiceBusRelay


@dataclass
class Relay:
    """A wired relay: the agent to run, and what to close after it stopped."""

    agent: Agent
    directory: LdapDirectory
    journal: Journal
    credential: DefaultAzureCredential | None

    async def close(self) -> None:
        self.journal.close()
        self.directory.close()
        if self.credential is not None:
            await self.credential.close()


def build(config: Config, environ: Mapping[str, str] = os.environ) -> Relay:
    """Wire a relay from its configuration; refuses to start on any local problem."""
    keys = KeyStore(config.relay.keys)
    keys.open()  # refuses keys that others could read
    if keys.relay_id != config.relay.id:
        raise ConfigurationError(
            "relay.id",
            f"the keys in {config.relay.keys} belong to relay "
            f"{keys.relay_id!r}, not {config.relay.id!r}",
        )
    check_trusted_file(config.relay.cloud_keys, "relay.cloud_keys")
    try:
        document = json.loads(config.relay.cloud_keys.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            "relay.cloud_keys",
            f"cannot read a JWKS from {config.relay.cloud_keys} ({type(exc).__name__})",
        ) from exc
    cloud_keys = sealing.public_keyset(document, "relay.cloud_keys")
    directory = LdapDirectory(config.directory, config.directory.bind_password(environ))
    journal = Journal(config.relay.journal)
    credential = None if config.servicebus.connection_string else DefaultAzureCredential()
    transport = ServiceBusRelay(config.servicebus, credential, config.relay.domain)
    pipeline = Pipeline(
        relay_id=config.relay.id,
        domain=config.relay.domain,
        directory=directory,
        transport=transport,
        journal=journal,
        keys=RelayKeys(cloud_keys, keys.decryption_keys(), keys.signing_key()),
        failpoint=environ.get(FAILPOINT_ENV),
        throttle=ChangeThrottle(config.relay.change_attempts, config.relay.change_window),
    )
    agent = Agent(
        config.relay,
        pipeline,
        transport,
        directory=directory,
        signing_key=keys.signing_key(),
        status_file=status_path(config.relay.journal),
    )
    return Relay(agent, directory, journal, credential)


def configure_logging(level: int = logging.INFO) -> None:
    """Structured JSON lines on stdout; the event is the message, context is in the fields."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "message": "event",
            },
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDKs log connection chatter at INFO; their warnings and errors still show.
    for noisy in ("azure", "uamqp", "ldap3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
