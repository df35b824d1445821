"""In-memory fakes for tests: a DC connection, a directory and the cloud tables, no network.

`FakeLink` stands in for `writeback.relay.ldap.Link`, the one bound connection to a DC that
`LdapDirectory` uses. It serves a small dict of entries keyed by DN (raw attribute values as
bytes, as ldap3 returns them), answers the relay's searches through ldap3's own mock server
(filters, scopes and escaping as ldap3 evaluates them), records every search
and every modify, and answers modifies from a queue of recorded DC answers (success when the queue
is empty). It never applies a modify to its entries. It keeps no bind password, but the modifies
it records hold the encoded unicodePwd values the relay sent: that is what tests assert on, so a
FakeLink must never be logged or kept beyond its test.

`MemoryAuditTrail` and `MemoryAgentRegistry` are the cloud side's two tables in memory, with the
Table adapters' semantics (keys checked, insert-or-replace, an older heartbeat never wins).
"""

from __future__ import annotations

import builtins
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import ldap3

from writeback.cloud.accounts import account_keys, name_key
from writeback.cloud.agents import AgentRecord
from writeback.cloud.audit import AuditRecord
from writeback.cloud.tables import check_key
from writeback.errors import DirectoryError
from writeback.protocol import (
    ChangePassword,
    Command,
    Operation,
    Outcome,
    Reason,
    ResetPassword,
)
from writeback.relay.directory import Capabilities
from writeback.relay.ldap import DomainController, Link
from writeback.relay.policy import PasswordPolicy
from writeback.relay.settings import DirectorySettings, ServerAddress

RawEntry = dict[str, list[bytes]]
Answer = tuple[int, str] | DirectoryError
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Search:
    """One search the relay sent: where, what filter, which attributes, how deep."""

    base: str
    query: str
    attributes: tuple[str, ...]
    scope: str
    controls: list[tuple[str, bool, bytes]] | None = None


@dataclass(frozen=True)
class Modify:
    """One modify the relay sent, exactly as it would go on the wire."""

    dn: str
    changes: dict[str, list[tuple[str, list[Any]]]]
    controls: list[tuple[str, bool, bytes]] | None


def domain_controller(
    naming_context: str = "DC=example,DC=test",
    *,
    host: str = "dc1.example.test",
    supported_controls: Iterable[str] = (),
    is_pdc: bool = True,
) -> DomainController:
    """A DC's self-description as `Link` would read it from the rootDSE and the domain head."""
    server_dn = f"CN=NTDS Settings,CN={host.partition('.')[0].upper()},CN=Servers,{naming_context}"
    return DomainController(
        address=ServerAddress(f"ldaps://{host}", host, 636, True),
        dns_host_name=host,
        naming_context=naming_context,
        server_dn=server_dn,
        pdc_dn=server_dn if is_pdc else f"CN=NTDS Settings,CN=PDC,CN=Servers,{naming_context}",
        supported_controls=frozenset(supported_controls),
        current_time=None,
    )


@dataclass
class FakeLink:
    """A connection to one DC, served from memory; see the module docstring."""

    controller: DomainController
    entries: dict[str, RawEntry] = field(default_factory=dict)
    answers: deque[Answer] = field(default_factory=deque)
    alive: bool = True
    searches: list[Search] = field(default_factory=list)
    modifies: list[Modify] = field(default_factory=list)
    connects: int = 0
    closes: int = 0

    @property
    def address(self) -> ServerAddress:
        return self.controller.address

    def answer(self, *answers: Answer) -> None:
        """Queue the DC's answers to the next modifies: (result, message), or an error to raise."""
        self.answers.extend(answers)

    def search(
        self,
        base: str,
        query: str,
        attributes: Sequence[str],
        *,
        scope: Literal["BASE", "LEVEL", "SUBTREE"] = "SUBTREE",
        size_limit: int = 0,
        controls: list[tuple[str, bool, bytes]] | None = None,
    ) -> list[tuple[str, RawEntry]]:
        self.searches.append(Search(base, query, tuple(attributes), scope, controls))
        # ldap3's own mock server evaluates the filter, the scope and the escaping.
        directory = ldap3.Connection(
            ldap3.Server("fake-dc", get_info=ldap3.NONE), client_strategy=ldap3.MOCK_SYNC
        )
        directory.bind()
        for dn, raw in self.entries.items():
            directory.strategy.add_entry(dn, {name: list(values) for name, values in raw.items()})
        directory.search(
            base, query, search_scope=scope, attributes=list(attributes), size_limit=size_limit
        )
        return [
            (
                entry["dn"],
                {name: values for name, values in entry["raw_attributes"].items() if values},
            )
            for entry in directory.response or []
        ]

    def read(self, dn: str, attributes: Sequence[str], **kwargs: Any) -> RawEntry:
        entries = self.search(dn, "(objectClass=*)", attributes, scope="BASE", **kwargs)
        return entries[0][1] if entries else {}

    def modify(
        self,
        dn: str,
        changes: dict[str, list[tuple[str, list[Any]]]],
        controls: list[tuple[str, bool, bytes]] | None = None,
    ) -> tuple[int, str]:
        self.modifies.append(Modify(dn, changes, controls))
        answer = self.answers.popleft() if self.answers else (0, "")
        if isinstance(answer, DirectoryError):
            raise answer
        return answer

    def close(self) -> None:
        self.closes += 1
        self.alive = False

    def connect(self, settings: DirectorySettings, password: str) -> Link:
        """A `connect` for `LdapDirectory`: hands out this link (alive again) every time."""
        del settings, password  # what a real connect binds with; a fake keeps no secret
        self.connects += 1
        self.alive = True
        # LdapDirectory uses only the part of Link's interface that FakeLink has.
        return cast(Link, self)


def sid_bytes(sid: str) -> bytes:
    """A SID's binary form (MS-DTYP 2.4.2.2), as objectSid and tokenGroups carry it."""
    parts = sid.split("-")
    if parts[:2] != ["S", "1"] or len(parts) < 3:
        raise ValueError(f"not a SID: {sid!r}")
    subs = [int(p) for p in parts[3:]]
    return (
        bytes([1, len(subs)])
        + int(parts[2]).to_bytes(6, "big")
        + b"".join(s.to_bytes(4, "little") for s in subs)
    )


def filetime(when: datetime) -> int:
    """An aware datetime as AD's 100-ns ticks since 1601 (pwdLastSet, lockoutTime)."""
    delta = when - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


class FakeDirectory:
    """The Directory port in memory, for tests of what sits above it (the relay's pipeline).

    It records every command it is asked to apply, answers from a queue of outcomes (applied
    when empty), remembers when each user's password was last written, and can be slowed down
    to show that writes for one user never overlap.
    """

    def __init__(self, clock: Callable[[], float] = time.time, delay: float = 0.0) -> None:
        self.applied: list[Command] = []
        self.outcomes: deque[Outcome] = deque()
        self.last_set: dict[str, datetime] = {}
        self.passwords: dict[str, str] = {}  # the password now in effect, by UPN
        self.verifiable = True
        self.delay = delay
        self.overlaps = 0
        self._busy: set[str] = set()
        self._clock = clock
        self._lock = threading.Lock()

    def apply(self, command: Command) -> Outcome:
        user = command.user.casefold()
        with self._lock:
            self.overlaps += user in self._busy
            self._busy.add(user)
        try:
            if self.delay:
                time.sleep(self.delay)  # a slow DC, so concurrent callers would overlap
            with self._lock:
                self.applied.append(command)
                outcome = self.outcomes.popleft() if self.outcomes else Outcome(Reason.APPLIED)
                if outcome.reason is Reason.APPLIED and command.operation is Operation.EXPIRE:
                    self.last_set.pop(user, None)  # pwdLastSet = 0
                elif outcome.reason is Reason.APPLIED and command.operation is not Operation.UNLOCK:
                    self.last_set[user] = datetime.fromtimestamp(self._clock(), UTC)
                    if isinstance(command, ResetPassword | ChangePassword):
                        self.passwords[user] = command.new_password
                return outcome
        finally:
            with self._lock:
                self._busy.discard(user)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            dc="ldaps://dc1.example.test",
            dc_host="dc1.example.test",
            is_pdc=True,
            policy_hints=None,
            domain_policy=PasswordPolicy("the domain policy", 8, 5, True, None, None, 5),
        )

    def password_last_set(self, upn: str) -> datetime | None:
        return self.last_set.get(upn.casefold())

    def refusal(self, command: Command) -> Outcome | None:
        """Nothing is refused here before a write (the outcomes queue answers writes)."""
        return None

    def password_in_effect(self, upn: str, password: str) -> bool | None:
        """From the passwords this directory was given (a user never given one has another);
        None when `verifiable` is off (a DC that cannot tell without risking a lockout)."""
        if not self.verifiable:
            return None
        return self.passwords.get(upn.casefold()) == password


class MemoryAuditTrail:
    """The AuditTrail port in memory: insert-or-replace by request id, ids checked as the
    Table adapter checks them (ValueError before anything is stored), and the account index
    (`writeback.cloud.accounts`) read as the Table adapter reads it."""

    def __init__(self) -> None:
        self.records: dict[str, AuditRecord] = {}
        self.guids: dict[str, set[str]] = {}  # name key -> GUIDs
        self.names: dict[str, dict[str, str]] = {}  # GUID -> name key -> name
        self.closed = False

    async def record(self, record: AuditRecord) -> None:
        self.records[check_key(record.request_id, "request id")] = record

    async def get(self, request_id: str) -> AuditRecord | None:
        return self.records.get(check_key(request_id, "request id"))

    async def for_user(self, user: str, since: float, until: float) -> list[AuditRecord]:
        async def guids_of(key: str) -> set[str]:
            return self.guids.get(key, set())

        async def names_of(guid: str) -> builtins.list[str]:
            return builtins.list(self.names.get(guid, {}).values())

        keys, guids = await account_keys(user, guids_of, names_of)
        return sorted(
            (
                record
                for record in self.records.values()
                if (name_key(record.user) in keys or record.account in guids)
                and since <= record.received_at <= until
            ),
            key=lambda record: record.received_at,
        )

    async def link(self, guid: str, names: Iterable[str]) -> None:
        check_key(guid, "account GUID")
        for name in names:
            key = name_key(name)
            self.guids.setdefault(key, set()).add(guid)
            self.names.setdefault(guid, {})[key] = name

    async def pending(self, since: float, until: float) -> list[AuditRecord]:
        return sorted(
            (
                record
                for record in self.records.values()
                if record.status == "pending" and since <= record.received_at <= until
            ),
            key=lambda record: record.received_at,
        )

    async def close(self) -> None:
        self.closed = True


class MemoryAgentRegistry:
    """The AgentRegistry port in memory: one record per (domain, relay), and an older heartbeat
    (smaller `last_seen`, or the same) never replaces the one kept."""

    def __init__(self) -> None:
        self.agents: dict[tuple[str, str], AgentRecord] = {}
        self.closed = False

    async def record(self, agent: AgentRecord) -> None:
        key = (check_key(agent.domain, "domain"), check_key(agent.relay_id, "relay id"))
        kept = self.agents.get(key)
        if kept is None or kept.last_seen < agent.last_seen:
            self.agents[key] = agent

    async def list(self, domain: str | None = None) -> builtins.list[AgentRecord]:
        if domain is not None:
            check_key(domain, "domain")
        return [
            agent
            for key, agent in sorted(self.agents.items())
            if domain is None or key[0] == domain
        ]

    async def close(self) -> None:
        self.closed = True
