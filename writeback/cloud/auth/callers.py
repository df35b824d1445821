"""Who called and what they may do: the API's app roles, the role each call needs, the `Caller`
an authenticated request becomes, and the reasons a caller is refused.

Pure vocabulary, no I/O: nothing here verifies a credential (that is `authenticator`). A `Caller`
says who called, for the audit, and must never hold how they proved it: no token, key or part of
either.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from writeback.errors import AuthError
from writeback.protocol import Initiator, Operation


class Role(enum.StrEnum):
    """The app roles of the API's app registration; each call needs exactly one of them."""

    RESET_SELF_SERVICE = "Writeback.Reset.SelfService"
    RESET_ADMIN = "Writeback.Reset.Admin"
    CHANGE = "Writeback.Change"
    UNLOCK = "Writeback.Unlock"
    EXPIRE = "Writeback.Expire"
    READ = "Writeback.Read"


ALL_ROLES = frozenset(Role)
READ = "read"  # the operation of every read: request status, health, relay keys, policy


def required_role(
    operation: Operation | Literal["read"], initiator: Initiator | None = None
) -> Role:
    """The role a call needs. A reset must say who started it: an admin reset needs more."""
    if operation == Operation.RESET:
        if initiator is None:
            raise ValueError("a reset needs its initiator to choose the role")
        return Role.RESET_ADMIN if initiator == Initiator.ADMIN else Role.RESET_SELF_SERVICE
    if operation == Operation.CHANGE:
        return Role.CHANGE
    if operation == Operation.UNLOCK:
        return Role.UNLOCK
    if operation == Operation.EXPIRE:
        return Role.EXPIRE
    if operation == READ:
        return Role.READ
    raise ValueError(f"no role is defined for operation {operation!r}")


class AuthReason(enum.StrEnum):
    """Why a caller was refused; `status` is the HTTP status to answer with."""

    MISSING = "auth.missing"
    INVALID_TOKEN = "auth.invalid_token"  # noqa: S105 - a reason code, not a credential
    INVALID_KEY = "auth.invalid_key"
    FORBIDDEN = "auth.forbidden"
    OTHER_USER = "auth.other_user"  # a signed-in user named an account not their own
    STEP_UP_REQUIRED = "auth.step_up_required"  # sign in again with strong verification
    KEYS_UNAVAILABLE = "auth.keys_unavailable"  # our problem, not the caller's: retry later

    @property
    def status(self) -> int:
        forbidden = {"auth.forbidden": 403, "auth.other_user": 403}
        return {**forbidden, "auth.keys_unavailable": 503}.get(self.value, 401)


def refuse(reason: AuthReason, problem: str, challenge: str | None = None) -> AuthError:
    """The error that refuses a caller for `reason`, with its HTTP status (and, for a 401, the
    `WWW-Authenticate` challenge to answer with when it is more than `Bearer`)."""
    return AuthError(reason.value, problem, reason.status, challenge=challenge)


@dataclass(frozen=True)
class Caller:
    """Who called, as the audit records it; never the token or key that proved it.

    `identity` is one readable string: `entra-user:<upn> oid=<oid>`, `entra-app:<client id>
    oid=<oid>` (an application calling as itself) or `api-key:<fingerprint>` (a short hash that
    tells keys apart and cannot be reversed). `client_id` is the application that obtained the
    token (`azp`/`appid`), `token_id` Entra's `uti`, to find the token in the sign-in logs.
    """

    kind: Literal["entra", "api-key"]
    identity: str
    roles: frozenset[str]
    tenant: str | None = None
    object_id: str | None = None
    client_id: str | None = None
    name: str | None = None
    application: bool = False
    token_id: str | None = None
    on_premises_sid: str | None = None
    acrs: frozenset[str] = frozenset()
    amr: frozenset[str] = frozenset()

    @property
    def delegated(self) -> bool:
        """A signed-in user's token (with `scp`): it may act only on that user's own account."""
        return self.kind == "entra" and not self.application

    def audit_fields(self) -> dict[str, str]:
        """The caller as flat string fields for an audit record (absent ones left out)."""
        fields = {
            "caller_kind": self.kind,
            "caller": self.identity,
            "caller_roles": ",".join(sorted(self.roles)),
            "caller_tenant": self.tenant,
            "caller_object_id": self.object_id,
            "caller_client_id": self.client_id,
            "caller_name": self.name,
            "caller_token_id": self.token_id,
        }
        return {key: value for key, value in fields.items() if value is not None}
