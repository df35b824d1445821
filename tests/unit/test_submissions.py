"""What a caller may ask for: the body of each write, read strictly, problems naming the field."""

from __future__ import annotations

import time

import pytest

from writeback.cloud.submissions import InvalidInput, parse, read_body
from writeback.protocol import Initiator, Operation

PASSWORD = "Submission-Pa55!"


def refused(operation: Operation, body: dict[str, object]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse(operation, body)
    return caught.value


class TestReset:
    def test_a_full_admin_reset(self) -> None:
        """Every reset field is read; the password stays out of the repr."""
        submission = parse(
            Operation.RESET,
            {"user": "a@corp.example.test", "newPassword": PASSWORD, "initiator": "admin",
             "unlock": True, "forceChangeAtNextLogon": True},
        )  # fmt: skip
        assert submission.initiator is Initiator.ADMIN
        assert submission.unlock
        assert submission.force_change_at_next_logon
        assert PASSWORD not in repr(submission)

    def test_self_service_cannot_force_a_change(self) -> None:
        """A user's own reset cannot demand a change at next logon: only an admin reset can."""
        error = refused(
            Operation.RESET,
            {"user": "a@corp.example.test", "newPassword": PASSWORD,
             "initiator": "self-service", "forceChangeAtNextLogon": True},
        )  # fmt: skip
        assert error.field == "forceChangeAtNextLogon"

    def test_sealed_needs_its_request_id_and_expiry(self) -> None:
        """A sealed password is bound to a request id and an expiry the caller chose."""
        sealed = {"recipients": [], "ciphertext": "x"}
        body = {"user": "a@corp.example.test", "sealedPassword": sealed, "initiator": "admin"}
        assert refused(Operation.RESET, body).field == "requestId"
        body["requestId"] = "c0ffee00-request"
        assert refused(Operation.RESET, body).field == "expiresAt"
        body["expiresAt"] = int(time.time()) + 3600
        assert refused(Operation.RESET, body).field == "expiresAt"  # more than 600 s away
        body["expiresAt"] = int(time.time()) + 60
        assert parse(Operation.RESET, body).sealed_by_caller


class TestChangeAndUnlock:
    def test_a_change_needs_both_passwords(self) -> None:
        """Old and new password are both required, each named when missing."""
        assert refused(Operation.CHANGE, {"user": "a@b.c", "newPassword": PASSWORD}).field == (
            "oldPassword"
        )
        assert refused(Operation.CHANGE, {"user": "a@b.c", "oldPassword": PASSWORD}).field == (
            "newPassword"
        )

    @pytest.mark.parametrize("operation", [Operation.UNLOCK, Operation.EXPIRE])
    def test_an_unlock_or_expire_takes_only_the_user(self, operation: Operation) -> None:
        """An unlock or expire with a password field (or any other) is refused, naming it."""
        assert refused(operation, {"user": "a@b.c", "newPassword": PASSWORD}).field == (
            "newPassword"
        )
        assert refused(operation, {"user": "a@b.c", "forceChangeAtNextLogon": True}).field == (
            "forceChangeAtNextLogon"
        )
        assert parse(operation, {"user": "a@b.c", "requestId": "expire-0001"}).secrets is None


class TestBody:
    @pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"text"', b"1" * 70_000])
    def test_what_is_not_a_json_object_is_refused(self, raw: bytes) -> None:
        """Empty, broken, non-object and oversized bodies are refused without a field."""
        with pytest.raises(InvalidInput) as caught:
            read_body(raw)
        assert caught.value.field is None
