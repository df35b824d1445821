"""AD password policy: reading it, and pre-checking a new password against it.

Windows answers every policy failure with the same 0000052D, so the relay checks what it can
itself before writing, and the outcome names the rule: length in UTF-16 code units (as AD counts
them), the complexity rule of MS-SAMR 3.1.1.7.2 (three of five character classes, and neither the
account name nor a display-name token), minimum age for changes, and new == current. History
cannot be checked here (only the DC holds the hashes). Pure code: no I/O, no clock of its own.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from writeback.protocol import Outcome, Reason
from writeback.protocol.messages import MAX_PASSWORD_UTF16, password_problem, utf16_length

PWD_PROPERTIES_COMPLEX = 0x1
PWD_PROPERTIES_REFUSE_PASSWORD_CHANGE = 0x20
# MS-SAMR 3.1.1.7.2: display names are split into tokens on these characters.
_NAME_DELIMITERS = re.compile(r"[,.\-_#\t ]+")
# The symbols Windows counts as "non-alphanumeric" in its complexity rule.
_SYMBOLS = frozenset("~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/")
_NEVER = -0x8000000000000000  # AD's "never" for maxPwdAge and friends


def encode_unicode_pwd(password: str) -> bytes:
    """The unicodePwd value: the password in double quotes, UTF-16LE (MS-ADTS 3.1.1.3.1.5.1)."""
    return f'"{password}"'.encode("utf-16-le")


def interval(value: int) -> timedelta | None:
    """An AD duration (negative 100-ns units) as a timedelta; None for 'never'."""
    if value in (_NEVER, 0x7FFFFFFFFFFFFFFF):
        return None
    return timedelta(microseconds=abs(value) // 10)


def filetime(value: int) -> datetime | None:
    """An AD timestamp (100-ns units since 1601, UTC) as a naive UTC datetime; None for 0."""
    if value <= 0 or value >= 0x7FFFFFFFFFFFFFFF:
        return None
    return datetime(1601, 1, 1) + timedelta(microseconds=value // 10)


@dataclass(frozen=True)
class PasswordPolicy:
    """The rules that apply to one user: the domain policy or a PSO (fine-grained policy)."""

    source: str
    min_length: int
    history_length: int
    complexity: bool
    min_age: timedelta | None
    max_age: timedelta | None
    lockout_threshold: int
    refuse_change: bool = False
    # How long a bad attempt counts towards the threshold (lockoutObservationWindow).
    lockout_window: timedelta | None = None

    @classmethod
    def from_domain(cls, source: str, attrs: Mapping[str, int]) -> PasswordPolicy:
        """From the domain head's minPwdLength, pwdHistoryLength, pwdProperties, ..."""
        properties = attrs.get("pwdProperties", 0)
        return cls(
            source=source,
            min_length=attrs.get("minPwdLength", 0),
            history_length=attrs.get("pwdHistoryLength", 0),
            complexity=bool(properties & PWD_PROPERTIES_COMPLEX),
            min_age=interval(attrs.get("minPwdAge", 0)),
            max_age=interval(attrs.get("maxPwdAge", _NEVER)),
            lockout_threshold=attrs.get("lockoutThreshold", 0),
            refuse_change=bool(properties & PWD_PROPERTIES_REFUSE_PASSWORD_CHANGE),
            lockout_window=interval(attrs.get("lockOutObservationWindow", 0)) or None,
        )

    @classmethod
    def from_pso(
        cls, source: str, attrs: Mapping[str, int | bool], domain: PasswordPolicy
    ) -> PasswordPolicy:
        """From a msDS-PasswordSettings object; the domain-wide refuse-change flag still holds."""
        return cls(
            source=source,
            min_length=int(attrs.get("msDS-MinimumPasswordLength", 0)),
            history_length=int(attrs.get("msDS-PasswordHistoryLength", 0)),
            complexity=bool(attrs.get("msDS-PasswordComplexityEnabled", False)),
            min_age=interval(int(attrs.get("msDS-MinimumPasswordAge", 0))),
            max_age=interval(int(attrs.get("msDS-MaximumPasswordAge", _NEVER))),
            lockout_threshold=int(attrs.get("msDS-LockoutThreshold", 0)),
            refuse_change=domain.refuse_change,
            lockout_window=interval(int(attrs.get("msDS-LockoutObservationWindow", 0))) or None,
        )

    def summary(self) -> dict[str, object]:
        """What a portal may show before the user types (no secrets here by construction)."""
        return {
            "source": self.source,
            "minLength": self.min_length,
            "historyLength": self.history_length,
            "complexity": self.complexity,
            "minAgeSeconds": int(self.min_age.total_seconds()) if self.min_age else 0,
            # AD stores "never expires" as 0 or the most negative value; both read as None.
            "maxAgeSeconds": int(self.max_age.total_seconds()) if self.max_age else None,
        }


def lockout_guard(
    policy: PasswordPolicy,
    bad_count: int,
    bad_time: datetime | None,
    now: datetime,
    *,
    margin: int = 1,
) -> Outcome | None:
    """Refuse a change when its current password, if wrong, would be the attempt that locks the
    account out: the DC's own count (badPwdCount, still counting while badPasswordTime is inside
    the observation window) plus this one reaching the threshold. The count lives on the DC,
    so this holds across relay restarts and across every relay of the domain (it is read, not
    reserved: two writers at once can both pass). `margin` is how many bad attempts the caller
    may add. All times are naive UTC."""
    threshold = policy.lockout_threshold
    if threshold <= 0:
        return None
    window = policy.lockout_window
    counting = bad_time is not None and (window is None or now - bad_time < window)
    if not counting or bad_count + margin < threshold:
        return None
    wait = (bad_time + window - now) if bad_time is not None and window else None
    minutes = max(1, math.ceil(wait.total_seconds() / 60)) if wait else None
    later = (
        f"Try again in {minutes} minute{'s' if minutes > 1 else ''}."
        if minutes
        else ("Try again later.")
    )
    return Outcome(
        Reason.ACCOUNT_THROTTLED,
        f"badPwdCount {bad_count} of the lockout threshold {threshold} ({policy.source}): one "
        "more wrong current password would lock the account out; not sent to the DC",
        f"Too many attempts with a wrong current password. {later}",
    )


def character_classes(password: str) -> int:
    """How many of the five Windows character classes the password uses."""
    upper = lower = digit = symbol = other = False
    for char in password:
        if "0" <= char <= "9":
            digit = True
        elif char in _SYMBOLS:
            symbol = True
        elif char.isupper():
            upper = True
        elif char.islower():
            lower = True
        elif unicodedata.category(char).startswith("L"):
            other = True  # letters without case, e.g. CJK
    return sum((upper, lower, digit, symbol, other))


def _name_tokens(sam_account_name: str, display_name: str) -> list[str]:
    tokens = [sam_account_name] if len(sam_account_name) >= 3 else []
    tokens += [t for t in _NAME_DELIMITERS.split(display_name) if len(t) >= 3]
    return tokens


def check_syntax(password: str, what: str = "new password") -> Outcome | None:
    """Reject what no directory accepts: empty, NUL, unpaired surrogates, too long."""
    problem = password_problem(password)
    if problem is None:
        return None
    detail = f"the {what} {problem}"
    if what == "new password" and utf16_length(password) > MAX_PASSWORD_UTF16:
        return Outcome(
            Reason.POLICY_LENGTH,
            detail,
            f"The password must be at most {MAX_PASSWORD_UTF16} characters long.",
        )
    # An old password no account can have: the request is wrong, not the policy.
    return Outcome(Reason.REQUEST_INVALID, detail)


@dataclass(frozen=True)
class AccountFacts:
    """What the pre-check needs to know about the account (read from the directory)."""

    sam_account_name: str
    display_name: str
    pwd_last_set: datetime | None  # None: must change at next logon (pwdLastSet = 0)


def precheck(
    policy: PasswordPolicy,
    new_password: str,
    account: AccountFacts,
    now: datetime,
    *,
    check_min_age: bool,
    old_password: str | None = None,
) -> Outcome | None:
    """The first rule the new password breaks, as an outcome; None when it passes them all.

    `check_min_age` is true for changes, and for resets that carry the policy-hints control
    (the DC then enforces minimum age on the reset too).
    """
    length = utf16_length(new_password)
    if length < policy.min_length:
        return Outcome(
            Reason.POLICY_LENGTH,
            f"{length} UTF-16 code units, {policy.source} requires at least {policy.min_length}",
            f"The new password must be at least {policy.min_length} characters long.",
        )
    if policy.complexity:
        lowered = new_password.casefold()
        for token in _name_tokens(account.sam_account_name, account.display_name):
            if token.casefold() in lowered:
                return Outcome(
                    Reason.POLICY_COMPLEXITY,
                    f"contains the account name or a display-name token ({policy.source})",
                    "The new password must not contain your account name or parts of your "
                    "full name.",
                )
        classes = character_classes(new_password)
        if classes < 3:
            return Outcome(
                Reason.POLICY_COMPLEXITY,
                f"uses {classes} of 5 character classes, {policy.source} requires 3",
            )
    if old_password is not None and policy.history_length > 0 and old_password == new_password:
        return Outcome(Reason.POLICY_HISTORY, "the new password equals the current one")
    if check_min_age and policy.min_age and account.pwd_last_set is not None:
        allowed_at = account.pwd_last_set + policy.min_age
        if now < allowed_at:
            wait = allowed_at - now
            return Outcome(
                Reason.POLICY_MIN_AGE,
                f"password set at {account.pwd_last_set:%Y-%m-%dT%H:%M:%SZ}, {policy.source} "
                f"minimum age {policy.min_age}, allowed from {allowed_at:%Y-%m-%dT%H:%M:%SZ}",
                "Your password was changed too recently. You can change it again in "
                f"{_humanise(wait)}.",
            )
    return None


def _humanise(wait: timedelta) -> str:
    minutes = max(1, int(wait.total_seconds() // 60 + (1 if wait.total_seconds() % 60 else 0)))
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{(minutes + 59) // 60} hours"
