"""The relay's long-running loop: receive, process in parallel, heartbeat, survive outages, stop.

Up to `concurrency` requests are processed at once (one write per user at a time is the
pipeline's rule). When Service Bus is unreachable the loop backs off exponentially (1 s to 60 s,
with jitter) instead of spinning; when the DC is down each request gets directory.unavailable
from the directory layer, which reconnects by itself on the next request. A heartbeat goes out
every `heartbeat_interval` seconds, signed, with what the relay knows of the directory and its
last error. On stop, nothing new is received and work in flight gets `shutdown_grace` seconds to
finish; what is cancelled after that is delivered again, and the journal keeps it from being
applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from joserfc.jwk import ECKey

from writeback import __version__, sealing
from writeback.errors import DirectoryError, JournalError, TransportError
from writeback.protocol.messages import Heartbeat
from writeback.relay.config import RelaySettings
from writeback.relay.directory import Directory
from writeback.relay.pipeline import Pipeline
from writeback.relay.status import RelayStatus, write_status
from writeback.transport import RelayTransport

log = logging.getLogger(__name__)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


class Agent:
    def __init__(
        self,
        settings: RelaySettings,
        pipeline: Pipeline,
        transport: RelayTransport,
        *,
        directory: Directory,
        signing_key: ECKey,
        status_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._pipeline = pipeline
        self._transport = transport
        self._directory = directory
        self._signing_key = signing_key
        self._clock = clock
        self.last_error: str | None = None
        self.handled = 0
        self._status_file = status_file
        self._started_at = clock()
        self._last_heartbeat_at: float | None = None
        self._in_flight: set[asyncio.Task[object]] = set()

    def publish(self, state: str) -> None:
        """Write what the relay is doing for `writeback-relay status` (never fails the relay)."""
        if self._status_file is None:
            return
        try:
            write_status(
                self._status_file,
                RelayStatus(
                    relay=self.settings.id,
                    domain=self.settings.domain,
                    state=state,
                    pid=os.getpid(),
                    started_at=self._started_at,
                    updated_at=self._clock(),
                    last_heartbeat_at=self._last_heartbeat_at,
                    last_error=self.last_error,
                    handled=self.handled,
                    in_flight=len(self._in_flight),
                ),
            )
        except OSError as exc:
            log.warning("status_not_written", extra={"error": str(exc)})

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down within the grace period."""
        self.publish("running")
        heartbeats = asyncio.create_task(self._heartbeats(stop))
        in_flight = self._in_flight
        backoff = BACKOFF_FIRST
        log.info(
            "relay_started",
            extra={
                "relay": self.settings.id,
                "domain": self.settings.domain,
                "concurrency": self.settings.concurrency,
            },
        )
        try:
            while not stop.is_set():
                free = self.settings.concurrency - len(in_flight)
                if free <= 0:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    deliveries = await self._transport.receive(free, self.settings.receive_wait)
                except TransportError as exc:
                    self.last_error = f"Service Bus: {exc}"
                    log.warning("receive_failed", extra={"error": str(exc), "retry_in": backoff})
                    await _sleep_unless(stop, backoff * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                for delivery in deliveries:
                    task: asyncio.Task[object] = asyncio.create_task(
                        self._pipeline.handle(delivery)
                    )
                    in_flight.add(task)
                    task.add_done_callback(self._finished(in_flight))
        finally:
            self.publish("draining")
            await self._drain(in_flight)
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            await self._transport.close()
            self.publish("stopped")
            log.info("relay_stopped", extra={"relay": self.settings.id, "handled": self.handled})

    def _finished(
        self, in_flight: set[asyncio.Task[object]]
    ) -> Callable[[asyncio.Task[object]], None]:
        def done(task: asyncio.Task[object]) -> None:
            in_flight.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.last_error = f"{type(task.exception()).__name__}"
                log.error("handler_crashed", extra={"error": repr(task.exception())})
            else:
                self.handled += 1

        return done

    async def _drain(self, in_flight: set[asyncio.Task[object]]) -> None:
        if not in_flight:
            return
        log.info("relay_draining", extra={"in_flight": len(in_flight)})
        _, pending = await asyncio.wait(set(in_flight), timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()  # its message is delivered again; the journal says where it stopped
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.heartbeat()
            try:
                # The journal would otherwise grow forever; ids past the replay window go.
                pruned = await asyncio.to_thread(self._pipeline.prune)
            except JournalError as exc:
                log.warning("journal_prune_failed", extra={"error": str(exc)})
            else:
                if pruned:
                    log.info("journal_pruned", extra={"entries": pruned})
            await _sleep_unless(stop, self.settings.heartbeat_interval)

    async def heartbeat(self) -> None:
        """Send one signed heartbeat; failures are logged and remembered, never raised."""
        capabilities: dict[str, str | int | bool | None] = {"policyHints": None, "dc": None}
        policy: dict[str, object] | None = None
        netbios: str | None = None
        domain_sid: str | None = None
        try:
            found = await asyncio.to_thread(self._directory.capabilities)
            capabilities = {
                "policyHints": found.policy_hints,
                "dc": found.dc_host,
                "pdcEmulator": found.is_pdc,
            }
            policy = found.domain_policy.summary()
            # The cloud routes a user named by SID or DOMAIN\\name by these.
            netbios, domain_sid = found.netbios, found.domain_sid
        except DirectoryError as exc:
            self.last_error = f"directory: {exc}"
        beat = Heartbeat(
            relay=self.settings.id,
            domain=self.settings.domain,
            version=__version__,
            sent_at=int(self._clock()),
            capabilities=capabilities,
            policy=policy,
            last_error=(self.last_error or "")[:2000] or None,
            netbios=netbios,
            domain_sid=domain_sid,
        )
        try:
            await self._transport.send_heartbeat(sealing.sign_heartbeat(beat, self._signing_key))
            self._last_heartbeat_at = self._clock()
        except TransportError as exc:
            self.last_error = f"Service Bus: {exc}"
            log.warning("heartbeat_failed", extra={"error": str(exc)})
        self.publish("running")


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
