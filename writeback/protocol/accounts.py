"""How a request names its user: an account reference, by UPN or by the directory's own anchors.

Entra ID knows a synced user by more than the UPN, and the UPN in the cloud can differ from the
one in AD (a non-routable `.local` suffix, alternate login IDs). So a caller may name the account
in any of the forms Entra and AD hand out, and the relay finds the one account it names:

| form | example | found by |
|---|---|---|
| UPN | `alice@corp.example.com` | userPrincipalName |
| SID | `S-1-5-21-1004336348-1177238915-682003330-1104` | objectSid (1) |
| GUID | `3f2504e0-4f89-41d3-9a0c-0305e82c3301` | objectGUID or ms-DS-ConsistencyGuid |
| immutable ID | `4AQlP4lP00GaDAMF6CwzAQ==` | the same GUID (2) |
| down-level name | `CORP\\alice` | sAMAccountName in the domain whose NetBIOS name is CORP |

(1) the token's `onprem_sid` claim, Graph `onPremisesSecurityIdentifier`; (2) Graph
`onPremisesImmutableId`, base64 of the GUID's bytes.

`AccountRef.parse` tells the forms apart by their syntax, which never overlaps: a UPN has an `@`
and no backslash, a down-level name a backslash, a SID starts `S-1-` and is only digits and
dashes, a GUID is 32 hex digits in the 8-4-4-4-12 form, an immutable ID is 24 characters of
base64 that decode to 16 bytes. `str(ref)` is the canonical spelling that travels in a request's
`user` field: a UPN as given, a SID with an upper-case `S`, a GUID in lower case (an immutable ID
becomes its GUID), a down-level name with the NetBIOS name in upper case. Pure: imports nothing
of ours but the protocol.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import unicodedata
import uuid
from dataclasses import dataclass

MAX_UPN_LENGTH = 1024  # rangeUpper of userPrincipalName
_MAX_SUB_AUTHORITY = 2**32 - 1
_SID = re.compile(r"S-1-(?:[0-9]{1,13})(?:-[0-9]{1,10}){1,15}", re.IGNORECASE)
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_BASE64_GUID = re.compile(r"[A-Za-z0-9+/]{22}==")
# NetBIOS domain names: 1 to 15 characters, none of \ / : * ? " < > | (MS KB 909264); sAMAccountName
# at most 20 (its rangeUpper is 256, but AD refuses more than 20 for users), none of " / \ [ ] : ;
# | = , + * ? < >.
_NETBIOS = re.compile(r"[^\\/:*?\"<>|\s.][^\\/:*?\"<>|]{0,14}")
_SAM = re.compile(r"[^\"/\\\[\]:;|=,+*?<>\x00-\x1f]{1,20}")


def upn_key(upn: str) -> str:
    """A UPN as AD compares it: AD matches userPrincipalName ignoring case and character width,
    so `alice@corp`, `ALICE@corp` and the same in full-width letters are one account. NFKC folds
    the widths and casefold the case; AD's kana-insensitivity is not folded."""
    return unicodedata.normalize("NFKC", upn).casefold()


def upn_problem(upn: str) -> str | None:
    """Why `upn` cannot be a user principal name, or None.

    Control characters are refused outright: Samba matches an escaped NUL in a filter as the end
    of the value, so `alice@corp\\x00x` would select alice.
    """
    if not upn or len(upn) > MAX_UPN_LENGTH:
        return f"must be 1 to {MAX_UPN_LENGTH} characters"
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in upn):
        return "contains a control character"
    # AD ignores surrounding white space when it matches a UPN, so " alice@corp" and
    # "\u3000alice@corp" would be alice under other spellings (other throttle counts, other
    # history); no real UPN starts or ends with it, or holds any but an ASCII space.
    if upn != upn.strip() or any(char.isspace() and char != " " for char in upn):
        return "has white space around it or a white space character other than a space"
    local, at, suffix = upn.rpartition("@")
    if not at or not local or not suffix:
        return "is not of the form name@suffix"
    return None


class AnchorKind(enum.StrEnum):
    """Which attribute of the account a reference names."""

    UPN = "upn"
    SID = "sid"
    GUID = "guid"
    SAM = "sam"


class BadReference(ValueError):
    """The text names no account in any form; the message says what was expected."""


@dataclass(frozen=True)
class AccountRef:
    """One account named one way; `value` is canonical (see the module doc)."""

    kind: AnchorKind
    value: str

    def __str__(self) -> str:
        return self.value

    @property
    def netbios(self) -> str | None:
        """The NetBIOS domain name of a down-level name (`CORP` in `CORP\\alice`)."""
        return self.value.split("\\", 1)[0] if self.kind is AnchorKind.SAM else None

    @property
    def sam_account_name(self) -> str | None:
        return self.value.split("\\", 1)[1] if self.kind is AnchorKind.SAM else None

    @property
    def guid_bytes(self) -> bytes | None:
        """A GUID as AD stores it (objectGUID's order: the first three fields little-endian)."""
        return uuid.UUID(self.value).bytes_le if self.kind is AnchorKind.GUID else None

    @property
    def domain_sid(self) -> str | None:
        """The domain part of an account SID (all but the last sub-authority)."""
        return self.value.rsplit("-", 1)[0] if self.kind is AnchorKind.SID else None

    @classmethod
    def parse(cls, text: str) -> AccountRef:
        """The reference `text` spells, in canonical form; BadReference otherwise."""
        if not isinstance(text, str) or not text:
            raise BadReference("must name a user: a UPN, a SID, a GUID or DOMAIN\\name")
        if "\\" in text:
            domain, _, name = text.partition("\\")
            if not _NETBIOS.fullmatch(domain) or not _SAM.fullmatch(name) or name != name.strip():
                raise BadReference(
                    "is not a down-level logon name DOMAIN\\name (NetBIOS domain of 1 to 15 "
                    'characters, account name of 1 to 20 without " / \\ [ ] : ; | = , + * ? < >)'
                )
            return cls(AnchorKind.SAM, f"{domain.upper()}\\{name}")
        if "@" in text:
            problem = upn_problem(text)
            if problem:
                raise BadReference(problem)
            return cls(AnchorKind.UPN, text)
        if _SID.fullmatch(text):
            if any(int(part) > _MAX_SUB_AUTHORITY for part in text.split("-")[3:]):
                # objectSid holds each as 32 bits: a larger one names nobody (MS-DTYP 2.4.2.2).
                raise BadReference(f"a SID's sub-authorities are at most {_MAX_SUB_AUTHORITY}")
            return cls(AnchorKind.SID, "S" + text[1:])
        if _GUID.fullmatch(text):
            return cls(AnchorKind.GUID, text.lower())
        if _BASE64_GUID.fullmatch(text):
            try:
                raw = base64.b64decode(text, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) == 16:
                return cls(AnchorKind.GUID, str(uuid.UUID(bytes_le=raw)))
        raise BadReference(
            "must name a user: a UPN (name@suffix), a SID (S-1-5-21-...), a GUID or immutable "
            "ID, or DOMAIN\\name"
        )

    @classmethod
    def from_guid_bytes(cls, raw: bytes) -> AccountRef:
        """The reference of an objectGUID as AD returns it (16 bytes)."""
        return cls(AnchorKind.GUID, str(uuid.UUID(bytes_le=raw)))


def reference_problem(text: str) -> str | None:
    """Why `text` names no account, or None (the `checked` form of `AccountRef.parse`)."""
    try:
        AccountRef.parse(text)
    except BadReference as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Account:
    """The directory account a request resolved to, as the relay found it in AD.

    `guid` (objectGUID) is the account's one identity: it never changes, whatever the caller
    named and however the UPN or name is later renamed, so the relay keys its throttle, its write
    lock and its journal on it, and the cloud files every request for the account under it. The
    other names travel so that a record says who it was about when the outcome was written.
    """

    guid: str
    sid: str | None = None
    upn: str | None = None
    sam_account_name: str | None = None

    def to_payload(self) -> dict[str, str | None]:
        return {
            "guid": self.guid,
            "sid": self.sid,
            "upn": self.upn,
            "samAccountName": self.sam_account_name,
        }

    @property
    def ref(self) -> AccountRef:
        return AccountRef(AnchorKind.GUID, self.guid)
