"""LdapDirectory against an in-memory DC: what it sends for each command, and what it refuses.

The DC is `writeback.testing.FakeLink`: it serves the domain head, users, groups and PSOs from a
dict, records every search and modify, and answers modifies with recorded DC answers. These tests
cover what a Samba 4.17 test DC cannot show (reference section 7.11): Windows' answers, the policy
hints control, and the relay's own refusals (protected accounts, scopes) that Samba never makes.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ldap3
import pytest

from writeback.errors import DirectoryUnavailable
from writeback.protocol import (
    ChangePassword,
    Command,
    ExpirePassword,
    Initiator,
    Outcome,
    Reason,
    ResetPassword,
    UnlockAccount,
)
from writeback.protocol.accounts import Account
from writeback.relay.accounts import DOMAIN_POLICY_ATTRIBUTES
from writeback.relay.directory import LdapDirectory
from writeback.relay.ldap import POLICY_HINTS_DEPRECATED_OID, POLICY_HINTS_OID
from writeback.relay.policy import encode_unicode_pwd
from writeback.relay.policy_cache import POLICY_TTL_SECONDS, PolicyCache
from writeback.relay.settings import DirectorySettings
from writeback.testing import FakeLink, RawEntry, domain_controller, filetime, sid_bytes

NC = "DC=example,DC=test"
STAFF = f"OU=Staff,{NC}"
ADMINS = f"OU=Admins,{NC}"
ALICE = f"CN=Alice Example,{STAFF}"
ALICE_UPN = "alice@example.test"
STRICT_PSO = f"CN=Strict,CN=Password Settings Container,CN=System,{NC}"
TIER0 = f"CN=Tier0,OU=Groups,{NC}"
DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
DAY = -864_000_000_000
NEW = "Sunny-Day-42"
OLD = "Rainy-Day-41"
HINTS_VALUE = b"\x30\x03\x02\x01\x01"
UF_NORMAL_ACCOUNT = 0x200
UF_DONT_EXPIRE_PASSWD = 0x10000
WINDOWS_RESET_POLICY = (
    53,
    "0000052D: SvcErr: DSID-031A126C, problem 5003 (WILL_NOT_PERFORM), data 0\n\x00",
)
WINDOWS_WRONG_OLD = (
    19,
    "00000056: AtrErr: DSID-03190F80, #1:\n\t0: 00000056: DSID-03190F80, "
    "problem 1005 (CONSTRAINT_ATT_TYPE), data 0, Att 9005a (unicodePwd)\n\x00",
)
WINDOWS_DENIED = (
    50,
    "00002098: SecErr: DSID-0315130F, problem 4003 (INSUFF_ACCESS_RIGHTS), data 0\n\x00",
)


def domain_head(**attributes: int) -> RawEntry:
    values = {
        "minPwdLength": 7,
        "pwdHistoryLength": 24,
        "pwdProperties": 1,
        "minPwdAge": DAY,
        "maxPwdAge": 42 * DAY,
        "lockoutThreshold": 0,
        **attributes,
    }
    return {
        "objectClass": [b"top", b"domain", b"domainDNS"],
        **{name: [str(value).encode()] for name, value in values.items()},
    }


STRICT_PSO_ENTRY: RawEntry = {
    "objectClass": [b"msDS-PasswordSettings"],
    "msDS-MinimumPasswordLength": [b"14"],
    "msDS-PasswordHistoryLength": [b"24"],
    "msDS-PasswordComplexityEnabled": [b"TRUE"],
    "msDS-MinimumPasswordAge": [b"0"],
    "msDS-MaximumPasswordAge": [str(90 * DAY).encode()],
    "msDS-LockoutThreshold": [b"5"],
}


def user(
    *,
    sam: str = "alice",
    upn: str = ALICE_UPN,
    display: str = "Alice Example",
    uac: int = UF_NORMAL_ACCOUNT,
    pwd_last_set: datetime = NOW - timedelta(days=30),
    token_groups: Iterable[str] = (),
    extra: RawEntry | None = None,
    **more: list[bytes],
) -> RawEntry:
    return {
        "objectClass": [b"top", b"person", b"organizationalPerson", b"user"],
        # AD stores the category's DN and matches the `person` shorthand against it; ldap3's mock
        # compares stored values, so the fake stores the shorthand.
        "objectCategory": [b"person"],
        "sAMAccountName": [sam.encode()],
        "userPrincipalName": [upn.encode()],
        "displayName": [display.encode()],
        "userAccountControl": [str(uac).encode()],
        "pwdLastSet": [str(filetime(pwd_last_set)).encode()],
        "objectGUID": [bytes(range(16))],
        "tokenGroups": [sid_bytes(f"{DOMAIN_SID}-513"), *map(sid_bytes, token_groups)],
        **(extra or {}),
        **more,
    }


def make_link(
    *,
    controls: Iterable[str] = (),
    users: dict[str, RawEntry] | None = None,
    **more: RawEntry,
) -> FakeLink:
    entries = {NC: domain_head(), **(users if users is not None else {ALICE: user()}), **more}
    return FakeLink(domain_controller(NC, supported_controls=controls), entries)


def directory(
    link: FakeLink, policies: PolicyCache | None = None, **overrides: Any
) -> LdapDirectory:
    settings = DirectorySettings(
        servers=(link.address,),
        ca_file=Path("/nonexistent/ca.pem"),
        bind_user=f"CN=svc-writeback,OU=Service,{NC}",
        scopes=(STAFF,),
    )
    return LdapDirectory(
        replace(settings, **overrides),
        "bind-password",
        clock=lambda: NOW,
        connect=link.connect,
        policies=policies,
    )


def apply(link: FakeLink, command: Command, **overrides: Any) -> Outcome:
    return directory(link, **overrides).apply(command)


def user_searches(link: FakeLink) -> list[str]:
    return [s.query for s in link.searches if s.scope == ldap3.SUBTREE]


def reads_of(link: FakeLink, dn: str) -> int:
    """How many base-scope reads of `dn` the relay sent."""
    return sum(1 for s in link.searches if s.base == dn and s.scope == ldap3.BASE)


class Ticks:
    """A monotonic clock for the policy cache that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestPolicyHints:
    def test_2239_is_sent_critical_with_flags_1(self) -> None:
        """A DC advertising 2239 gets exactly one control: 2239, critical, value 30 03 02 01 01."""
        link = make_link(controls=[POLICY_HINTS_OID, POLICY_HINTS_DEPRECATED_OID])
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.APPLIED
        [modify] = link.modifies
        assert modify.controls == [("1.2.840.113556.1.4.2239", True, HINTS_VALUE)]
        assert "policy hints 1.2.840.113556.1.4.2239" in outcome.detail

    def test_2066_is_sent_when_it_is_the_only_one(self) -> None:
        """A DC advertising only the deprecated OID gets 2066, still critical."""
        link = make_link(controls=[POLICY_HINTS_DEPRECATED_OID])
        apply(link, ResetPassword(ALICE_UPN, NEW))
        [modify] = link.modifies
        assert modify.controls == [("1.2.840.113556.1.4.2066", True, HINTS_VALUE)]

    def test_no_control_when_neither_is_advertised(self) -> None:
        """A DC advertising neither (Samba 4.17) gets no control, and the detail says so."""
        link = make_link(controls=["1.2.840.113556.1.4.319"])
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        [modify] = link.modifies
        assert not modify.controls
        assert "policy hints not available on this DC" in outcome.detail

    def test_min_age_is_prechecked_on_a_reset_with_hints(self) -> None:
        """With hints the DC enforces minimum age on a reset, so the relay pre-checks it."""
        link = make_link(
            controls=[POLICY_HINTS_OID], users={ALICE: user(pwd_last_set=NOW - timedelta(hours=1))}
        )
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.POLICY_MIN_AGE
        assert "23 hours" in outcome.message
        assert link.modifies == []

    def test_min_age_is_not_prechecked_on_a_reset_without_hints(self) -> None:
        """Without hints a reset bypasses minimum age on the DC, so the relay lets it through."""
        link = make_link(users={ALICE: user(pwd_last_set=NOW - timedelta(hours=1))})
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.APPLIED
        assert len(link.modifies) == 1


class TestChange:
    def test_one_modify_deletes_the_old_and_adds_the_new(self) -> None:
        """A change is one modify: DELETE old then ADD new on unicodePwd, with no control."""
        link = make_link(controls=[POLICY_HINTS_OID])
        outcome = apply(link, ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.APPLIED
        [modify] = link.modifies
        assert modify.dn == ALICE
        assert modify.changes == {
            "unicodePwd": [
                (ldap3.MODIFY_DELETE, [encode_unicode_pwd(OLD)]),
                (ldap3.MODIFY_ADD, [encode_unicode_pwd(NEW)]),
            ]
        }
        assert modify.controls is None

    def test_a_wrong_old_password_is_not_retried(self) -> None:
        """Windows' 00000056 is old_password.mismatch after exactly one modify: no retry."""
        link = make_link()
        link.answer(WINDOWS_WRONG_OLD, (0, ""))
        outcome = apply(link, ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.OLD_PASSWORD_MISMATCH
        assert len(link.modifies) == 1
        assert "\x00" not in outcome.detail

    def test_a_lost_connection_is_not_retried(self) -> None:
        """A connection lost during the modify is directory.unavailable, with no second modify."""
        link = make_link()
        link.answer(DirectoryUnavailable("ldaps://dc1.example.test: session terminated"), (0, ""))
        outcome = apply(link, ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.DIRECTORY_UNAVAILABLE
        assert len(link.modifies) == 1
        assert link.closes == 1

    def test_min_age_is_prechecked(self) -> None:
        """A change within the minimum age is refused before anything is written."""
        link = make_link(users={ALICE: user(pwd_last_set=NOW - timedelta(hours=1))})
        outcome = apply(link, ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.POLICY_MIN_AGE
        assert link.modifies == []

    def test_the_domain_refusing_changes_is_named(self) -> None:
        """pwdProperties REFUSE_PASSWORD_CHANGE refuses a change with its own reason."""
        link = make_link()
        link.entries[NC] = domain_head(pwdProperties=0x21)
        outcome = apply(link, ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD
        assert link.modifies == []


class TestReset:
    def test_windows_52d_after_passing_prechecks_is_policy_rejected(self) -> None:
        """Windows' 53/0000052D for a password the pre-checks passed is policy.rejected."""
        link = make_link()
        link.answer(WINDOWS_RESET_POLICY)
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.POLICY_REJECTED
        assert "history or a password filter" in outcome.detail
        assert "dc dc1.example.test" in outcome.detail

    def test_a_password_failing_prechecks_is_never_sent(self) -> None:
        """A too-short password is refused with the policy's minimum, before any modify."""
        link = make_link()
        outcome = apply(link, ResetPassword(ALICE_UPN, "Ab1!"))
        assert outcome.reason is Reason.POLICY_LENGTH
        assert "at least 7 characters" in outcome.message
        assert link.modifies == []

    def test_the_domain_policy_is_read_from_the_naming_context(self) -> None:
        """The policy comes from a base read of the naming context's policy attributes."""
        link = make_link()
        apply(link, ResetPassword(ALICE_UPN, NEW))
        reads = [s for s in link.searches if s.base == NC and s.scope == ldap3.BASE]
        assert reads
        assert set(reads[0].attributes) == set(DOMAIN_POLICY_ATTRIBUTES)

    def test_admin_unlock_and_force_change_share_one_modify(self) -> None:
        """unicodePwd, lockoutTime=0 and pwdLastSet=0 go in the same modify."""
        link = make_link()
        outcome = apply(
            link,
            ResetPassword(
                ALICE_UPN, NEW, Initiator.ADMIN, unlock=True, force_change_at_next_logon=True
            ),
        )
        assert outcome.reason is Reason.APPLIED
        [modify] = link.modifies
        assert modify.changes == {
            "unicodePwd": [(ldap3.MODIFY_REPLACE, [encode_unicode_pwd(NEW)])],
            "lockoutTime": [(ldap3.MODIFY_REPLACE, ["0"])],
            "pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])],
        }
        assert "initiator admin" in outcome.detail

    def test_force_change_is_skipped_for_a_password_that_never_expires(self) -> None:
        """For a DONT_EXPIRE_PASSWD account pwdLastSet is not written, and the detail says why."""
        link = make_link(users={ALICE: user(uac=UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD)})
        outcome = apply(
            link, ResetPassword(ALICE_UPN, NEW, Initiator.ADMIN, force_change_at_next_logon=True)
        )
        [modify] = link.modifies
        assert set(modify.changes) == {"unicodePwd"}
        assert "force change skipped" in outcome.detail

    def test_access_denied_names_every_right_the_modify_needed(self) -> None:
        """A refused reset with unlock and force change names all three rights it needed."""
        link = make_link()
        link.answer(WINDOWS_DENIED)
        outcome = apply(
            link,
            ResetPassword(
                ALICE_UPN, NEW, Initiator.ADMIN, unlock=True, force_change_at_next_logon=True
            ),
        )
        assert outcome.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert (
            "Reset Password extended right on the user object and Write lockoutTime and "
            "Write pwdLastSet"
        ) in outcome.detail

    def test_a_pso_replaces_the_domain_policy(self) -> None:
        """A user's resultant PSO is read and its rules (and name) are what the pre-check uses."""
        pso = STRICT_PSO_ENTRY
        link = make_link(
            users={ALICE: user(extra={"msDS-ResultantPSO": [STRICT_PSO.encode()]})},
            **{STRICT_PSO: pso},
        )
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.POLICY_LENGTH
        assert "the password policy 'Strict'" in outcome.detail
        assert "at least 14 characters" in outcome.message
        assert link.modifies == []

    def test_an_unreadable_pso_leaves_the_decision_to_the_dc(self) -> None:
        """When the PSO's attributes cannot be read the relay skips its pre-check and writes."""
        link = make_link(users={ALICE: user(extra={"msDS-ResultantPSO": [STRICT_PSO.encode()]})})
        outcome = apply(link, ResetPassword(ALICE_UPN, "Ab1!"))
        assert outcome.reason is Reason.APPLIED
        assert len(link.modifies) == 1


class TestProtectedAccounts:
    @pytest.mark.parametrize(
        "protected",
        [
            user(adminCount=[b"1"]),
            user(token_groups=[f"{DOMAIN_SID}-512"]),
            user(token_groups=["S-1-5-32-544"]),
        ],
        ids=["adminCount", "Domain Admins", "BUILTIN Administrators"],
    )
    def test_reset_unlock_and_expire_are_refused(self, protected: RawEntry) -> None:
        """A protected account cannot be reset, unlocked or expired through the relay; nothing
        is written."""
        link = make_link(users={ALICE: protected})
        reset = apply(link, ResetPassword(ALICE_UPN, NEW, Initiator.ADMIN))
        unlock = apply(link, UnlockAccount(ALICE_UPN))
        expire = apply(link, ExpirePassword(ALICE_UPN))
        assert reset.reason is unlock.reason is expire.reason is Reason.USER_PROTECTED
        assert ALICE in reset.detail
        assert link.modifies == []

    def test_the_protecting_group_is_named(self) -> None:
        """The detail names the protected group's SID found in tokenGroups."""
        link = make_link(users={ALICE: user(token_groups=[f"{DOMAIN_SID}-512"])})
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert f"member of the protected group {DOMAIN_SID}-512" in outcome.detail
        assert [s.attributes for s in link.searches if s.base == ALICE] == [("tokenGroups",)]

    @pytest.mark.parametrize(
        "protected",
        [user(adminCount=[b"1"]), user(token_groups=[f"{DOMAIN_SID}-512"])],
        ids=["adminCount", "Domain Admins"],
    )
    def test_a_change_is_applied(self, protected: RawEntry) -> None:
        """A protected user may still change their own password with the old one."""
        link = make_link(users={ALICE: protected})
        outcome = apply(link, ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.APPLIED
        assert len(link.modifies) == 1

    def test_allow_protected_reset_lets_the_reset_through(self) -> None:
        """With allow_protected_reset the relay resets a protected account."""
        link = make_link(users={ALICE: user(adminCount=[b"1"])})
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW), allow_protected_reset=True)
        assert outcome.reason is Reason.APPLIED
        assert len(link.modifies) == 1

    def test_a_denied_group_protects_its_members(self) -> None:
        """Members of a configured denied group are refused like protected accounts."""
        tier0_sid = f"{DOMAIN_SID}-1105"
        link = make_link(
            users={ALICE: user(token_groups=[tier0_sid])},
            **{TIER0: {"objectClass": [b"group"], "objectSid": [sid_bytes(tier0_sid)]}},
        )
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW), denied_groups=(TIER0,))
        assert outcome.reason is Reason.USER_PROTECTED
        assert f"member of a denied group {tier0_sid}" in outcome.detail
        assert link.modifies == []

    def test_allow_protected_reset_never_lifts_denied_groups(self) -> None:
        """allow_protected_reset lifts AD's protection, not the administrator's denied groups."""
        tier0_sid = f"{DOMAIN_SID}-1105"
        link = make_link(
            users={ALICE: user(token_groups=[tier0_sid, f"{DOMAIN_SID}-512"])},
            **{TIER0: {"objectClass": [b"group"], "objectSid": [sid_bytes(tier0_sid)]}},
        )
        outcome = apply(
            link, ResetPassword(ALICE_UPN, NEW), denied_groups=(TIER0,), allow_protected_reset=True
        )
        assert outcome.reason is Reason.USER_PROTECTED
        assert "denied group" in outcome.detail
        assert link.modifies == []

    def test_unreadable_token_groups_fail_closed(self) -> None:
        """If tokenGroups cannot be read, the reset is refused as access denied, not let through."""
        protected = user(token_groups=[f"{DOMAIN_SID}-512"])
        protected.pop("tokenGroups")
        link = make_link(users={ALICE: protected})
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert "tokenGroups" in outcome.detail
        assert link.modifies == []

    def test_lone_surrogate_is_an_invalid_request(self) -> None:
        """A password UTF-16 cannot encode is refused as request.invalid, never an exception."""
        link = make_link()
        outcome = apply(link, ResetPassword(ALICE_UPN, "Abc-123\ud800xyz"))
        assert outcome.reason is Reason.REQUEST_INVALID
        assert "surrogate" in outcome.detail
        assert link.modifies == []


class TestFindingTheUser:
    def test_the_user_is_searched_by_upn_under_the_naming_context(self) -> None:
        """The user is found by a subtree search for the UPN under the naming context."""
        link = make_link()
        apply(link, ResetPassword(ALICE_UPN, NEW))
        search = next(s for s in link.searches if s.scope == ldap3.SUBTREE)
        assert search.base == NC
        assert f"(userPrincipalName={ALICE_UPN})" in search.query

    def test_the_upn_is_escaped_in_the_filter(self) -> None:
        """Filter metacharacters in the UPN are escaped, so they cannot widen the search."""
        link = make_link()
        outcome = apply(link, ResetPassword("*)(cn=*@example.test", NEW))
        assert user_searches(link) == [
            "(&(objectCategory=person)(objectClass=user)"
            r"(userPrincipalName=\2a\29\28cn=\2a@example.test))"
        ]
        assert outcome.reason is Reason.USER_NOT_FOUND
        assert link.modifies == []

    @pytest.mark.parametrize(
        "name",
        [
            "*)(cn=*",
            "alice",
            "@example.test",
            "alice@",
            "alice@corp\x00",
            "a\tb@corp",
            "a" * 1020 + "@corp",
        ],
        ids=["filter", "no suffix", "no name", "empty suffix", "NUL", "tab", "too long"],
    )
    def test_a_name_that_cannot_be_a_upn_is_refused_before_searching(self, name: str) -> None:
        """A name that is not name@suffix, or has a control character, never reaches a filter."""
        link = make_link()
        outcome = apply(link, ResetPassword(name, NEW))
        assert outcome.reason is Reason.REQUEST_INVALID
        assert "user name" in outcome.detail
        assert link.searches == []

    def test_an_unknown_upn_is_not_found(self) -> None:
        """No entry with the UPN is user.not_found."""
        link = make_link()
        outcome = apply(link, UnlockAccount("bob@example.test"))
        assert outcome.reason is Reason.USER_NOT_FOUND
        assert link.modifies == []

    def test_two_users_with_one_upn_are_ambiguous(self) -> None:
        """Two entries with the same UPN are user.ambiguous, and both DNs are named."""
        twin = f"CN=Alice Twin,{STAFF}"
        link = make_link(users={ALICE: user(), twin: user(sam="alice2")})
        outcome = apply(link, ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.USER_AMBIGUOUS
        assert ALICE in outcome.detail
        assert twin in outcome.detail
        assert link.modifies == []

    def test_a_user_outside_the_scopes_is_refused(self) -> None:
        """A user outside directory.scopes is user.out_of_scope, and nothing is written."""
        link = make_link(users={f"CN=Alice Example,{ADMINS}": user()})
        for command in (
            ResetPassword(ALICE_UPN, NEW),
            ChangePassword(ALICE_UPN, OLD, NEW),
            UnlockAccount(ALICE_UPN),
        ):
            assert apply(link, command).reason is Reason.USER_OUT_OF_SCOPE
        assert link.modifies == []

    def test_scopes_compare_as_dns_not_text(self) -> None:
        """Case does not matter; a sibling OU whose name ends alike is not in scope."""
        inside = make_link(users={"cn=Alice Example,ou=STAFF,dc=Example,dc=TEST": user()})
        beside = make_link(users={f"CN=Alice Example,OU=OldStaff,{NC}": user()})
        assert apply(inside, ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        assert apply(beside, ResetPassword(ALICE_UPN, NEW)).reason is Reason.USER_OUT_OF_SCOPE

    def test_a_disabled_account_is_refused(self) -> None:
        """A disabled account is account.disabled before any write."""
        link = make_link(users={ALICE: user(uac=UF_NORMAL_ACCOUNT | 0x2)})
        assert apply(link, ResetPassword(ALICE_UPN, NEW)).reason is Reason.ACCOUNT_DISABLED
        assert link.modifies == []

    def test_an_invalid_password_is_refused_before_any_search(self) -> None:
        """An empty or NUL-bearing password is request.invalid without touching the DC."""
        link = make_link()
        assert apply(link, ChangePassword(ALICE_UPN, "", NEW)).reason is Reason.REQUEST_INVALID
        assert apply(link, ResetPassword(ALICE_UPN, "a\x00b")).reason is Reason.REQUEST_INVALID
        assert link.searches == []
        assert link.connects == 0


class TestUnlock:
    def test_unlock_writes_lockout_time_zero(self) -> None:
        """An unlock is one modify of lockoutTime to 0, and says whether the account was locked."""
        link = make_link(users={ALICE: user(extra={"msDS-User-Account-Control-Computed": [b"16"]})})
        outcome = apply(link, UnlockAccount(ALICE_UPN))
        assert outcome.reason is Reason.APPLIED
        assert outcome.message == "The account is unlocked."
        [modify] = link.modifies
        assert modify.changes == {"lockoutTime": [(ldap3.MODIFY_REPLACE, ["0"])]}

    def test_unlocking_an_unlocked_account_says_so(self) -> None:
        """An account that was not locked out is reported as such (still applied)."""
        link = make_link()
        outcome = apply(link, UnlockAccount(ALICE_UPN))
        assert outcome.reason is Reason.APPLIED
        assert outcome.message == "The account was not locked out."


class TestExpire:
    def test_expire_writes_pwd_last_set_zero_and_nothing_else(self) -> None:
        """An expire is one modify of pwdLastSet to 0: no password, no control, no unlock."""
        link = make_link(controls=[POLICY_HINTS_OID])
        outcome = apply(link, ExpirePassword(ALICE_UPN))
        assert outcome.reason is Reason.APPLIED
        assert outcome.message.startswith("You must choose a new password")
        assert "pwdLastSet is now 0" in outcome.detail
        [modify] = link.modifies
        assert (modify.dn, modify.changes, modify.controls) == (
            ALICE,
            {"pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])]},
            None,
        )

    def test_an_account_already_due_says_so(self) -> None:
        """pwdLastSet already 0 (must change already): written again, and the detail says so."""
        link = make_link(users={ALICE: user(pwdLastSet=[b"0"])})
        outcome = apply(link, ExpirePassword(ALICE_UPN))
        assert outcome.reason is Reason.APPLIED
        assert "already had to change" in outcome.detail
        assert len(link.modifies) == 1

    def test_a_password_that_never_expires_is_refused(self) -> None:
        """DONT_EXPIRE_PASSWORD makes AD ignore pwdLastSet = 0: refused, nothing written."""
        link = make_link(users={ALICE: user(uac=UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD)})
        outcome = apply(link, ExpirePassword(ALICE_UPN))
        assert outcome.reason is Reason.ACCOUNT_PASSWORD_NEVER_EXPIRES
        assert outcome.status.value == "rejected"
        assert link.modifies == []

    def test_outside_the_scopes_is_refused(self) -> None:
        """An expire is bound by directory.scopes like every operation."""
        link = make_link(users={f"CN=Alice Example,{ADMINS}": user()})
        assert apply(link, ExpirePassword(ALICE_UPN)).reason is Reason.USER_OUT_OF_SCOPE
        assert link.modifies == []

    def test_access_denied_names_the_right(self) -> None:
        """Without Write pwdLastSet the DC says access denied, and the detail names the right."""
        link = make_link()
        link.answer(WINDOWS_DENIED)
        outcome = apply(link, ExpirePassword(ALICE_UPN))
        assert outcome.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert "Write pwdLastSet on the user object" in outcome.detail


BOB = f"CN=Bob Example,{STAFF}"
BOB_UPN = "bob@example.test"


class TestPolicyCache:
    def test_the_domain_policy_is_read_once_within_the_ttl(self) -> None:
        """Two resets within the TTL read the domain head's policy once, each user every time."""
        link = make_link(users={ALICE: user(), BOB: user(sam="bob", upn=BOB_UPN, display="Bob")})
        relay = directory(link, PolicyCache(clock=Ticks()))
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        assert relay.apply(ResetPassword(BOB_UPN, NEW)).reason is Reason.APPLIED
        assert reads_of(link, NC) == 1
        assert len(user_searches(link)) == 2
        assert reads_of(link, ALICE) == reads_of(link, BOB) == 1  # tokenGroups, every time

    def test_the_domain_policy_is_read_again_once_the_ttl_has_passed(self) -> None:
        """At the TTL the cached policy expires: the next reset reads it from the DC again."""
        ticks = Ticks()
        link = make_link()
        relay = directory(link, PolicyCache(clock=ticks))
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        ticks.now += POLICY_TTL_SECONDS - 1
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        assert reads_of(link, NC) == 1
        ticks.now += 1
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        assert reads_of(link, NC) == 2

    def test_a_changed_domain_policy_counts_once_the_ttl_has_passed(self) -> None:
        """A policy edited on the DC is what the pre-check uses after the TTL, not before."""
        ticks = Ticks()
        link = make_link()
        relay = directory(link, PolicyCache(clock=ticks))
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        link.entries[NC] = domain_head(minPwdLength=20)
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        ticks.now += POLICY_TTL_SECONDS
        outcome = relay.apply(ResetPassword(ALICE_UPN, NEW))
        assert outcome.reason is Reason.POLICY_LENGTH
        assert "at least 20 characters" in outcome.message
        assert len(link.modifies) == 2

    def test_a_pso_is_read_once_within_the_ttl_and_again_after(self) -> None:
        """The PSO a user's msDS-ResultantPSO names is cached by DN for the TTL."""
        ticks = Ticks()
        link = make_link(
            users={ALICE: user(extra={"msDS-ResultantPSO": [STRICT_PSO.encode()]})},
            **{STRICT_PSO: STRICT_PSO_ENTRY},
        )
        relay = directory(link, PolicyCache(clock=ticks))
        for _ in range(2):
            assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.POLICY_LENGTH
        assert reads_of(link, STRICT_PSO) == 1
        ticks.now += POLICY_TTL_SECONDS
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        assert reads_of(link, STRICT_PSO) == 2
        assert link.modifies == []

    def test_which_pso_applies_is_read_fresh_for_every_request(self) -> None:
        """A PSO applied to the user after a first reset counts at once: only the PSO object is
        cached, never the user's msDS-ResultantPSO."""
        link = make_link(**{STRICT_PSO: STRICT_PSO_ENTRY})
        relay = directory(link, PolicyCache(clock=Ticks()))
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        link.entries[ALICE] = user(extra={"msDS-ResultantPSO": [STRICT_PSO.encode()]})
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.POLICY_LENGTH

    def test_the_account_is_read_fresh_for_every_request(self) -> None:
        """A user made protected between two resets is refused at once, whatever is cached."""
        link = make_link()
        relay = directory(link, PolicyCache(clock=Ticks()))
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        link.entries[ALICE] = user(token_groups=[f"{DOMAIN_SID}-512"])
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.USER_PROTECTED
        link.entries[ALICE] = user(adminCount=[b"1"])
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.USER_PROTECTED
        assert len(link.modifies) == 1

    def test_an_unreadable_pso_is_remembered_and_warned_about_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A PSO the relay may not read is not read again within the TTL; the DC decides."""
        link = make_link(users={ALICE: user(extra={"msDS-ResultantPSO": [STRICT_PSO.encode()]})})
        relay = directory(link, PolicyCache(clock=Ticks()))
        for _ in range(2):
            assert relay.apply(ResetPassword(ALICE_UPN, "Ab1!")).reason is Reason.APPLIED
        assert reads_of(link, STRICT_PSO) == 1
        assert [r.message for r in caplog.records].count("pso_unreadable") == 1

    def test_capabilities_reads_the_policy_now_and_refreshes_the_cache(self) -> None:
        """The heartbeat's capabilities read the domain policy from the DC every time, and a
        reset right after uses what they read."""
        link = make_link()
        relay = directory(link, PolicyCache(clock=Ticks()))
        relay.capabilities()
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        assert reads_of(link, NC) == 1
        relay.capabilities()
        assert reads_of(link, NC) == 2

    def test_a_cached_pso_takes_the_refuse_change_flag_of_the_current_domain_policy(
        self,
    ) -> None:
        """A PSO has no refuse-change flag: a cached PSO follows the domain policy once that
        is read again, not the flag of when the PSO was read."""
        ticks = Ticks()
        pso = {**STRICT_PSO_ENTRY, "msDS-MinimumPasswordLength": [b"8"]}
        link = make_link(
            users={ALICE: user(extra={"msDS-ResultantPSO": [STRICT_PSO.encode()]})},
            **{STRICT_PSO: pso},
        )
        relay = directory(link, PolicyCache(clock=ticks))
        relay.capabilities()  # the domain policy, read at 0 s
        ticks.now += POLICY_TTL_SECONDS / 2
        assert relay.apply(ChangePassword(ALICE_UPN, OLD, NEW)).reason is Reason.APPLIED
        link.entries[NC] = domain_head(pwdProperties=0x21)
        ticks.now += POLICY_TTL_SECONDS / 2  # the domain policy expires, the PSO does not
        outcome = relay.apply(ChangePassword(ALICE_UPN, OLD, NEW))
        assert outcome.reason is Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD
        assert reads_of(link, STRICT_PSO) == 1
        assert len(link.modifies) == 1


class TestWhatIsRead:
    def test_a_reset_reads_the_resultant_pso_and_not_the_lockout_flag(self) -> None:
        """The user search of a reset asks for msDS-ResultantPSO, not the computed lockout."""
        link = make_link()
        apply(link, ResetPassword(ALICE_UPN, NEW))
        [search] = [s for s in link.searches if s.scope == ldap3.SUBTREE]
        assert "msDS-ResultantPSO" in search.attributes
        assert "msDS-User-Account-Control-Computed" not in search.attributes

    def test_an_unlock_reads_the_lockout_flag_and_no_policy(self) -> None:
        """An unlock asks for the computed lockout flag, and reads no PSO or domain policy."""
        link = make_link()
        apply(link, UnlockAccount(ALICE_UPN))
        [search] = [s for s in link.searches if s.scope == ldap3.SUBTREE]
        assert "msDS-User-Account-Control-Computed" in search.attributes
        assert "msDS-ResultantPSO" not in search.attributes
        assert reads_of(link, NC) == 0

    def test_a_reset_sends_three_requests(self) -> None:
        """With the policy cached a reset is the user search, its tokenGroups and the modify."""
        link = make_link()
        relay = directory(link, PolicyCache(clock=Ticks()))
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        link.searches.clear()
        link.modifies.clear()
        relay.apply(ResetPassword(ALICE_UPN, NEW))
        assert [(s.base, s.scope) for s in link.searches] == [
            (NC, ldap3.SUBTREE),
            (ALICE, ldap3.BASE),
        ]
        assert len(link.modifies) == 1


class TestTheLookupsConnection:
    def test_a_lookup_is_not_queued_behind_another_accounts_modify(self) -> None:
        """While one reset's modify waits on the DC, the pipeline's lookup of another user
        (`resolve`) is answered: it reads on a connection of its own."""
        link = make_link(users={ALICE: user(), BOB: user(sam="bob", upn=BOB_UPN)})
        in_modify, release = threading.Event(), threading.Event()
        answer_modify = link.modify

        def slow_modify(*args: Any, **kwargs: Any) -> tuple[int, str]:
            in_modify.set()
            release.wait(30)
            return answer_modify(*args, **kwargs)

        link.modify = slow_modify  # type: ignore[method-assign]
        relay = directory(link)
        writing = threading.Thread(target=relay.apply, args=(ResetPassword(ALICE_UPN, NEW),))
        writing.start()
        try:
            assert in_modify.wait(30)
            found: list[object] = []
            lookup = threading.Thread(target=lambda: found.append(relay.resolve(BOB_UPN)))
            lookup.start()
            lookup.join(10)
            assert not lookup.is_alive(), "the lookup waited for the modify"
            assert [getattr(account, "upn", None) for account in found] == [BOB_UPN]
        finally:
            release.set()
            writing.join(30)
        assert len(link.modifies) == 1

    def test_the_lookups_connection_goes_to_the_writes_dc(self) -> None:
        """With two DCs configured and the writes connected, the lookups' connection binds
        only to the DC the writes' connection is open to."""
        link = make_link()
        asked: list[tuple[str, ...]] = []

        def connect(settings: DirectorySettings, password: str) -> Any:
            asked.append(tuple(server.host for server in settings.servers))
            return link.connect(settings, password)

        other = replace(link.address, host="dc2.example.test")
        relay = directory(link, servers=(other, link.address))
        relay._connect = connect
        relay.capabilities()  # as the relay's agent starts
        assert isinstance(relay.resolve(ALICE_UPN), Account)
        assert asked == [("dc2.example.test", link.address.host), (link.address.host,)]

    def test_the_lookups_fail_over_when_the_writes_dc_is_gone(self) -> None:
        """The DC both connections use stops answering (the writes' connection still looks
        open: ldap3 learns of a dead socket at its next use). A lookup does not stay bound to
        the dead DC: it fails over to the next, and the write that follows fails over too."""
        entries = dict(make_link().entries)
        hosts = ("dc1.example.test", "dc2.example.test")
        opened: dict[str, list[FakeLink]] = {host: [] for host in hosts}
        down: set[str] = set()
        tried: list[str] = []

        def connect(settings: DirectorySettings, password: str) -> Any:
            for server in settings.servers:  # a connection of its own each time, as ldap3's
                tried.append(server.host)
                if server.host not in down:
                    link = FakeLink(domain_controller(NC, host=server.host), entries)
                    opened[server.host].append(link)
                    return link.connect(settings, password)
            raise DirectoryUnavailable("no domain controller answered")

        def gone(*args: Any, **kwargs: Any) -> Any:
            raise DirectoryUnavailable("ldaps://dc1.example.test: the connection was reset")

        servers = tuple(domain_controller(NC, host=host).address for host in hosts)
        relay = directory(make_link(), servers=servers)
        relay._connect = connect
        relay.capabilities()
        assert [len(opened[host]) for host in hosts] == [2, 0]  # the writes' and the lookups'
        down.add(hosts[0])
        for link in opened[hosts[0]]:
            link.search = gone  # type: ignore[method-assign]
        found = relay.resolve(ALICE_UPN)
        assert isinstance(found, Account), found
        tried.clear()
        assert isinstance(relay.resolve(ALICE_UPN), Account)
        assert tried == []  # the next lookup does not try the dead DC again
        assert relay.apply(ResetPassword(ALICE_UPN, NEW), found).reason is Reason.APPLIED
        assert [sum(len(link.modifies) for link in opened[host]) for host in hosts] == [0, 1]

    def test_a_failure_of_the_writes_connection_leaves_the_lookups_open(self) -> None:
        """The writes' connection breaks and reconnects; the lookups' connection, which
        another thread may be reading on, is not closed with it."""
        entries = dict(make_link().entries)
        opened: list[FakeLink] = []

        def connect(settings: DirectorySettings, password: str) -> Any:
            link = FakeLink(domain_controller(NC), entries)
            opened.append(link)
            return link.connect(settings, password)

        relay = directory(make_link())
        relay._connect = connect
        relay.capabilities()
        writes, lookups = opened
        broken = [DirectoryUnavailable("ldaps://dc1.example.test: the connection was reset")]
        search = writes.search

        def once_broken(*args: Any, **kwargs: Any) -> Any:
            if broken:
                raise broken.pop()
            return search(*args, **kwargs)

        writes.search = once_broken  # type: ignore[method-assign]
        assert relay.apply(ResetPassword(ALICE_UPN, NEW)).reason is Reason.APPLIED
        assert (writes.closes, lookups.closes, len(opened)) == (1, 0, 3)
        assert isinstance(relay.resolve(ALICE_UPN), Account)
        assert lookups.alive


class TestFakeLink:
    def test_serves_only_the_requested_attributes(self) -> None:
        """A read returns only the attributes asked for, as the DC would."""
        link = make_link()
        assert link.read(ALICE, ["sAMAccountName"]) == {"sAMAccountName": [b"alice"]}
        assert link.read(f"CN=Nobody,{STAFF}", ["sAMAccountName"]) == {}


ALICE_GUID = str(uuid.UUID(bytes_le=bytes(range(16))))
ALICE_SID = f"{DOMAIN_SID}-1104"


def anchored(**more: list[bytes]) -> RawEntry:
    """Alice with her SID (and whatever else) as the DC stores them."""
    return user(objectSid=[sid_bytes(ALICE_SID)], **more)


class TestResolvingEveryKind:
    @pytest.mark.parametrize(
        "reference",
        [
            ALICE_UPN,
            ALICE_SID,
            ALICE_GUID,
            base64.b64encode(bytes(range(16))).decode(),  # Graph's onPremisesImmutableId
            "EXAMPLE\\alice",
            "example\\ALICE",
        ],
        ids=["upn", "sid", "guid", "immutable id", "down-level", "down-level lower case"],
    )
    def test_each_kind_finds_the_one_account(self, reference: str) -> None:
        """A UPN, SID, GUID, immutable ID or DOMAIN\\name of alice all resolve to her account,
        read from her entry (objectGUID, objectSid, UPN, sAMAccountName)."""
        link = make_link(users={ALICE: anchored()})
        found = directory(link).resolve(reference)
        assert found == Account(ALICE_GUID, ALICE_SID, ALICE_UPN, "alice")
        assert link.modifies == []

    def test_binary_values_are_escaped_byte_by_byte(self) -> None:
        """The SID and the GUID go into the filter as escaped bytes, the form AD and Samba both
        honour, and a GUID is looked for in objectGUID and mS-DS-ConsistencyGuid."""
        link = make_link(users={ALICE: anchored()})
        directory(link).resolve(ALICE_SID)
        directory(link).resolve(ALICE_GUID)
        sid_query, guid_query = user_searches(link)
        assert "(objectSid=\\01\\05\\00\\00\\00\\00\\00\\05\\15\\00" in sid_query
        escaped = "".join(f"\\{b:02x}" for b in range(16))
        assert f"(|(objectGUID={escaped})(mS-DS-ConsistencyGuid={escaped}))" in guid_query

    def test_a_consistency_guid_finds_its_account(self) -> None:
        """An account carried over from another forest is found by the GUID Entra knows it by
        (mS-DS-ConsistencyGuid), and the account returned has its own objectGUID."""
        cloud_anchor = uuid.uuid4()
        link = make_link(
            users={ALICE: anchored(**{"mS-DS-ConsistencyGuid": [cloud_anchor.bytes_le]})}
        )
        found = directory(link).resolve(str(cloud_anchor))
        assert isinstance(found, Account)
        assert found.guid == ALICE_GUID

    def test_another_domains_down_level_name_is_not_found_unsearched(self) -> None:
        """OTHER\\alice names another domain's alice: user.not_found, and no search is sent."""
        link = make_link(users={ALICE: anchored()})
        outcome = directory(link).resolve("OTHER\\alice")
        assert isinstance(outcome, Outcome)
        assert outcome.reason is Reason.USER_NOT_FOUND
        assert "EXAMPLE" in outcome.detail
        assert user_searches(link) == []

    def test_two_accounts_for_one_guid_are_ambiguous(self) -> None:
        """One account's objectGUID as another's mS-DS-ConsistencyGuid: user.ambiguous, no
        write."""
        twin = f"CN=Alice Twin,{STAFF}"
        link = make_link(
            users={
                ALICE: anchored(),
                twin: user(
                    sam="alice2",
                    upn="alice2@example.test",
                    objectGUID=[uuid.uuid4().bytes_le],
                    **{"mS-DS-ConsistencyGuid": [bytes(range(16))]},
                ),
            }
        )
        outcome = apply(link, ResetPassword(ALICE_GUID, NEW))
        assert outcome.reason is Reason.USER_AMBIGUOUS
        assert link.modifies == []

    @pytest.mark.parametrize("reference", ["EXAMPLE\\al\x7fice", "EXAMPLE\\al\x85ice"])
    def test_control_characters_are_refused_in_every_kind(self, reference: str) -> None:
        """DEL and C1 controls in a down-level name are request.invalid before any search."""
        link = make_link()
        outcome = directory(link).resolve(reference)
        assert isinstance(outcome, Outcome)
        assert outcome.reason is Reason.REQUEST_INVALID
        assert link.searches == []

    def test_a_resolved_account_is_written_by_its_objectguid_alone(self) -> None:
        """Applying to a resolved account finds it again by objectGUID only (not the name it
        was asked for, not mS-DS-ConsistencyGuid), and every outcome can name it."""
        link = make_link(users={ALICE: anchored()})
        account = directory(link).resolve(ALICE_SID)
        assert isinstance(account, Account)
        link.searches.clear()
        outcome = directory(link).apply(UnlockAccount(ALICE_SID), account)
        assert outcome.reason is Reason.APPLIED
        [read] = link.searches
        assert read.base == "<GUID=" + bytes(range(16)).hex() + ">"
        assert read.scope == ldap3.BASE
        assert read.query == "(&(objectCategory=person)(objectClass=user))"

    def test_a_resolved_accounts_reset_is_one_read_and_the_modify(self) -> None:
        """A reset of a resolved account reads it again by objectGUID with its tokenGroups in
        that one base-scope read (the protection check needs no request of its own), then
        writes; a change, which checks no protection, asks for no tokenGroups."""
        link = make_link(users={ALICE: anchored()})
        relay = directory(link, PolicyCache(clock=Ticks()))
        account = relay.resolve(ALICE_UPN)
        assert isinstance(account, Account)
        relay.apply(ResetPassword(ALICE_UPN, NEW), account)  # the policy is cached after this
        link.searches.clear()
        link.modifies.clear()
        assert relay.apply(ResetPassword(ALICE_UPN, NEW), account).reason is Reason.APPLIED
        [read] = link.searches
        assert read.scope == ldap3.BASE
        assert "tokenGroups" in read.attributes
        assert len(link.modifies) == 1
        link.searches.clear()
        relay.apply(ChangePassword(ALICE_UPN, OLD, NEW), account)
        [read] = link.searches
        assert "tokenGroups" not in read.attributes

    def test_the_domain_names_are_capabilities(self) -> None:
        """The NetBIOS name and domain SID the DC description holds are reported (heartbeats,
        doctor)."""
        found = directory(make_link()).capabilities()
        assert (found.netbios, found.domain_sid) == ("EXAMPLE", DOMAIN_SID)
