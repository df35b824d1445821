"""What the cloud knows of the relays: their heartbeats, which domains are alive, their health.

Each relay sends a signed heartbeat every `heartbeat_interval` through Service Bus; a heartbeat is
recorded only if a registered key of its domain verifies it, so a forged one cannot make a domain
look alive. A domain is alive while a relay's last heartbeat is under three intervals old: the
service fails a request fast (`agent.unavailable`) otherwise, and reads the agents table once per
domain per such period, not on every request. `health` reports every configured domain as ok
(every known relay fresh), degraded (some) or offline (none). `names` tells which domain a
NetBIOS name or a domain SID belongs to, as each domain's most recent announcing heartbeat says
(a user named `CORP\\alice` or by a SID is routed by it); a name two domains claim routes to
neither, and the table is read again at most once per `NAMES_REFRESH_SECONDS` when a name is not
known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from joserfc.jwk import KeySet

from writeback import sealing
from writeback.cloud.agents import AgentRecord, AgentRegistry
from writeback.errors import ProtocolError, SecretsUnavailable, WritebackError
from writeback.routing import DomainNames, Routes

log = logging.getLogger(__name__)

NAMES_REFRESH_SECONDS = 5.0  # an unknown NetBIOS name or domain SID re-reads no more often


class RelayKeys(Protocol):
    async def relay_keys(self, domain: str) -> KeySet: ...


@dataclass(frozen=True)
class DomainHealth:
    domain: str
    state: str  # ok (every known relay fresh), degraded (some), offline (none)
    relays: list[AgentRecord]
    fresh: list[str]


class Relays:
    """Heartbeats in, liveness and health out (see the module doc)."""

    def __init__(
        self,
        *,
        routes: Routes,
        keys: RelayKeys,
        agents: AgentRegistry,
        heartbeat_interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.routes = routes
        self.keys = keys
        self.agents = agents
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        # domain -> until when its freshest known heartbeat keeps it alive (no table read before)
        self._alive_until: dict[str, float] = {}
        self._names: tuple[float, DomainNames] | None = None  # when read, what was read

    async def names(self, *, refresh: bool = False) -> DomainNames:
        """The NetBIOS names and domain SIDs the domains' relays announce (see the module doc).
        Read from the agents table once per heartbeat interval; `refresh` (a name was not
        found) reads again unless the last read is under NAMES_REFRESH_SECONDS old."""
        now = self.clock()
        if self._names is not None:
            age = now - self._names[0]
            limit = NAMES_REFRESH_SECONDS if refresh else self.heartbeat_interval
            if 0 <= age < limit:
                return self._names[1]
        names = _announced(await self.agents.list(None), self.routes.domains)
        self._names = (now, names)
        return names

    async def alive(self, domain: str) -> bool:
        """Whether a relay of `domain` sent a heartbeat within three intervals. A heartbeat seen
        keeps the domain alive until it is three intervals old, so the agents table is read
        once per domain per such period, not on every request; the answer is the same."""
        if self._alive_until.get(domain, 0.0) > self.clock():
            return True
        relays = await self.agents.list(domain)
        if not self._fresh(relays):
            return False
        newest = max(relay.last_seen for relay in relays)
        self._alive_until[domain] = newest + 3 * self.heartbeat_interval
        return True

    def _fresh(self, relays: list[AgentRecord]) -> list[str]:
        horizon = self.clock() - 3 * self.heartbeat_interval
        return [relay.relay_id for relay in relays if relay.last_seen >= horizon]

    async def health(self) -> list[DomainHealth]:
        """Every configured domain with its relays and whether they are alive."""
        known = await self.agents.list(None)
        report = []
        for domain in sorted(self.routes.domains):
            relays = [agent for agent in known if agent.domain == domain]
            fresh = self._fresh(relays)
            state = "offline" if not fresh else "ok" if len(fresh) == len(relays) else "degraded"
            report.append(DomainHealth(domain, state, relays, fresh))
        return report

    async def record_heartbeat(self, body: str) -> AgentRecord | None:
        """Verify a relay's heartbeat against its domain's keys and record the relay.

        A heartbeat no domain's keys verify is logged and dropped (None): a forged one must not
        make a domain look alive, and retrying it cannot help.
        """
        unreadable: list[str] = []
        for domain in sorted(self.routes.domains):
            try:
                keys = await self.keys.relay_keys(domain)
            except WritebackError as exc:
                # One domain's missing or broken key secret must not silence the others.
                unreadable.append(domain)
                log.error("relay keys unreadable", extra={"domain": domain, "error": str(exc)})
                continue
            try:
                heartbeat = sealing.verify_heartbeat(body, keys)
            except ProtocolError:
                continue
            if heartbeat.domain != domain:
                continue
            now = self.clock()
            agent = AgentRecord(
                domain=domain,
                relay_id=heartbeat.relay,
                version=heartbeat.version,
                last_seen=min(float(heartbeat.sent_at), now),  # a fast clock cannot look fresh
                received_at=now,
                capabilities=dict(heartbeat.capabilities),
                policy=dict(heartbeat.policy) if heartbeat.policy is not None else None,
                last_error=heartbeat.last_error,
                netbios=heartbeat.netbios,
                domain_sid=heartbeat.domain_sid,
            )
            await self.agents.record(agent)
            if self._names is not None and (
                (agent.netbios and self._names[1].netbios.get(agent.netbios) != domain)
                or (agent.domain_sid and self._names[1].sids.get(agent.domain_sid) != domain)
            ):
                self._names = None  # a name this instance did not know: read the table again
            log.info("heartbeat", extra={"domain": domain, "relay": heartbeat.relay})
            return agent
        if unreadable:
            # It may be from a domain whose keys could not be read: let it come back later.
            raise SecretsUnavailable(
                "relay keys of " + ", ".join(unreadable), "unreadable; the heartbeat comes back"
            )
        log.warning("heartbeat refused: signed by no registered relay key")
        return None


def _announced(agents: list[AgentRecord], domains: frozenset[str]) -> DomainNames:
    """Each configured domain's NetBIOS name and SID from its newest heartbeat that names them;
    a name claimed by two domains is left out (logged): it could route a user to the wrong one."""
    newest: dict[str, AgentRecord] = {}
    for agent in sorted(agents, key=lambda agent: agent.last_seen):
        if agent.domain in domains and (agent.netbios or agent.domain_sid):
            newest[agent.domain] = agent
    tables: list[dict[str, str]] = [{}, {}]
    for table, attribute in zip(tables, ("netbios", "domain_sid"), strict=True):
        claimed: dict[str, set[str]] = {}
        for domain, agent in newest.items():
            if value := getattr(agent, attribute):
                claimed.setdefault(value, set()).add(domain)
        for value, claimants in claimed.items():
            if len(claimants) == 1:
                table[value] = claimants.pop()
            else:
                log.error(
                    "domain name claimed twice",
                    extra={"attribute": attribute, "domains": ", ".join(sorted(claimants))},
                )
    return DomainNames(netbios=tables[0], sids=tables[1])
