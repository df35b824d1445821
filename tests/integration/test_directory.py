"""The directory layer against a real Samba AD DC: every outcome Samba can produce."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import ldap3
import pytest

from devstack import seed
from tests.testbed import TestBed
from writeback.protocol import (
    ChangePassword,
    ExpirePassword,
    Initiator,
    Reason,
    ResetPassword,
    Status,
    UnlockAccount,
)
from writeback.protocol.accounts import Account
from writeback.relay.directory import LdapDirectory
from writeback.relay.ldap import sid_to_str
from writeback.relay.policy import filetime

NEW = "Brand-New-Pa55!"
NewUser = Callable[..., seed.Account]
Read = Callable[[str, list[str]], dict[str, str]]
CanBind = Callable[[seed.Account, str], bool]


class TestReset:
    def test_applies_and_the_dc_accepts_the_new_password(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A self-service reset is applied and the user can bind with the new password."""
        user = new_user()
        outcome = directory.apply(ResetPassword(user.upn, NEW))
        assert (outcome.status, outcome.reason) == (Status.APPLIED, Reason.APPLIED)
        assert can_bind(user, NEW)
        assert not can_bind(user, user.password)

    def test_the_password_does_not_stay_on_the_connection(
        self, directory: LdapDirectory, new_user: NewUser
    ) -> None:
        """After the modify, the pooled connection holds no request: ldap3 would otherwise keep
        the UTF-16 unicodePwd on it until the next operation."""
        outcome = directory.apply(ResetPassword(new_user().upn, NEW))
        assert outcome.reason is Reason.APPLIED
        link = directory._link
        assert link is not None
        assert link.connection.request is None
        assert not link.connection.strategy._outstanding

    def test_admin_reset_unlocks_and_forces_change_in_one_modify(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """Unlock and must-change-at-next-logon ride in the same modify as the password."""
        user = new_user("locked")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"])
        assert read(user.dn, ["lockoutTime"])["lockoutTime"] not in ("", "0")
        outcome = directory.apply(
            ResetPassword(
                user.upn, NEW, Initiator.ADMIN, unlock=True, force_change_at_next_logon=True
            )
        )
        assert outcome.reason is Reason.APPLIED
        state = read(user.dn, ["lockoutTime", "pwdLastSet", "badPwdCount"])
        assert state == {"lockoutTime": "0", "pwdLastSet": "0", "badPwdCount": "0"}

    def test_reset_alone_does_not_unlock(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """As in AD, a reset without `unlock` leaves a locked-out account locked."""
        user = new_user("stays")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"])
        assert directory.apply(ResetPassword(user.upn, NEW)).reason is Reason.APPLIED
        assert read(user.dn, ["lockoutTime"])["lockoutTime"] not in ("", "0")

    def test_reset_without_force_change_leaves_a_usable_password(
        self, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """pwdLastSet becomes 'now' (the relay holds Unexpire Password), not 0."""
        user = new_user()
        directory.apply(ResetPassword(user.upn, NEW))
        assert filetime(int(read(user.dn, ["pwdLastSet"])["pwdLastSet"])) is not None

    def test_force_change_is_skipped_for_a_password_that_never_expires(
        self, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """As in Microsoft's writeback, must-change is not set on never-expiring passwords."""
        user = new_user("noexpire", never_expires=True)
        outcome = directory.apply(ResetPassword(user.upn, NEW, force_change_at_next_logon=True))
        assert outcome.reason is Reason.APPLIED
        assert "never expires" in outcome.detail
        assert read(user.dn, ["pwdLastSet"])["pwdLastSet"] != "0"

    def test_too_short(self, directory: LdapDirectory, new_user: NewUser) -> None:
        """A password below the domain's minimum length names the length rule and the minimum."""
        outcome = directory.apply(ResetPassword(new_user().upn, "Ab1!x"))
        assert outcome.reason is Reason.POLICY_LENGTH
        assert str(seed.DOMAIN_POLICY["min_length"]) in outcome.message

    def test_not_complex(self, directory: LdapDirectory, new_user: NewUser) -> None:
        """A password with too few character classes names the complexity rule."""
        outcome = directory.apply(ResetPassword(new_user().upn, "onlylowercaseletters"))
        assert outcome.reason is Reason.POLICY_COMPLEXITY

    def test_containing_the_account_name_is_refused(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """Windows' name rule is enforced by the relay even though Samba does not check it."""
        user = new_user("named")
        outcome = directory.apply(ResetPassword(user.upn, f"X!9{user.sam.upper()}"))
        assert outcome.reason is Reason.POLICY_COMPLEXITY
        assert can_bind(user, user.password)

    def test_pso_rule_is_named(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser
    ) -> None:
        """A user under the strict PSO is told the PSO's minimum, not the domain's."""
        user = new_user("strict", groups=(testbed.domain.strict_group,))
        outcome = directory.apply(ResetPassword(user.upn, "Twelve-Chr!1"))
        assert outcome.reason is Reason.POLICY_LENGTH
        assert str(seed.STRICT_PSO_MIN_LENGTH) in outcome.message
        assert "Writeback Strict" in outcome.detail
        assert directory.apply(ResetPassword(user.upn, "Fourteen-Chrs!1")).reason is Reason.APPLIED

    @pytest.mark.parametrize(
        "password",
        [
            'Quote"In-Middle!9',
            '"Quoted-Both-Ends9"',
            "Ünïcödé-Pässwörd!9",
            "Emoji-\U0001f600-Passw0rd",
            "Кириллица-Пароль9",
            "日本語のパスワード1a",
            "Back\\slash-Pa55!",
        ],
    )
    def test_unicode_and_quotes(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind, password: str
    ) -> None:
        """Quotes, backslashes, non-Latin and non-BMP characters are set and then bind."""
        user = new_user("uni")
        assert directory.apply(ResetPassword(user.upn, password)).reason is Reason.APPLIED
        assert can_bind(user, password)

    def test_dn_with_special_characters(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A user whose DN holds , + " \\ < > ; = / and # is found, reset and changed."""
        user = new_user("special", cn='O\'Brien, Pat + "Q" \\ <R&D>; a=b /x #1')
        assert directory.apply(ResetPassword(user.upn, NEW)).reason is Reason.APPLIED
        changed = directory.apply(ChangePassword(user.upn, NEW, "Second-Pa55!word"))
        assert changed.reason is Reason.APPLIED
        assert can_bind(user, "Second-Pa55!word")

    def test_protected_by_admin_count(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """adminCount=1 refuses a reset (Samba itself would allow it)."""
        user = new_user("adm", admin_count=True)
        outcome = directory.apply(ResetPassword(user.upn, NEW, Initiator.ADMIN))
        assert outcome.reason is Reason.USER_PROTECTED
        assert "adminCount" in outcome.detail
        assert can_bind(user, user.password)

    def test_protected_by_group_membership(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser
    ) -> None:
        """A Domain Admins member without adminCount is still refused a reset, an unlock and an
        expire."""
        user = new_user("da", groups=(f"CN=Domain Admins,CN=Users,{testbed.domain.base_dn}",))
        assert directory.apply(ResetPassword(user.upn, NEW)).reason is Reason.USER_PROTECTED
        assert directory.apply(UnlockAccount(user.upn)).reason is Reason.USER_PROTECTED
        assert directory.apply(ExpirePassword(user.upn)).reason is Reason.USER_PROTECTED

    def test_denied_group(self, testbed: TestBed, new_user: NewUser, admin: Any) -> None:
        """Members of a configured denied group are protected like administrators."""
        user = new_user("denied", groups=(testbed.domain.min_age_group,))
        guarded = testbed.directory(denied_groups=[testbed.domain.min_age_group])
        try:
            outcome = guarded.apply(ResetPassword(user.upn, NEW))
        finally:
            guarded.close()
        assert outcome.reason is Reason.USER_PROTECTED

    def test_protected_reset_allowed_by_configuration(
        self, testbed: TestBed, new_user: NewUser
    ) -> None:
        """allow_protected_reset lets a reset of an adminCount=1 account through."""
        user = new_user("adm", admin_count=True)
        allowing = testbed.directory(allow_protected_reset=True)
        try:
            assert allowing.apply(ResetPassword(user.upn, NEW)).reason is Reason.APPLIED
        finally:
            allowing.close()

    def test_out_of_scope(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A user outside the configured OUs is refused although the relay holds the right."""
        user = new_user("out", ou=testbed.domain.outside_ou)
        assert directory.apply(ResetPassword(user.upn, NEW)).reason is Reason.USER_OUT_OF_SCOPE
        assert directory.apply(UnlockAccount(user.upn)).reason is Reason.USER_OUT_OF_SCOPE
        assert can_bind(user, user.password)

    def test_disabled(self, directory: LdapDirectory, new_user: NewUser) -> None:
        """A disabled account is refused with account.disabled."""
        user = new_user("off", disabled=True)
        assert directory.apply(ResetPassword(user.upn, NEW)).reason is Reason.ACCOUNT_DISABLED

    def test_not_found(self, testbed: TestBed, directory: LdapDirectory) -> None:
        """An unknown UPN is user.not_found."""
        outcome = directory.apply(ResetPassword(f"nobody@{testbed.domain.dns_domain}", NEW))
        assert outcome.reason is Reason.USER_NOT_FOUND

    @pytest.mark.parametrize(
        "upn",
        [
            "*@*",
            "*@corp.example.test",
            "alice*@corp.example.test",
            "*)(objectClass=*)(cn=*@corp.example.test",
            "alice@corp.example.test)(|(userPrincipalName=*",
            "\\2a@corp.example.test",
            "alice@corp.example.test\\00",
        ],
    )
    def test_filter_injection(
        self, directory: LdapDirectory, testbed: TestBed, can_bind: CanBind, upn: str
    ) -> None:
        """LDAP filter metacharacters in the UPN match nothing and write nothing; with a
        backslash the name is no UPN (nor a valid DOMAIN\\name) and is refused unsearched."""
        outcome = directory.apply(ResetPassword(upn, NEW))
        expected = Reason.REQUEST_INVALID if "\\" in upn else Reason.USER_NOT_FOUND
        assert outcome.reason is expected
        assert can_bind(testbed.domain.users["alice"], testbed.domain.users["alice"].password)

    @pytest.mark.parametrize(
        "upn",
        [
            "alice@corp.example.test\x00",
            "alice@corp.example.test\n",
            "alice",
            "@corp.example.test",
            "",
        ],
    )
    def test_malformed_user_names(
        self, directory: LdapDirectory, testbed: TestBed, can_bind: CanBind, upn: str
    ) -> None:
        """A NUL (which Samba would truncate to alice's UPN) or a non-UPN is refused unsearched."""
        outcome = directory.apply(ResetPassword(upn, NEW))
        assert outcome.reason is Reason.REQUEST_INVALID
        assert can_bind(testbed.domain.users["alice"], testbed.domain.users["alice"].password)

    def test_no_policy_hints_control_is_sent_to_samba(self, directory: LdapDirectory) -> None:
        """Samba 4.17 does not advertise policy hints, so resets go without the control."""
        assert directory.capabilities().policy_hints is None

    def test_min_age_is_not_applied_to_a_reset_without_hints(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser
    ) -> None:
        """Without policy hints the DC skips minimum age on resets, and so does the relay."""
        user = new_user("young", groups=(testbed.domain.min_age_group,))
        assert directory.apply(ResetPassword(user.upn, NEW)).reason is Reason.APPLIED


class TestChange:
    def test_applies(self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind) -> None:
        """A change with the right old password is applied; the old password stops working."""
        user = new_user()
        outcome = directory.apply(ChangePassword(user.upn, user.password, NEW))
        assert outcome.reason is Reason.APPLIED
        assert can_bind(user, NEW)
        assert not can_bind(user, user.password)

    def test_wrong_old_password_is_tried_exactly_once(
        self, directory: LdapDirectory, new_user: NewUser, read: Read, can_bind: CanBind
    ) -> None:
        """A wrong old password counts once towards lockout and never falls back to a reset."""
        user = new_user()
        before = int(read(user.dn, ["badPwdCount"])["badPwdCount"] or 0)
        outcome = directory.apply(ChangePassword(user.upn, "Wrong-Old-Pa55!", NEW))
        assert outcome.reason is Reason.OLD_PASSWORD_MISMATCH
        assert int(read(user.dn, ["badPwdCount"])["badPwdCount"]) == before + 1
        assert can_bind(user, user.password)

    def test_history(self, directory: LdapDirectory, new_user: NewUser) -> None:
        """Changing back to a recent password is policy.history (named by Samba)."""
        user = new_user()
        assert (
            directory.apply(ChangePassword(user.upn, user.password, NEW)).reason is Reason.APPLIED
        )
        outcome = directory.apply(ChangePassword(user.upn, NEW, user.password))
        assert outcome.reason is Reason.POLICY_HISTORY
        assert "history" in outcome.detail

    def test_same_as_current(self, directory: LdapDirectory, new_user: NewUser) -> None:
        """New == current is caught before the write, as policy.history."""
        user = new_user()
        outcome = directory.apply(ChangePassword(user.upn, user.password, user.password))
        assert outcome.reason is Reason.POLICY_HISTORY

    def test_min_age(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """Under a one-day minimum age (PSO) a change right after a set is policy.min_age."""
        user = new_user("young", groups=(testbed.domain.min_age_group,))
        outcome = directory.apply(ChangePassword(user.upn, user.password, NEW))
        assert outcome.reason is Reason.POLICY_MIN_AGE
        assert "hours" in outcome.message
        assert can_bind(user, user.password)

    def test_min_age_enforced_by_the_dc_too(
        self, testbed: TestBed, new_user: NewUser, admin: Any
    ) -> None:
        """With the PSO unreadable, the DC's own 'too young' answer still names min age."""
        user = new_user("young", groups=(testbed.domain.min_age_group,))
        blind = testbed.directory(testbed.domain.no_rights)
        try:
            outcome = blind.apply(ChangePassword(user.upn, user.password, NEW))
        finally:
            blind.close()
        assert outcome.reason is Reason.POLICY_MIN_AGE
        assert "too young" in outcome.detail

    def test_too_short_and_not_complex(self, directory: LdapDirectory, new_user: NewUser) -> None:
        """Changes get the same precise length and complexity reasons as resets."""
        user = new_user()
        short = directory.apply(ChangePassword(user.upn, user.password, "Ab1!"))
        simple = directory.apply(ChangePassword(user.upn, user.password, "lowercaseonlyword"))
        assert (short.reason, simple.reason) == (Reason.POLICY_LENGTH, Reason.POLICY_COMPLEXITY)

    def test_protected_user_may_change_own_password(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """An administrator changes their own password with the old one, as in Microsoft's."""
        user = new_user("adm", admin_count=True)
        assert (
            directory.apply(ChangePassword(user.upn, user.password, NEW)).reason is Reason.APPLIED
        )
        assert can_bind(user, NEW)

    def test_locked_out_user(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser
    ) -> None:
        """A locked-out user's change is refused with account.locked (Samba's 00000775)."""
        user = new_user("lockd")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"])
        outcome = directory.apply(ChangePassword(user.upn, user.password, NEW))
        assert outcome.reason is Reason.ACCOUNT_LOCKED

    def test_change_works_for_a_user_who_must_change(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A user with must-change-at-next-logon (who cannot bind) can still change."""
        user = new_user()
        directory.apply(ResetPassword(user.upn, NEW, force_change_at_next_logon=True))
        assert not can_bind(user, NEW)
        outcome = directory.apply(ChangePassword(user.upn, NEW, "After-Must-Change1!"))
        assert outcome.reason is Reason.APPLIED
        assert can_bind(user, "After-Must-Change1!")


class TestUnlock:
    def test_unlocks(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A locked-out user is unlocked and can bind again with the same password."""
        user = new_user("locked")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"])
        assert not can_bind(user, user.password)
        outcome = directory.apply(UnlockAccount(user.upn))
        assert (outcome.reason, outcome.message) == (Reason.APPLIED, "The account is unlocked.")
        assert can_bind(user, user.password)

    def test_unlocking_an_unlocked_account_says_so(
        self, directory: LdapDirectory, new_user: NewUser
    ) -> None:
        """Unlock is idempotent and tells that the account was not locked."""
        outcome = directory.apply(UnlockAccount(new_user().upn))
        assert outcome.reason is Reason.APPLIED
        assert "not locked" in outcome.message


class TestExpire:
    def test_the_user_must_change_at_next_logon(
        self, directory: LdapDirectory, new_user: NewUser, read: Read, can_bind: CanBind
    ) -> None:
        """pwdLastSet becomes 0: the DC refuses the old password's bind (must change, data 773)
        and computes the password as expired, and a change with it still works."""
        user = new_user("expire")
        assert can_bind(user, user.password)
        outcome = directory.apply(ExpirePassword(user.upn))
        assert (outcome.status, outcome.reason) == (Status.APPLIED, Reason.APPLIED)
        assert "pwdLastSet is now 0" in outcome.detail
        state = read(user.dn, ["pwdLastSet", "msDS-UserPasswordExpiryTimeComputed"])
        assert state == {"pwdLastSet": "0", "msDS-UserPasswordExpiryTimeComputed": "0"}
        assert not can_bind(user, user.password)
        again = directory.apply(ExpirePassword(user.upn))
        assert (again.reason, "already had to change" in again.detail) == (Reason.APPLIED, True)
        changed = directory.apply(ChangePassword(user.upn, user.password, "Fresh-Start-Pa55!"))
        assert changed.reason is Reason.APPLIED
        assert can_bind(user, "Fresh-Start-Pa55!")

    def test_a_password_that_never_expires_is_refused(
        self, directory: LdapDirectory, new_user: NewUser, read: Read, can_bind: CanBind
    ) -> None:
        """DONT_EXPIRE_PASSWORD: account.password_never_expires, and nothing is written."""
        user = new_user("noexpire", never_expires=True)
        before = read(user.dn, ["pwdLastSet"])["pwdLastSet"]
        outcome = directory.apply(ExpirePassword(user.upn))
        assert (outcome.status, outcome.reason) == (
            Status.REJECTED,
            Reason.ACCOUNT_PASSWORD_NEVER_EXPIRES,
        )
        assert read(user.dn, ["pwdLastSet"])["pwdLastSet"] == before != "0"
        assert can_bind(user, user.password)

    def test_without_write_pwd_last_set(
        self, testbed: TestBed, new_user: NewUser, read: Read
    ) -> None:
        """An account with Reset Password only cannot expire: access denied naming pwdLastSet."""
        user = new_user()
        partial = testbed.directory(testbed.domain.reset_only)
        try:
            outcome = partial.apply(ExpirePassword(user.upn))
        finally:
            partial.close()
        assert outcome.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert "Write pwdLastSet" in outcome.detail
        assert read(user.dn, ["pwdLastSet"])["pwdLastSet"] != "0"


class TestAccessDenied:
    def test_reset_without_the_reset_password_right(
        self, testbed: TestBed, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """An account without Reset Password gets directory.access_denied naming the right."""
        user = new_user()
        weak = testbed.directory(testbed.domain.no_rights)
        try:
            outcome = weak.apply(ResetPassword(user.upn, NEW))
        finally:
            weak.close()
        assert (outcome.status, outcome.reason) == (Status.FAILED, Reason.DIRECTORY_ACCESS_DENIED)
        assert "Reset Password" in outcome.detail
        assert can_bind(user, user.password)

    def test_unlock_without_write_lockout_time(self, testbed: TestBed, new_user: NewUser) -> None:
        """An account with Reset Password only cannot unlock, and is told which right is missing."""
        user = new_user()
        partial = testbed.directory(testbed.domain.reset_only)
        try:
            unlock = partial.apply(UnlockAccount(user.upn))
            reset = partial.apply(ResetPassword(user.upn, NEW))
            reset_and_unlock = partial.apply(
                ResetPassword(user.upn, "Other-Pa55word!", unlock=True)
            )
        finally:
            partial.close()
        assert unlock.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert "lockoutTime" in unlock.detail
        assert reset.reason is Reason.APPLIED
        assert reset_and_unlock.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert "lockoutTime" in reset_and_unlock.detail


def account(directory: LdapDirectory, user: seed.Account) -> Account:
    """The account a test user resolves to."""
    found = directory.resolve(user.upn)
    assert isinstance(found, Account)
    return found


class TestPasswordInEffect:
    def test_the_dc_says_which_password_is_in_effect(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """A bind as the user proves it: the current password is in effect, another is not
        (one bad attempt), and a password that must be changed at next logon still is (data
        773)."""
        user = new_user("verify")
        assert directory.password_in_effect(account(directory, user), user.password) is True
        assert directory.password_in_effect(account(directory, user), NEW) is False
        assert read(user.dn, ["badPwdCount"])["badPwdCount"] == "1"
        outcome = directory.apply(
            ResetPassword(user.upn, NEW, Initiator.ADMIN, force_change_at_next_logon=True)
        )
        assert outcome.reason is Reason.APPLIED
        assert directory.password_in_effect(account(directory, user), NEW) is True

    @pytest.mark.parametrize(
        "password", ["Pa55\ufb01word!Ok", "Pa55\u05e9\u05dc\u05d5\u05ddword!", "Pa55\u00a0Word!x"]
    )
    def test_the_password_is_bound_as_it_was_set(
        self, directory: LdapDirectory, new_user: NewUser, password: str
    ) -> None:
        """A ligature, right-to-left letters among Latin ones and a no-break space: the bind
        sends the password as unicodePwd holds it (no SASLprep), so it is found in effect
        instead of wrong or refused."""
        user = new_user("unicode")
        assert directory.apply(ResetPassword(user.upn, password)).reason is Reason.APPLIED
        assert directory.password_in_effect(account(directory, user), password) is True

    def test_a_password_the_policy_refuses_is_refused_before_any_bind(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """What the crash recovery asks first refuses a too-short reset or change with
        `policy.length`, as the write would, so a redelivery is never bound as the user; the
        minimum age is left out (an earlier delivery's own write would trip it)."""
        user = new_user("short")
        assert directory.refusal(ResetPassword(user.upn, "q0012Z!")).reason is Reason.POLICY_LENGTH
        change = ChangePassword(user.upn, user.password, "q0013Z!")
        assert directory.refusal(change).reason is Reason.POLICY_LENGTH
        assert directory.refusal(ResetPassword(user.upn, NEW)) is None
        assert read(user.dn, ["badPwdCount"])["badPwdCount"] in ("", "0")
        young = new_user("young", groups=(testbed.domain.min_age_group,))
        change = ChangePassword(young.upn, young.password, NEW)
        assert directory.apply(change).reason is Reason.POLICY_MIN_AGE
        assert directory.refusal(change) is None

    def test_no_bind_when_one_more_bad_attempt_could_lock_the_account(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, read: Read
    ) -> None:
        """With badPwdCount two below the lockout threshold the DC is not asked (None): the bind
        and a change after it could lock the user out; the count is unchanged."""
        user = new_user("nearlock")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"] - 2)
        before = read(user.dn, ["badPwdCount"])["badPwdCount"]
        assert before == str(seed.DOMAIN_POLICY["lockout_threshold"] - 2)
        assert directory.password_in_effect(account(directory, user), NEW) is None
        assert read(user.dn, ["badPwdCount"])["badPwdCount"] == before


class TestLockoutGuard:
    def test_a_change_that_could_lock_the_account_is_not_sent(
        self,
        testbed: TestBed,
        directory: LdapDirectory,
        new_user: NewUser,
        read: Read,
        can_bind: CanBind,
    ) -> None:
        """With badPwdCount one below the threshold on the DC (a count every relay and every
        restart sees), a change is answered account.throttled without reaching the DC: the count
        and the password are unchanged, and the account is not locked."""
        user = new_user("guarded")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"] - 1)
        outcome = directory.apply(ChangePassword(user.upn, "Wrong-Guess-Pa55!", NEW))
        assert outcome.reason is Reason.ACCOUNT_THROTTLED
        assert "one more wrong current password would lock" in outcome.detail
        state = read(user.dn, ["badPwdCount", "lockoutTime"])
        assert state["badPwdCount"] == str(seed.DOMAIN_POLICY["lockout_threshold"] - 1)
        assert state["lockoutTime"] in ("", "0")
        assert can_bind(user, user.password)


def anchors(admin: Any, dn: str) -> tuple[bytes, str]:
    """objectGUID (bytes) and objectSid (text) of `dn`, read as the administrator."""
    admin.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["objectGUID", "objectSid"])
    raw = admin.response[0]["raw_attributes"]
    return raw["objectGUID"][0], sid_to_str(raw["objectSid"][0])


class TestAnchors:
    """Users found by their cloud anchors, on a real DC (Samba 4.17): one account, however named."""

    @pytest.mark.parametrize("kind", ["upn", "sid", "guid", "immutable id", "down-level"])
    def test_found_by_each_anchor(
        self, testbed: TestBed, directory: LdapDirectory, new_user: NewUser, admin: Any, kind: str
    ) -> None:
        """A user is found by UPN, objectSid, objectGUID, immutable ID and CORP\\sam, always as
        the same account (its objectGUID), and a reset by that name is applied."""
        user = new_user("anchor")
        guid, sid = anchors(admin, user.dn)
        reference = {
            "upn": user.upn,
            "sid": sid,
            "guid": str(uuid.UUID(bytes_le=guid)),
            "immutable id": base64.b64encode(guid).decode(),
            "down-level": f"{testbed.dc.names.netbios}\\{user.sam}",
        }[kind]
        found = directory.resolve(reference)
        assert found == Account(str(uuid.UUID(bytes_le=guid)), sid, user.upn, user.sam)
        assert directory.apply(ResetPassword(reference, NEW)).reason is Reason.APPLIED

    def test_found_by_consistency_guid(
        self, directory: LdapDirectory, new_user: NewUser, admin: Any, can_bind: CanBind
    ) -> None:
        """A user whose mS-DS-ConsistencyGuid is a cloud anchor (an account moved from another
        forest) is found by it, and the reset reaches that account."""
        user = new_user("moved")
        cloud_anchor = uuid.uuid4()
        assert admin.modify(
            user.dn, {"mS-DS-ConsistencyGuid": [(ldap3.MODIFY_REPLACE, [cloud_anchor.bytes_le])]}
        ), admin.result
        guid, _ = anchors(admin, user.dn)
        found = directory.resolve(base64.b64encode(cloud_anchor.bytes_le).decode())
        assert isinstance(found, Account)
        assert found.guid == str(uuid.UUID(bytes_le=guid))
        assert directory.apply(ResetPassword(str(cloud_anchor), NEW)).reason is Reason.APPLIED
        assert can_bind(user, NEW)

    def test_a_upn_the_cloud_does_not_know_is_found_by_sid(
        self, directory: LdapDirectory, new_user: NewUser, admin: Any, can_bind: CanBind
    ) -> None:
        """A user whose AD UPN is on a non-routable suffix (corp.local) matches nothing the cloud
        knows by UPN, but is found and reset by objectSid (the token's onprem_sid)."""
        user = new_user("dotlocal")
        local_upn = f"{user.sam}@corp.local"
        assert admin.modify(
            user.dn, {"userPrincipalName": [(ldap3.MODIFY_REPLACE, [local_upn])]}
        ), admin.result
        _, sid = anchors(admin, user.dn)
        cloud_upn = f"{user.sam}@contoso.example.com"
        assert directory.apply(ResetPassword(cloud_upn, NEW)).reason is Reason.USER_NOT_FOUND
        found = directory.resolve(sid)
        assert isinstance(found, Account)
        assert found.upn == local_upn
        assert directory.apply(ResetPassword(sid, NEW)).reason is Reason.APPLIED
        assert can_bind(dataclasses.replace(user, upn=user.dn), NEW)

    def test_another_netbios_domain_is_refused(
        self, directory: LdapDirectory, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """OTHER\\sam of an existing user is user.not_found: another domain's name is never
        looked up by its bare account name here; nothing is written."""
        user = new_user("otherdom")
        outcome = directory.apply(ResetPassword(f"OTHER\\{user.sam}", NEW))
        assert outcome.reason is Reason.USER_NOT_FOUND
        assert can_bind(user, user.password)

    def test_the_domain_names_are_what_samba_tool_reports(
        self, testbed: TestBed, directory: LdapDirectory
    ) -> None:
        """The NetBIOS name and domain SID the relay reads (and heartbeats carry) are those
        samba-tool reports for the domain."""
        shown = testbed.dc.samba_tool("user", "show", "Administrator", "--attributes=objectSid")
        admin_sid = next(
            line.split(":", 1)[1].strip()
            for line in shown.splitlines()
            if line.startswith("objectSid")
        )
        found = directory.capabilities()
        assert found.domain_sid == admin_sid.rsplit("-", 1)[0]
        assert found.netbios == testbed.dc.names.netbios
