"""The chaos soak's checks, once the writes are done and the faults have stopped.

Every request has a final outcome (a 504 followed to its end), and the caller's last answer is
the audit trail's; each outcome agrees with the DC (an applied password write changed the user's
unicodePwd exactly once, a rejected or failed one not at all, an expire left pwdLastSet 0); each
user's final password binds and is the one the outcomes say; no request wrote twice, no reset or
change was written by both relays (per their journals); and no password the soak sent is in a
log, a journal, the storage emulator's files or a dead-lettered message. It reports what it
found, never a password.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from azure.data.tables import TableClient
from ldap3.core.exceptions import LDAPBindError, LDAPException

from devstack.samba import SambaDC
from devstack.servicebus import LocalServiceBus
from devstack.soak_directory import DirectoryProbe
from devstack.soak_load import PoolUser, Sent, Workload
from writeback.cloud.audit import AUDIT_TABLE
from writeback.protocol import Reason

UNKNOWN = "request.outcome_unknown"  # the one outcome that may or may not have written
EARLIER_DELIVERY = "applied by an earlier delivery"  # the relay's detail for a write it found
# A redelivery the relay cannot prove unwritten, with a password set within its clock tolerance
# (the user's previous write): not written, and the caller is told so; any operation may get it.
SUPERSEDED = "request.superseded"
# A change the lockout guard refused: the DC's badPwdCount one below the threshold. Wrong current
# passwords count there once per delivery that reached the DC, and once per verification bind.
THROTTLED = "account.throttled"


@dataclasses.dataclass
class Figures:
    """What one soak run did and found; `problems` is empty when every check passed."""

    writes: int = 0
    users: int = 0
    concurrency: int = 0
    seed: int = 0
    elapsed: float = 0.0
    by_operation: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    finals: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    answers: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)
    wrong: list[str] = dataclasses.field(default_factory=list)
    secrets: list[str] = dataclasses.field(default_factory=list)
    dead_letters: int = 0
    unfinished_journal: int = 0

    @property
    def problems(self) -> list[str]:
        return [*self.duplicates, *self.lost, *self.wrong, *self.secrets]


def outcomes(figures: Figures, workload: Workload) -> None:
    """Each request's final answer against the DC's count of password writes (see module doc)."""
    for sent in workload.sent:
        figures.by_operation[sent.operation] += 1
        for status, _ in sent.answers[:-1]:
            figures.answers[_answer_kind(status)] += 1
        if sent.final is None:
            figures.finals["(no final outcome)"] += 1
            figures.lost.append(f"{sent.request_id} ({sent.operation}): no final outcome")
            continue
        status, reason = sent.final.get("status"), sent.final.get("reason")
        figures.finals[f"{status} {reason}"] += 1
        if sent.written > 1:
            figures.duplicates.append(
                f"{sent.request_id} ({sent.operation}): the password written {sent.written} times"
            )
        problem = _judge(sent, str(status), str(reason))
        what = f"{sent.request_id} ({sent.operation} of {sent.user}, {status} {reason})"
        if problem:
            figures.wrong.append(f"{what}: {problem}")


def _answer_kind(status: int) -> str:
    kinds = {0: "connection failed", 200: "200 pending on GET", 409: "409, looked up"}
    kinds |= {503: "503 (resent, same id)", 504: "504 pending, polled"}
    return kinds.get(status, f"{status} before the final answer")


def _judge(sent: Sent, status: str, reason: str) -> str | None:
    """What is wrong with this outcome, judged against what the DC did; None if nothing."""
    if status == "applied":
        if sent.expected != "applied":
            return f"expected {sent.expected}"
        if sent.new_password is not None and sent.written != 1:
            return f"reported applied, the DC's password written {sent.written} times"
        if sent.new_password is None and sent.written:
            return "an unlock or expire changed the password"
        if sent.operation == "expire" and sent.pwd_last_set_after != "0":
            return "expire reported applied, pwdLastSet is not 0"
        return None
    if reason == UNKNOWN:
        return None  # honest: the caller is told to check; the DC count says what happened
    if sent.written:
        return f"reported {reason}, but the DC's password was written"
    if status == "rejected" and reason == THROTTLED and sent.operation == "change":
        return None  # the lockout guard: bad attempts of redeliveries counted (docs/reliability.md)
    if status == "rejected" and reason not in (sent.expected, SUPERSEDED):
        return f"rejected, expected {sent.expected}"
    return None


def audit(figures: Figures, workload: Workload, storage: str) -> None:
    """The caller's final answer is the audit trail's, and every request is in it."""
    table = TableClient.from_connection_string(storage, AUDIT_TABLE)
    with table:
        entities = {
            str(e["PartitionKey"]): e
            for e in table.list_entities()
            if not str(e["PartitionKey"]).startswith("~")
        }
    for sent in workload.sent:
        if sent.final is None:
            continue
        entity = entities.get(sent.request_id)
        if entity is None:
            figures.lost.append(f"{sent.request_id}: answered, but not in the audit trail")
            continue
        recorded = (entity.get("status"), entity.get("reason"))
        answered = (sent.final.get("status"), sent.final.get("reason"))
        if recorded != answered:
            figures.wrong.append(
                f"{sent.request_id}: the caller was told {answered}, the audit trail {recorded}"
            )


def journals(figures: Figures, workload: Workload, paths: Iterable[Path]) -> None:
    """No password written by two relays: no reset or change finished `applied` as a write of
    its own in two journals (a relay that found the other's write in effect journals "applied
    by an earlier delivery"; an unlock is written again by design, lockoutTime = 0 twice);
    none applied where the caller was told otherwise; entries left unfinished are counted."""
    applied: collections.Counter[str] = collections.Counter()
    written: collections.Counter[str] = collections.Counter()
    query = "SELECT request_id, state, operation, outcome FROM requests"
    for path in paths:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for request_id, state, operation, outcome in db.execute(query):
                if state == "applied":
                    applied[request_id] += 1
                    recognised = EARLIER_DELIVERY in json.loads(outcome or "{}").get("detail", "")
                    if operation in ("reset", "change") and not recognised:
                        written[request_id] += 1
                elif state in ("received", "applying"):
                    figures.unfinished_journal += 1
    for request_id, count in written.items():
        if count > 1:
            figures.duplicates.append(f"{request_id}: written by {count} relays (journals)")
    for sent in workload.sent:
        told = None if sent.final is None else sent.final.get("status")
        if applied[sent.request_id] and told not in (None, "applied"):
            figures.wrong.append(f"{sent.request_id}: journaled applied, the caller told {told}")


def directory(figures: Figures, workload: Workload, dc: SambaDC, probe: DirectoryProbe) -> None:
    """Each user's final password binds and is the last applied one; no write came late."""
    mine: dict[str, list[Sent]] = collections.defaultdict(list)
    for sent in sorted(workload.sent, key=lambda s: s.number):
        mine[sent.user].append(sent)
    for upn, user in workload.users.items():
        expected, must_change = _expected(user, mine[upn])
        version, pwd_last_set = probe.read(user.account.dn)
        counted = user.initial_version + sum(max(0, s.written) for s in mine[upn])
        if version != counted:
            figures.duplicates.append(
                f"{upn}: unicodePwd version {version}, the requests account for {counted}"
            )
        if not binds(dc, upn, expected):
            figures.wrong.append(f"{upn}: the password of its last applied request does not bind")
        if must_change is not None and (pwd_last_set == "0") != must_change:
            figures.wrong.append(f"{upn}: must change at next logon is {pwd_last_set == '0'}")


UNKNOWN = Reason.REQUEST_OUTCOME_UNKNOWN.value


def _expected(user: PoolUser, history: list[Sent]) -> tuple[str, bool | None]:
    """The password and must-change flag the user has now: the last applied write's, or a later
    request's that the DC took whatever its answer said (that answer is judged in `outcomes`).
    The flag is None (either is right) after an expire answered `request.outcome_unknown`: its
    modify was sent and its answer lost, and unlike a password it leaves no version to count."""
    password, must_change = user.account.password, False
    unknown: bool | None = None
    for sent in history:
        final = sent.final or {}
        if sent.new_password is not None and sent.written >= 1:
            password, must_change, unknown = sent.new_password, sent.force_change, None
        elif sent.operation == "expire" and final.get("status") == "applied":
            must_change, unknown = True, None
        elif sent.operation == "expire" and final.get("reason") == UNKNOWN:
            unknown = True
    return password, None if unknown else must_change


def binds(dc: SambaDC, upn: str, password: str) -> bool:
    """Whether AD takes the password (data 773, must change at next logon, counts as taken)."""
    try:
        dc.connection(upn, password).unbind()
    except LDAPBindError as exc:
        return "data 773" in str(exc)
    except LDAPException:
        return False
    return True


def secrets(
    figures: Figures,
    passwords: set[str],
    files: Iterable[Path],
    bus: LocalServiceBus,
    queues: Iterable[str],
) -> None:
    """No password the soak sent is in a log, journal, storage file or dead-lettered message."""
    needles = [(p, p.encode()) for p in passwords] + [(p, p.encode("utf-16-le")) for p in passwords]
    haystacks: list[tuple[str, bytes]] = [(str(f), f.read_bytes()) for f in files if f.is_file()]
    for queue in queues:
        for message in bus.broker.peek(f"{queue}/$DeadLetterQueue", 100_000):
            figures.dead_letters += 1
            raw: Any = message.raw
            body = raw if isinstance(raw, bytes) else repr(raw).encode()
            text = f"{message.dead_letter_reason} {message.dead_letter_description}".encode()
            haystacks.append((f"dead letter on {queue}", body + text))
    found = {name for name, data in haystacks for _, needle in needles if needle in data}
    figures.secrets += [f"a password the soak sent is in {name}" for name in sorted(found)]
