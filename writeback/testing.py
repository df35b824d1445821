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
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import ldap3

from writeback import tracing
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
from writeback.protocol.accounts import Account, AccountRef, AnchorKind, BadReference, upn_key
from writeback.relay.directory import Capabilities
from writeback.relay.ldap import DomainController, Link
from writeback.relay.ldap import sid_bytes as sid_bytes  # noqa: PLC0414 -- re-exported for tests
from writeback.relay.policy import PasswordPolicy
from writeback.relay.settings import DirectorySettings, ServerAddress
from writeback.tracing import Stage

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
    netbios: str | None = "EXAMPLE",
    domain_sid: str | None = "S-1-5-21-1004336348-1177238915-682003330",
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
        netbios=netbios,
        domain_sid=domain_sid,
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
        if base.startswith("<GUID=") and base.endswith(">"):
            # The DC's extended DN form (MS-ADTS 3.1.1.3.1.2.4): the object with this objectGUID.
            guid = bytes.fromhex(base[len("<GUID=") : -1])
            named = [dn for dn, raw in self.entries.items() if guid in raw.get("objectGUID", [])]
            if not named:
                return []
            base = named[0]
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


def filetime(when: datetime) -> int:
    """An aware datetime as AD's 100-ns ticks since 1601 (pwdLastSet, lockoutTime)."""
    delta = when - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


class FakeDirectory:
    """The Directory port in memory, for tests of what sits above it (the relay's pipeline).

    It holds accounts (`add`) and resolves a reference of every kind as `LdapDirectory` does:
    a UPN ignoring case and width (`upn_key`), a SID, a GUID (objectGUID or
    ms-DS-ConsistencyGuid), `DOMAIN\\name` in its own NetBIOS domain only, more than one match
    ambiguous. It records every command it is asked to apply, answers from a queue of outcomes
    (applied when empty), remembers when each account's password was last written (by
    objectGUID), and can be slowed down to show that writes for one account never overlap. It
    does not emulate scopes, protection, the password policy or the DC's own answers.
    """

    def __init__(
        self, clock: Callable[[], float] = time.time, delay: float = 0.0, *, any_upn: bool = True
    ) -> None:
        # any_upn: a UPN no account has yet becomes a new account when first resolved (a
        # directory where every user a test names exists); off, it is user.not_found.
        self.any_upn = any_upn
        self.accounts: dict[str, Account] = {}
        self.consistency_guids: dict[str, str] = {}  # ms-DS-ConsistencyGuid -> objectGUID
        self.netbios = "CORP"
        self.applied: list[Command] = []
        self.resolved: list[str] = []  # the references resolve was asked for
        self.outcomes: deque[Outcome] = deque()
        self.last_set: dict[str, datetime] = {}  # by objectGUID
        self.passwords: dict[str, str] = {}  # the password now in effect, by objectGUID
        self.verifiable = True
        self.delay = delay
        self.overlaps = 0
        self._busy: set[str] = set()
        self._clock = clock
        self._lock = threading.Lock()

    def add(
        self,
        upn: str,
        *,
        sid: str | None = None,
        sam: str | None = None,
        consistency_guid: str | None = None,
    ) -> Account:
        """A new account with a fresh objectGUID (and a SID in the domain unless given)."""
        number = len(self.accounts) + 1100
        account = Account(
            guid=str(uuid.uuid4()),
            sid=sid or f"S-1-5-21-1004336348-1177238915-682003330-{number}",
            upn=upn,
            sam_account_name=sam or upn.partition("@")[0][:20],
        )
        self.accounts[account.guid] = account
        if consistency_guid:
            self.consistency_guids[consistency_guid] = account.guid
        return account

    def resolve(self, user: str | Account) -> Account | Outcome:
        self.resolved.append(user.guid if isinstance(user, Account) else user)
        if isinstance(user, Account):
            found = [user.guid] if user.guid in self.accounts else []
        else:
            try:
                ref = AccountRef.parse(user)
            except BadReference as exc:
                return Outcome(Reason.REQUEST_INVALID, f"the user name {exc}")
            found = self._matching(ref)
            if not found and self.any_upn and ref.kind is AnchorKind.UPN:
                found = [self.add(ref.value).guid]
        if not found:
            return Outcome(Reason.USER_NOT_FOUND, f"no user {user}")
        if len(found) > 1:
            return Outcome(Reason.USER_AMBIGUOUS, f"{user} matches {len(found)} users")
        return self.accounts[found[0]]

    def _matching(self, ref: AccountRef) -> list[str]:
        if ref.kind is AnchorKind.SAM and ref.netbios != self.netbios:
            return []

        def matches(account: Account) -> bool:
            if ref.kind is AnchorKind.UPN:
                return upn_key(account.upn or "") == upn_key(ref.value)
            if ref.kind is AnchorKind.SID:
                return account.sid == ref.value
            if ref.kind is AnchorKind.GUID:
                return account.guid == ref.value
            sam = (account.sam_account_name or "").casefold()
            return sam == (ref.sam_account_name or "").casefold()

        found = {guid for guid, account in self.accounts.items() if matches(account)}
        if ref.kind is AnchorKind.GUID and ref.value in self.consistency_guids:
            found.add(self.consistency_guids[ref.value])
        return sorted(found)

    def _account(self, command: Command, account: Account | None) -> Account | Outcome:
        return self.resolve(account or command.user)

    def apply(self, command: Command, account: Account | None = None) -> Outcome:
        found = self._account(command, account)
        if isinstance(found, Outcome):
            return found
        user = found.guid
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
            netbios=self.netbios,
            domain_sid="S-1-5-21-1004336348-1177238915-682003330",
        )

    def password_last_set(self, account: Account) -> datetime | None:
        return self.last_set.get(account.guid)

    def refusal(self, command: Command, account: Account | None = None) -> Outcome | None:
        """Nothing is refused here before a write but an unknown user."""
        found = self._account(command, account)
        return found if isinstance(found, Outcome) else None

    def password_in_effect(self, account: Account, password: str) -> bool | None:
        """From the passwords this directory was given (a user never given one has another);
        None when `verifiable` is off (a DC that cannot tell without risking a lockout)."""
        if not self.verifiable:
            return None
        return self.passwords.get(account.guid) == password


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
        with tracing.stage(Stage.AUDIT_LINK):  # as the Table adapter's (there, after the answer)
            self._link(guid, names)

    def _link(self, guid: str, names: Iterable[str]) -> None:
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
