"""Who the command is about: finding the user, and what the relay refuses about them.

Finding is by UPN with the filter value escaped and control characters refused first. The rest
are checks the relay makes whatever AD would allow (Samba enforces none of them): scope (the
configured OUs), disabled accounts, protected accounts (adminCount=1, the groups AD protects with
AdminSDHolder, configured denied groups), and reading the policy objects the pre-check needs
(the domain's, a PSO; `policy_cache` keeps them). Reads only; nothing here writes to the directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from writeback.protocol import Operation, Outcome, Reason
from writeback.protocol.accounts import upn_problem
from writeback.relay import ldap
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


def check_upn(upn: str) -> Outcome | None:
    """Refuse user names that cannot be a UPN before they reach a filter (see upn_problem)."""
    problem = upn_problem(upn)
    return Outcome(Reason.REQUEST_INVALID, f"the user name {problem}") if problem else None


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


def sid_to_str(raw: bytes) -> str:
    """A binary SID (MS-DTYP 2.4.2.2) in its S-1-... form."""
    authority = int.from_bytes(raw[2:8], "big")
    count = raw[1]
    subs = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(count)]
    return "-".join(["S", str(raw[0]), str(authority), *map(str, subs)])


def find_user(link: ldap.Link, upn: str, operation: Operation | None = None) -> User | Outcome:
    """The one user with this UPN in the domain, or the outcome saying why there is none; with
    the constructed attributes `operation` needs (see CONSTRUCTED_ATTRIBUTES) beside the stored."""
    query = (
        "(&(objectCategory=person)(objectClass=user)"
        f"(userPrincipalName={escape_filter_chars(upn)}))"
    )
    attributes = USER_ATTRIBUTES + (CONSTRUCTED_ATTRIBUTES[operation] if operation else ())
    entries = link.search(link.controller.naming_context, query, attributes, size_limit=2)
    if not entries:
        return Outcome(Reason.USER_NOT_FOUND, f"no user with userPrincipalName {upn!r}")
    if len(entries) > 1:
        return Outcome(
            Reason.USER_AMBIGUOUS,
            "userPrincipalName matches " + " and ".join(dn for dn, _ in entries),
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
