"""The commands a relay applies: reset, change, unlock, expire.

Commands carry passwords, so their `repr` hides them and nothing in this module ever formats a
password into a string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Operation(enum.StrEnum):
    RESET = "reset"
    CHANGE = "change"
    UNLOCK = "unlock"
    EXPIRE = "expire"


class Initiator(enum.StrEnum):
    """Who started a reset: the user (forgot the password) or an administrator."""

    SELF_SERVICE = "self-service"
    ADMIN = "admin"


@dataclass(frozen=True)
class ResetPassword:
    """Set a new password without knowing the old one (self-service or admin reset)."""

    user: str
    new_password: str = field(repr=False)
    initiator: Initiator = Initiator.SELF_SERVICE
    unlock: bool = False
    force_change_at_next_logon: bool = False

    operation = Operation.RESET


@dataclass(frozen=True)
class ChangePassword:
    """Replace a password the user knows; AD checks the old one, history and minimum age."""

    user: str
    old_password: str = field(repr=False)
    new_password: str = field(repr=False)

    operation = Operation.CHANGE


@dataclass(frozen=True)
class UnlockAccount:
    """Clear an account lockout (lockoutTime = 0)."""

    user: str

    operation = Operation.UNLOCK


@dataclass(frozen=True)
class ExpirePassword:
    """Make the user choose a new password at next logon (pwdLastSet = 0); the password itself
    is not touched. What drift asks for when Entra ID and AD passwords differ."""

    user: str

    operation = Operation.EXPIRE


Command = ResetPassword | ChangePassword | UnlockAccount | ExpirePassword
# The operations that carry no password: nothing is sealed for them.
WITHOUT_SECRETS = frozenset({Operation.UNLOCK, Operation.EXPIRE})
