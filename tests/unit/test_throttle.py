"""The relay's limit on wrong current passwords per user (writeback.relay.throttle)."""

from __future__ import annotations

import pytest

from writeback.protocol import Operation, Outcome, Reason
from writeback.relay import throttle
from writeback.relay.throttle import ChangeThrottle

USER = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"  # the account's objectGUID
WRONG = Outcome(Reason.OLD_PASSWORD_MISMATCH)
APPLIED = Outcome(Reason.APPLIED)


def fail(limit: ChangeThrottle, times: int, at: float = 1000.0, user: str = USER) -> None:
    for n in range(times):
        limit.record(Operation.CHANGE, user, WRONG, at + n)


class TestChangeThrottle:
    def test_refuses_after_the_limit_until_the_oldest_failure_leaves_the_window(self) -> None:
        """Five mismatches within 900 s: the sixth change is refused, naming the wait; when the
        first mismatch is 900 s old, changes go to the DC again."""
        limit = ChangeThrottle(attempts=5, window=900)
        fail(limit, 4)
        assert limit.refusal(Operation.CHANGE, USER, 1010) is None
        fail(limit, 1, at=1004)
        refused = limit.refusal(Operation.CHANGE, USER, 1010)
        assert refused is not None
        assert (refused.reason, refused.status.value) == (Reason.ACCOUNT_THROTTLED, "rejected")
        assert refused.message == (
            "Too many attempts with a wrong current password. Try again in 15 minutes."
        )
        assert "refused for 890s more" in refused.detail
        assert limit.refusal(Operation.CHANGE, USER, 1899) is not None
        assert limit.refusal(Operation.CHANGE, USER, 1900) is None

    def test_accounts_are_counted_apart_by_objectguid(self) -> None:
        """The count is per objectGUID (any case of its text); another account is not affected.
        That a SID and a UPN of one user share it is the pipeline's resolution (test_pipeline)."""
        limit = ChangeThrottle(attempts=2, window=60)
        fail(limit, 1, user=USER.upper())
        fail(limit, 1, user=USER)
        assert limit.refusal(Operation.CHANGE, USER, 1001) is not None
        assert limit.refusal(Operation.CHANGE, "0b0b0b0b-4f89-41d3-9a0c-0305e82c3301", 1001) is None

    def test_a_successful_change_clears_the_count(self) -> None:
        """The user got it right: earlier mistakes no longer count."""
        limit = ChangeThrottle(attempts=2, window=60)
        fail(limit, 1)
        limit.record(Operation.CHANGE, USER, APPLIED, 1001)
        fail(limit, 1, at=1002)
        assert limit.refusal(Operation.CHANGE, USER, 1003) is None

    @pytest.mark.parametrize("operation", [Operation.RESET, Operation.UNLOCK, Operation.EXPIRE])
    def test_only_changes_are_counted_or_refused(self, operation: Operation) -> None:
        """Resets, unlocks and expires carry no current password: never counted, never refused."""
        limit = ChangeThrottle(attempts=1, window=60)
        limit.record(operation, USER, WRONG, 1000)
        assert len(limit) == 0
        fail(limit, 1)
        assert limit.refusal(operation, USER, 1001) is None

    def test_other_rejections_do_not_count(self) -> None:
        """A policy refusal is not a guess at the current password."""
        limit = ChangeThrottle(attempts=1, window=60)
        limit.record(Operation.CHANGE, USER, Outcome(Reason.POLICY_HISTORY), 1000)
        assert limit.refusal(Operation.CHANGE, USER, 1001) is None

    def test_zero_turns_it_off(self) -> None:
        limit = ChangeThrottle(attempts=0, window=60)
        fail(limit, 10)
        assert limit.refusal(Operation.CHANGE, USER, 1011) is None
        assert len(limit) == 0

    def test_memory_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_USERS users with failures, the user whose last failure is oldest goes, and
        users whose failures all left the window are dropped when looked at."""
        monkeypatch.setattr(throttle, "MAX_USERS", 3)
        limit = ChangeThrottle(attempts=5, window=60)
        for n in range(5):
            fail(limit, 1, at=1000 + n, user=f"u{n}@corp.example.test")
        assert len(limit) == 3
        assert limit.refusal(Operation.CHANGE, "u4@corp.example.test", 2000) is None
        assert len(limit) == 2
