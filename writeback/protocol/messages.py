"""The wire format: versioned request, outcome and heartbeat messages, parsed strictly.

Every message is a JSON object with a version `v` and a `type`; a parser accepts exactly the
fields of its version (a missing, extra or mistyped field is refused, naming the field), checks
every limit (UPN syntax and length, password length in UTF-16 code units, sizes, lifetimes) and
raises nothing but `ProtocolError`. The secrets of a request travel sealed (see
`writeback.sealing`); the parsers here see them only as the sealed JWE object, and the plaintext
`Secrets` they open to hide their values from `repr`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from writeback.errors import ProtocolError
from writeback.protocol.accounts import (
    Account,
    AccountRef,
    AnchorKind,
    BadReference,
    reference_problem,
    upn_problem,
)
from writeback.protocol.commands import WITHOUT_SECRETS, Initiator, Operation
from writeback.protocol.reasons import Reason, Status

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # far below Service Bus Standard's 256 KiB
MAX_PASSWORD_UTF16 = 256  # MS-SAMR's limit for a cleartext password
MAX_LIFETIME_SECONDS = 600  # a request older than this is never applied
MAX_TEXT = 2000  # outcome message and detail, heartbeat error
MALFORMED = Reason.REQUEST_MALFORMED.value

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ID_RULE = "1 to 128 characters of A-Z a-z 0-9 . _ : -"
_RELAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# W3C Trace Context, version 00: the caller's trace travels to the relay so both sides' logs and
# spans join one trace. All-zero trace or parent ids are invalid (the spec says so).
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def utf16_length(text: str) -> int:
    """Length as AD counts it: UTF-16 code units (a character outside the BMP counts two)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def domain_problem(domain: str) -> str | None:
    """Why `domain` is not a lower-case DNS domain name, or None."""
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        return "must be a lower-case DNS domain name such as corp.example.com"
    return None


def password_problem(password: str) -> str | None:
    """Why no directory could take `password`, or None (policy is the relay's business)."""
    if not password:
        return "is empty"
    if "\x00" in password:
        return "contains a NUL character"
    if any("\ud800" <= char <= "\udfff" for char in password):
        # JSON can carry a lone surrogate ("\ud800"); UTF-16 cannot encode it for unicodePwd.
        return "contains an unpaired surrogate"
    if utf16_length(password) > MAX_PASSWORD_UTF16:
        return f"is longer than {MAX_PASSWORD_UTF16} UTF-16 code units"
    return None


class _Fields:
    """Strict access to one JSON object: every field read once, none left over."""

    def __init__(
        self, value: object, where: str, expected: set[str], optional: frozenset[str] = frozenset()
    ) -> None:
        """`optional` fields may be absent (read as null): fields a later version added, which
        an earlier sender leaves out."""
        if not isinstance(value, dict):
            raise ProtocolError(MALFORMED, "must be a JSON object", where or None)
        missing = sorted(expected - optional - value.keys())
        extra = sorted(set(value) - expected)
        if missing:
            raise ProtocolError(MALFORMED, "missing", self._name(where, missing[0]))
        if extra:
            raise ProtocolError(MALFORMED, "unknown field", self._name(where, str(extra[0])))
        self.value: dict[str, Any] = dict.fromkeys(optional) | value
        self.where = where

    @staticmethod
    def _name(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def _fail(self, key: str, problem: str) -> ProtocolError:
        return ProtocolError(MALFORMED, problem, self._name(self.where, key))

    def text(self, key: str, *, limit: int = MAX_TEXT, nullable: bool = False) -> Any:
        item = self.value[key]
        if item is None and nullable:
            return None
        if not isinstance(item, str) or len(item) > limit:
            raise self._fail(key, f"must be a string of at most {limit} characters")
        return item

    def integer(self, key: str, *, minimum: int = 0) -> int:
        item = self.value[key]
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise self._fail(key, f"must be an integer >= {minimum}")
        return item

    def boolean(self, key: str) -> bool:
        item = self.value[key]
        if not isinstance(item, bool):
            raise self._fail(key, "must be true or false")
        return item

    def matching(self, key: str, pattern: re.Pattern[str], what: str) -> str:
        item = self.value[key]
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise self._fail(key, f"must be {what}")
        return item

    def checked(self, key: str, problem: Any) -> str:
        item = self.text(key)
        why = problem(item)
        if why:
            raise self._fail(key, why)
        return str(item)

    def choice(self, key: str, kind: Any) -> Any:
        try:
            return kind(self.value[key])
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise self._fail(key, f"must be one of {allowed}") from None

    def header(self, kind: str) -> None:
        if self.value["v"] != VERSION:
            raise self._fail("v", f"unsupported version {self.value['v']!r}, expected {VERSION}")
        if self.value["type"] != kind:
            raise self._fail("type", f"must be {kind!r}")


class DuplicateKey(ValueError):
    """A JSON object names the same member twice; `member` is its name (cut to 64)."""

    def __init__(self, member: str) -> None:
        self.member = member[:64]
        super().__init__(f"the member {self.member!r} appears twice")


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    members: dict[str, object] = {}
    for name, value in pairs:
        if name in members:
            raise DuplicateKey(name)
        members[name] = value
    return members


def strict_json(raw: bytes | str) -> object:
    """`json.loads`, refusing an object that names a member twice: Python keeps the last one,
    while a log, proxy or firewall in front may read the first, so the two would disagree on
    which user a request is about. Raises ValueError (DuplicateKey) or RecursionError."""
    return json.loads(raw, object_pairs_hook=_unique_members)


def decode(raw: bytes | str, what: str) -> object:
    """Parse a JSON message of at most MAX_MESSAGE_BYTES."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(MALFORMED, f"{what} is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        return strict_json(raw)
    except DuplicateKey as exc:
        raise ProtocolError(MALFORMED, f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(MALFORMED, f"{what} is not valid JSON") from exc


def encode(payload: Mapping[str, object]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8 (also what the AAD binding hashes)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Secrets:
    """The plaintext inside a request's JWE. Never printed: the values are out of the repr."""

    new_password: str | None = field(default=None, repr=False)
    old_password: str | None = field(default=None, repr=False)

    def to_payload(self) -> dict[str, object]:
        payload: dict[str, object] = {"v": VERSION}
        if self.new_password is not None:
            payload["newPassword"] = self.new_password
        if self.old_password is not None:
            payload["oldPassword"] = self.old_password
        return payload

    @classmethod
    def parse(cls, value: object, operation: Operation) -> Secrets:
        expected = {"v", "newPassword"} | (
            {"oldPassword"} if operation is Operation.CHANGE else set()
        )
        fields = _Fields(value, "secrets", expected)
        if fields.value["v"] != VERSION:
            raise ProtocolError(MALFORMED, "unsupported version", "secrets.v")
        new = fields.checked("newPassword", password_problem)
        old = fields.checked("oldPassword", password_problem) if "oldPassword" in expected else None
        return cls(new_password=new, old_password=old)


@dataclass(frozen=True)
class RequestMessage:
    """A request as it travels to the relays: signed by the cloud, secrets sealed to the relays."""

    id: str
    domain: str
    operation: Operation
    # Who the request is about: an account reference in canonical form (`AccountRef`), a UPN,
    # a SID, a GUID or DOMAIN\\name; the relay finds the one account it names.
    user: str
    issued_at: int
    expires_at: int
    initiator: Initiator | None = None
    unlock: bool = False
    force_change_at_next_logon: bool = False
    sealed: Mapping[str, object] | None = field(default=None, repr=False)
    traceparent: str | None = None
    # The outcomes session the relay must answer on: the sending cloud instance's own session,
    # on which it waits for many requests at once. Signed, so only the cloud chooses where an
    # outcome goes; None means the request's own session (id). Not part of the binding: a
    # caller seals before it can know which instance will send its request.
    reply_session: str | None = None

    def binding(self) -> bytes:
        """What the sealed secrets are bound to (JWE additional authenticated data)."""
        return encode(
            {
                "v": VERSION,
                "id": self.id,
                "domain": self.domain,
                "operation": self.operation.value,
                "user": self.user,
                "exp": self.expires_at,
            }
        )

    def to_payload(self) -> dict[str, object]:
        return {
            "v": VERSION,
            "type": "request",
            "id": self.id,
            "domain": self.domain,
            "operation": self.operation.value,
            "user": self.user,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "initiator": self.initiator.value if self.initiator else None,
            "unlock": self.unlock,
            "forceChangeAtNextLogon": self.force_change_at_next_logon,
            "sealed": dict(self.sealed) if self.sealed is not None else None,
            "traceparent": self.traceparent,
            "replySession": self.reply_session,
        }

    @classmethod
    def parse(cls, value: object) -> RequestMessage:
        fields = _Fields(
            value,
            "",
            {
                "v",
                "type",
                "id",
                "domain",
                "operation",
                "user",
                "iat",
                "exp",
                "initiator",
                "unlock",
                "forceChangeAtNextLogon",
                "sealed",
                "traceparent",
                "replySession",
            },
        )
        fields.header("request")
        operation: Operation = fields.choice("operation", Operation)
        issued_at, expires_at = fields.integer("iat"), fields.integer("exp")
        if not issued_at < expires_at <= issued_at + MAX_LIFETIME_SECONDS:
            raise ProtocolError(
                MALFORMED, f"must be after iat and at most {MAX_LIFETIME_SECONDS}s later", "exp"
            )
        initiator = (
            None if fields.value["initiator"] is None else fields.choice("initiator", Initiator)
        )
        sealed = fields.value["sealed"]
        message = cls(
            id=fields.matching("id", _ID, _ID_RULE),
            domain=fields.checked("domain", domain_problem),
            operation=operation,
            user=fields.checked("user", reference_problem),
            issued_at=issued_at,
            expires_at=expires_at,
            initiator=initiator,
            unlock=fields.boolean("unlock"),
            force_change_at_next_logon=fields.boolean("forceChangeAtNextLogon"),
            sealed=sealed if isinstance(sealed, dict) else None,
            traceparent=(
                None
                if fields.value["traceparent"] is None
                else fields.matching("traceparent", TRACEPARENT, "a W3C traceparent (version 00)")
            ),
            reply_session=(
                None
                if fields.value["replySession"] is None
                else fields.matching("replySession", _ID, _ID_RULE)
            ),
        )
        is_reset = operation is Operation.RESET
        if (initiator is None) == is_reset:
            raise ProtocolError(
                MALFORMED, "is required for a reset and only for a reset", "initiator"
            )
        if not is_reset and (message.unlock or message.force_change_at_next_logon):
            raise ProtocolError(MALFORMED, "only a reset may unlock or force a change", "unlock")
        if (sealed is None) != (operation in WITHOUT_SECRETS):
            raise ProtocolError(
                MALFORMED,
                "a reset or change carries sealed secrets, an unlock or expire none",
                "sealed",
            )
        if sealed is not None and not isinstance(sealed, dict):
            raise ProtocolError(MALFORMED, "must be a JWE in JSON serialization", "sealed")
        return message


@dataclass(frozen=True)
class OutcomeMessage:
    """A relay's answer to one request, signed by that relay."""

    request_id: str
    domain: str
    relay: str
    reason: Reason
    message: str
    detail: str
    completed_at: int
    duration_ms: int
    # The account the relay resolved the request's user to; None when it found none (or is of
    # a version before accounts travelled).
    account: Account | None = None

    @property
    def status(self) -> Status:
        return self.reason.status

    def to_payload(self) -> dict[str, object]:
        return {
            "v": VERSION,
            "type": "outcome",
            "requestId": self.request_id,
            "domain": self.domain,
            "relay": self.relay,
            "status": self.status.value,
            "reason": self.reason.value,
            "message": self.message,
            "detail": self.detail,
            "completedAt": self.completed_at,
            "durationMs": self.duration_ms,
            "account": self.account.to_payload() if self.account else None,
        }

    @classmethod
    def parse(cls, value: object) -> OutcomeMessage:
        fields = _Fields(
            value,
            "",
            {
                "v",
                "type",
                "requestId",
                "domain",
                "relay",
                "status",
                "reason",
                "message",
                "detail",
                "completedAt",
                "durationMs",
                "account",
            },
            optional=frozenset({"account"}),
        )
        fields.header("outcome")
        reason: Reason = fields.choice("reason", Reason)
        if fields.choice("status", Status) is not reason.status:
            raise ProtocolError(
                MALFORMED, f"must be {reason.status.value} for {reason.value}", "status"
            )
        return cls(
            request_id=fields.matching("requestId", _ID, "a request id"),
            domain=fields.checked("domain", domain_problem),
            relay=fields.matching("relay", _RELAY_ID, "a relay id"),
            reason=reason,
            message=fields.text("message"),
            detail=fields.text("detail"),
            completed_at=fields.integer("completedAt"),
            duration_ms=fields.integer("durationMs"),
            account=_account(fields.value["account"]),
        )


@dataclass(frozen=True)
class Heartbeat:
    """A relay's periodic sign of life: what it can do and the domain's password rules."""

    relay: str
    domain: str
    version: str
    sent_at: int
    capabilities: Mapping[str, str | int | bool | None]
    policy: Mapping[str, object] | None
    last_error: str | None
    # The domain's other names, read from the DC: the cloud routes a request naming its user
    # by SID (domain SID) or DOMAIN\\name (NetBIOS name) to the domain whose relays send them.
    netbios: str | None = None
    domain_sid: str | None = None

    def to_payload(self) -> dict[str, object]:
        return {
            "v": VERSION,
            "type": "heartbeat",
            "relay": self.relay,
            "domain": self.domain,
            "version": self.version,
            "sentAt": self.sent_at,
            "capabilities": dict(self.capabilities),
            "policy": dict(self.policy) if self.policy is not None else None,
            "lastError": self.last_error,
            "netbios": self.netbios,
            "domainSid": self.domain_sid,
        }

    @classmethod
    def parse(cls, value: object) -> Heartbeat:
        fields = _Fields(
            value,
            "",
            {
                "v",
                "type",
                "relay",
                "domain",
                "version",
                "sentAt",
                "capabilities",
                "policy",
                "lastError",
                "netbios",
                "domainSid",
            },
            optional=frozenset({"netbios", "domainSid"}),
        )
        fields.header("heartbeat")
        capabilities = fields.value["capabilities"]
        if not isinstance(capabilities, dict) or not all(
            isinstance(v, str | int | bool) or v is None for v in capabilities.values()
        ):
            raise ProtocolError(MALFORMED, "must be an object of scalar values", "capabilities")
        policy = fields.value["policy"]
        if policy is not None and not isinstance(policy, dict):
            raise ProtocolError(MALFORMED, "must be an object or null", "policy")
        return cls(
            relay=fields.matching("relay", _RELAY_ID, "a relay id"),
            domain=fields.checked("domain", domain_problem),
            version=fields.text("version", limit=64),
            sent_at=fields.integer("sentAt"),
            capabilities=capabilities,
            policy=policy,
            last_error=fields.text("lastError", nullable=True),
            netbios=(
                None if fields.value["netbios"] is None else fields.checked("netbios", _netbios)
            ),
            domain_sid=(
                None
                if fields.value["domainSid"] is None
                else fields.checked("domainSid", _domain_sid)
            ),
        )


def _of_kind(text: str, kind: AnchorKind) -> bool:
    """Whether `text` is a reference of `kind` in its canonical spelling."""
    try:
        ref = AccountRef.parse(text)
    except BadReference:
        return False
    return ref.kind is kind and ref.value == text


def _netbios(name: str) -> str | None:
    ok = _of_kind(name + "\\x", AnchorKind.SAM)
    return None if ok else "must be a NetBIOS domain name in upper case"


def _domain_sid(sid: str) -> str | None:
    ok = sid.startswith("S-1-5-21-") and _of_kind(sid + "-1", AnchorKind.SID)
    return None if ok else "must be a domain SID (S-1-5-21-...)"


def _guid(text: str) -> str | None:
    return None if _of_kind(text, AnchorKind.GUID) else "must be a GUID in lower case"


def _sid(text: str) -> str | None:
    return None if _of_kind(text, AnchorKind.SID) else "must be a SID (S-1-...)"


def _account(value: object) -> Account | None:
    """The outcome's `account`: null, or the resolved account's names (its GUID required)."""
    if value is None:
        return None
    fields = _Fields(value, "account", {"guid", "sid", "upn", "samAccountName"})
    guid = fields.checked("guid", _guid)
    sid = fields.value["sid"]
    upn = fields.value["upn"]
    return Account(
        guid=guid,
        sid=None if sid is None else fields.checked("sid", _sid),
        upn=None if upn is None else fields.checked("upn", upn_problem),
        sam_account_name=fields.text("samAccountName", limit=20, nullable=True),
    )
