"""Matching outcomes on a cloud instance's reply session to the requests it waits for."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from writeback.errors import TransportUnavailable
from writeback.transport.replies import (
    MAX_BODIES,
    Backoff,
    Delivered,
    DispatchTries,
    Replies,
    new_reply_session,
    renewal_due,
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class TestReplies:
    async def test_an_outcome_reaches_its_waiter(self) -> None:
        """An outcome delivered for an expected request is what its wait returns."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        waiting = asyncio.create_task(replies.wait("req-1", time.time() + 5))
        await asyncio.sleep(0)
        assert replies.deliver("req-1", "outcome") is Delivered.TO_WAITER
        assert await waiting == "outcome"
        assert not replies.expecting("req-1")

    async def test_an_outcome_before_the_wait_is_kept(self) -> None:
        """An outcome that arrives between the send and the wait is not lost."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        assert replies.deliver("req-1", "outcome") is Delivered.TO_WAITER
        assert await replies.wait("req-1", time.time() + 5) == "outcome"

    async def test_two_waits_share_one_outcome(self) -> None:
        """Two waits for one request (the submit and a status read) both get its outcome."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        waits = [asyncio.create_task(replies.wait("req-1", time.time() + 5)) for _ in range(2)]
        await asyncio.sleep(0)
        replies.deliver("req-1", "outcome")
        assert await asyncio.gather(*waits) == ["outcome", "outcome"]

    async def test_a_timed_out_wait_makes_a_late_outcome_an_orphan(self) -> None:
        """When the last wait gives up, the request is no longer expected: a late outcome is an
        orphan (to be re-sent to the request's own session)."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        started = time.monotonic()
        assert await replies.wait("req-1", time.time() + 0.05) is None
        assert time.monotonic() - started < 1
        assert replies.deliver("req-1", "late") is Delivered.ORPHAN

    async def test_one_waits_timeout_leaves_the_other_waiting(self) -> None:
        """A short wait ending does not end a longer wait for the same request."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        longer = asyncio.create_task(replies.wait("req-1", time.time() + 5))
        assert await replies.wait("req-1", time.time() + 0.05) is None
        assert replies.deliver("req-1", "outcome") is Delivered.TO_WAITER
        assert await longer == "outcome"

    async def test_the_same_body_twice_is_a_duplicate(self) -> None:
        """The very same body again is dropped; another one (a redelivered request answered
        anew) is kept behind the first, which a wait taking anything returns."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        assert replies.deliver("req-1", "first") is Delivered.TO_WAITER
        assert replies.deliver("req-1", "first") is Delivered.DUPLICATE
        assert replies.deliver("req-1", "again") is Delivered.TO_WAITER
        assert await replies.wait("req-1", time.time() + 1) == "first"

    async def test_a_refused_body_does_not_end_the_wait(self) -> None:
        """A body the caller refuses (a forgery) is skipped, before or during the wait: the
        wait goes on and returns the outcome it accepts, and each body is offered once."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        offered: list[str] = []

        def accept(body: str) -> bool:
            offered.append(body)
            return body == "genuine"

        replies.deliver("req-1", "forged-early")
        waiting = asyncio.create_task(replies.wait("req-1", time.time() + 5, accept))
        await asyncio.sleep(0)
        replies.deliver("req-1", "forged-late")
        await asyncio.sleep(0)
        assert not waiting.done()
        replies.deliver("req-1", "genuine")
        assert await waiting == "genuine"
        assert offered == ["forged-early", "forged-late", "genuine"]

    async def test_only_refused_bodies_end_in_none_at_the_deadline(self) -> None:
        """Nothing acceptable arrives: the wait ends at its deadline with None."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        replies.deliver("req-1", "forged")
        started = time.monotonic()
        assert await replies.wait("req-1", time.time() + 0.1, lambda body: False) is None
        assert 0.05 < time.monotonic() - started < 1

    async def test_a_full_entry_makes_further_bodies_orphans(self) -> None:
        """Past MAX_BODIES distinct bodies an entry takes no more: a flood of forgeries cannot
        grow it, and what comes after (perhaps the real outcome) is re-sent to the request's
        own session instead of being dropped."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        for n in range(MAX_BODIES):
            assert replies.deliver("req-1", f"forged-{n}") is Delivered.TO_WAITER
        assert replies.deliver("req-1", "genuine") is Delivered.ORPHAN

    async def test_unknown_requests_are_orphans(self) -> None:
        """An outcome for a request this instance never sent is an orphan."""
        assert Replies().deliver("req-other", "outcome") is Delivered.ORPHAN

    async def test_a_request_never_sent_is_forgotten(self) -> None:
        """A send that failed takes its registration back."""
        replies = Replies()
        assert replies.expect("req-1", time.time() + 60)
        assert not replies.expect("req-1", time.time() + 60)
        replies.forget("req-1")
        assert not replies.expecting("req-1")

    async def test_stale_entries_are_dropped_with_their_outcome(self) -> None:
        """Entries nobody waits for go once their request expired; the bodies they received are
        handed back for re-sending, and unexpired or waited-for entries stay."""
        clock = Clock()
        replies = Replies(clock)
        replies.expect("answered", clock.now + 10)
        replies.expect("silent", clock.now + 10)
        replies.expect("young", clock.now + 100)
        replies.deliver("answered", "forged")
        replies.deliver("answered", "outcome")
        assert replies.stale() == []
        clock.now += 11
        assert sorted(replies.stale()) == [("answered", ["forged", "outcome"]), ("silent", [])]
        for request_id, _ in replies.stale():
            replies.drop(request_id)
        assert len(replies) == 1
        assert replies.expecting("young")

    async def test_close_fails_the_waits(self) -> None:
        """Closing ends every running wait with TransportUnavailable and forgets everything."""
        replies = Replies()
        replies.expect("req-1", time.time() + 60)
        replies.expect("req-2", time.time() + 60)
        waiting = asyncio.create_task(replies.wait("req-1", time.time() + 30))
        await asyncio.sleep(0)
        replies.close()
        with pytest.raises(TransportUnavailable):
            await waiting
        assert len(replies) == 0


class TestSessionsAndTiming:
    def test_reply_sessions_are_unique_ids(self) -> None:
        """Each instance's reply session is new and a valid session (and request-id-like) id."""
        first, second = new_reply_session(), new_reply_session()
        assert first != second
        assert re.fullmatch(r"cloud-[0-9a-f]{32}", first)

    def test_renewal_is_halfway_within_bounds(self) -> None:
        """A lock is renewed halfway to its end, never sooner than 0.5 s nor later than 30 s."""
        assert renewal_due(1000.0 + 30, 1000.0) == 1015.0
        assert renewal_due(1000.0 + 0.2, 1000.0) == 1000.5  # a skewed clock cannot spin
        assert renewal_due(1000.0 - 5, 1000.0) == 1000.5
        assert renewal_due(1000.0 + 300, 1000.0) == 1030.0

    def test_backoff_grows_and_resets(self) -> None:
        """Pauses double from 0.5 s up to 30 s (with jitter) and start again after a success."""
        backoff = Backoff()
        pauses = [backoff.next() for _ in range(10)]
        assert 0.4 <= pauses[0] <= 0.6
        assert 0.8 <= pauses[1] <= 1.2
        assert all(p <= 36 for p in pauses)
        assert pauses[-1] >= 24
        backoff.reset()
        assert backoff.next() <= 0.6


class TestDispatchTries:
    """Failed tries per outcome are counted by the listener, not by the broker."""

    def test_the_limit_is_reached_after_limit_failures(self) -> None:
        """Each failure of one outcome counts; the count reaches the limit on the last try,
        and a settled outcome starts again from nothing."""
        tries = DispatchTries(limit=3)
        assert [tries.failed(7) for _ in range(3)] == [1, 2, 3]
        tries.forget(7)
        assert tries.failed(7) == 1

    def test_only_the_newest_outcomes_are_remembered(self) -> None:
        """Past `keep` outcomes the oldest counts are dropped, so the table stays bounded."""
        tries = DispatchTries(keep=2)
        for sequence in (1, 2, 3):
            tries.failed(sequence)
        assert tries.failed(1) == 1
        assert tries.failed(3) == 2

    def test_pauses_grow_and_stay_short(self) -> None:
        """The pause before another try doubles from 0.1 s and never exceeds 2 s."""
        assert [DispatchTries.pause(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
        assert DispatchTries.pause(30) == 2.0
