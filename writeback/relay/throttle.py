"""How many wrong current passwords a relay lets through for one user before it stops asking AD.

Every change with a wrong current password counts towards the user's lockout threshold in AD
(badPwdCount), and a caller of the writeback API can send changes for any user. Without a limit, a
compromised portal, or a script behind it, could guess current passwords online or lock out every
account of the domain through the relay. So a relay counts the `old_password.mismatch` answers per
user (UPN, compared as `user_key` does) and, once `attempts` of them fall within `window` seconds,
refuses further changes for that user with `account.throttled` until the oldest one leaves the
window, without touching AD. A change that succeeds clears the user's count. Resets and unlocks are
not counted: they carry no current password.

The count lives in the relay's memory: a restart forgets it, and each relay of a domain counts
on its own, so a domain with two relays lets through at most twice `attempts`. That only slows
guessing: what keeps writeback from ever locking an account out is the directory's lockout guard
(`policy.lockout_guard`), which reads the DC's own count before every change. `attempts = 0`
turns this limit off.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from writeback.protocol import Operation, Outcome, Reason
from writeback.protocol.accounts import upn_key

MAX_USERS = 100_000  # users with failures kept at once; beyond it the stalest are forgotten


def user_key(upn: str) -> str:
    """One user's key before AD has been asked: spellings AD takes for one account share a count
    (and a lock); see `upn_key`."""
    return upn_key(upn)


@dataclass
class ChangeThrottle:
    """Wrong current passwords per user within a sliding window (see the module doc)."""

    attempts: int = 5
    window: float = 900.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def refusal(self, operation: Operation, user: str, now: float) -> Outcome | None:
        """The outcome that refuses this request now, or None if it may go to AD."""
        if operation is not Operation.CHANGE or self.attempts <= 0:
            return None
        failures = self._recent(user_key(user), now)
        if len(failures) < self.attempts:
            return None
        wait = failures[0] + self.window - now
        minutes = max(1, math.ceil(wait / 60))
        return Outcome(
            Reason.ACCOUNT_THROTTLED,
            f"{len(failures)} wrong current passwords within {self.window:g}s for this user; "
            f"changes are refused for {wait:.0f}s more, without asking the DC",
            "Too many attempts with a wrong current password. "
            f"Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
        )

    def record(self, operation: Operation, user: str, outcome: Outcome, now: float) -> None:
        """Count what AD answered a change: a mismatch adds one, an applied change clears."""
        if operation is not Operation.CHANGE or self.attempts <= 0:
            return
        key = user_key(user)
        if outcome.reason is Reason.APPLIED:
            self._failures.pop(key, None)
        elif outcome.reason is Reason.OLD_PASSWORD_MISMATCH:
            failures = self._recent(key, now)
            failures.append(now)
            self._failures[key] = failures
            if len(self._failures) > MAX_USERS:
                self._forget_stalest()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(key, None)
        return failures

    def _forget_stalest(self) -> None:
        stalest = min(self._failures, key=lambda user: self._failures[user][-1])
        del self._failures[stalest]

    def __len__(self) -> int:
        """How many users have failures counted (for tests and the memory bound)."""
        return len(self._failures)
