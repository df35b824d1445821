"""Seed the local DC with the OUs, users, policies and service accounts writeback needs.

The seeded directory mirrors a real deployment: users in a writeback OU, a few users that must be
refused (outside the OU, disabled, protected, locked out), a fine-grained password policy, and a
relay service account holding exactly the rights Microsoft's writeback delegates (Reset Password,
Change Password, write lockoutTime and pwdLastSet on user objects, Unexpire Password on the domain
root) plus read access to the Password Settings Container so PSO rules can be pre-checked. It is
not a Domain Admin. Two more accounts lack rights on purpose, for the access-denied paths.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import ldap3
from ldap3.utils.dn import escape_rdn

from devstack.samba import SambaDC
from writeback.relay.ldap import sid_to_str

SEED_PASSWORD = "Seed-Passw0rd!1"
RELAY_PASSWORD = "Relay-Svc-Passw0rd!1"

# Schema GUIDs (MS-ADTS / MS-ADA) for the delegation.
USER_CLASS = "bf967aba-0de6-11d0-a285-00aa003049e2"
RESET_PASSWORD = "00299570-246d-11d0-a768-00aa006e0529"
CHANGE_PASSWORD = "ab721a53-1e2f-11d0-9819-00aa0040529b"
UNEXPIRE_PASSWORD = "ccc2dc7d-a6ad-4a7a-8846-c04e3cc53501"
LOCKOUT_TIME = "28630ebf-41d5-11d1-a9c1-0000f80367c1"
PWD_LAST_SET = "bf967a0a-0de6-11d0-a285-00aa003049e2"

UF_ACCOUNTDISABLE = 0x2
UF_NORMAL_ACCOUNT = 0x200
UF_DONT_EXPIRE_PASSWD = 0x10000

DOMAIN_POLICY = {
    "min_length": 8,
    "history_length": 5,
    "lockout_threshold": 5,
}
STRICT_PSO_MIN_LENGTH = 14


@dataclass(frozen=True)
class Account:
    """A seeded or test-created account and its known password."""

    sam: str
    upn: str
    dn: str
    password: str


@dataclass(frozen=True)
class SeededDomain:
    """What `seed` created: every DN and account the tests and the demo rely on."""

    base_dn: str
    dns_domain: str
    users_ou: str
    outside_ou: str
    service_ou: str
    relay: Account
    no_rights: Account
    reset_only: Account
    strict_group: str
    min_age_group: str
    users: dict[str, Account]


def unique_name(prefix: str) -> str:
    """A short unique sAMAccountName (AD caps it at 20 characters)."""
    return f"{prefix[:11]}-{secrets.token_hex(4)}"


def object_sid(connection: ldap3.Connection, dn: str) -> str:
    connection.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["objectSid"])
    return sid_to_str(connection.response[0]["raw_attributes"]["objectSid"][0])


def _add(
    connection: ldap3.Connection, dn: str, classes: list[str], attrs: dict[str, object]
) -> None:
    if not connection.add(dn, classes, attrs):
        raise RuntimeError(f"cannot add {dn}: {connection.result}")


def _modify(connection: ldap3.Connection, dn: str, changes: dict[str, object]) -> None:
    if not connection.modify(dn, changes):
        raise RuntimeError(f"cannot modify {dn}: {connection.result}")


def create_user(
    connection: ldap3.Connection,
    ou_dn: str,
    dns_domain: str,
    sam: str,
    password: str = SEED_PASSWORD,
    *,
    cn: str | None = None,
    display_name: str | None = None,
    disabled: bool = False,
    never_expires: bool = False,
    groups: tuple[str, ...] = (),
    admin_count: bool = False,
) -> Account:
    """Create an enabled (or disabled) user with a known password, optionally in groups."""
    dn = f"CN={escape_rdn(cn or sam)},{ou_dn}"
    upn = f"{sam}@{dns_domain}"
    control = UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if disabled else 0)
    control |= UF_DONT_EXPIRE_PASSWD if never_expires else 0
    attrs: dict[str, object] = {
        "sAMAccountName": sam,
        "userPrincipalName": upn,
        "displayName": display_name or sam,
        "unicodePwd": f'"{password}"'.encode("utf-16-le"),
        "userAccountControl": str(control),
    }
    _add(connection, dn, ["top", "person", "organizationalPerson", "user"], attrs)
    for group in groups:
        _modify(connection, group, {"member": [(ldap3.MODIFY_ADD, [dn])]})
    if admin_count:
        _modify(connection, dn, {"adminCount": [(ldap3.MODIFY_REPLACE, ["1"])]})
    return Account(sam=sam, upn=upn, dn=dn, password=password)


def lock_out(dc: SambaDC, account: Account, attempts: int) -> None:
    """Lock an account the way it happens in real life: failed binds up to the threshold."""
    for _ in range(attempts):
        try:
            dc.connection(account.upn, "Wrong-Passw0rd!").unbind()
        except ldap3.core.exceptions.LDAPBindError:
            continue


def _create_pso(
    connection: ldap3.Connection,
    base_dn: str,
    name: str,
    precedence: int,
    applies_to: str,
    *,
    min_length: int,
    min_age_days: int,
) -> None:
    day = 24 * 3600 * 10_000_000  # 100-ns intervals, negative as AD stores them
    dn = f"CN={name},CN=Password Settings Container,CN=System,{base_dn}"
    _add(
        connection,
        dn,
        ["top", "msDS-PasswordSettings"],
        {
            "msDS-PasswordSettingsPrecedence": str(precedence),
            "msDS-PasswordReversibleEncryptionEnabled": "FALSE",
            "msDS-PasswordHistoryLength": "5",
            "msDS-PasswordComplexityEnabled": "TRUE",
            "msDS-MinimumPasswordLength": str(min_length),
            "msDS-MinimumPasswordAge": str(-min_age_days * day),
            "msDS-MaximumPasswordAge": str(-90 * day),
            "msDS-LockoutThreshold": "5",
            "msDS-LockoutObservationWindow": str(-day // 48),
            "msDS-LockoutDuration": str(-day // 48),
            "msDS-PSOAppliesTo": applies_to,
        },
    )


def seed(dc: SambaDC) -> SeededDomain:
    """Populate a freshly provisioned and started DC. Takes a few seconds."""
    base = dc.names.base_dn
    domain = dc.names.dns_domain
    connection = dc.admin_connection()
    users_ou = f"OU=Writeback Users,{base}"
    outside_ou = f"OU=Outside Writeback,{base}"
    service_ou = f"OU=Service Accounts,{base}"
    for ou in (users_ou, outside_ou, service_ou):
        _add(connection, ou, ["top", "organizationalUnit"], {})
    strict_group = f"CN=Writeback Strict Passwords,{users_ou}"
    min_age_group = f"CN=Writeback Min Age,{users_ou}"
    for group in (strict_group, min_age_group):
        _add(connection, group, ["top", "group"], {"sAMAccountName": group[3:].split(",")[0]})
    _create_pso(
        connection,
        base,
        "Writeback Strict",
        10,
        strict_group,
        min_length=STRICT_PSO_MIN_LENGTH,
        min_age_days=0,
    )
    _create_pso(
        connection,
        base,
        "Writeback Min Age",
        20,
        min_age_group,
        min_length=DOMAIN_POLICY["min_length"],
        min_age_days=1,
    )

    domain_admins = f"CN=Domain Admins,CN=Users,{base}"
    users = {
        "alice": create_user(connection, users_ou, domain, "alice", display_name="Alice Adams"),
        "bob": create_user(connection, users_ou, domain, "bob", display_name="Bob Brown"),
        "carol.locked": create_user(connection, users_ou, domain, "carol.locked"),
        "dave.disabled": create_user(connection, users_ou, domain, "dave.disabled", disabled=True),
        "erin.admin": create_user(
            connection, users_ou, domain, "erin.admin", groups=(domain_admins,), admin_count=True
        ),
        "frank.strict": create_user(
            connection, users_ou, domain, "frank.strict", groups=(strict_group,)
        ),
        "gina.outside": create_user(connection, outside_ou, domain, "gina.outside"),
        # The helpdesk person of the local sign-in stand-in (devstack/entra_users.py).
        "hana.helpdesk": create_user(
            connection, users_ou, domain, "hana.helpdesk", display_name="Hana Helpdesk"
        ),
        "pat.obrien": create_user(
            connection, users_ou, domain, "pat.obrien", cn='O\'Brien, Pat + "Q" \\ <QA>; =/ #1'
        ),
    }
    lock_out(dc, users["carol.locked"], DOMAIN_POLICY["lockout_threshold"])

    relay = create_user(
        connection, service_ou, domain, "svc-writeback", RELAY_PASSWORD, never_expires=True
    )
    no_rights = create_user(
        connection, service_ou, domain, "svc-norights", RELAY_PASSWORD, never_expires=True
    )
    reset_only = create_user(
        connection, service_ou, domain, "svc-resetonly", RELAY_PASSWORD, never_expires=True
    )
    relay_sid = object_sid(connection, relay.dn)
    reset_only_sid = object_sid(connection, reset_only.dn)
    connection.unbind()

    # Rights on user objects, inherited from the domain root as Microsoft's writeback grants them;
    # the relay itself restricts writes to its configured OUs.
    user_rights = "".join(
        f"(OA;CI;{mask};{right};{USER_CLASS};{relay_sid})"
        for mask, right in (
            ("CR", RESET_PASSWORD),
            ("CR", CHANGE_PASSWORD),
            ("RPWP", LOCKOUT_TIME),
            ("RPWP", PWD_LAST_SET),
        )
    )
    dc.samba_tool(
        "dsacl",
        "set",
        f"--objectdn={base}",
        f"--sddl={user_rights}(OA;;CR;{UNEXPIRE_PASSWORD};;{relay_sid})",
    )
    dc.samba_tool(
        "dsacl",
        "set",
        f"--objectdn={base}",
        f"--sddl=(OA;CI;CR;{RESET_PASSWORD};{USER_CLASS};{reset_only_sid})",
    )
    dc.samba_tool(
        "dsacl",
        "set",
        f"--objectdn=CN=Password Settings Container,CN=System,{base}",
        f"--sddl=(A;CI;RPLCLORC;;;{relay_sid})(A;CI;RPLCLORC;;;{reset_only_sid})",
    )
    return SeededDomain(
        base_dn=base,
        dns_domain=domain,
        users_ou=users_ou,
        outside_ou=outside_ou,
        service_ou=service_ou,
        relay=relay,
        no_rights=no_rights,
        reset_only=reset_only,
        strict_group=strict_group,
        min_age_group=min_age_group,
        users=users,
    )


def set_domain_policy(dc: SambaDC) -> None:
    """The test policy: complexity and history on, minimum age 0, lockout after 5 failures."""
    dc.samba_tool(
        "domain",
        "passwordsettings",
        "set",
        "--complexity=on",
        f"--history-length={DOMAIN_POLICY['history_length']}",
        f"--min-pwd-length={DOMAIN_POLICY['min_length']}",
        "--min-pwd-age=0",
        "--max-pwd-age=90",
        f"--account-lockout-threshold={DOMAIN_POLICY['lockout_threshold']}",
        "--account-lockout-duration=30",
        "--reset-account-lockout-after=30",
    )
