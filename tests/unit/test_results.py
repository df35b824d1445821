"""How the relay reads a DC's answer to a password or lockout modify.

The table below holds DC answers as recorded in the AD DS reference (section 3.2, Windows AD and
Samba 4.17.12), each with the outcome reason the relay must give. Where the reference elides part
of a message with "…", the entry fills it the way the rest of that row reads; where the reference
has no answer for a mapped code, the entry is marked `synthetic` and says why it exists. Two
checks keep the mapping tables honest: every code and phrase they list is exercised here, and
every reason `classify` can produce is expected somewhere in the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from writeback.protocol import Operation, Reason
from writeback.relay.results import (
    RESULT_REASONS,
    RIGHTS_NEEDED,
    SAMBA_PHRASES,
    WIN32_REASONS,
    DirectoryAnswer,
    classify,
)

WINDOWS_52D_ATRERR = (
    "0000052D: AtrErr: DSID-03190F80, #1:\n"
    "\t0: 0000052D: DSID-03190F80, problem 1005 (CONSTRAINT_ATT_TYPE), data 0, Att 9005a "
    "(unicodePwd)\n\x00"
)
SAMBA_RESTRICTION = "0000052D: Constraint violation - check_password_restrictions: "


@dataclass(frozen=True)
class Recorded:
    """A DC's answer to one modify, where it comes from, and the reason it must map to."""

    name: str
    source: str  # "windows", "samba 4.17" or "synthetic: <why>"
    operation: Operation
    result: int
    message: str
    reason: Reason

    @property
    def answer(self) -> DirectoryAnswer:
        return DirectoryAnswer.of(self.result, self.message)


RECORDED: tuple[Recorded, ...] = (
    # -- Windows AD -------------------------------------------------------------------------
    Recorded(
        "windows reset policy failure",
        "windows",
        Operation.RESET,
        53,
        "0000052D: SvcErr: DSID-031A126C, problem 5003 (WILL_NOT_PERFORM), data 0",
        Reason.POLICY_REJECTED,
    ),
    Recorded(
        "windows change policy failure",
        "windows",
        Operation.CHANGE,
        19,
        WINDOWS_52D_ATRERR,
        Reason.POLICY_REJECTED,
    ),
    Recorded(
        "windows change wrong old password",
        "windows",
        Operation.CHANGE,
        19,
        "00000056: AtrErr: DSID-03190F80, #1:\n\t0: 00000056: DSID-03190F80, problem 1005 "
        "(CONSTRAINT_ATT_TYPE), data 0, Att 9005a (unicodePwd)\n\x00",
        Reason.OLD_PASSWORD_MISMATCH,
    ),
    Recorded(
        "windows reset without right (2098)",
        "windows",
        Operation.RESET,
        50,
        "00002098: SecErr: DSID-0315130F, problem 4003 (INSUFF_ACCESS_RIGHTS), data 0",
        Reason.DIRECTORY_ACCESS_DENIED,
    ),
    Recorded(
        "windows reset without right (5)",
        "windows",
        Operation.RESET,
        50,
        "00000005: SecErr: DSID-031A11B9, problem 4003 (INSUFF_ACCESS_RIGHTS)",
        Reason.DIRECTORY_ACCESS_DENIED,
    ),
    Recorded(
        "windows password write without TLS",
        "windows",
        Operation.RESET,
        53,
        "0000001F: SvcErr: DSID-031A12D2, problem 5003 (WILL_NOT_PERFORM), data 0\n\x00",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "windows change refused as illegal modify",
        "windows",
        Operation.CHANGE,
        53,
        "00002077: SvcErr: DSID-03190F9E, problem 5003 (WILL_NOT_PERFORM)",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "windows unicodePwd not in quotes",
        "windows",
        Operation.RESET,
        19,
        "0000216C: AtrErr: DSID-03190F80, #1:\n\t0: 0000216C: DSID-03190F80, problem 1005 "
        "(CONSTRAINT_ATT_TYPE), data 0, Att 9005a (unicodePwd)\n\x00",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "windows critical control refused",
        "windows",
        Operation.RESET,
        12,
        "00000057: LdapErr: DSID-0C090CAD, comment: Error processing control",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded("windows success", "windows", Operation.RESET, 0, "", Reason.APPLIED),
    # -- Samba 4.17.12 ----------------------------------------------------------------------
    Recorded(
        "samba too short",
        "samba 4.17",
        Operation.RESET,
        19,
        SAMBA_RESTRICTION + "the password is too short. It should be equal or longer "
        "than 7 characters!",
        Reason.POLICY_LENGTH,
    ),
    Recorded(
        "samba not complex",
        "samba 4.17",
        Operation.RESET,
        19,
        SAMBA_RESTRICTION + "the password does not meet the complexity criteria!",
        Reason.POLICY_COMPLEXITY,
    ),
    Recorded(
        "samba in history",
        "samba 4.17",
        Operation.CHANGE,
        19,
        SAMBA_RESTRICTION + "the password was already used (in history)!",
        Reason.POLICY_HISTORY,
    ),
    Recorded(
        "samba previous password",
        "samba 4.17",
        Operation.CHANGE,
        19,
        SAMBA_RESTRICTION + "the password was already used (previous password)!",
        Reason.POLICY_HISTORY,
    ),
    Recorded(
        "samba too young",
        "samba 4.17",
        Operation.CHANGE,
        19,
        SAMBA_RESTRICTION + "password is too young to change!",
        Reason.POLICY_MIN_AGE,
    ),
    Recorded(
        "samba password changes disabled",
        "samba 4.17",
        Operation.CHANGE,
        19,
        SAMBA_RESTRICTION + "password changes disabled!",
        Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD,
    ),
    Recorded(
        "samba user cannot change password",
        "samba 4.17",
        Operation.CHANGE,
        19,
        SAMBA_RESTRICTION + "password can't be changed on this account!",
        Reason.ACCOUNT_CANNOT_CHANGE_PASSWORD,
    ),
    Recorded(
        "samba wrong old password",
        "samba 4.17",
        Operation.CHANGE,
        19,
        "00000056: Constraint violation - check_password_restrictions: The old password "
        "specified doesn't match!",
        Reason.OLD_PASSWORD_MISMATCH,
    ),
    Recorded(
        "samba change while locked out",
        "samba 4.17",
        Operation.CHANGE,
        19,
        "00000775: Password change not permitted, account locked out! at "
        "../../source4/dsdb/samdb/ldb_modules/password_hash.c:3929:setup_io",
        Reason.ACCOUNT_LOCKED,
    ),
    Recorded(
        "samba reset without right",
        "samba 4.17",
        Operation.RESET,
        50,
        "error in module acl: insufficient access rights during LDB_MODIFY (50)",
        Reason.DIRECTORY_ACCESS_DENIED,
    ),
    Recorded(
        "samba unquoted unicodePwd",
        "samba 4.17",
        Operation.RESET,
        53,
        "00002035: setup_io: it's not allowed to set the NT hash password directly'",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "samba critical control refused",
        "samba 4.17",
        Operation.RESET,
        12,
        "",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "samba pwdLastSet neither 0 nor -1",
        "samba 4.17",
        Operation.RESET,
        80,
        "00000057: setup_last_set_field: pwdLastSet must be 0 or -1 only! at …",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "samba user gone",
        "samba 4.17",
        Operation.UNLOCK,
        32,
        "00002030: No such Base DN: CN=Gone,OU=Staff,DC=example,DC=test",
        Reason.USER_NOT_FOUND,
    ),
    Recorded(
        "samba success", "samba 4.17", Operation.CHANGE, 0, "00000000: Success", Reason.APPLIED
    ),
    # -- synthetic: mapped codes the reference has no recorded answer for ----------------------
    Recorded(
        "windows user gone",
        "synthetic: the reference records only '32' for Windows; "
        "the message has Windows' NameErr shape (0x208D is not in WIN32_REASONS)",
        Operation.RESET,
        32,
        "0000208D: NameErr: DSID-0310028B, problem 2001 (NO_OBJECT), data 0, best match "
        "of:\n\t'OU=Staff,DC=example,DC=test'\n\x00",
        Reason.USER_NOT_FOUND,
    ),
    Recorded(
        "busy",
        "synthetic: LDAP 51 busy, no recorded answer",
        Operation.RESET,
        51,
        "",
        Reason.DIRECTORY_UNAVAILABLE,
    ),
    Recorded(
        "unavailable",
        "synthetic: LDAP 52 unavailable, no recorded answer",
        Operation.CHANGE,
        52,
        "",
        Reason.DIRECTORY_UNAVAILABLE,
    ),
    Recorded(
        "other without a Win32 code",
        "synthetic: LDAP 80 with no message",
        Operation.UNLOCK,
        80,
        "",
        Reason.DIRECTORY_ERROR,
    ),
    Recorded(
        "samba too long",
        "synthetic: SAMBA_PHRASES lists it, Samba 4.17's "
        "check_password_restrictions has no such message",
        Operation.RESET,
        19,
        SAMBA_RESTRICTION + "the password is too long. It should be equal or shorter "
        "than 256 characters!",
        Reason.POLICY_LENGTH,
    ),
    Recorded(
        "constraint violation naming no rule",
        "synthetic: a 19 without a Win32 code (e.g. a change refused by Samba's acl module)",
        Operation.CHANGE,
        19,
        "error in module acl: constraint violation during LDB_MODIFY (19)",
        Reason.POLICY_REJECTED,
    ),
    Recorded(
        "unknown result code",
        "synthetic: a code no table knows",
        Operation.RESET,
        71,
        "",
        Reason.DIRECTORY_ERROR,
    ),
)

# Reasons that cannot come out of classify(); each is produced elsewhere or not by the relay.
# policy.check_syntax and directory.check_upn; see test_policy and test_directory_unit.
FROM_PRECHECK = {
    Reason.REQUEST_INVALID,  # an empty or NUL-bearing password, a name that cannot be a UPN
}
FROM_DIRECTORY_LAYER = {  # LdapDirectory itself; see tests/unit/test_directory_unit.py
    Reason.USER_AMBIGUOUS,  # two users with the UPN
    Reason.USER_PROTECTED,  # adminCount=1, a protected or denied group
    Reason.USER_OUT_OF_SCOPE,  # outside directory.scopes
    Reason.ACCOUNT_DISABLED,  # userAccountControl & ACCOUNTDISABLE
    Reason.ACCOUNT_PASSWORD_NEVER_EXPIRES,  # an expire for a DONT_EXPIRE_PASSWORD account
}
NOT_FROM_THE_DIRECTORY = {  # the request pipeline and the cloud side, never LdapDirectory
    Reason.ACCOUNT_THROTTLED,  # ChangeThrottle, and LdapDirectory's lockout guard: never classify()
    Reason.REQUEST_MALFORMED,
    Reason.REQUEST_EXPIRED,
    Reason.REQUEST_REPLAYED,
    Reason.REQUEST_SUPERSEDED,  # the pipeline's recovery of an earlier delivery
    Reason.REQUEST_OUTCOME_UNKNOWN,  # the same, when the DC cannot say without risk
    Reason.REQUEST_INVALID_SIGNATURE,
    Reason.REQUEST_UNDECRYPTABLE,
    Reason.AGENT_UNAVAILABLE,
    Reason.AGENT_TIMEOUT,
    Reason.TRANSPORT_UNAVAILABLE,
    Reason.OUTCOME_INVALID_SIGNATURE,
    Reason.PASSWORD_DRIFT,
}
# Also produced by the pre-checks, and by classify() from Samba's phrases.
PRECHECKED_TOO = {
    Reason.POLICY_LENGTH,
    Reason.POLICY_COMPLEXITY,
    Reason.POLICY_HISTORY,
    Reason.POLICY_MIN_AGE,
}


def by_name(name: str) -> Recorded:
    return next(r for r in RECORDED if r.name == name)


class TestRecordedAnswers:
    @pytest.mark.parametrize("recorded", RECORDED, ids=lambda r: r.name)
    def test_maps_to_its_reason(self, recorded: Recorded) -> None:
        """Each recorded DC answer becomes the reason the relay promises for it."""
        assert classify(recorded.operation, recorded.answer).reason is recorded.reason

    @pytest.mark.parametrize("recorded", RECORDED, ids=lambda r: r.name)
    def test_detail_keeps_the_dcs_words(self, recorded: Recorded) -> None:
        """The admin detail carries the LDAP result code and the DC's message, cleaned."""
        detail = classify(recorded.operation, recorded.answer).detail
        assert f"LDAP {recorded.result}" in detail
        assert recorded.answer.message in detail
        assert "\x00" not in detail

    def test_windows_generic_52d_is_policy_rejected_on_reset_and_change(self) -> None:
        """Windows' 0000052D names no rule, so reset (53) and change (19) are policy.rejected."""
        reset = classify(Operation.RESET, by_name("windows reset policy failure").answer)
        change = classify(Operation.CHANGE, by_name("windows change policy failure").answer)
        assert reset.reason is change.reason is Reason.POLICY_REJECTED
        assert "history or a password filter" in reset.detail
        assert "history or a password filter" in change.detail

    def test_samba_phrases_refine_the_same_52d(self) -> None:
        """The same Win32 code from Samba is refined by the rule Samba names."""
        assert by_name("samba too short").answer.win32 == 0x52D
        assert classify(Operation.RESET, by_name("samba too short").answer).reason is (
            Reason.POLICY_LENGTH
        )

    def test_critical_control_refusal_is_explained(self) -> None:
        """A 12 answer says the DC refused a critical control, on Windows and on Samba."""
        for name in ("windows critical control refused", "samba critical control refused"):
            detail = classify(Operation.RESET, by_name(name).answer).detail
            assert detail.startswith("the DC refused a critical control")

    def test_missing_tls_is_explained(self) -> None:
        """Windows' 0000001F on a password write says an encrypted connection is required."""
        detail = classify(
            Operation.RESET, by_name("windows password write without TLS").answer
        ).detail
        assert "requires an encrypted connection" in detail

    @pytest.mark.parametrize(
        "name", ["windows unicodePwd not in quotes", "samba unquoted unicodePwd"]
    )
    def test_encoding_refusal_is_explained(self, name: str) -> None:
        """An unquoted or mis-encoded unicodePwd is reported as an encoding problem."""
        detail = classify(Operation.RESET, by_name(name).answer).detail
        assert "refused the encoding of unicodePwd" in detail


class TestDiagnosticMessage:
    def test_windows_trailing_newline_and_nul_are_stripped(self) -> None:
        """Windows ends its diagnostics with '\\n\\x00'; neither reaches the detail."""
        answer = by_name("windows change policy failure").answer
        assert answer.message.endswith("Att 9005a (unicodePwd)")
        assert classify(Operation.CHANGE, answer).detail.endswith("(unicodePwd))")

    def test_bytes_messages_are_decoded(self) -> None:
        """A diagnostic handed over as bytes is decoded and cleaned the same way."""
        answer = DirectoryAnswer.of(19, WINDOWS_52D_ATRERR.encode())
        assert answer == DirectoryAnswer.of(19, WINDOWS_52D_ATRERR)

    def test_missing_message_is_empty(self) -> None:
        """No diagnostic at all gives an empty message and a detail of just the code."""
        answer = DirectoryAnswer.of(12, None)
        assert answer.message == ""
        assert answer.describe() == "LDAP 12"

    @pytest.mark.parametrize(
        ("message", "win32"),
        [
            ("0000052D: SvcErr: DSID-031A126C", 0x52D),
            ("00000056: Constraint violation", 0x56),
            ("error in module acl: insufficient access rights during LDB_MODIFY (50)", None),
            ("", None),
        ],
    )
    def test_win32_code_is_the_leading_eight_hex_digits(
        self, message: str, win32: int | None
    ) -> None:
        """Only eight hex digits and a colon at the very start are a Win32 code."""
        assert DirectoryAnswer.of(19, message).win32 == win32


class TestAccessDenied:
    @pytest.mark.parametrize(
        ("operation", "right"),
        [
            (Operation.RESET, "the Reset Password extended right"),
            (Operation.CHANGE, "the Change Password extended right"),
            (Operation.UNLOCK, "Write lockoutTime"),
        ],
    )
    def test_detail_names_the_right_the_operation_needs(
        self, operation: Operation, right: str
    ) -> None:
        """Access denied names the right the relay's account lacks for this operation."""
        outcome = classify(operation, by_name("windows reset without right (2098)").answer)
        assert outcome.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert outcome.detail.startswith(f"the relay's account lacks {right} on the user object")

    def test_detail_adds_the_rights_for_unlock_and_force_change(self) -> None:
        """A reset that also unlocks and forces a change names those write rights too."""
        outcome = classify(
            Operation.RESET,
            by_name("samba reset without right").answer,
            "Write lockoutTime and Write pwdLastSet",
        )
        assert (
            "Reset Password extended right on the user object and Write lockoutTime and "
            "Write pwdLastSet" in outcome.detail
        )
        assert "error in module acl" in outcome.detail

    def test_insufficient_access_in_a_constraint_violation_is_access_denied(self) -> None:
        """A 19 or 53 whose message says insufficient access is a rights problem, not policy."""
        answer = DirectoryAnswer.of(19, "insufficient access rights to change the password")
        assert classify(Operation.CHANGE, answer).reason is Reason.DIRECTORY_ACCESS_DENIED

    def test_every_operation_has_its_right(self) -> None:
        """No operation can be denied without the detail naming a right."""
        assert set(RIGHTS_NEEDED) == set(Operation)


class TestCoverage:
    def test_every_result_code_is_exercised(self) -> None:
        """Each LDAP result code in RESULT_REASONS decides the reason of a recorded answer."""
        deciding = {
            r.result
            for r in RECORDED
            if r.answer.win32 not in WIN32_REASONS
            and r.result in RESULT_REASONS
            and r.reason is RESULT_REASONS[r.result]
        }
        assert deciding == set(RESULT_REASONS)

    def test_every_win32_code_is_exercised(self) -> None:
        """Each Win32 code in WIN32_REASONS leads at least one recorded answer."""
        assert {r.answer.win32 for r in RECORDED} >= set(WIN32_REASONS)

    def test_every_samba_phrase_is_exercised(self) -> None:
        """Each phrase in SAMBA_PHRASES appears in a recorded answer that maps to its reason."""
        for phrase, reason in SAMBA_PHRASES:
            assert any(phrase in r.message.lower() and r.reason is reason for r in RECORDED), phrase

    def test_every_reason_classify_can_produce_is_expected(self) -> None:
        """The table expects every reason the mapping tables (and classify's fallbacks) name."""
        producible = (
            set(RESULT_REASONS.values())
            | set(WIN32_REASONS.values())
            | {reason for _, reason in SAMBA_PHRASES}
            | {
                Reason.APPLIED,
                Reason.POLICY_REJECTED,
                Reason.DIRECTORY_ERROR,
                Reason.DIRECTORY_ACCESS_DENIED,
            }
        )
        assert {r.reason for r in RECORDED} == producible

    def test_every_reason_is_accounted_for(self) -> None:
        """Every Reason comes from classify, the pre-checks, LdapDirectory, or another layer."""
        classified = {r.reason for r in RECORDED}
        not_classified = FROM_PRECHECK | FROM_DIRECTORY_LAYER | NOT_FROM_THE_DIRECTORY
        assert set(Reason) - classified == not_classified
        assert classified >= PRECHECKED_TOO

    def test_synthetic_answers_say_why(self) -> None:
        """An answer not taken from the reference says why it is in the table."""
        for recorded in RECORDED:
            assert recorded.source in ("windows", "samba 4.17") or (
                recorded.source.startswith("synthetic: ") and len(recorded.source) > 20
            ), recorded.name

    def test_names_are_unique(self) -> None:
        """Each recorded answer has its own name (the test ids)."""
        assert len({r.name for r in RECORDED}) == len(RECORDED)
