"""Who the command is about: finding the user, and what the relay refuses about them.

A request names its user by any account reference (`writeback.protocol.accounts.AccountRef`), and
the relay finds the one account it names by the reference's kind:

| kind | filter (under the domain's naming context, users only) |
|---|---|
| UPN | `userPrincipalName` |
| SID | `objectSid`, the binary SID with every byte escaped |
| GUID (or immutable ID) | `objectGUID` or `mS-DS-ConsistencyGuid`, the GUID's bytes escaped |
| `DOMAIN\\name` | `sAMAccountName`, only when DOMAIN is this domain's NetBIOS name |

Binary values go into the filter as escaped bytes (`\\01\\05...`), the form AD and Samba both
honour (Samba also takes `S-1-...` and a GUID's text, Windows does not for objectGUID). Every value
is escaped and a reference with a control character is refused before any filter is built. No
match is `user.not_found`, a down-level name of another domain too; two matches `user.ambiguous`,
never a write. What was found is the `Account` (objectGUID, objectSid, UPN, sAMAccountName) that
the relay keys its throttle, lock and journal on and returns in the outcome.

The rest are checks the relay makes whatever AD would allow (Samba enforces none of them): scope
(the configured OUs), disabled accounts, protected accounts (adminCount=1, the groups AD protects
with AdminSDHolder, configured denied groups), and reading the policy objects the pre-check needs
(the domain's, a PSO; `policy_cache` keeps them). Reads only; nothing here writes to the directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ldap3.utils.conv import escape_bytes, escape_filter_chars
from ldap3.utils.dn import parse_dn

from writeback.errors import DirectoryProtocolError
from writeback.protocol import Operation, Outcome, Reason
from writeback.protocol.accounts import Account, AccountRef, AnchorKind, BadReference
from writeback.relay import ldap
from writeback.relay.ldap import sid_bytes, sid_to_str
from writeback.relay.policy import AccountFacts, PasswordPolicy, filetime

log = logging.getLogger(__name__)

UF_ACCOUNTDISABLE = 0x2
UF_DONT_EXPIRE_PASSWD = 0x10000
UF_LOCKOUT = 0x10  # in msDS-User-Account-Control-Computed
# Groups whose members AD protects with AdminSDHolder (domain-relative RIDs and BUILTIN SIDs).
PROTECTED_RIDS = frozenset({512, 516, 518, 519, 521, 526, 527})
PROTECTED_BUILTIN = frozenset(
    {"S-1-5-32-544", "S-1-5-32-548", "S-1-5-32-549", "S-1-5-32-550", "S-1-5-32-551", "S-1-5-32-552"}
)
# Stored on the user object: cheap to read, read for every command.
USER_ATTRIBUTES = (
    "sAMAccountName",
    "displayName",
    "userAccountControl",
    "adminCount",
    "pwdLastSet",
    "lockoutTime",
    "objectGUID",
    "objectSid",
    "userPrincipalName",
    # Not replicated: the DC the relay reads (the PDC emulator when configured) counts them.
    "badPwdCount",
    "badPasswordTime",
)
# Constructed by the DC at every read (on Samba each adds about 0.3 ms to the search), so asked
# for only by the operations that use them: the resultant PSO for the pre-check of a new
# password, the computed lockout flag for an unlock's answer. tokenGroups is constructed too, but
# only in a base-scope read (AD and Samba refuse it in a subtree search): see LdapDirectory.
CONSTRUCTED_ATTRIBUTES = {
    Operation.RESET: ("msDS-ResultantPSO",),
    # The lockout flag too: a locked account gets the DC's own answer (account.locked).
    Operation.CHANGE: ("msDS-ResultantPSO", "msDS-User-Account-Control-Computed"),
    Operation.UNLOCK: ("msDS-User-Account-Control-Computed",),
    Operation.EXPIRE: (),
}
DOMAIN_POLICY_ATTRIBUTES = (
    "minPwdLength",
    "pwdHistoryLength",
    "pwdProperties",
    "minPwdAge",
    "maxPwdAge",
    "lockoutThreshold",
    "lockOutObservationWindow",
)
PSO_ATTRIBUTES = (
    "msDS-MinimumPasswordLength",
    "msDS-PasswordHistoryLength",
    "msDS-PasswordComplexityEnabled",
    "msDS-MinimumPasswordAge",
    "msDS-MaximumPasswordAge",
    "msDS-LockoutThreshold",
    "msDS-LockoutObservationWindow",
)


@dataclass(frozen=True)
class User:
    dn: str
    raw: dict[str, list[bytes]]

    def number(self, name: str) -> int:
        value = ldap.first(self.raw, name, "0")
        try:
            return int(value)
        except ValueError:
            return 1 if value.upper() == "TRUE" else 0

    @property
    def facts(self) -> AccountFacts:
        return AccountFacts(
            sam_account_name=ldap.first(self.raw, "sAMAccountName"),
            display_name=ldap.first(self.raw, "displayName"),
            pwd_last_set=filetime(self.number("pwdLastSet")),
        )

    @property
    def account(self) -> Account:
        """The account's names as the DC holds them; objectGUID is its one identity."""
        guid = self.raw.get("objectGUID") or []
        if len(guid[0] if guid else b"") != 16:
            # Every AD object has one; without it the relay could not key anything on the user.
            raise DirectoryProtocolError(f"{self.dn} has no readable objectGUID")
        sid = self.raw.get("objectSid") or []
        return Account(
            guid=AccountRef.from_guid_bytes(guid[0]).value,
            sid=sid_to_str(sid[0]) if sid else None,
            upn=ldap.first(self.raw, "userPrincipalName") or None,
            sam_account_name=ldap.first(self.raw, "sAMAccountName") or None,
        )


def check_reference(user: str) -> AccountRef | Outcome:
    """The account reference `user` spells, or request.invalid before it reaches a filter.

    Control characters are refused in every kind: Samba matches an escaped NUL in a filter as
    the end of the value, so `alice@corp\\x00x` would select alice."""
    if isinstance(user, str) and any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in user):
        return Outcome(Reason.REQUEST_INVALID, "the user name contains a control character")
    try:
        return AccountRef.parse(user)
    except BadReference as exc:
        return Outcome(Reason.REQUEST_INVALID, f"the user name {exc}")


def normalised_dn(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN as comparable (attribute, value) pairs: case and escaping no longer matter."""
    return tuple((attr.lower(), value.lower()) for attr, value, _ in parse_dn(dn, escape=False))


def in_scope(dn: str, scopes: tuple[str, ...]) -> bool:
    """True when `dn` is inside one of the OUs (a DN is in scope of itself)."""
    target = normalised_dn(dn)
    for scope in scopes:
        suffix = normalised_dn(scope)
        if len(target) >= len(suffix) and target[-len(suffix) :] == suffix:
            return True
    return False


def user_filter(ref: AccountRef) -> str:
    """The filter that finds the user `ref` names (see the module doc); every value escaped."""
    if ref.kind is AnchorKind.UPN:
        match = f"(userPrincipalName={escape_filter_chars(ref.value)})"
    elif ref.kind is AnchorKind.SID:
        match = f"(objectSid={escape_bytes(sid_bytes(ref.value))})"
    elif ref.kind is AnchorKind.GUID:
        guid = escape_bytes(ref.guid_bytes or b"")
        match = f"(|(objectGUID={guid})(mS-DS-ConsistencyGuid={guid}))"
    else:
        match = f"(sAMAccountName={escape_filter_chars(ref.sam_account_name or '')})"
    return f"(&(objectCategory=person)(objectClass=user){match})"


_FOUND_BY = {
    AnchorKind.UPN: "userPrincipalName",
    AnchorKind.SID: "objectSid",
    AnchorKind.GUID: "objectGUID or mS-DS-ConsistencyGuid",
    AnchorKind.SAM: "sAMAccountName",
}


def find_user(
    link: ldap.Link,
    ref: AccountRef | Account,
    operation: Operation | None = None,
    *,
    groups: bool = False,
) -> User | Outcome:
    """The one user `ref` names in the domain, or the outcome saying why there is none; with
    the constructed attributes `operation` needs (see CONSTRUCTED_ATTRIBUTES) beside the stored.

    An `Account` (one the relay resolved before) is found again by its objectGUID alone: it
    is the account already found, never one that has since taken its GUID as
    mS-DS-ConsistencyGuid. That is one base-scope read of the DN `<GUID=...>` (the extended DN
    form AD and Samba both resolve, MS-ADTS 3.1.1.3.1.2.4), which with `groups` also carries
    the user's tokenGroups: the DC constructs them only in a base-scope read, so a search
    could not, and the protection check would cost the DC a request of its own."""
    if isinstance(ref, Account):
        attributes = USER_ATTRIBUTES + (CONSTRUCTED_ATTRIBUTES[operation] if operation else ())
        entries = link.search(
            f"<GUID={(ref.ref.guid_bytes or b'').hex()}>",
            "(&(objectCategory=person)(objectClass=user))",
            attributes + (("tokenGroups",) if groups else ()),
            scope="BASE",
        )
        if not entries:
            return Outcome(Reason.USER_NOT_FOUND, f"no user with objectGUID {ref.guid}")
        return User(*entries[0])
    if ref.kind is AnchorKind.SAM and ref.netbios != link.controller.netbios:
        # Another domain's account, or one this relay cannot tell is its own: never
        # looked up by its bare name here, where it could be someone else.
        known = link.controller.netbios or "unknown (its crossRef is unreadable)"
        return Outcome(
            Reason.USER_NOT_FOUND,
            f"{ref.value!r} names the domain {ref.netbios}; this domain's NetBIOS name is {known}",
        )
    query = user_filter(ref)
    what = f"{_FOUND_BY[ref.kind]} {ref.value!r}"
    attributes = USER_ATTRIBUTES + (CONSTRUCTED_ATTRIBUTES[operation] if operation else ())
    entries = link.search(link.controller.naming_context, query, attributes, size_limit=2)
    if not entries:
        return Outcome(Reason.USER_NOT_FOUND, f"no user with {what}")
    if len(entries) > 1:
        return Outcome(
            Reason.USER_AMBIGUOUS,
            f"{what} matches " + " and ".join(dn for dn, _ in entries),
        )
    return User(*entries[0])


def protected_by(token_sids: set[str], denied: set[str]) -> str | None:
    """Why a user is protected: a protected group among `token_sids`, or a denied group."""
    for sid in sorted(token_sids):
        if sid in PROTECTED_BUILTIN or (
            sid.startswith("S-1-5-21-") and int(sid.rsplit("-", 1)[1]) in PROTECTED_RIDS
        ):
            return f"member of the protected group {sid}"
    if denied:
        return f"member of a denied group {sorted(denied)[0]}"
    return None


def read_domain_policy(link: ldap.Link) -> PasswordPolicy:
    """The domain-wide policy, from the attributes of the domain head."""
    raw = link.read(link.controller.naming_context, DOMAIN_POLICY_ATTRIBUTES)
    return PasswordPolicy.from_domain(
        "the domain policy",
        {name: int(ldap.first(raw, name, "0")) for name in DOMAIN_POLICY_ATTRIBUTES},
    )


def read_pso(link: ldap.Link, pso_dn: str, domain: PasswordPolicy) -> PasswordPolicy | None:
    """The policy of the PSO at `pso_dn` (a user's msDS-ResultantPSO); None when the relay may
    not read its attributes (the default ACL of the Password Settings Container)."""
    raw = link.read(pso_dn, PSO_ATTRIBUTES)
    if not raw.get("msDS-MinimumPasswordLength"):
        log.warning("pso_unreadable", extra={"pso": pso_dn})
        return None
    attrs: dict[str, int | bool] = {}
    for name in PSO_ATTRIBUTES:
        value = ldap.first(raw, name, "0")
        attrs[name] = value.upper() == "TRUE" if value.upper() in ("TRUE", "FALSE") else int(value)
    name = parse_dn(pso_dn, escape=False)[0][1]
    return PasswordPolicy.from_pso(f"the password policy {name!r}", attrs, domain)
