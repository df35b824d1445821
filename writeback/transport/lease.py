"""A live cloud instance's claim on its reply session, kept in the session's own state.

A session lock says only who holds the session now. When an instance loses its reply session
(a detach, a dropped connection) it reopens it after a pause, and meanwhile the session is
free: another instance's sweep could lock it and move outcomes the live instance is waiting
for. So while its listener lives, an instance writes a lease into the session state each time
it locks or renews the session, and clears it when it closes cleanly; `adopt` leaves alone a
session whose lease is fresh. Both times compared are the service's: the lease holds the
locked-until the holder last got, the adopter compares it with the locked-until of its own
lock (each the service's time of locking plus the same session lock duration), so neither
side's clock enters. A crashed instance's lease goes stale LEASE_SECONDS after its last
renewal, and its session is adopted then. The state holds nothing secret.
"""

from __future__ import annotations

# How long after a holder's last lock or renewal its session counts as its own: a renewal
# interval (up to 30 s) plus several reopen pauses, so a live instance reopening after a
# failure keeps its outcomes; a dead one's wait at most this long more.
LEASE_SECONDS = 90.0
_MARK = b"writeback-lease:"


def lease(locked_until: float) -> bytes:
    """The session state a holder writes after locking or renewing until `locked_until`."""
    return _MARK + f"{locked_until:.3f}".encode()


def is_held(state: bytes | None, locked_until: float) -> bool:
    """Whether `state` is a live holder's lease, judged by an adopter whose own lock on the
    session lasts until `locked_until`."""
    if not state or not state.startswith(_MARK):
        return False
    try:
        theirs = float(state[len(_MARK) :])
    except ValueError:
        return False
    return locked_until - theirs < LEASE_SECONDS
