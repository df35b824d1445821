"""`writeback-relay doctor`: check everything the directory layer depends on, and say what is wrong.

Each check reads, never writes: TLS and the CA against every configured DC, the bind, the PDC
emulator, the policy-hints control, clock skew, the configured OUs and groups, the rights of the
relay's account (read from the DACLs, naming the missing right and what it breaks) and whether PSO
rules can be read. A FAIL means writeback will not work as configured; a WARN means it works with a
limitation that the report names.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.identity.aio import DefaultAzureCredential
from ldap3.utils.conv import escape_filter_chars

from writeback import sealing
from writeback.errors import DirectoryError, TransportError, WritebackError
from writeback.relay import accounts, ldap, rights
from writeback.relay.config import Config
from writeback.relay.journal import Journal
from writeback.relay.keys import KeyStore
from writeback.relay.ldap import sid_to_str
from writeback.relay.permissions import check_trusted_file
from writeback.relay.settings import DirectorySettings
from writeback.transport.servicebus import probe
from writeback.transport.servicebus.clock import ServiceClock, read_service_clock

SKEW_WARN_SECONDS = 60
SKEW_FAIL_SECONDS = 300  # Kerberos' default tolerance; min-age and expiry checks drift with it


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    summary: str


def _sd_controls() -> list[tuple[str, bool, bytes]]:
    return [(ldap.SD_FLAGS_OID, True, ldap.SD_FLAGS_DACL)]


def _account_sids(link: ldap.Link, bind_user: str) -> frozenset[str]:
    if "=" in bind_user:
        raw = link.read(bind_user, ["objectSid", "tokenGroups"])
    else:
        name = bind_user.rsplit("\\", 1)[-1]
        query = (
            f"(|(userPrincipalName={escape_filter_chars(name)})"
            f"(sAMAccountName={escape_filter_chars(name)}))"
        )
        found = link.search(link.controller.naming_context, query, ["objectSid"], size_limit=1)
        raw = link.read(found[0][0], ["objectSid", "tokenGroups"]) if found else {}
    sids = {sid_to_str(value) for value in raw.get("objectSid", []) + raw.get("tokenGroups", [])}
    return frozenset(sids | {rights.EVERYONE, rights.AUTHENTICATED_USERS})


def _check_rights(
    link: ldap.Link, settings: DirectorySettings, sids: frozenset[str]
) -> list[Check]:
    checks: list[Check] = []
    for scope in settings.scopes:
        users = link.search(
            scope, "(&(objectCategory=person)(objectClass=user))", ["cn"], size_limit=1
        )
        target, for_children = (users[0][0], False) if users else (scope, True)
        raw = link.read(target, ["nTSecurityDescriptor"], controls=_sd_controls())
        if not raw.get("nTSecurityDescriptor"):
            checks.append(
                Check(
                    f"rights in {scope}",
                    Level.FAIL,
                    f"cannot read the security descriptor of {target}",
                )
            )
            continue
        absent = rights.missing(
            rights.parse(raw["nTSecurityDescriptor"][0]),
            sids,
            rights.USER_RIGHTS,
            for_children=for_children,
        )
        where = f"checked on {target}" if users else "checked on the OU's inheritable ACEs"
        if absent:
            checks.extend(
                Check(
                    f"right {right.name} in {scope}",
                    Level.FAIL,
                    f"missing: {right.consequence} ({where})",
                )
                for right in absent
            )
        else:
            names = ", ".join(right.name for right in rights.USER_RIGHTS)
            checks.append(Check(f"rights in {scope}", Level.OK, f"{names} ({where})"))
    domain = link.controller.naming_context
    raw = link.read(domain, ["nTSecurityDescriptor"], controls=_sd_controls())
    descriptor = (
        rights.parse(raw["nTSecurityDescriptor"][0]) if raw.get("nTSecurityDescriptor") else None
    )
    for right in rights.DOMAIN_RIGHTS:
        if descriptor is not None and rights.holds(descriptor, sids, right, for_children=False):
            checks.append(Check(f"right {right.name} on {domain}", Level.OK, "granted"))
        else:
            checks.append(
                Check(
                    f"right {right.name} on {domain}", Level.FAIL, f"missing: {right.consequence}"
                )
            )
    return checks


def _check_psos(link: ldap.Link, sids: frozenset[str]) -> Check:
    container = f"CN=Password Settings Container,CN=System,{link.controller.naming_context}"
    unreadable = Check(
        "password settings objects",
        Level.WARN,
        "cannot read PSOs: users under a PSO get policy.rejected instead of the rule they broke "
        f"(grant Read on {container})",
    )
    # By default only administrators may list and read PSOs; a PSO the relay cannot read is
    # simply invisible to it, so the container's DACL is what tells.
    raw = link.read(container, ["nTSecurityDescriptor"], controls=_sd_controls())
    if not raw.get("nTSecurityDescriptor") or not rights.holds(
        rights.parse(raw["nTSecurityDescriptor"][0]), sids, rights.READ_PSOS, for_children=False
    ):
        return unreadable
    psos = link.search(
        container,
        "(objectClass=msDS-PasswordSettings)",
        ["msDS-MinimumPasswordLength"],
        scope="LEVEL",
    )
    if not psos:
        return Check("password settings objects", Level.OK, "no PSO defined")
    if all(attrs.get("msDS-MinimumPasswordLength") for _, attrs in psos):
        return Check(
            "password settings objects",
            Level.OK,
            f"{len(psos)} PSO(s) readable: their rules are pre-checked and named",
        )
    return unreadable


def throttle_check(attempts: int, lockout_threshold: int) -> Check:
    """Whether relay.change_attempts keeps writeback from locking accounts out on its own."""
    name = "change throttle"
    if attempts == 0:
        return Check(name, Level.WARN, "off (relay.change_attempts = 0): wrong current "
                     "passwords go to the DC without limit")  # fmt: skip
    if lockout_threshold and attempts >= lockout_threshold:
        return Check(
            name,
            Level.WARN,
            f"relay.change_attempts = {attempts} is not below the domain's lockout threshold "
            f"({lockout_threshold}): changes with wrong current passwords through writeback can "
            f"lock accounts out; set it to {max(1, lockout_threshold - 1)} or less",
        )
    return Check(name, Level.OK, f"{attempts} wrong current passwords per user, then refused "
                 f"(lockout threshold {lockout_threshold or 'none'})")  # fmt: skip


def diagnose(
    settings: DirectorySettings,
    password: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    *,
    change_attempts: int | None = None,
) -> list[Check]:
    """Run every check; never raises for a directory problem (it becomes a FAIL). With
    `change_attempts` (a whole relay.toml) the change throttle is checked against the domain's
    lockout threshold too."""
    checks: list[Check] = []
    links: list[ldap.Link] = []
    for address in settings.servers:
        try:
            link = ldap.Link(settings, address, password)
        except DirectoryError as exc:
            problem = str(exc).removeprefix(f"{address.url}: ")
            checks.append(Check(f"connect {address.url}", Level.FAIL, problem))
            continue
        links.append(link)
        mode = "LDAPS" if address.ldaps else "StartTLS"
        checks.append(
            Check(
                f"connect {address.url}",
                Level.OK,
                f"{mode}, certificate valid for {address.host} under "
                f"{settings.ca_file}; bound as {settings.bind_user}",
            )
        )
    if not links:
        return checks
    # With one DC working, an unreachable one only degrades failover.
    checks = [
        Check(c.name, Level.WARN, f"{c.summary} (failover to it will not work)")
        if c.level is Level.FAIL
        else c
        for c in checks
    ]
    try:
        link = next((candidate for candidate in links if candidate.controller.is_pdc), links[0])
        controller = link.controller
        pdc_server = controller.pdc_dn.split(",", 1)[-1]
        pdc_host = ldap.first(link.read(pdc_server, ["dNSHostName"]), "dNSHostName", pdc_server)
        if controller.is_pdc:
            checks.append(Check("pdc emulator", Level.OK, f"{pdc_host} ({controller.address.url})"))
        else:
            checks.append(
                Check(
                    "pdc emulator",
                    Level.WARN,
                    f"the PDC emulator is {pdc_host}, and none of the DCs the relay could bind "
                    "to is it: add it to directory.servers (or check why it is unreachable); "
                    "other DCs forward password changes to it with a delay",
                )
            )
        checks.append(
            Check(
                "domain names",
                Level.OK if controller.netbios and controller.domain_sid else Level.WARN,
                f"NetBIOS {controller.netbios or 'unreadable (down-level names find no one)'}, "
                f"SID {controller.domain_sid or 'unreadable'}",
            )
        )
        hints = controller.policy_hints_oid
        checks.append(
            Check("policy hints", Level.OK, f"advertised ({hints})")
            if hints
            else Check(
                "policy hints",
                Level.WARN,
                "not advertised by this DC: resets cannot enforce password history and minimum age "
                "(changes still do); Windows Server 2008 R2 and later advertise it "
                "(1.2.840.113556.1.4.2066 or .2239), Samba from 4.24",
            )
        )
        if controller.current_time is not None:
            skew = abs((clock() - controller.current_time).total_seconds())
            level = (
                Level.OK
                if skew < SKEW_WARN_SECONDS
                else Level.WARN
                if skew < SKEW_FAIL_SECONDS
                else Level.FAIL
            )
            checks.append(
                Check("clock skew", level, f"{skew:.0f}s against {controller.dns_host_name}")
            )
        configured = [("scope", dn, "directory.scopes") for dn in settings.scopes]
        configured += [
            ("denied group", dn, "directory.denied_groups") for dn in settings.denied_groups
        ]
        for kind, dn, setting in configured:
            found = link.read(dn, ["objectClass"])
            checks.append(
                Check(
                    f"{kind} {dn}",
                    Level.OK if found else Level.FAIL,
                    "exists" if found else f"not found (check {setting})",
                )
            )
        sids = _account_sids(link, settings.bind_user)
        checks.extend(_check_rights(link, settings, sids))
        checks.append(_check_psos(link, sids))
        if change_attempts is not None:
            policy = accounts.read_domain_policy(link)
            checks.append(throttle_check(change_attempts, policy.lockout_threshold))
    except DirectoryError as exc:
        checks.append(Check("directory", Level.FAIL, str(exc)))
    finally:
        for each in links:
            each.close()
    return checks


def service_clock_check(clock: ServiceClock, lock_seconds: float) -> Check:
    """This host's clock against Service Bus's, as far as a peek can tell (see
    `writeback.transport.servicebus.clock`), judged by the request lock's duration: behind by
    half of it WARN, by all of it FAIL. Being ahead can only be bounded, never shown."""
    name = "service bus clock"
    if clock.behind is None or clock.ahead is None:
        return Check(name, Level.OK, "not measured: no queued request to compare with")
    if clock.behind >= lock_seconds / 2:
        return Check(
            name,
            Level.FAIL if clock.behind >= lock_seconds else Level.WARN,
            f"this host's clock is at least {clock.behind:.0f}s behind Service Bus's (the "
            f"request lock lasts {lock_seconds:.0f}s): check its time synchronisation",
        )
    if clock.ahead < lock_seconds / 2:
        return Check(
            name, Level.OK, f"within {clock.ahead:.0f}s of Service Bus's (lock {lock_seconds:.0f}s)"
        )
    return Check(
        name,
        Level.OK,
        f"not behind; ahead by at most {clock.ahead:.0f}s (the newest queued request is that "
        f"old, so no closer bound; lock {lock_seconds:.0f}s)",
    )


def render(checks: list[Check]) -> str:
    width = max(len(level) for level in Level)
    lines = [f"[{check.level:<{width}}] {check.name}: {check.summary}" for check in checks]
    failed = sum(check.level is Level.FAIL for check in checks)
    warned = sum(check.level is Level.WARN for check in checks)
    plural = "" if warned == 1 else "s"
    lines.append(f"{len(checks)} checks: {failed} failed, {warned} warning{plural}")
    return "\n".join(lines)


async def diagnose_relay(config: Config) -> list[Check]:
    """The relay's own checks: its keys, the cloud's keys, the journal, Service Bus."""
    checks: list[Check] = []
    try:
        keys = KeyStore(config.relay.keys)
        keys.open()
        active = [info.kid for info in keys.keys() if info.status.value == "active"]  # noqa: SIM118 - KeyStore.keys() is a method, not a dict's
        same = keys.relay_id == config.relay.id
        checks.append(
            Check(
                "relay keys",
                Level.OK if same else Level.FAIL,
                f"active {', '.join(active)}"
                if same
                else f"the keys belong to relay {keys.relay_id!r}, not {config.relay.id!r}",
            )
        )
    except WritebackError as exc:
        checks.append(Check("relay keys", Level.FAIL, str(exc)))
    try:
        check_trusted_file(config.relay.cloud_keys, "relay.cloud_keys")
        document = json.loads(config.relay.cloud_keys.read_text(encoding="utf-8"))
        cloud = sealing.public_keyset(document, "relay.cloud_keys")
        checks.append(Check("cloud keys", Level.OK, f"{len(cloud.keys)} signing key(s) trusted"))
    except (OSError, ValueError, WritebackError) as exc:
        checks.append(Check("cloud keys", Level.FAIL, f"{config.relay.cloud_keys}: {exc}"))
    try:
        journal = Journal(config.relay.journal)
        counts = journal.counts()
        journal.close()
        unfinished = counts["received"] + counts["applying"]
        checks.append(
            Check(
                "journal",
                Level.WARN if unfinished else Level.OK,
                f"{sum(counts.values())} entries, {unfinished} unfinished",
            )
        )
    except WritebackError as exc:
        checks.append(Check("journal", Level.FAIL, str(exc)))
    credential = None if config.servicebus.connection_string else DefaultAzureCredential()
    try:
        reached = await probe(config.servicebus, credential, config.relay.domain)
        checks.append(Check("service bus", Level.OK, "; ".join(reached)))
        clock = await read_service_clock(config.servicebus, credential, config.relay.domain)
        checks.append(service_clock_check(clock, config.servicebus.lock_duration))
    except TransportError as exc:
        checks.append(Check("service bus", Level.FAIL, str(exc)))
    finally:
        if credential is not None:
            await credential.close()
    return checks
