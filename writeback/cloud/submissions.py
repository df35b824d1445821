"""What a caller asks the writeback API for, read strictly from the HTTP request body.

A body is a JSON object with exactly the fields of its operation; anything missing, extra or
mistyped is an `InvalidInput` naming the field (HTTP 400), before anything is routed, sealed or
sent. Passwords arrive either in clear (`newPassword`, `oldPassword`: the Function seals them at
once) or already sealed by the caller (`sealedPassword`: a JWE of the writeback secrets object
to the domain's relay keys, bound to `requestId`, `expiresAt`, the user and the operation; see
docs/api.md). `user` is any account reference (`writeback.protocol.accounts`: a UPN, a SID, a
GUID or immutable ID, `DOMAIN\\name`), kept in its canonical spelling; `domain` optionally names
the AD domain (required for a GUID when several are served). A password never appears in an
error: problems name the field, not the value.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from writeback.protocol import Initiator, Operation
from writeback.protocol.accounts import AccountRef, BadReference
from writeback.protocol.commands import WITHOUT_SECRETS
from writeback.protocol.messages import (
    MAX_LIFETIME_SECONDS,
    MAX_MESSAGE_BYTES,
    DuplicateKey,
    Secrets,
    domain_problem,
    password_problem,
    strict_json,
)

INVALID = "request.invalid"
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
_FIELDS: dict[Operation, set[str]] = {
    Operation.RESET: {
        "user",
        "newPassword",
        "sealedPassword",
        "initiator",
        "unlock",
        "forceChangeAtNextLogon",
        "requestId",
        "expiresAt",
        "domain",
    },
    Operation.CHANGE: {
        "user",
        "oldPassword",
        "newPassword",
        "sealedPassword",
        "requestId",
        "expiresAt",
        "domain",
    },
    Operation.UNLOCK: {"user", "requestId", "domain"},
    Operation.EXPIRE: {"user", "requestId", "domain"},
}


class InvalidInput(ValueError):
    """The body cannot be accepted; `field` names the culprit and `reason` is the public code."""

    def __init__(self, field: str | None, problem: str, reason: str = INVALID) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem
        self.reason = reason


@dataclass(frozen=True)
class Submission:
    """One validated writeback request, before routing. `secrets` hides its values; `user` is
    the canonical spelling of the account reference, `domain` the caller's (lower case)."""

    operation: Operation
    user: str
    initiator: Initiator | None = None
    unlock: bool = False
    force_change_at_next_logon: bool = False
    secrets: Secrets | None = field(default=None, repr=False)
    sealed: dict[str, object] | None = field(default=None, repr=False)
    request_id: str | None = None
    expires_at: int | None = None
    domain: str | None = None

    @property
    def sealed_by_caller(self) -> bool:
        return self.sealed is not None


def read_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (InvalidInput otherwise)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidInput(None, f"the body is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        body = strict_json(raw)
    except DuplicateKey as exc:
        raise InvalidInput(exc.member, "appears twice in the body") from None
    except (ValueError, RecursionError):
        raise InvalidInput(None, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput(None, "the body must be a JSON object")
    return body


def parse(operation: Operation, body: dict[str, Any], now: float | None = None) -> Submission:
    """The submission in `body`, checked field by field."""
    allowed = _FIELDS[operation]
    extra = sorted(set(body) - allowed)
    if extra:
        raise InvalidInput(str(extra[0])[:64], "unknown field")
    user = user_reference(_text(body, "user", required=True))
    domain = _text(body, "domain")
    if domain is not None:
        if problem := domain_problem(domain.lower()):
            raise InvalidInput("domain", problem)
        domain = domain.lower()
    request_id = _text(body, "requestId")
    if request_id is not None and not REQUEST_ID.fullmatch(request_id):
        raise InvalidInput("requestId", "must be 8 to 128 characters of A-Z a-z 0-9 . _ : -")
    if operation in WITHOUT_SECRETS:
        return Submission(operation, user, request_id=request_id, domain=domain)

    sealed = body.get("sealedPassword")
    secrets: Secrets | None = None
    expires_at: int | None = None
    clear = [name for name in ("oldPassword", "newPassword") if name in body]
    if sealed is not None:
        if clear:
            raise InvalidInput(clear[0], "give either sealedPassword or passwords in clear")
        if not isinstance(sealed, dict) or not isinstance(sealed.get("recipients"), list):
            raise InvalidInput("sealedPassword", "must be a JWE in general JSON serialization")
        if request_id is None:
            raise InvalidInput("requestId", "is required with sealedPassword (it is sealed in)")
        expires_at = _expiry(body, now if now is not None else time.time())
    else:
        if "expiresAt" in body:
            raise InvalidInput("expiresAt", "is only given with sealedPassword")
        new = _password(body, "newPassword")
        old = _password(body, "oldPassword") if operation is Operation.CHANGE else None
        secrets = Secrets(new_password=new, old_password=old)

    if operation is Operation.CHANGE:
        return Submission(
            operation, user, secrets=secrets, sealed=sealed, request_id=request_id,
            expires_at=expires_at, domain=domain,
        )  # fmt: skip
    initiator, unlock, force = _reset_options(body)
    return Submission(
        operation,
        user,
        initiator=initiator,
        unlock=unlock,
        force_change_at_next_logon=force,
        secrets=secrets,
        sealed=sealed,
        request_id=request_id,
        expires_at=expires_at,
        domain=domain,
    )


def user_reference(text: str) -> str:
    """The canonical spelling of the account reference `text` (InvalidInput naming `user`, with
    the parser's words, otherwise)."""
    try:
        return str(AccountRef.parse(text))
    except BadReference as exc:
        raise InvalidInput("user", str(exc)) from None


def _reset_options(body: dict[str, Any]) -> tuple[Initiator, bool, bool]:
    """Who started a reset, and whether it unlocks and forces a change at next logon."""
    initiator_value = _text(body, "initiator", required=True)
    try:
        initiator = Initiator(initiator_value)
    except ValueError:
        raise InvalidInput("initiator", "must be self-service or admin") from None
    unlock = _flag(body, "unlock")
    force = _flag(body, "forceChangeAtNextLogon")
    if force and initiator is Initiator.SELF_SERVICE:
        # A user who just chose a password is not made to change it again; only a helpdesk
        # (admin role) hands out a password the user must replace.
        raise InvalidInput("forceChangeAtNextLogon", "is only for admin resets")
    return initiator, unlock, force


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidInput(name, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(name, "must be a string")
    return value


def _password(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidInput(name, "is required (a string)" if value is None else "must be a string")
    if problem := password_problem(value):
        raise InvalidInput(name, problem)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(name, "must be true or false")
    return value


def _expiry(body: dict[str, Any], now: float) -> int:
    value = body.get("expiresAt")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("expiresAt", "is required with sealedPassword (Unix seconds)")
    if not now < value <= now + MAX_LIFETIME_SECONDS:
        raise InvalidInput(
            "expiresAt", f"must be in the future and at most {MAX_LIFETIME_SECONDS}s away"
        )
    return value
