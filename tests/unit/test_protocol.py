"""The public contract both sides speak: reason codes, their status, their messages, commands.

Reason codes are a stable API (DESIGN, "Outcome reasons"): callers branch on the code, show the
message, and rely on the status to tell "the user can fix it" (rejected) from "an admin must act"
(failed). Commands carry passwords, so their repr must never show one.
"""

from __future__ import annotations

import re

import pytest

from writeback.protocol import (
    ChangePassword,
    Initiator,
    Outcome,
    Reason,
    ResetPassword,
    Status,
    UnlockAccount,
)

CODE = re.compile(r"^[a-z]+(?:_[a-z]+)*\.[a-z]+(?:_[a-z]+)*$")
# DESIGN's partition, by code prefix or exact code.
REJECTED_PREFIXES = ("policy.", "user.", "account.")
REJECTED_CODES = {"old_password.mismatch", "request.invalid", "request.superseded"}
FAILED_PREFIXES = ("directory.", "agent.", "transport.", "outcome.", "password.")
FAILED_CODES = {
    "request.malformed",
    "request.expired",
    "request.replayed",
    "request.invalid_signature",
    "request.undecryptable",
    "request.outcome_unknown",
}


def designed_status(code: str) -> Status:
    if code == "applied":
        return Status.APPLIED
    if code.startswith(REJECTED_PREFIXES) or code in REJECTED_CODES:
        return Status.REJECTED
    if code.startswith(FAILED_PREFIXES) or code in FAILED_CODES:
        return Status.FAILED
    raise AssertionError(f"{code} is in no group of DESIGN's partition")


class TestReasons:
    @pytest.mark.parametrize("reason", list(Reason), ids=str)
    def test_has_a_status_and_a_sentence(self, reason: Reason) -> None:
        """Every reason has a status and a non-empty user message ending with a full stop."""
        assert isinstance(reason.status, Status)
        assert reason.message.strip()
        assert reason.message.endswith(".")
        assert reason.message[0].isupper()

    @pytest.mark.parametrize("reason", list(Reason), ids=str)
    def test_status_follows_the_design_partition(self, reason: Reason) -> None:
        """Rejected: the caller can fix it; failed: an admin must act; applied: only `applied`."""
        assert reason.status is designed_status(reason.value)

    def test_codes_are_word_dot_word(self) -> None:
        """Every code but `applied` is `group.case` in lower-case words joined by underscores."""
        for reason in Reason:
            if reason is Reason.APPLIED:
                assert reason.value == "applied"
            else:
                assert CODE.match(reason.value), reason.value

    def test_codes_are_unique_strings(self) -> None:
        """No two reasons share a code, and each code is a plain str (JSON-ready)."""
        codes = [reason.value for reason in Reason]
        assert len(codes) == len(set(codes))
        assert all(type(code) is str for code in codes)

    def test_all_three_statuses_are_used(self) -> None:
        """The partition is not degenerate: each status has at least one reason."""
        assert {reason.status for reason in Reason} == set(Status)

    def test_messages_never_show_the_code(self) -> None:
        """User messages are sentences, not reason codes."""
        for reason in Reason:
            assert reason.value not in reason.message or reason is Reason.APPLIED


class TestOutcome:
    def test_status_and_message_come_from_the_reason(self) -> None:
        """An outcome without its own message uses the reason's status and sentence."""
        outcome = Outcome(Reason.POLICY_LENGTH, "7 UTF-16 code units")
        assert outcome.status is Status.REJECTED
        assert outcome.message == Reason.POLICY_LENGTH.message

    def test_custom_message_overrides_the_default(self) -> None:
        """An outcome that knows more (e.g. the minimum length) says it instead."""
        outcome = Outcome(Reason.POLICY_LENGTH, "", "At least 12 characters.")
        assert outcome.message == "At least 12 characters."


class TestCommands:
    def test_reset_repr_hides_the_password(self) -> None:
        """A ResetPassword's repr shows who and how, never the new password."""
        command = ResetPassword(
            "alice@example.test",
            "Sunny-Day-42",
            Initiator.ADMIN,
            unlock=True,
            force_change_at_next_logon=True,
        )
        text = repr(command)
        assert "Sunny-Day-42" not in text
        assert "alice@example.test" in text
        assert "Sunny-Day-42" not in str(command)

    def test_change_repr_hides_both_passwords(self) -> None:
        """A ChangePassword's repr shows neither the old nor the new password."""
        command = ChangePassword("alice@example.test", "Old-Secret-1", "New-Secret-2")
        for text in (repr(command), str(command)):
            assert "Old-Secret-1" not in text
            assert "New-Secret-2" not in text
            assert "alice@example.test" in text

    def test_commands_name_their_operation(self) -> None:
        """Each command carries the operation it asks for."""
        assert ResetPassword("u", "p").operation == "reset"
        assert ChangePassword("u", "o", "n").operation == "change"
        assert UnlockAccount("u").operation == "unlock"

    def test_reset_defaults_to_a_plain_self_service_reset(self) -> None:
        """Without options a reset is self-service, neither unlocking nor forcing a change."""
        command = ResetPassword("alice@example.test", "Sunny-Day-42")
        assert command.initiator is Initiator.SELF_SERVICE
        assert (command.unlock, command.force_change_at_next_logon) == (False, False)
