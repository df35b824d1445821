"""What the chaos soak expects of a user at the end (devstack.soak_checks): the password and the
must-change flag its requests leave, including the answers that do not say what happened."""

from __future__ import annotations

from devstack.seed import Account
from devstack.soak_checks import _expected
from devstack.soak_load import PoolUser, Sent

USER = PoolUser(Account("u", "u@corp.test", "CN=u", "Initial-1!aA"), "Initial-1!aA")


def sent(number: int, operation: str, final: dict[str, str], **fields: object) -> Sent:
    values: dict = {"new_password": None, "force_change": False, "expected": "applied"} | fields
    return Sent(number, f"r{number}", operation, USER.account.upn, final=final, **values)


APPLIED = {"status": "applied", "reason": "applied"}
UNKNOWN = {"status": "failed", "reason": "request.outcome_unknown"}
UNAVAILABLE = {"status": "failed", "reason": "directory.unavailable"}


def test_an_applied_expire_makes_the_user_change() -> None:
    assert _expected(USER, [sent(1, "expire", APPLIED)]) == ("Initial-1!aA", True)


def test_an_expire_that_never_reached_the_dc_changes_nothing() -> None:
    assert _expected(USER, [sent(1, "expire", UNAVAILABLE)]) == ("Initial-1!aA", False)


def test_an_expire_whose_answer_was_lost_may_have_been_taken() -> None:
    """request.outcome_unknown: the modify was sent, so either flag is right (None)."""
    assert _expected(USER, [sent(1, "expire", UNKNOWN)]) == ("Initial-1!aA", None)


def test_a_later_write_settles_the_flag_again() -> None:
    """A reset the DC took after the unknown expire sets the flag to its own must-change."""
    reset = sent(2, "reset", APPLIED, new_password="Next-2!aA", version_before=1, version_after=2)
    assert _expected(USER, [sent(1, "expire", UNKNOWN), reset]) == ("Next-2!aA", False)
