"""Apply a reset, change, unlock or expire to AD DS and say exactly what happened.

For each command: find the user by the reference the request names (UPN, SID, GUID or
`DOMAIN\\name`; see `accounts`), or again by objectGUID once the pipeline resolved it; refuse
what the relay must refuse whatever AD would allow (outside the configured OUs, disabled,
protected accounts on a reset or unlock), pre-check the password against the policy that
applies to this user (domain policy or PSO), then send one modify and classify the DC's answer.
A change is a delete of the old value and an add of the new in one modify, and it never falls
back to a reset: a reset would skip the check of the old password, history and minimum age.
Nothing here retries a modify: a wrong old password retried counts twice towards lockout, and a
reset retried after a lost answer could look like history.

What is read, and how often: everything about the user (pwdLastSet, userAccountControl,
adminCount, which PSO applies, tokenGroups) is read for every command, under the account's write
lock, in one base-scope read of the account by objectGUID (`<GUID=...>`) with only the
constructed attributes that operation uses, and its tokenGroups when protection must be checked
(AD and Samba construct tokenGroups only in a base-scope read: a command named by a reference
alone, without a resolved account, reads them separately). The domain policy and PSO objects are
cached for a minute (`policy_cache`, which says why that is safe). A reset is then three requests
to the DC: the pipeline's resolution (`resolve`), the read by objectGUID and the modify. The
read stays under the lock, after the resolution: a write queued behind another for the same
account must see what that write left (pwdLastSet for the minimum age, the lockout count). The
resolution has a connection of its own to the same DC, so it runs while another account's modify
is in flight rather than queued behind it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import ldap3

from writeback import tracing
from writeback.errors import DirectoryAccessDenied, DirectoryError, DirectoryUnavailable
from writeback.protocol import (
    ChangePassword,
    Command,
    ExpirePassword,
    Initiator,
    Operation,
    Outcome,
    Reason,
    ResetPassword,
    UnlockAccount,
)
from writeback.protocol.accounts import Account
from writeback.relay import accounts, ldap
from writeback.relay.accounts import User
from writeback.relay.policy import (
    PasswordPolicy,
    check_syntax,
    encode_unicode_pwd,
    filetime,
    lockout_guard,
    precheck,
)
from writeback.relay.policy_cache import PolicyCache
from writeback.relay.results import DirectoryAnswer, classify
from writeback.relay.settings import DirectorySettings
from writeback.tracing import Stage

log = logging.getLogger(__name__)
# Bind answers AD gives only after the password matched (MS-ADTS 3.1.1.3.4; ldap.BIND_DATA).
_RIGHT_PASSWORD = frozenset({"773", "532", "533", "701", "530", "531"})


class Directory(Protocol):
    """What the relay needs from AD DS.

    A user is an `Account` once resolved: `resolve` finds the one account a request names, and
    the rest take that account and find it again by its objectGUID alone, so a rename or a new
    account with the old UPN in between can never redirect a write. `apply` and `refusal`
    without an account resolve the command's own reference first."""

    def resolve(self, user: str | Account) -> Account | Outcome:
        """The one account `user` names (an Account: found again by objectGUID), or the
        outcome saying why there is none (request.invalid, user.not_found, user.ambiguous,
        directory.*). Reads only; no scope, protection or state is checked here."""
        ...

    def apply(self, command: Command, account: Account | None = None) -> Outcome: ...

    def capabilities(self) -> Capabilities: ...

    def password_last_set(self, account: Account) -> datetime | None:
        """When the user's password was last written, per the DC; None if never or if the
        user must change it at next logon (pwdLastSet = 0)."""
        ...

    def refusal(self, command: Command, account: Account | None = None) -> Outcome | None:
        """What `apply` would refuse before writing anything (bad input, no such user, out of
        scope, disabled, protected), or None; nothing is written."""
        ...

    def password_in_effect(self, account: Account, password: str) -> bool | None:
        """Whether `password` is the account's password now, proved by the DC; None when that
        cannot be known without risking the account (see LdapDirectory)."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What the relay found about the directory; reported in heartbeats and by doctor."""

    dc: str
    dc_host: str
    is_pdc: bool
    policy_hints: str | None
    domain_policy: PasswordPolicy
    # The domain's NetBIOS name and SID (see ldap.DomainController), None when unreadable.
    netbios: str | None = None
    domain_sid: str | None = None


class LdapDirectory:
    """The Directory port on ldap3, against the configured DCs."""

    def __init__(
        self,
        settings: DirectorySettings,
        password: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        connect: Callable[[DirectorySettings, str], ldap.Link] = ldap.connect,
        policies: PolicyCache | None = None,
    ) -> None:
        self.settings = settings
        self._password = password
        self._clock = clock
        self._connect = connect
        self._link: ldap.Link | None = None
        self._lock = threading.Lock()
        # `resolve` reads on a connection of its own (see `_reader_link`), under a lock of its own.
        self._reader: ldap.Link | None = None
        self._reader_lock = threading.Lock()
        # The writes' connection whose DC the lookups found gone (until the writes reconnect).
        self._writers_dc_gone: ldap.Link | None = None
        self._denied_sids: frozenset[str] | None = None
        self._policies = policies if policies is not None else PolicyCache()

    # -- connection --------------------------------------------------------------------
    def _connected(self) -> ldap.Link:
        if self._link is None or not self._link.alive:
            self._link = self._connect(self.settings, self._password)
            controller = self._link.controller
            log.info(
                "dc_connected",
                extra={
                    "dc": controller.address.url,
                    "host": controller.dns_host_name,
                    "pdc": controller.is_pdc,
                    "policy_hints": controller.policy_hints_oid,
                    "netbios": controller.netbios,
                    "domain_sid": controller.domain_sid,
                },
            )
        return self._link

    def _reader_link(self) -> ldap.Link:
        """The connection the pipeline's lookups (`resolve`) read on, beside the one the
        writes and the reads under the account's lock use: a lookup for one account need not
        wait behind another account's modify, which the DC serves meanwhile. It goes to the DC
        the writes' connection is open to, so a lookup does not find what that DC has not
        replicated yet (or the reverse); when that DC does not answer, or before the writes have
        connected, it takes the configured DCs as the writes do (failing over on its own: the
        writes find out at their next use). Called under the reader's lock only: the
        writes' connection is looked at, never used or closed, from here."""
        writer = self._link  # one attribute read: only its address is wanted
        usable = writer is not None and writer.alive and writer is not self._writers_dc_gone
        wanted = writer.address if writer is not None and usable else None
        reader = self._reader
        if reader is not None and reader.alive and wanted in (None, reader.address):
            return reader
        self._close_reader()
        if wanted is not None:
            try:
                only = dataclasses.replace(self.settings, servers=(wanted,))
                self._reader = self._connect(only, self._password)
                return self._reader
            except DirectoryUnavailable:
                # Gone: fail over below, and do not try it again for each lookup until the
                # writes have found out (their next use reconnects them).
                self._writers_dc_gone = writer
        self._reader = self._connect(self.settings, self._password)
        return self._reader

    def _reading(self, read: Callable[[ldap.Link], Any], *, reader: bool = False) -> Any:
        """Run a read (on the lookups' connection when `reader`); if the DC went away,
        reconnect (failing over) and try once more."""
        connected = self._reader_link if reader else self._connected
        try:
            return read(connected())
        except DirectoryUnavailable:
            if reader:
                self._close_reader()
            else:
                self._close_writer()
            return read(connected())

    def close(self) -> None:
        """Close both connections (the relay is stopping)."""
        with self._reader_lock:
            self._close_reader()
        with self._lock:
            self._close_writer()

    def _close_writer(self) -> None:
        """Under the writes' lock."""
        if self._link is not None:
            self._link.close()
            self._link = None

    def _close_reader(self) -> None:
        """Under the reader's lock."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def capabilities(self) -> Capabilities:
        """What the DC says about itself; also (re)opens the lookups' connection, so the relay
        starts, and each heartbeat leaves it, with both connections open."""
        with self._lock:
            link = self._connected()
            controller = link.controller
            try:
                # Read now: the heartbeat reports what the DC holds, and refreshes the cache.
                policy = self._policies.domain(link, fresh=True)
            except DirectoryUnavailable:
                self._close_writer()  # the next heartbeat or write fails over
                raise
            capabilities = Capabilities(
                dc=controller.address.url,
                dc_host=controller.dns_host_name,
                is_pdc=controller.is_pdc,
                policy_hints=controller.policy_hints_oid,
                domain_policy=policy,
                netbios=controller.netbios,
                domain_sid=controller.domain_sid,
            )
        with self._reader_lock:
            try:
                self._reader_link()
            except DirectoryError as exc:  # the next lookup tries again, and answers for it
                log.warning("dc_lookups_unconnected", extra={"error": str(exc)})
        return capabilities

    def resolve(self, user: str | Account) -> Account | Outcome:
        with self._reader_lock:
            try:
                found = self._find(user, reader=True)
                return found if isinstance(found, Outcome) else found.account
            except DirectoryError as exc:
                if isinstance(exc, DirectoryUnavailable):
                    self._close_reader()
                return Outcome(Reason(exc.reason), str(exc))

    def _find(
        self,
        user: str | Account,
        operation: Operation | None = None,
        *,
        groups: bool = False,
        reader: bool = False,
    ) -> User | Outcome:
        """The user entry, by a reference checked before any filter or by objectGUID (then with
        its tokenGroups when `groups`), on the lookups' connection when `reader`."""
        ref = user if isinstance(user, Account) else accounts.check_reference(user)
        if isinstance(ref, Outcome):
            return ref
        return self._reading(  # type: ignore[no-any-return]
            lambda link: accounts.find_user(link, ref, operation, groups=groups), reader=reader
        )

    def password_last_set(self, account: Account) -> datetime | None:
        with self._lock:
            found = self._find(account)
        if not isinstance(found, User):
            return None
        last_set = filetime(found.number("pwdLastSet"))
        return last_set.replace(tzinfo=UTC) if last_set else None

    def refusal(self, command: Command, account: Account | None = None) -> Outcome | None:
        """Also the policy's refusals that depend on the password alone (length, complexity, a
        change to the same password, changes refused by the domain), as the write would make
        them: a redelivered too-short password is `policy.length`, never bound as the user (a
        bad attempt) nor reported superseded. Not the minimum age: an earlier delivery's own
        write would make that refuse the very request that made it."""
        with self._lock:
            try:
                checked = self._checked(command, account)
                if isinstance(checked, Outcome):
                    return checked
                if isinstance(command, ResetPassword | ChangePassword):
                    old = command.old_password if isinstance(command, ChangePassword) else None
                    return self._precheck(
                        self._connected(), checked, command.new_password,
                        check_min_age=False, old_password=old,
                    )  # fmt: skip
            except DirectoryError as exc:
                return Outcome(Reason(exc.reason), str(exc))
        return None

    def password_in_effect(self, account: Account, password: str) -> bool | None:
        """Bind as the user (by the DN its objectGUID finds) with `password` on the relay's DC: True
        when the DC accepts it, or refuses the logon for a reason it only gives for a right
        password (must change 773, expired 532, disabled 533, account expired 701, logon hours
        530, workstation 531); False when it says wrong password (52e); None for any other
        answer, or when the bind could matter: a wrong password counts one bad attempt (and a
        change sent after it one more), so nothing is bound while two could reach the lockout
        threshold, or while the user's policy is unreadable. The bind is a logon to the DC
        (an event in its security log; lastLogonTimestamp may move)."""
        with self._lock:
            found = self._find(account, Operation.RESET)
            if not isinstance(found, User):
                return None
            link = self._connected()
            policy = self._policies.resultant(link, found)
            now = self._clock().replace(tzinfo=None)
            bad_time = filetime(found.number("badPasswordTime"))
            if policy is None or lockout_guard(
                policy, found.number("badPwdCount"), bad_time, now, margin=2
            ):
                return None
            answer = ldap.bind_answer(self.settings, link.address, found.dn, password)
        log.info("password_verified", extra={"dn": found.dn, "answer": answer or "accepted"})
        if answer is None or answer in _RIGHT_PASSWORD:
            return True
        return False if answer == "52e" else None

    # -- the operation -------------------------------------------------------------------
    def apply(self, command: Command, account: Account | None = None) -> Outcome:
        """Apply one command to `account` (found again by objectGUID), or to the account the
        command's reference names; every failure is an outcome, never an exception."""
        with self._lock:
            try:
                return self._apply(command, account)
            except DirectoryError as exc:
                if isinstance(exc, DirectoryUnavailable):
                    self._close_writer()
                return Outcome(Reason(exc.reason), str(exc))

    def _checked(self, command: Command, account: Account | None) -> User | Outcome:
        """The command's user, or what the relay refuses before any write."""
        for password, what in self._passwords(command):
            invalid = check_syntax(password, what)
            if invalid:
                return invalid
        with tracing.stage(Stage.READ_USER):
            found = self._find(
                account or command.user, command.operation, groups=self._needs_groups(command)
            )
        if isinstance(found, Outcome):
            return found
        return self._refuse(command, found) or found

    def _apply(self, command: Command, account: Account | None) -> Outcome:
        checked = self._checked(command, account)
        if isinstance(checked, Outcome):
            return checked
        user: User = checked
        link = self._connected()
        hints = link.controller.policy_hints_oid
        if isinstance(command, ResetPassword):
            return self._reset(link, command, user, hints)
        if isinstance(command, ChangePassword):
            return self._change(link, command, user)
        if isinstance(command, ExpirePassword):
            return self._expire(link, user)
        return self._unlock(link, command, user)

    @staticmethod
    def _passwords(command: Command) -> list[tuple[str, str]]:
        if isinstance(command, ResetPassword):
            return [(command.new_password, "new password")]
        if isinstance(command, ChangePassword):
            return [(command.old_password, "old password"), (command.new_password, "new password")]
        return []

    def _refuse(self, command: Command, user: User) -> Outcome | None:
        """What the relay refuses whatever AD would allow (Samba enforces none of it)."""
        if not accounts.in_scope(user.dn, self.settings.scopes):
            return Outcome(Reason.USER_OUT_OF_SCOPE, f"{user.dn} is outside the configured OUs")
        if user.number("userAccountControl") & accounts.UF_ACCOUNTDISABLE:
            return Outcome(Reason.ACCOUNT_DISABLED, f"{user.dn} is disabled")
        # As in Microsoft's writeback: an administrator may change their own password with the
        # old one, but a reset, unlock or expire of a privileged account through the cloud would
        # let whoever controls the cloud side take over (or lock out of) the domain.
        # allow_protected_reset lifts AD's own protection (adminCount, AdminSDHolder groups),
        # never the administrator's explicit denied_groups.
        if command.operation is not Operation.CHANGE:
            why = self._protection(user)
            if why:
                return Outcome(Reason.USER_PROTECTED, f"{user.dn}: {why}")
        return None

    def _needs_groups(self, command: Command) -> bool:
        """Whether `_protection` will read the user's tokenGroups for this command."""
        allow = self.settings.allow_protected_reset
        return command.operation is not Operation.CHANGE and not (
            allow and not self.settings.denied_groups
        )

    def _protection(self, user: User) -> str | None:
        allow = self.settings.allow_protected_reset
        if user.number("adminCount") == 1 and not allow:
            return "adminCount=1"
        if allow and not self.settings.denied_groups:
            return None
        link = self._connected()
        raw = user.raw  # read with the entry when it was found by objectGUID (find_user)
        if not raw.get("tokenGroups"):
            with tracing.stage(Stage.READ_GROUPS):
                raw = link.read(user.dn, ["tokenGroups"])
        if not raw.get("tokenGroups"):
            # Every account has at least its primary group: an empty answer means the relay may
            # not read tokenGroups, and guessing "no groups" would let a Domain Admin through.
            raise DirectoryAccessDenied(
                f"cannot read tokenGroups of {user.dn}: grant the relay's account Read on "
                "tokenGroups (Windows Authorization Access Group)"
            )
        sids = {ldap.sid_to_str(value) for value in raw["tokenGroups"]}
        denied = self._denied_group_sids(link)
        return accounts.protected_by(set() if allow else sids, sids & denied)

    def _denied_group_sids(self, link: ldap.Link) -> frozenset[str]:
        if self._denied_sids is None:
            sids = set()
            for group in self.settings.denied_groups:
                raw = link.read(group, ["objectSid"])
                if not raw.get("objectSid"):
                    raise DirectoryError(f"directory.denied_groups: {group} not found")
                sids.add(ldap.sid_to_str(raw["objectSid"][0]))
            self._denied_sids = frozenset(sids)
        return self._denied_sids

    # -- policy --------------------------------------------------------------------------
    def _precheck(
        self,
        link: ldap.Link,
        user: User,
        new_password: str,
        *,
        check_min_age: bool,
        old_password: str | None = None,
    ) -> Outcome | None:
        policy = self._policies.resultant(link, user)
        if policy is None:
            return None  # the DC still enforces it; its answer is classified below
        if old_password is not None and policy.refuse_change:
            return Outcome(
                Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD,
                "the domain refuses password changes (pwdProperties)",
            )
        now = self._clock().replace(tzinfo=None)
        return precheck(
            policy,
            new_password,
            user.facts,
            now,
            check_min_age=check_min_age,
            old_password=old_password,
        )

    # -- the writes ----------------------------------------------------------------------
    def _reset(
        self, link: ldap.Link, command: ResetPassword, user: User, hints: str | None
    ) -> Outcome:
        # With policy hints the DC enforces history and minimum age on the reset as on a change.
        failed = self._precheck(link, user, command.new_password, check_min_age=hints is not None)
        if failed:
            return failed
        changes: dict[str, list[tuple[str, list[Any]]]] = {
            "unicodePwd": [(ldap3.MODIFY_REPLACE, [encode_unicode_pwd(command.new_password)])],
        }
        extra, notes = [], []
        if command.unlock:
            changes["lockoutTime"] = [(ldap3.MODIFY_REPLACE, ["0"])]
            extra.append("Write lockoutTime")
        if command.force_change_at_next_logon:
            if user.number("userAccountControl") & accounts.UF_DONT_EXPIRE_PASSWD:
                # As Microsoft's writeback does: AD ignores must-change for such accounts.
                notes.append("force change skipped: the password never expires")
            else:
                changes["pwdLastSet"] = [(ldap3.MODIFY_REPLACE, ["0"])]
                extra.append("Write pwdLastSet")
        # Critical, so a DC that does not understand it refuses instead of silently ignoring it.
        controls = [(hints, True, ldap.POLICY_HINTS_VALUE)] if hints else None
        outcome = self._write(
            link,
            operation=Operation.RESET,
            user=user,
            changes=changes,
            controls=controls,
            extra_rights=" and ".join(extra),
        )
        notes.append(
            f"initiator {command.initiator}"
            if command.initiator is Initiator.ADMIN
            else "self-service"
        )
        notes.append("policy hints " + (hints or "not available on this DC"))
        return Outcome(
            outcome.reason, f"{outcome.detail}; {'; '.join(notes)}", outcome.custom_message
        )

    def _change(self, link: ldap.Link, command: ChangePassword, user: User) -> Outcome:
        # Whatever the relay's own throttle says: a wrong current password counts on the DC.
        policy = self._policies.resultant(link, user)
        locked = user.number("msDS-User-Account-Control-Computed") & accounts.UF_LOCKOUT
        if policy is not None and not locked:
            refused = lockout_guard(
                policy,
                user.number("badPwdCount"),
                filetime(user.number("badPasswordTime")),
                self._clock().replace(tzinfo=None),
            )
            if refused:
                return refused
        failed = self._precheck(
            link, user, command.new_password, check_min_age=True, old_password=command.old_password
        )
        if failed:
            return failed
        changes: dict[str, list[tuple[str, list[Any]]]] = {
            "unicodePwd": [
                (ldap3.MODIFY_DELETE, [encode_unicode_pwd(command.old_password)]),
                (ldap3.MODIFY_ADD, [encode_unicode_pwd(command.new_password)]),
            ]
        }
        return self._write(
            link,
            operation=Operation.CHANGE,
            user=user,
            changes=changes,
        )

    def _unlock(self, link: ldap.Link, command: UnlockAccount, user: User) -> Outcome:
        locked = bool(user.number("msDS-User-Account-Control-Computed") & accounts.UF_LOCKOUT)
        changes: dict[str, list[tuple[str, list[Any]]]] = {
            "lockoutTime": [(ldap3.MODIFY_REPLACE, ["0"])]
        }
        outcome = self._write(
            link,
            operation=Operation.UNLOCK,
            user=user,
            changes=changes,
        )
        if outcome.reason is Reason.APPLIED:
            return Outcome(
                Reason.APPLIED,
                f"{outcome.detail}; " + ("was locked out" if locked else "was not locked out"),
                "The account is unlocked." if locked else "The account was not locked out.",
            )
        return outcome

    def _expire(self, link: ldap.Link, user: User) -> Outcome:
        if user.number("userAccountControl") & accounts.UF_DONT_EXPIRE_PASSWD:
            # AD ignores pwdLastSet = 0 for such accounts: "applied" would be a false promise.
            return Outcome(
                Reason.ACCOUNT_PASSWORD_NEVER_EXPIRES,
                f"{user.dn} has DONT_EXPIRE_PASSWORD in userAccountControl; nothing was written",
            )
        was_due = user.number("pwdLastSet") == 0
        changes: dict[str, list[tuple[str, list[Any]]]] = {
            "pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])]
        }
        outcome = self._write(link, operation=Operation.EXPIRE, user=user, changes=changes)
        if outcome.reason is Reason.APPLIED:
            return Outcome(
                Reason.APPLIED,
                f"{outcome.detail}; "
                + ("it already had to change its password" if was_due else "pwdLastSet is now 0"),
                "You must choose a new password the next time you sign in on-premises.",
            )
        return outcome

    def _write(
        self,
        link: ldap.Link,
        *,
        operation: Operation,
        user: User,
        changes: dict[str, list[tuple[str, list[Any]]]],
        controls: list[tuple[str, bool, bytes]] | None = None,
        extra_rights: str = "",
    ) -> Outcome:
        with tracing.stage(Stage.MODIFY, {"writeback.operation": operation.value}):
            result, message = link.modify(user.dn, changes, controls)
        outcome = classify(operation, DirectoryAnswer.of(result, message), extra_rights)
        log.info(
            "directory_write",
            extra={
                "operation": str(operation),
                "dn": user.dn,
                "dc": link.address.url,
                "result": result,
                "reason": str(outcome.reason),
            },
        )
        return Outcome(
            outcome.reason,
            f"{outcome.detail}; dc {link.controller.dns_host_name}",
            outcome.custom_message,
        )
