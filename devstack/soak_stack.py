"""The chaos soak's local stack: every part restartable in place, and two relays of one domain.

The Samba DC (started by the caller, or provisioned here by `provision_dc`), Azurite persisting
to a directory on fixed ports, the local Service Bus broker on a fixed port (its queues live in
the `MemoryBroker` model, which outlives a stop and start of the AMQP front-end), function_app.py
on the local Functions host, and two relay processes, each with its own relay id, keys and
journal, both of whose public keys are in the domain's JWKS secret. Each part can be stopped and
started again at the same address, so the host and the relays keep their connection strings, and
a relay can be SIGKILLed. It must never leave a process running after `close()`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from devstack import cloud, seed
from devstack.azurite import Azurite
from devstack.samba import SambaDC
from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.stack import write_full_relay_config
from writeback.relay.keys import KeyStore

HEARTBEAT_SECONDS = 1
LOCK_SECONDS = 10  # the request queue's lock: a killed relay's message comes back after this
RELAY_IDS = ("relay-soak-a", "relay-soak-b")


class SoakStack:
    """The running parts of the soak's stack, each restartable (see the module doc)."""

    def __init__(
        self,
        dc: SambaDC,
        domain: seed.SeededDomain,
        state: Path,
        *,
        wait_seconds: float = 6,
        lifetime_seconds: float = 60,
    ) -> None:
        self.dc = dc
        self.domain = domain
        self.state = state
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.lifetime_seconds = lifetime_seconds
        ports = {service: cloud.free_port() for service in ("blob", "queue", "table")}
        self.azurite = Azurite(ports, location=state / "azurite")
        self.bus = LocalServiceBus(
            writeback_queues([domain.dns_domain], lock_duration=LOCK_SECONDS),
            port=cloud.free_port(),
        )
        self.api_key = secrets.token_urlsafe(32)
        self.port = cloud.free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.relay_configs: dict[str, Path] = {}
        self.relays: dict[str, subprocess.Popen[bytes] | None] = {}
        self.host: subprocess.Popen[bytes] | None = None
        self._wait_seconds = wait_seconds
        self.settings: dict[str, str] = {}

    # -- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        """Start Azurite, the broker, the host and both relays (the DC is already running)."""
        self.azurite.start()
        self.bus.start()
        cloud_key = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.soak", "use": "sig"})
        keys: list[dict[str, Any]] = []
        for relay_id in RELAY_IDS:
            directory = self.state / relay_id
            config, _ = write_full_relay_config(
                self.dc, self.domain, directory, self.bus.connection_string,
                relay_id=relay_id, cloud_key=cloud_key,
            )  # fmt: skip
            self.relay_configs[relay_id] = config
            keys += KeyStore(directory / "keys").public_jwks()["keys"]
        secrets_dir = cloud.write_cloud_secrets(
            self.state / "secrets", cloud_key, {self.domain.dns_domain: {"keys": keys}}
        )
        self.settings = cloud.cloud_settings(
            domains=[self.domain.dns_domain], servicebus=self.bus.connection_string,
            storage=self.azurite.connection_string, secrets_dir=secrets_dir,
            api_key=self.api_key, wait_seconds=self._wait_seconds,
            heartbeat_interval=HEARTBEAT_SECONDS,
        )  # fmt: skip
        self.settings["WRITEBACK_REQUEST_LIFETIME_SECONDS"] = str(int(self.lifetime_seconds))
        self.host = cloud.start_host(self.settings, self.port, self.logs / "host.log")
        for relay_id in RELAY_IDS:
            self.start_relay(relay_id)

    def start_relay(self, relay_id: str) -> None:
        environ = {
            **os.environ,
            "WRITEBACK_RELAY_HEARTBEAT_INTERVAL": str(HEARTBEAT_SECONDS),
            "WRITEBACK_SERVICEBUS_LOCK_DURATION": str(LOCK_SECONDS),
        }
        with (self.logs / f"{relay_id}.log").open("ab") as output:
            self.relays[relay_id] = subprocess.Popen(
                [sys.executable, "-m", "writeback.relay.cli", "run", "--config",
                 str(self.relay_configs[relay_id])],
                stdout=output, stderr=subprocess.STDOUT, env=environ,
            )  # fmt: skip

    def kill_relay(self, relay_id: str) -> None:
        """SIGKILL: no drain, no journal close, no settlement; as a power cut would."""
        process = self.relays.get(relay_id)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        self.relays[relay_id] = None

    def stop_relays(self) -> None:
        """Stop both relays cleanly (SIGTERM: they drain), so their journals can be read."""
        for relay_id, process in self.relays.items():
            if process is not None:
                cloud.stop_process(process)
            self.relays[relay_id] = None

    def close(self) -> None:
        """Stop everything this stack started; the DC is the caller's."""
        with contextlib.suppress(Exception):
            self.stop_relays()
        if self.host is not None:
            cloud.stop_process(self.host)
            self.host = None
        self.bus.stop()
        self.azurite.stop()

    # -- what the checks read -------------------------------------------------------------
    def journal(self, relay_id: str) -> Path:
        return self.relay_configs[relay_id].parent / "journal.sqlite3"

    def log_files(self) -> list[Path]:
        return sorted(self.logs.glob("*.log"))


def provision_dc(root: Path) -> tuple[SambaDC, seed.SeededDomain]:
    """A fresh DC under `root`, with the test policy and the seeded directory, started."""
    dc = SambaDC(root)
    dc.provision()
    seed.set_domain_policy(dc)
    dc.start()
    return dc, seed.seed(dc)
