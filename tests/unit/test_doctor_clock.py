"""`doctor`'s Service Bus clock check: judged by the lock duration, saying what a peek shows."""

from __future__ import annotations

from writeback.relay.doctor import Level, service_clock_check
from writeback.transport.servicebus.clock import ServiceClock


class TestServiceClockCheck:
    def test_behind_by_a_whole_lock_fails(self) -> None:
        """A host at least a lock duration behind the service fails, naming both numbers."""
        check = service_clock_check(ServiceClock(behind=45, ahead=-45, seen=1), 30)
        assert check.level is Level.FAIL
        assert "at least 45s behind" in check.summary
        assert "lock lasts 30s" in check.summary

    def test_behind_by_half_a_lock_warns(self) -> None:
        """Half a lock duration behind is a warning."""
        assert service_clock_check(ServiceClock(16, -16, 1), 30).level is Level.WARN

    def test_close_is_ok(self) -> None:
        """A recent request close to this host's time is OK, with the bound it gives."""
        check = service_clock_check(ServiceClock(-2, 2, 3), 30)
        assert (check.level, check.summary.startswith("within 2s")) == (Level.OK, True)

    def test_an_old_request_only_bounds_ahead(self) -> None:
        """An old queued request shows only how far ahead the host could be, and says so."""
        check = service_clock_check(ServiceClock(-600, 600, 1), 30)
        assert check.level is Level.OK
        assert "at most 600s" in check.summary

    def test_an_empty_queue_is_not_measured(self) -> None:
        """Nothing queued: nothing to compare, said as such."""
        assert "not measured" in service_clock_check(ServiceClock(None, None, 0), 30).summary
