"""Which of the rights writeback needs does the relay's account hold, read from the DACLs.

`doctor` uses this to name the missing right before a user meets it as directory.access_denied.
The security descriptors are parsed with `winacl`; the evaluation is the usual AD rule for one
right: walk the DACL in order, the first ACE that applies to one of the account's SIDs decides
(deny before allow, as canonical DACLs order them). It does not model every corner of the AD
access check (e.g. owner rights, privileges); a real write is always the final word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from winacl.dtyp.security_descriptor import SECURITY_DESCRIPTOR

USER_CLASS = "bf967aba-0de6-11d0-a285-00aa003049e2"
EVERYONE = "S-1-1-0"
AUTHENTICATED_USERS = "S-1-5-11"

LIST_CONTENTS = 0x4
READ_PROPERTY = 0x10
CONTROL_ACCESS = 0x100
WRITE_PROPERTY = 0x20
GENERIC_ALL = 0x10000000
GENERIC_WRITE = 0x40000000
CONTAINER_INHERIT = 0x02
INHERIT_ONLY = 0x08


@dataclass(frozen=True)
class Right:
    """One right writeback needs, and what breaks without it."""

    name: str
    mask: int
    object_type: str
    consequence: str


RESET_PASSWORD = Right(
    "Reset Password",
    CONTROL_ACCESS,
    "00299570-246d-11d0-a768-00aa006e0529",
    "resets fail with directory.access_denied",
)
CHANGE_PASSWORD = Right(
    "Change Password",
    CONTROL_ACCESS,
    "ab721a53-1e2f-11d0-9819-00aa0040529b",
    "changes with the old password fail",
)
WRITE_LOCKOUT_TIME = Right(
    "Write lockoutTime",
    WRITE_PROPERTY,
    "28630ebf-41d5-11d1-a9c1-0000f80367c1",
    "unlock, and resets that unlock, fail with directory.access_denied",
)
WRITE_PWD_LAST_SET = Right(
    "Write pwdLastSet",
    WRITE_PROPERTY,
    "bf967a0a-0de6-11d0-a285-00aa003049e2",
    "resets with force-change-at-next-logon fail with directory.access_denied",
)
UNEXPIRE_PASSWORD = Right(
    "Unexpire Password",
    CONTROL_ACCESS,
    "ccc2dc7d-a6ad-4a7a-8846-c04e3cc53501",
    "on Windows DCs every reset password is stored as already expired (pwdLastSet=0), so users "
    "must change it again at their next logon (MS-SAMR 3.1.1.8.7)",
)

READ_PSOS = Right(
    "Read password settings",
    READ_PROPERTY | LIST_CONTENTS,
    "",
    "users under a PSO get policy.rejected instead of the rule they broke",
)

USER_RIGHTS = (RESET_PASSWORD, CHANGE_PASSWORD, WRITE_LOCKOUT_TIME, WRITE_PWD_LAST_SET)
DOMAIN_RIGHTS = (UNEXPIRE_PASSWORD,)


def parse(descriptor: bytes) -> Any:
    """A binary nTSecurityDescriptor (as read with the SD-flags control) as winacl objects."""
    return SECURITY_DESCRIPTOR.from_bytes(descriptor)


def _applies(ace: Any, sids: frozenset[str], right: Right, *, for_children: bool) -> bool:
    if str(ace.Sid) not in sids:
        return False
    flags = int(ace.AceFlags)
    if for_children:
        if not flags & CONTAINER_INHERIT:
            return False
        inherited_type = getattr(ace, "InheritedObjectType", None)
        if inherited_type is not None and str(inherited_type).lower() != USER_CLASS:
            return False
    elif flags & INHERIT_ONLY:
        return False
    object_type = getattr(ace, "ObjectType", None)
    if object_type is not None and str(object_type).lower() != right.object_type:
        return False
    mask = int(ace.Mask)
    if mask & GENERIC_ALL or (right.mask == WRITE_PROPERTY and mask & GENERIC_WRITE):
        return True
    return mask & right.mask == right.mask


def holds(descriptor: Any, sids: Iterable[str], right: Right, *, for_children: bool) -> bool:
    """Whether `sids` hold `right` on the object (or, with `for_children`, on its user objects)."""
    token = frozenset(sids)
    dacl = getattr(descriptor, "Dacl", None)
    for ace in getattr(dacl, "aces", []) or []:
        kind = type(ace).__name__
        if "CALLBACK" in kind or not _applies(ace, token, right, for_children=for_children):
            continue
        if kind.startswith("ACCESS_DENIED"):
            return False
        if kind.startswith("ACCESS_ALLOWED"):
            return True
    return False


def missing(
    descriptor: Any, sids: Iterable[str], rights: Iterable[Right], *, for_children: bool
) -> list[Right]:
    """The rights in `rights` that `sids` do not hold."""
    token = frozenset(sids)
    return [r for r in rights if not holds(descriptor, token, r, for_children=for_children)]
