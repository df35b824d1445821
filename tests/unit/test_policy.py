"""The relay's own reading of AD password policy, and its pre-check of a new password.

Windows answers every policy failure with the same 0000052D, so these rules are what lets the
relay name the rule that was broken. They follow MS-SAMR 3.1.1.7.2 and MS-ADTS as summarised in
the AD DS reference (sections 1.1 and 4): lengths in UTF-16 code units, three of five character
classes, the account-name and display-name-token rule, and AD's interval and timestamp encodings.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from writeback.protocol import Reason
from writeback.relay.policy import (
    MAX_PASSWORD_UTF16,
    AccountFacts,
    PasswordPolicy,
    character_classes,
    check_syntax,
    encode_unicode_pwd,
    filetime,
    interval,
    lockout_guard,
    precheck,
    utf16_length,
)

EMOJI = "\U0001f600"  # outside the BMP: one code point, two UTF-16 code units
DAY = -864_000_000_000  # one day as an AD interval (negative 100-ns units)
NEVER = -0x8000000000000000
NOW = datetime(2025, 3, 14, 12, 0, 0)
# Samba 4.17's fresh-provision defaults (reference section 4).
SAMBA_DEFAULTS = {
    "minPwdLength": 7,
    "pwdHistoryLength": 24,
    "pwdProperties": 1,
    "minPwdAge": DAY,
    "maxPwdAge": 42 * DAY,
    "lockoutThreshold": 0,
}


def policy(
    *,
    min_length: int = 8,
    history_length: int = 24,
    complexity: bool = True,
    min_age: timedelta | None = timedelta(days=1),
) -> PasswordPolicy:
    return PasswordPolicy(
        source="the domain policy",
        min_length=min_length,
        history_length=history_length,
        complexity=complexity,
        min_age=min_age,
        max_age=timedelta(days=42),
        lockout_threshold=0,
    )


def account(
    sam: str = "jdoe", display: str = "", pwd_last_set: datetime | None = NOW - timedelta(days=30)
) -> AccountFacts:
    return AccountFacts(sam_account_name=sam, display_name=display, pwd_last_set=pwd_last_set)


class TestEncoding:
    def test_unicode_pwd_is_the_password_in_double_quotes_as_utf16le(self) -> None:
        """unicodePwd is the quoted password in UTF-16LE, with no byte-order mark."""
        assert encode_unicode_pwd("Passw0rd!") == '"Passw0rd!"'.encode("utf-16-le")
        assert encode_unicode_pwd("Passw0rd!")[:2] == b'"\x00'

    def test_a_quote_inside_the_password_is_kept_as_it_is(self) -> None:
        """Only the outer quote pair is framing: a `"` in the password is sent unescaped."""
        encoded = encode_unicode_pwd('Ab"cd1234!')
        assert encoded == b'"\x00A\x00b\x00"\x00c\x00d\x001\x002\x003\x004\x00!\x00"\x00'
        assert encoded.decode("utf-16-le") == '"Ab"cd1234!"'

    def test_an_emoji_is_sent_as_a_surrogate_pair(self) -> None:
        """A character outside the BMP becomes its UTF-16 surrogate pair, little-endian."""
        assert encode_unicode_pwd(f"P{EMOJI}") == b'"\x00P\x00\x3d\xd8\x00\xde"\x00'

    def test_utf16_length_counts_code_units(self) -> None:
        """Length is counted as AD counts it: an emoji is two units, an accented letter one."""
        assert utf16_length("abc") == 3
        assert utf16_length("é") == 1
        assert utf16_length(EMOJI) == 2
        assert utf16_length(f"Ab1!{EMOJI}") == 6


class TestIntervalsAndTimestamps:
    def test_an_interval_is_negative_100ns_units(self) -> None:
        """AD durations are negative counts of 100 ns; one day is -864000000000."""
        assert interval(DAY) == timedelta(days=1)
        assert interval(-18_000_000_000) == timedelta(minutes=30)

    @pytest.mark.parametrize("value", [NEVER, 0x7FFFFFFFFFFFFFFF])
    def test_never_values_are_none(self, value: int) -> None:
        """The most negative int64 (and the most positive) mean 'never', not a huge duration."""
        assert interval(value) is None

    def test_a_zero_interval_is_zero_and_falsy(self) -> None:
        """A zero interval (no minimum age) stays zero, which every caller treats as 'none'."""
        assert interval(0) == timedelta(0)
        assert not interval(0)

    def test_a_filetime_is_100ns_since_1601_utc(self) -> None:
        """FILETIME 116444736000000000 is the Unix epoch, as a naive UTC datetime."""
        assert filetime(116_444_736_000_000_000) == datetime(1970, 1, 1)
        assert filetime(116_444_736_000_000_000 + 15) == datetime(1970, 1, 1, 0, 0, 0, 1)

    @pytest.mark.parametrize("value", [0, -1, 0x7FFFFFFFFFFFFFFF])
    def test_unset_and_never_timestamps_are_none(self, value: int) -> None:
        """pwdLastSet 0 (must change), negatives and the int64 maximum have no date."""
        assert filetime(value) is None


class TestPolicySources:
    def test_domain_policy_from_the_domain_head(self) -> None:
        """The domain head's attributes become the policy, intervals as timedeltas."""
        domain = PasswordPolicy.from_domain("the domain policy", SAMBA_DEFAULTS)
        assert domain == PasswordPolicy(
            source="the domain policy",
            min_length=7,
            history_length=24,
            complexity=True,
            min_age=timedelta(days=1),
            max_age=timedelta(days=42),
            lockout_threshold=0,
            refuse_change=False,
        )

    def test_domain_policy_defaults_when_attributes_are_missing(self) -> None:
        """Missing attributes mean no rule: no length, no history, no ages, no complexity."""
        domain = PasswordPolicy.from_domain("the domain policy", {})
        assert (domain.min_length, domain.history_length, domain.complexity) == (0, 0, False)
        assert domain.min_age == timedelta(0)
        assert domain.max_age is None

    def test_refuse_password_change_flag_is_read_from_pwd_properties(self) -> None:
        """pwdProperties 0x20 (REFUSE_PASSWORD_CHANGE) is kept apart from 0x1 (complexity)."""
        refusing = PasswordPolicy.from_domain("d", {"pwdProperties": 0x20})
        assert refusing.refuse_change is True
        assert refusing.complexity is False

    def test_never_expiring_domain_policy_has_no_max_age(self) -> None:
        """maxPwdAge = most negative int64 is 'never', reported as no maximum age."""
        domain = PasswordPolicy.from_domain("d", {**SAMBA_DEFAULTS, "maxPwdAge": NEVER})
        assert domain.max_age is None
        assert domain.summary()["maxAgeSeconds"] is None

    def test_pso_overrides_the_domain_but_keeps_its_refuse_change_flag(self) -> None:
        """A PSO replaces every rule it carries; the domain-wide refuse-change flag still holds."""
        domain = PasswordPolicy.from_domain("d", {**SAMBA_DEFAULTS, "pwdProperties": 0x21})
        pso = PasswordPolicy.from_pso(
            "the password policy 'Strict'",
            {
                "msDS-MinimumPasswordLength": 12,
                "msDS-PasswordHistoryLength": 5,
                "msDS-PasswordComplexityEnabled": False,
                "msDS-MinimumPasswordAge": 0,
                "msDS-MaximumPasswordAge": 10 * DAY,
                "msDS-LockoutThreshold": 3,
            },
            domain,
        )
        assert pso == PasswordPolicy(
            source="the password policy 'Strict'",
            min_length=12,
            history_length=5,
            complexity=False,
            min_age=timedelta(0),
            max_age=timedelta(days=10),
            lockout_threshold=3,
            refuse_change=True,
        )

    def test_summary_shows_the_rules_in_seconds(self) -> None:
        """The portal summary carries lengths, flags and ages in whole seconds."""
        summary = PasswordPolicy.from_domain("the domain policy", SAMBA_DEFAULTS).summary()
        assert summary == {
            "source": "the domain policy",
            "minLength": 7,
            "historyLength": 24,
            "complexity": True,
            "minAgeSeconds": 86_400,
            "maxAgeSeconds": 42 * 86_400,
        }


class TestCharacterClasses:
    @pytest.mark.parametrize(
        ("password", "classes"),
        [
            ("abcdef", 1),
            ("ABCDEF", 1),
            ("123456", 1),
            ("!@#$%^", 1),
            ("abcDEF", 2),
            ("abcDEF123", 3),
            ("abcDEF123!", 4),
        ],
    )
    def test_ascii_classes(self, password: str, classes: int) -> None:
        """Upper, lower, digits and the Windows symbol set each count once."""
        assert character_classes(password) == classes

    def test_space_is_not_a_symbol(self) -> None:
        """A space adds no class (Windows' symbol list and Samba's check both leave it out)."""
        assert character_classes("abc def") == 1
        assert character_classes("abc DEF 123") == 3

    def test_cjk_counts_as_the_fifth_class(self) -> None:
        """Letters without case (here CJK) are the fifth class, on top of the four others."""
        assert character_classes("密码") == 1
        assert character_classes("Ab1!密码") == 5

    def test_currency_and_emoji_add_no_class(self) -> None:
        """Characters that are neither letters, digits nor listed symbols count for nothing."""
        assert character_classes(f"€£{EMOJI}") == 0
        assert character_classes(f"ab€{EMOJI}") == 1

    def test_accented_letters_count_by_case(self) -> None:
        """Accented Latin, Greek or Cyrillic letters count as upper or lower case."""
        assert character_classes("ÉΩЖ") == 1
        assert character_classes("éωж") == 1
        assert character_classes("Éé") == 2


class TestPrecheckLength:
    def test_too_short_names_the_minimum(self) -> None:
        """A password below the minimum is policy.length, and the message gives the minimum."""
        outcome = precheck(policy(), "Ab1!xyz", account(), NOW, check_min_age=False)
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_LENGTH
        assert "at least 8 characters" in outcome.message
        assert "7 UTF-16 code units" in outcome.detail
        assert "the domain policy" in outcome.detail

    def test_an_emoji_counts_two_towards_the_minimum(self) -> None:
        """Seven code points with one emoji are eight UTF-16 units: enough for a minimum of 8."""
        password = f"Ab1!xy{EMOJI}"
        assert len(password) == 7
        assert precheck(policy(), password, account(), NOW, check_min_age=False) is None

    def test_length_is_checked_before_complexity(self) -> None:
        """A password both short and simple is reported as too short (the first rule broken)."""
        outcome = precheck(policy(), "abc", account(), NOW, check_min_age=False)
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_LENGTH


class TestPrecheckComplexity:
    @pytest.mark.parametrize("password", ["abcdefgh", "abcdefg1", "ABCDEFG!", "abcd efgh"])
    def test_fewer_than_three_classes_is_refused(self, password: str) -> None:
        """One or two classes (a space does not help) break the complexity rule."""
        outcome = precheck(policy(), password, account(), NOW, check_min_age=False)
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_COMPLEXITY
        assert "of 5 character classes" in outcome.detail

    @pytest.mark.parametrize("password", ["abcdef1!", "Abcdefg1", "ABCDEF1!", "密码密码ab12"])
    def test_three_classes_pass(self, password: str) -> None:
        """Any three of the five classes satisfy the rule."""
        assert precheck(policy(), password, account(), NOW, check_min_age=False) is None

    def test_no_complexity_rule_when_the_policy_has_none(self) -> None:
        """Without the complexity flag neither the classes nor the account name are checked."""
        lax = policy(complexity=False)
        assert precheck(lax, "aaaaaaaa", account(), NOW, check_min_age=False) is None
        assert precheck(lax, "jdoejdoe", account(), NOW, check_min_age=False) is None


class TestPrecheckAccountName:
    def test_the_account_name_is_refused_in_any_case(self) -> None:
        """A password containing the sAMAccountName, in any case, breaks the complexity rule."""
        outcome = precheck(policy(), "xxALICExx!9", account(sam="alice"), NOW, check_min_age=False)
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_COMPLEXITY
        assert "account name" in outcome.message

    def test_a_short_account_name_is_ignored(self) -> None:
        """sAMAccountNames of fewer than three characters are not checked (MS-SAMR)."""
        assert precheck(policy(), "Alpha123!", account(sam="al"), NOW, check_min_age=False) is None

    @pytest.mark.parametrize("token", ["doe", "JOHN", "Smith", "iii", "Quinn"])
    def test_display_name_tokens_are_refused(self, token: str) -> None:
        """Each display-name token of three or more characters is refused, case-insensitively."""
        display = "Doe,John.Q_Smith#Jr\tIII-Quinn Li"
        outcome = precheck(
            policy(),
            f"Zz9!{token.swapcase()}zz",
            account(sam="jd", display=display),
            NOW,
            check_min_age=False,
        )
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_COMPLEXITY

    @pytest.mark.parametrize("fragment", ["Q", "Jr", "Li"])
    def test_display_name_tokens_shorter_than_three_are_ignored(self, fragment: str) -> None:
        """Tokens of one or two characters after splitting are not checked."""
        display = "Doe,John.Q_Smith#Jr\tIII-Quinn Li"
        assert (
            precheck(
                policy(),
                f"{fragment}9!wxyzvu",
                account(sam="jd", display=display),
                NOW,
                check_min_age=False,
            )
            is None
        )


class TestPrecheckHistory:
    def test_new_equal_to_old_is_history_when_history_is_kept(self) -> None:
        """Reusing the current password on a change is policy.history when history is on."""
        outcome = precheck(
            policy(),
            "Sunny-Day-42",
            account(),
            NOW,
            check_min_age=False,
            old_password="Sunny-Day-42",
        )
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_HISTORY

    def test_new_equal_to_old_passes_without_history(self) -> None:
        """With pwdHistoryLength 0 AD accepts the same password again, so the relay does too."""
        assert (
            precheck(
                policy(history_length=0),
                "Sunny-Day-42",
                account(),
                NOW,
                check_min_age=False,
                old_password="Sunny-Day-42",
            )
            is None
        )

    def test_a_different_new_password_passes(self) -> None:
        """History itself is only on the DC; the relay only refuses new == current."""
        assert (
            precheck(
                policy(),
                "Sunny-Day-43",
                account(),
                NOW,
                check_min_age=False,
                old_password="Sunny-Day-42",
            )
            is None
        )


class TestPrecheckMinimumAge:
    def test_too_young_names_the_wait(self) -> None:
        """Within the minimum age the outcome is policy.min_age and the message says how long."""
        outcome = precheck(
            policy(),
            "Sunny-Day-42",
            account(pwd_last_set=NOW - timedelta(hours=1)),
            NOW,
            check_min_age=True,
        )
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_MIN_AGE
        assert outcome.message.endswith("You can change it again in 23 hours.")
        assert "2025-03-15T11:00:00Z" in outcome.detail

    def test_a_short_wait_is_given_in_minutes(self) -> None:
        """Less than two hours to wait is given in minutes, rounded up."""
        outcome = precheck(
            policy(),
            "Sunny-Day-42",
            account(pwd_last_set=NOW - timedelta(days=1) + timedelta(minutes=29, seconds=30)),
            NOW,
            check_min_age=True,
        )
        assert outcome is not None
        assert "30 minutes" in outcome.message

    def test_not_checked_unless_asked(self) -> None:
        """A reset without policy hints does not check the minimum age (the DC does not either)."""
        assert (
            precheck(
                policy(),
                "Sunny-Day-42",
                account(pwd_last_set=NOW - timedelta(hours=1)),
                NOW,
                check_min_age=False,
            )
            is None
        )

    def test_skipped_when_the_password_must_change(self) -> None:
        """pwdLastSet 0 (must change at next logon) has no date, so no minimum age applies."""
        assert (
            precheck(policy(), "Sunny-Day-42", account(pwd_last_set=None), NOW, check_min_age=True)
            is None
        )

    def test_passes_once_the_minimum_age_is_over(self) -> None:
        """At or after pwdLastSet + minimum age the change is allowed."""
        assert (
            precheck(
                policy(),
                "Sunny-Day-42",
                account(pwd_last_set=NOW - timedelta(days=1)),
                NOW,
                check_min_age=True,
            )
            is None
        )

    def test_no_minimum_age_in_the_policy(self) -> None:
        """A policy without minimum age never refuses for age."""
        assert (
            precheck(
                policy(min_age=None),
                "Sunny-Day-42",
                account(pwd_last_set=NOW),
                NOW,
                check_min_age=True,
            )
            is None
        )


class TestCheckSyntax:
    def test_empty_is_invalid(self) -> None:
        """An empty password is request.invalid, and the detail says which password."""
        outcome = check_syntax("", "old password")
        assert outcome is not None
        assert outcome.reason is Reason.REQUEST_INVALID
        assert outcome.detail == "the old password is empty"

    def test_nul_is_invalid(self) -> None:
        """A NUL character cannot be carried in unicodePwd: request.invalid."""
        outcome = check_syntax("Pass\x00word1!")
        assert outcome is not None
        assert outcome.reason is Reason.REQUEST_INVALID
        assert "NUL" in outcome.detail

    def test_256_utf16_units_are_accepted(self) -> None:
        """The MS-SAMR maximum of 256 units is itself allowed, emoji counting two each."""
        assert check_syntax("a" * MAX_PASSWORD_UTF16) is None
        assert check_syntax(EMOJI * (MAX_PASSWORD_UTF16 // 2)) is None

    @pytest.mark.parametrize("password", ["a" * 257, EMOJI * 129])
    def test_more_than_256_utf16_units_is_too_long(self, password: str) -> None:
        """Over 256 UTF-16 units is policy.length, even at 129 code points of emoji."""
        outcome = check_syntax(password)
        assert outcome is not None
        assert outcome.reason is Reason.POLICY_LENGTH
        assert "at most 256" in outcome.message

    def test_an_ordinary_password_passes(self) -> None:
        """A usual password has nothing for check_syntax to refuse."""
        assert check_syntax('Ab"cd1234!') is None


class TestOldPasswordSyntax:
    def test_overlong_old_password_is_an_invalid_request(self) -> None:
        """An old password no account can have is request.invalid, not a policy failure."""
        outcome = check_syntax("x" * 257, "old password")
        assert outcome is not None
        assert outcome.reason is Reason.REQUEST_INVALID


class TestLockoutGuard:
    LOCKING = PasswordPolicy(
        "the domain policy", 8, 24, True, None, None, lockout_threshold=5,
        lockout_window=timedelta(minutes=30),
    )  # fmt: skip

    def test_the_attempt_that_could_lock_the_account_is_not_sent(self) -> None:
        """badPwdCount 4 of 5 within the window: a change is refused, saying when to retry;
        3 of 5 still goes to the DC."""
        refused = lockout_guard(self.LOCKING, 4, NOW - timedelta(minutes=10), NOW)
        assert refused is not None
        assert refused.reason is Reason.ACCOUNT_THROTTLED
        assert refused.message.endswith("Try again in 20 minutes.")
        assert "badPwdCount 4 of the lockout threshold 5" in refused.detail
        assert lockout_guard(self.LOCKING, 3, NOW - timedelta(minutes=10), NOW) is None

    def test_old_bad_attempts_and_no_threshold_do_not_count(self) -> None:
        """Attempts older than the observation window no longer count (AD resets the count at
        the next attempt), and a domain without a threshold never locks anybody out."""
        assert lockout_guard(self.LOCKING, 4, NOW - timedelta(minutes=31), NOW) is None
        assert lockout_guard(self.LOCKING, 4, None, NOW) is None
        assert lockout_guard(policy(), 100, NOW, NOW) is None

    def test_the_window_is_read_from_the_domain_and_from_a_pso(self) -> None:
        """lockOutObservationWindow and msDS-LockoutObservationWindow become the window."""
        domain = PasswordPolicy.from_domain(
            "d",
            {**SAMBA_DEFAULTS, "lockoutThreshold": 5, "lockOutObservationWindow": 30 * DAY // 1440},
        )
        assert domain.lockout_window == timedelta(minutes=30)
        pso = PasswordPolicy.from_pso(
            "p", {"msDS-LockoutThreshold": 3, "msDS-LockoutObservationWindow": DAY}, domain
        )
        assert (pso.lockout_threshold, pso.lockout_window) == (3, timedelta(days=1))
