"""The directory-layer demo: real resets, changes and unlocks against the local DC.

Creates fresh users for each run (so it can run again and again), drives the relay's directory
layer through every common outcome and prints a table: operation, user, status, reason, time and
the sentence the user would see. Exits non-zero if any outcome is not the expected one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from devstack import seed
from devstack.stack import Stack
from writeback.protocol import (
    ChangePassword,
    Command,
    ExpirePassword,
    Initiator,
    Reason,
    ResetPassword,
    UnlockAccount,
)
from writeback.relay.cli import load_directory_settings
from writeback.relay.directory import LdapDirectory

NEW = "Fresh-Start!2026"


def scenario(stack: Stack) -> list[tuple[str, Command, Reason]]:
    """(what it shows, command, expected reason), on users created for this run."""
    domain = stack.domain
    admin = stack.dc.admin_connection()

    def user(prefix: str, **options: object) -> seed.Account:
        return seed.create_user(
            admin,
            options.pop("ou", domain.users_ou),  # type: ignore[arg-type]
            domain.dns_domain,
            seed.unique_name(prefix),
            **options,
        )  # type: ignore[arg-type]

    locked, helpdesk, forgot = user("locked"), user("helpdesk"), user("forgot")
    changer, strict = user("changer"), user("strict", groups=(domain.strict_group,))
    young = user("young", groups=(domain.min_age_group,))
    admin_user = user("admin", groups=(f"CN=Domain Admins,CN=Users,{domain.base_dn}",))
    outside, disabled = user("outside", ou=domain.outside_ou), user("disabled", disabled=True)
    expiring = user("expiring")
    seed.lock_out(stack.dc, locked, seed.DOMAIN_POLICY["lockout_threshold"])
    seed.lock_out(stack.dc, helpdesk, seed.DOMAIN_POLICY["lockout_threshold"])
    admin.unbind()
    return [
        (
            "admin reset, unlock, must change",
            ResetPassword(
                helpdesk.upn, NEW, Initiator.ADMIN, unlock=True, force_change_at_next_logon=True
            ),
            Reason.APPLIED,
        ),
        ("self-service reset", ResetPassword(forgot.upn, NEW), Reason.APPLIED),
        ("change", ChangePassword(changer.upn, changer.password, NEW), Reason.APPLIED),
        (
            "change, wrong old password",
            ChangePassword(changer.upn, "Not-The-0ne!", "Other-Pa55!"),
            Reason.OLD_PASSWORD_MISMATCH,
        ),
        (
            "change back to a used password",
            ChangePassword(changer.upn, NEW, changer.password),
            Reason.POLICY_HISTORY,
        ),
        ("reset, too short", ResetPassword(forgot.upn, "Sh0rt!"), Reason.POLICY_LENGTH),
        (
            "reset, too simple",
            ResetPassword(forgot.upn, "alllowercaseletters"),
            Reason.POLICY_COMPLEXITY,
        ),
        ("reset, PSO demands 14", ResetPassword(strict.upn, "Twelve-Chr!1"), Reason.POLICY_LENGTH),
        (
            "change, too soon (PSO min age)",
            ChangePassword(young.upn, young.password, NEW),
            Reason.POLICY_MIN_AGE,
        ),
        ("reset of a Domain Admin", ResetPassword(admin_user.upn, NEW), Reason.USER_PROTECTED),
        (
            "change by a Domain Admin",
            ChangePassword(admin_user.upn, admin_user.password, NEW),
            Reason.APPLIED,
        ),
        ("reset outside the OUs", ResetPassword(outside.upn, NEW), Reason.USER_OUT_OF_SCOPE),
        ("reset of a disabled user", ResetPassword(disabled.upn, NEW), Reason.ACCOUNT_DISABLED),
        (
            "reset of an unknown user",
            ResetPassword(f"nobody@{domain.dns_domain}", NEW),
            Reason.USER_NOT_FOUND,
        ),
        ("unlock", UnlockAccount(locked.upn), Reason.APPLIED),
        ("expire: must change at next logon", ExpirePassword(expiring.upn), Reason.APPLIED),
    ]


def run(stack: Stack, out: Callable[[str], None] = print) -> bool:
    settings = load_directory_settings(stack.relay_config)
    directory = LdapDirectory(settings, settings.bind_password())
    capabilities = directory.capabilities()
    out(
        f"DC {capabilities.dc_host} via {capabilities.dc} (PDC emulator: {capabilities.is_pdc}, "
        f"policy hints: {capabilities.policy_hints or 'not advertised'})\n"
    )
    rows = [("#", "what", "user", "status", "reason", "ms", "message")]
    ok = True
    for number, (what, command, expected) in enumerate(scenario(stack), 1):
        started = time.perf_counter()
        outcome = directory.apply(command)
        elapsed = (time.perf_counter() - started) * 1000
        mark = "" if outcome.reason is expected else f"  <-- expected {expected}"
        ok = ok and not mark
        rows.append(
            (
                str(number),
                what,
                command.user.split("@")[0],
                str(outcome.status),
                str(outcome.reason),
                f"{elapsed:.0f}",
                outcome.message + mark,
            )
        )
    directory.close()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        out(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    return ok
