"""In-memory fakes for tests: a directory connection that never touches a network.

`FakeLink` stands in for `writeback.relay.ldap.Link`, the one bound connection to a DC that
`LdapDirectory` uses. It serves a small dict of entries keyed by DN (raw attribute values as
bytes, as ldap3 returns them), evaluates the LDAP filters the relay sends, records every search
and every modify, and answers modifies from a queue of recorded DC answers (success when the queue
is empty). It never applies a modify to its entries. It keeps no bind password, but the modifies
it records hold the encoded unicodePwd values the relay sent: that is what tests assert on, so a
FakeLink must never be logged or kept beyond its test.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import ldap3
from ldap3.utils.dn import parse_dn

from writeback.errors import DirectoryError
from writeback.relay.ldap import DomainController, Link
from writeback.relay.settings import DirectorySettings, ServerAddress

RawEntry = dict[str, list[bytes]]
Matcher = Callable[[Mapping[str, list[bytes]]], bool]
Answer = tuple[int, str] | DirectoryError
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_ESCAPED = re.compile(r"\\([0-9A-Fa-f]{2})")


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
        matches = parse_filter(query)
        found = [
            (dn, _project(raw, attributes))
            for dn, raw in self.entries.items()
            if _in_scope(dn, base, scope) and matches(raw)
        ]
        return found[:size_limit] if size_limit > 0 else found

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


# -- a small RFC 4515 filter evaluator ---------------------------------------------------------
def parse_filter(text: str) -> Matcher:
    """A predicate for an LDAP filter: and, or, not, equality, presence and substrings.

    Values compare case-insensitively (the relay only filters on case-insensitive attributes),
    and `objectCategory=person` matches AD's stored category DN `CN=Person,CN=Schema,...`.
    """
    matcher, end = _parse(text, 0)
    if end != len(text):
        raise ValueError(f"trailing text after filter: {text!r}")
    return matcher


def _parse(text: str, pos: int) -> tuple[Matcher, int]:
    if text[pos : pos + 1] != "(":
        raise ValueError(f"expected '(' at {pos} in {text!r}")
    op = text[pos + 1 : pos + 2]
    if op in ("&", "|"):
        parts: list[Matcher] = []
        pos += 2
        while text[pos : pos + 1] == "(":
            part, pos = _parse(text, pos)
            parts.append(part)
        combine = all if op == "&" else any
        return (lambda raw: combine(p(raw) for p in parts)), _close(text, pos)
    if op == "!":
        inner, pos = _parse(text, pos + 2)
        return (lambda raw: not inner(raw)), _close(text, pos)
    end = text.index(")", pos)  # a ')' inside a value is always escaped as \29
    attribute, sep, value = text[pos + 1 : end].partition("=")
    if not sep or not attribute or attribute[-1] in "~<>:":
        raise ValueError(f"unsupported filter item {text[pos : end + 1]!r}")
    return _item(attribute, value), end + 1


def _close(text: str, pos: int) -> int:
    if text[pos : pos + 1] != ")":
        raise ValueError(f"expected ')' at {pos} in {text!r}")
    return pos + 1


def _item(attribute: str, value: str) -> Matcher:
    if value == "*":
        if attribute.lower() == "objectclass":
            return lambda raw: True  # every entry has an objectClass
        return lambda raw: bool(_values(raw, attribute))
    if "*" in value:
        pattern = re.compile(
            ".*".join(re.escape(_unescape(piece)) for piece in value.split("*")),
            re.IGNORECASE | re.DOTALL,
        )
        return lambda raw: any(pattern.fullmatch(v) for v in _texts(raw, attribute))
    wanted = _unescape(value).casefold()
    if attribute.lower() == "objectcategory" and "=" not in wanted:
        return lambda raw: any(
            wanted in (v.casefold(), _first_rdn_value(v).casefold()) for v in _texts(raw, attribute)
        )
    return lambda raw: any(v.casefold() == wanted for v in _texts(raw, attribute))


def _unescape(value: str) -> str:
    out = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(value):
        out += value[pos : match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += value[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


def _values(raw: Mapping[str, list[bytes]], attribute: str) -> list[bytes]:
    wanted = attribute.lower()
    return next((v for name, v in raw.items() if name.lower() == wanted), [])


def _texts(raw: Mapping[str, list[bytes]], attribute: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in _values(raw, attribute)]


def _first_rdn_value(dn: str) -> str:
    return dn.split(",", 1)[0].partition("=")[2]


def _project(raw: RawEntry, attributes: Sequence[str]) -> RawEntry:
    if "*" in attributes:
        return {name: list(values) for name, values in raw.items()}
    wanted = {a.lower() for a in attributes}
    return {name: list(values) for name, values in raw.items() if name.lower() in wanted}


def _normalised(dn: str) -> tuple[tuple[str, str], ...]:
    if not dn:
        return ()
    return tuple((a.lower(), v.lower()) for a, v, _ in parse_dn(dn, escape=False))


def _in_scope(dn: str, base: str, scope: str) -> bool:
    target, top = _normalised(dn), _normalised(base)
    if scope == ldap3.BASE:
        return target == top
    if len(target) < len(top) or target[len(target) - len(top) :] != top:
        return False
    return scope == ldap3.SUBTREE or len(target) == len(top) + 1
