"""A reply session's lease: fresh while its holder renews, stale after, never forged by noise."""

from __future__ import annotations

from writeback.transport.lease import LEASE_SECONDS, is_held, lease


class TestLease:
    def test_a_lease_renewed_within_the_lease_time_holds(self) -> None:
        """An adopter locking the session soon after the holder's last renewal leaves it."""
        assert is_held(lease(1_000.0), 1_000.0 + LEASE_SECONDS - 1)

    def test_a_lease_not_renewed_for_the_lease_time_is_stale(self) -> None:
        """A holder silent for the lease time (dead) loses its claim: the session is adopted."""
        assert not is_held(lease(1_000.0), 1_000.0 + LEASE_SECONDS)

    def test_no_state_or_another_state_is_no_lease(self) -> None:
        """A cleared state, or one that is not a lease, claims nothing."""
        assert not any(is_held(state, 0.0) for state in (None, b"", b"other", b"writeback-lease:x"))
