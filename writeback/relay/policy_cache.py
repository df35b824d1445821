"""The domain policy and the PSOs, read from the DC at most once a minute each.

Without it every reset and change reads one or two policy objects before its modify, although an
administrator edits them a few times a year. Caching them is safe because the relay's pre-check
only chooses the reason of a refusal, never whether a password is written: the DC checks the
policy it holds at the moment of the modify. With a stale policy in the cache the pre-check can,
for at most `POLICY_TTL_SECONDS` after an administrator changed it, pass a password the DC then
refuses (the outcome is then the DC's own reason, or policy.rejected) or refuse one the new policy
would accept (the user can try again a minute later); it can never let a bad password through.
What belongs to the user is never cached here: which PSO applies (msDS-ResultantPSO), pwdLastSet,
userAccountControl, adminCount and tokenGroups are read fresh for every command. Only the objects
they point to are cached: the domain head's policy attributes and each PSO, by DN. A PSO the
relay may not read is remembered as unreadable for the same time, so its warning is logged once
a minute rather than on every request.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from writeback import tracing
from writeback.relay import accounts, ldap
from writeback.relay.policy import PasswordPolicy
from writeback.tracing import Stage

# Short enough that a policy change shows in the pre-check within a minute (the heartbeat's own
# interval, so the cloud's view of the policy is as old at worst), long enough that a burst of
# resets reads each policy object once.
POLICY_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class _Cached:
    policy: PasswordPolicy | None  # None: a PSO the relay may not read
    read_at: float


class PolicyCache:
    """Policy objects by DN, each re-read once it is `ttl` seconds old. Thread-safe."""

    def __init__(
        self, ttl: float = POLICY_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, _Cached] = {}

    def domain(self, link: ldap.Link, *, fresh: bool = False) -> PasswordPolicy:
        """The domain-wide policy; `fresh` reads it now (and keeps it for the next requests)."""
        naming_context = link.controller.naming_context
        cached = None if fresh else self._get(naming_context)
        if cached is not None and cached.policy is not None:
            return cached.policy
        with tracing.stage(Stage.READ_POLICY):
            policy = accounts.read_domain_policy(link)
        self._put(naming_context, policy)
        return policy

    def resultant(self, link: ldap.Link, user: accounts.User) -> PasswordPolicy | None:
        """The user's resultant policy (see accounts.read_pso); None if its PSO is unreadable."""
        domain = self.domain(link)
        # Which PSO applies is the user's own fact, read with the user: never cached.
        pso_dn = ldap.first(user.raw, "msDS-ResultantPSO")
        if not pso_dn:
            return domain
        cached = self._get(pso_dn)
        if cached is None:
            with tracing.stage(Stage.READ_POLICY):
                policy = accounts.read_pso(link, pso_dn, domain)
            self._put(pso_dn, policy)
        elif cached.policy is None:
            return None
        else:
            # A PSO has no refuse-change flag of its own: the domain's, as fresh as the domain's.
            policy = dataclasses.replace(cached.policy, refuse_change=domain.refuse_change)
        return policy

    def clear(self) -> None:
        with self._lock:
            self._cached.clear()

    def _get(self, dn: str) -> _Cached | None:
        with self._lock:
            cached = self._cached.get(dn.lower())
        if cached is None or self._clock() - cached.read_at >= self.ttl:
            return None
        return cached

    def _put(self, dn: str, policy: PasswordPolicy | None) -> None:
        with self._lock:
            self._cached[dn.lower()] = _Cached(policy, self._clock())
