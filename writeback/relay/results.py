"""What the DC answered, as an outcome reason.

A DC answers a password modify with an LDAP result code and a diagnostic message that starts with
an 8-hex-digit Win32 code (`0000052D: ...`). Windows reports every policy failure as 0000052D;
Samba names the rule in its message. The classification goes by result code and Win32 code first,
refines policy failures with Samba's phrases, and keeps the DC's own words as the admin detail.
Both Windows answers (53 for a policy failure on a reset) and Samba's (19) are understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from writeback.protocol import Operation, Outcome, Reason

SUCCESS = 0
_WIN32 = re.compile(r"^([0-9A-Fa-f]{8}):")

# LDAP result codes (RFC 4511) that decide the reason on their own.
RESULT_REASONS: dict[int, Reason] = {
    32: Reason.USER_NOT_FOUND,  # noSuchObject: the user vanished between search and modify
    50: Reason.DIRECTORY_ACCESS_DENIED,  # insufficientAccessRights
    51: Reason.DIRECTORY_UNAVAILABLE,  # busy
    52: Reason.DIRECTORY_UNAVAILABLE,  # unavailable
    12: Reason.DIRECTORY_ERROR,  # unavailableCriticalExtension: the control was refused
    80: Reason.DIRECTORY_ERROR,  # other
}

# Win32 codes at the start of the diagnostic message (libcli/util/werror_err_table.txt).
WIN32_REASONS: dict[int, Reason] = {
    0x52D: Reason.POLICY_REJECTED,  # ERROR_PASSWORD_RESTRICTION, refined below
    0x56: Reason.OLD_PASSWORD_MISMATCH,  # ERROR_INVALID_PASSWORD
    0x775: Reason.ACCOUNT_LOCKED,  # ERROR_ACCOUNT_LOCKED_OUT
    0x5: Reason.DIRECTORY_ACCESS_DENIED,  # ERROR_ACCESS_DENIED
    0x2098: Reason.DIRECTORY_ACCESS_DENIED,  # ERROR_DS_INSUFF_ACCESS_RIGHTS
    0x2030: Reason.USER_NOT_FOUND,  # ERROR_DS_NO_SUCH_OBJECT (Windows says 32 with 0x208D)
    0x1F: Reason.DIRECTORY_ERROR,  # ERROR_GEN_FAILURE: e.g. password write without TLS
    0x2077: Reason.DIRECTORY_ERROR,  # ERROR_DS_ILLEGAL_MOD_OPERATION
    0x216C: Reason.DIRECTORY_ERROR,  # ERROR_DS_UNICODEPWD_NOT_IN_QUOTES
    0x2035: Reason.DIRECTORY_ERROR,  # ERROR_DS_UNWILLING_TO_PERFORM (raw hash write refused)
    0x57: Reason.DIRECTORY_ERROR,  # ERROR_INVALID_PARAMETER
}

# Samba names the rule that a 0000052D broke; Windows does not.
SAMBA_PHRASES: tuple[tuple[str, Reason], ...] = (
    ("password is too short", Reason.POLICY_LENGTH),
    ("password is too long", Reason.POLICY_LENGTH),
    ("complexity criteria", Reason.POLICY_COMPLEXITY),
    ("already used", Reason.POLICY_HISTORY),
    ("too young to change", Reason.POLICY_MIN_AGE),
    ("password changes disabled", Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD),
    ("can't be changed on this account", Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD),
)

# What each operation needs from the relay's account; named when the DC says access denied.
RIGHTS_NEEDED: dict[Operation, str] = {
    Operation.RESET: "the Reset Password extended right on the user object",
    Operation.CHANGE: "the Change Password extended right on the user object",
    Operation.UNLOCK: "Write lockoutTime on the user object",
    Operation.EXPIRE: "Write pwdLastSet on the user object",
}

_HINTS = {
    0x1F: "the DC refused the password write (it requires an encrypted connection)",
    0x216C: "the DC refused the encoding of unicodePwd",
    0x2035: "the DC refused the encoding of unicodePwd",
    0x2077: "the DC refused the form of the modify operation",
}


@dataclass(frozen=True)
class DirectoryAnswer:
    """A DC's answer to one modify: LDAP result code and diagnostic message."""

    result: int
    message: str

    @classmethod
    def of(cls, result: int, message: str | bytes | None) -> DirectoryAnswer:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        # Windows ends diagnostics with "\n\x00".
        return cls(result, (message or "").rstrip("\x00").strip())

    @property
    def win32(self) -> int | None:
        match = _WIN32.match(self.message)
        return int(match.group(1), 16) if match else None

    def describe(self) -> str:
        return f"LDAP {self.result}: {self.message}" if self.message else f"LDAP {self.result}"


def classify(operation: Operation, answer: DirectoryAnswer, extra_rights: str = "") -> Outcome:
    """The outcome for a DC's answer to a password or lockout modify."""
    if answer.result == SUCCESS:
        return Outcome(Reason.APPLIED, answer.describe())
    win32 = answer.win32
    reason = WIN32_REASONS.get(win32) if win32 is not None else None
    if reason is None:
        reason = RESULT_REASONS.get(answer.result)
    if reason is None and answer.result in (19, 53):
        # constraintViolation / unwillingToPerform without a Win32 code we know: a directory
        # rule refused it. Samba also answers a change without Change Password with 19.
        reason = Reason.POLICY_REJECTED
    if reason is None:
        reason = Reason.DIRECTORY_ERROR
    if reason is Reason.POLICY_REJECTED:
        lowered = answer.message.lower()
        if "insufficient access" in lowered:
            reason = Reason.DIRECTORY_ACCESS_DENIED
        else:
            reason = next((r for phrase, r in SAMBA_PHRASES if phrase in lowered), reason)
    detail = answer.describe()
    if reason is Reason.DIRECTORY_ACCESS_DENIED:
        needed = RIGHTS_NEEDED[operation] + (f" and {extra_rights}" if extra_rights else "")
        detail = f"the relay's account lacks {needed} ({detail})"
    elif reason is Reason.POLICY_REJECTED:
        detail = f"the DC refused the password: history or a password filter ({detail})"
    elif answer.result == 12:
        detail = f"the DC refused a critical control ({detail})"
    elif win32 in _HINTS:
        detail = f"{_HINTS[win32]} ({detail})"
    return Outcome(reason, detail)
