"""Outcomes and their reasons: how every request ends.

Outcome reasons are a stable public contract: callers branch on the reason code, show the
message to the user and keep the detail for administrators. A reason code is never renamed or
reused; new cases get new codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    """How a request ended: done, refused for a reason the caller can fix, or broken."""

    APPLIED = "applied"
    REJECTED = "rejected"
    FAILED = "failed"


class Reason(enum.StrEnum):
    """Why a request ended as it did. The value is the public reason code."""

    APPLIED = "applied"
    # rejected: the directory or our policy said no; the caller can fix it
    POLICY_LENGTH = "policy.length"
    POLICY_COMPLEXITY = "policy.complexity"
    POLICY_HISTORY = "policy.history"
    POLICY_MIN_AGE = "policy.min_age"
    POLICY_REJECTED = "policy.rejected"
    OLD_PASSWORD_MISMATCH = "old_password.mismatch"  # noqa: S105 - a reason code, not a secret
    USER_NOT_FOUND = "user.not_found"
    USER_AMBIGUOUS = "user.ambiguous"
    USER_PROTECTED = "user.protected"
    USER_OUT_OF_SCOPE = "user.out_of_scope"
    ACCOUNT_DISABLED = "account.disabled"
    ACCOUNT_LOCKED = "account.locked"
    ACCOUNT_CANNOT_CHANGE_PASSWORD = "account.cannot_change_password"  # noqa: S105 - a reason code
    ACCOUNT_PASSWORD_NEVER_EXPIRES = "account.password_never_expires"  # noqa: S105 - a reason code
    REQUEST_INVALID = "request.invalid"
    ACCOUNT_THROTTLED = "account.throttled"
    # delivered again after an earlier delivery may have written it, and another password is in
    # effect, set at about or after the time of the request: not written, so as not to undo it
    REQUEST_SUPERSEDED = "request.superseded"
    # failed: something is broken; an administrator must act
    DIRECTORY_UNAVAILABLE = "directory.unavailable"
    DIRECTORY_ACCESS_DENIED = "directory.access_denied"
    DIRECTORY_ERROR = "directory.error"
    REQUEST_MALFORMED = "request.malformed"
    REQUEST_EXPIRED = "request.expired"
    REQUEST_REPLAYED = "request.replayed"
    REQUEST_INVALID_SIGNATURE = "request.invalid_signature"
    REQUEST_UNDECRYPTABLE = "request.undecryptable"
    # delivered again after an earlier delivery may have written it, and the DC cannot say
    # whether its password is in effect without risking a lockout
    REQUEST_OUTCOME_UNKNOWN = "request.outcome_unknown"
    AGENT_UNAVAILABLE = "agent.unavailable"
    AGENT_TIMEOUT = "agent.timeout"
    # failed in the cloud: the message bus cannot be used, or the relay's answer does not verify
    TRANSPORT_UNAVAILABLE = "transport.unavailable"
    OUTCOME_INVALID_SIGNATURE = "outcome.invalid_signature"
    # failed, found by the Entra audit stream: a password changed in Entra ID with no writeback
    PASSWORD_DRIFT = "password.drift"  # noqa: S105 - a reason code, not a secret

    @property
    def status(self) -> Status:
        return _REASONS[self][0]

    @property
    def message(self) -> str:
        """A sentence the user can act on."""
        return _REASONS[self][1]


_ADMIN = "Please contact your helpdesk."
_REASONS: dict[Reason, tuple[Status, str]] = {
    Reason.APPLIED: (Status.APPLIED, "Your password has been updated."),
    Reason.POLICY_LENGTH: (
        Status.REJECTED,
        "The new password is too short for your organisation's policy.",
    ),
    Reason.POLICY_COMPLEXITY: (
        Status.REJECTED,
        "The new password must use at least three of: upper-case letters, lower-case letters, "
        "digits and symbols, and must not contain your account name or parts of your full name.",
    ),
    Reason.POLICY_HISTORY: (
        Status.REJECTED,
        "The new password was used recently. Choose one you have not used.",
    ),
    Reason.POLICY_MIN_AGE: (
        Status.REJECTED,
        "Your password was changed too recently to be changed again. Try again later.",
    ),
    Reason.POLICY_REJECTED: (
        Status.REJECTED,
        "The new password does not meet your organisation's password policy "
        "(it may have been used before or contain a forbidden word). Choose another.",
    ),
    Reason.OLD_PASSWORD_MISMATCH: (Status.REJECTED, "The current password is not correct."),
    Reason.USER_NOT_FOUND: (
        Status.REJECTED,
        "No account with this user name was found in the on-premises directory.",
    ),
    Reason.USER_AMBIGUOUS: (
        Status.REJECTED,
        f"More than one on-premises account has this user name. {_ADMIN}",
    ),
    Reason.USER_PROTECTED: (
        Status.REJECTED,
        "This is a privileged account: its password cannot be reset here. "
        "Change it with the current password, or ask a domain administrator.",
    ),
    Reason.USER_OUT_OF_SCOPE: (
        Status.REJECTED,
        f"Passwords of this account are not managed by password writeback. {_ADMIN}",
    ),
    Reason.ACCOUNT_DISABLED: (Status.REJECTED, f"This account is disabled. {_ADMIN}"),
    Reason.ACCOUNT_LOCKED: (
        Status.REJECTED,
        "This account is locked out. Unlock it or wait for the lockout to end, then try again.",
    ),
    Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD: (
        Status.REJECTED,
        f"This account is not allowed to change its password. {_ADMIN}",
    ),
    Reason.ACCOUNT_PASSWORD_NEVER_EXPIRES: (
        Status.REJECTED,
        "This account's password never expires, so it cannot be required to change at next "
        f"logon. {_ADMIN}",
    ),
    Reason.REQUEST_INVALID: (Status.REJECTED, "The request is not valid."),
    Reason.ACCOUNT_THROTTLED: (
        Status.REJECTED,
        "Too many attempts with a wrong current password. Try again later.",
    ),
    Reason.DIRECTORY_UNAVAILABLE: (
        Status.FAILED,
        "The on-premises directory cannot be reached right now. Try again later.",
    ),
    Reason.DIRECTORY_ACCESS_DENIED: (
        Status.FAILED,
        f"Password writeback is missing a permission in the on-premises directory. {_ADMIN}",
    ),
    Reason.DIRECTORY_ERROR: (
        Status.FAILED,
        f"The on-premises directory reported an unexpected error. {_ADMIN}",
    ),
    Reason.REQUEST_MALFORMED: (
        Status.FAILED,
        f"The request could not be understood on-premises (version or format). {_ADMIN}",
    ),
    Reason.REQUEST_EXPIRED: (
        Status.FAILED,
        "The request took too long to reach your organisation. Try again.",
    ),
    Reason.REQUEST_REPLAYED: (Status.FAILED, "This request was already processed."),
    Reason.REQUEST_SUPERSEDED: (
        Status.REJECTED,
        "Another password was set for this account at about the same time, so this request "
        "was not carried out. Submit it again if it is still needed.",
    ),
    Reason.REQUEST_OUTCOME_UNKNOWN: (
        Status.FAILED,
        "It is not known whether this change was applied. Try signing in with the new "
        f"password before trying again. {_ADMIN}",
    ),
    Reason.REQUEST_INVALID_SIGNATURE: (
        Status.FAILED,
        f"The request could not be authenticated. {_ADMIN}",
    ),
    Reason.REQUEST_UNDECRYPTABLE: (
        Status.FAILED,
        f"The request could not be decrypted on-premises. {_ADMIN}",
    ),
    Reason.AGENT_UNAVAILABLE: (
        Status.FAILED,
        "Password writeback is not available right now: the on-premises agent is offline.",
    ),
    Reason.TRANSPORT_UNAVAILABLE: (
        Status.FAILED,
        "Password writeback cannot reach its message service right now. Try again in a few "
        "minutes.",
    ),
    Reason.OUTCOME_INVALID_SIGNATURE: (
        Status.FAILED,
        f"The answer from the on-premises agent could not be verified. {_ADMIN}",
    ),
    Reason.PASSWORD_DRIFT: (
        Status.FAILED,
        f"Your password was changed in the cloud but not in the on-premises directory. {_ADMIN}",
    ),
    Reason.AGENT_TIMEOUT: (
        Status.FAILED,
        "The on-premises agent did not answer in time. The change may still be applied; "
        "check the request's status before trying again.",
    ),
}


@dataclass(frozen=True)
class Outcome:
    """The result of one request: exactly one reason, a user sentence, an admin detail.

    `message` overrides the reason's default sentence when the outcome knows more (e.g. the
    minimum length of the policy that applied). `detail` is for administrators: the DC's answer,
    the rule, the DC used. Neither ever contains a password.
    """

    reason: Reason
    detail: str = ""
    custom_message: str | None = None

    @property
    def status(self) -> Status:
        return self.reason.status

    @property
    def message(self) -> str:
        return self.custom_message or self.reason.message
