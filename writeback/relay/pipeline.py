"""What a relay does with one delivered request, from signature to settlement.

verify the cloud's signature and the format → check id and domain → refuse a request issued ahead of
this relay's clock (clock skew) → journal, then the expiry (a duplicate gets the recorded outcome
again) → open the sealed secrets while resolving the user to one directory account (a read: UPN,
SID, GUID or DOMAIN\\name all become the account's objectGUID) → under that account's lock, resolve
an entry a crash left APPLYING, or a request delivered before but not journaled here, by what the DC
can prove (see `_earlier_write`) → apply through the directory, one write per account at a time,
with the message lock renewed meanwhile → journal the outcome → send it signed, with the account it
resolved to, on the reply session the signed request names (else the request's own) → complete.

One identity per user: everything the relay keeps about a user (the change throttle, the write
lock, the journal's account for crash recovery) is keyed on the objectGUID the request resolved
to, never on the name the caller typed, so a SID and a UPN of one user share one count and one
lock. The resolution happens before the account's lock is taken (the lock needs the GUID), under
a lock on the name as given, which it hands over once it holds the account's: requests naming a
user the same way are still written in the order they arrived.

A message whose signature or format is bad is dead-lettered with a reason and no secret: nothing
in it can be trusted, not even the id to answer on. Anything signed and well-formed gets an
answer, even a refusal, so the caller learns the exact reason within its deadline. Transient
failures (journal, Service Bus) leave the message to be delivered again; nothing is applied
twice because the journal is written before and after the directory.

The journal's RECEIVED and APPLYING marks stay two commits. APPLYING is written inside the
per-user lock, after the expiry and earlier-write checks; written on arrival instead, a request
queued behind another write for the same user would, after a crash, find that write's pwdLastSet
and be reported applied without ever being written. Only APPLYING and the outcome are fsynced
(see Journal.begin): that is what must survive a power cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from joserfc.jwk import ECKey, KeySet
from opentelemetry import trace

from writeback import sealing, tracing
from writeback.errors import DirectoryError, JournalError, ProtocolError, TransportError
from writeback.protocol import (
    ChangePassword,
    Command,
    ExpirePassword,
    Operation,
    Outcome,
    Reason,
    ResetPassword,
)
from writeback.protocol.accounts import Account, upn_key
from writeback.protocol.messages import OutcomeMessage, RequestMessage
from writeback.relay.directory import Directory
from writeback.relay.journal import Entry, Journal, State
from writeback.relay.throttle import ChangeThrottle
from writeback.tracing import Stage
from writeback.transport import Delivery, RelayTransport

log = logging.getLogger(__name__)
# Lookup failures that leave an earlier delivery's write unknown (unavailable is retried).
_CANNOT_TELL = frozenset({Reason.DIRECTORY_ERROR, Reason.DIRECTORY_ACCESS_DENIED})
# Test-only fault injection: WRITEBACK_FAILPOINT=after-directory-write makes the relay kill itself
# (SIGKILL) right after AD accepted a write, before anything records it.
FAILPOINT_ENV = "WRITEBACK_FAILPOINT"
AFTER_DIRECTORY_WRITE = "after-directory-write"
# pwdLastSet is the DC's clock, the journal's is ours: allow for skew when comparing them.
CLOCK_TOLERANCE_SECONDS = 120


class Settled(enum.StrEnum):
    COMPLETED = "completed"
    DEAD_LETTERED = "dead-lettered"
    ABANDONED = "abandoned"
    LEFT = "left"  # lock lost or Service Bus down: the message comes back by itself


@dataclass(frozen=True)
class Answered:
    """How a request ended, and the account it resolved to (None when it found none)."""

    outcome: Outcome
    account: Account | None = None


@dataclass(frozen=True)
class RelayKeys:
    """What the pipeline needs of the keys: the cloud's public keys and this relay's own."""

    cloud: KeySet
    decryption: KeySet
    signing: ECKey


class KeyedLocks:
    """One asyncio lock per key, forgotten once no one holds it or waits for it (counted, as an
    unlocked lock may still have a waiter about to take it)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: str) -> None:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(key)
            raise

    def release(self, key: str) -> None:
        self._locks[key][0].release()
        self._leave(key)

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    def _leave(self, key: str) -> None:
        lock, users = self._locks[key]
        if users > 1:
            self._locks[key] = (lock, users - 1)
        else:
            del self._locks[key]

    def __len__(self) -> int:
        """How many keys are held or waited for."""
        return len(self._locks)


class Pipeline:
    def __init__(
        self,
        *,
        relay_id: str,
        domain: str,
        directory: Directory,
        transport: RelayTransport,
        journal: Journal,
        keys: RelayKeys,
        clock: Callable[[], float] = time.time,
        failpoint: str | None = None,
        throttle: ChangeThrottle | None = None,
    ) -> None:
        self.relay_id = relay_id
        self.domain = domain
        self._directory = directory
        self._transport = transport
        self._journal = journal
        self._keys = keys
        self._clock = clock
        self._user_locks = KeyedLocks()  # by objectGUID
        self._name_locks = KeyedLocks()  # by the name as given (see the module doc)
        self._throttle = throttle if throttle is not None else ChangeThrottle()
        # Fault injection for the crash tests only (see FAILPOINT_ENV); never set in production.
        self._failpoint = failpoint

    async def handle(self, delivery: Delivery) -> Settled:
        """Process one delivery to the end; never raises for anything a message can cause."""
        started = self._clock()
        received_ns = tracing.now_ns()
        try:
            _, payload = sealing.verify(delivery.body, self._keys.cloud, sealing.REQUEST_TYPE)
            message = RequestMessage.parse(payload)
            if message.id != delivery.message_id:
                # Duplicate detection works on the MessageId: it must be the signed id.
                raise ProtocolError(
                    Reason.REQUEST_MALFORMED.value,
                    "the MessageId is not the signed request id",
                    "id",
                )
            if message.domain != self.domain:
                raise ProtocolError(
                    Reason.REQUEST_UNDECRYPTABLE.value,
                    f"for {message.domain}, this relay serves {self.domain}",
                    "domain",
                )
        except ProtocolError as exc:
            return await self._dead_letter(delivery, exc)
        # Signed, so its traceparent can be trusted: the rest joins the caller's trace.
        verified_ns = tracing.now_ns()
        caller = tracing.joined(message.traceparent)
        with tracing.stage(
            Stage.RELAY,
            {"writeback.request_id": message.id, "writeback.operation": message.operation.value},
            kind=trace.SpanKind.CONSUMER,
            parent=caller,
            start_ns=received_ns,
        ):
            # The broker's part belongs to the caller's request (the relay's own, without one).
            tracing.record(
                Stage.DELIVERY,
                int(delivery.enqueued_at * 1e9),
                received_ns,
                {"writeback.delivery_count": delivery.delivery_count},
                parent=caller,
            )
            tracing.record(Stage.VERIFY, received_ns, verified_ns)
            return await self._handle(delivery, message, started)

    async def _handle(self, delivery: Delivery, message: RequestMessage, started: float) -> Settled:
        try:
            async with self._keep_locked(delivery):
                future = self._from_the_future(message)
                answered = (
                    Answered(future)
                    if future
                    else await self._process(message, delivery.delivery_count)
                )
        except JournalError as exc:
            log.error("journal_failed", extra={"request": message.id, "error": str(exc)})
            return await self._settle(self._transport.abandon(delivery), Settled.ABANDONED)
        return await self._answer(delivery, message, answered, started)

    def _from_the_future(self, message: RequestMessage) -> Outcome | None:
        ahead = message.issued_at - self._clock()
        if ahead > sealing.CLOCK_SKEW_SECONDS:
            # Signed by the cloud, so not forged: one of the two clocks is wrong. Answered at
            # once, so the caller learns why, and not journaled: nothing was tried.
            log.warning(
                "request_from_the_future",
                extra={"request": message.id, "ahead_seconds": round(ahead)},
            )
            return Outcome(
                Reason.REQUEST_MALFORMED,
                f"issued {ahead:.0f}s ahead of this relay's clock (more than "
                f"{sealing.CLOCK_SKEW_SECONDS}s): check the time synchronisation of the relay's "
                "host",
            )
        return None

    async def _process(self, message: RequestMessage, delivery_count: int) -> Answered:
        # The journal comes before the expiry: a request already answered gets its recorded
        # outcome even when it is delivered again after its expiry (a crash, a lost answer).
        try:
            with tracing.stage(Stage.JOURNAL_RECEIVED):
                seen = self._journal.begin(
                    message.id,
                    domain=message.domain,
                    operation=message.operation.value,
                    user=message.user,
                    expires_at=float(message.expires_at),
                )
        except ProtocolError as exc:
            return Answered(Outcome(Reason(exc.reason), str(exc)))
        if seen is not None and seen.final and seen.outcome is not None:
            recorded = OutcomeMessage.parse(dict(seen.outcome))
            return Answered(
                Outcome(recorded.reason, recorded.detail, recorded.message), recorded.account
            )
        if seen is None and self._clock() >= message.expires_at:
            return self._record(message, self._expired(message, "before it arrived"))
        # The secrets are opened (CPU) while the account is looked up (the DC): side by side. An
        # undecryptable request is answered after the lookup, a read it did not need.
        opening = asyncio.ensure_future(asyncio.to_thread(self._open, message))
        try:
            async with self._one_write_per_account(message, seen) as found:
                command = await opening
                if isinstance(command, Outcome):
                    return self._record(message, command)
                return await self._locked(message, seen, delivery_count, command, found)
        finally:
            if not opening.done():
                opening.cancel()

    def _open(self, message: RequestMessage) -> Command | Outcome:
        """The request's command with its secrets opened, or the outcome saying why not."""
        try:
            with tracing.stage(Stage.OPEN):
                return sealing.open_request(message, self._keys.decryption)
        except ProtocolError as exc:
            return Outcome(Reason(exc.reason), str(exc))

    async def _locked(
        self,
        message: RequestMessage,
        seen: Entry | None,
        delivery_count: int,
        command: Command,
        found: Account | Outcome,
    ) -> Answered:
        """The rest of `_process`, under the account's lock once `found` is one."""
        written_before = (seen is not None and seen.state is State.APPLYING) or (
            seen is None and delivery_count > 1
        )
        if isinstance(found, Outcome):
            # No account (not found, ambiguous, malformed, the DC unreachable): nothing to
            # lock, count or write. Where an earlier delivery may have written, a DC that
            # answered the lookup wrongly cannot say it did not: as in `_earlier_write`.
            if written_before and found.reason in _CANNOT_TELL:
                unknown = Outcome(
                    Reason.REQUEST_OUTCOME_UNKNOWN,
                    f"could not check an earlier delivery's write: {found.detail}",
                )
                return self._record(message, unknown)
            return self._record(message, found)
        account = found
        if seen is not None and seen.state is State.APPLYING:
            # This relay crashed while applying it.
            resolved = await self._earlier_write(command, account, seen.updated_at)
        elif seen is None and delivery_count > 1:
            # Delivered before, but not journaled here: another relay of the domain may have
            # written it and died before answering (or a receiver that is no relay let go).
            resolved = await self._earlier_write(command, account, float(message.issued_at))
        else:
            resolved = None
        if resolved is not None:
            return self._record(message, resolved, account)
        if self._clock() >= message.expires_at:
            # Delivered again after its expiry and not written before: never apply it now.
            expired = self._expired(message, "before it was applied")
            return self._record(message, expired, account)
        # Under the account's lock, so that parallel changes cannot all pass the count; after
        # the crash recovery above, so a change AD already took is reported as applied.
        throttled = self._throttle.refusal(message.operation, account.guid, self._clock())
        if throttled is not None:
            log.warning("change_throttled", extra={"request": message.id})
            return self._record(message, throttled, account)
        if seen is None or seen.state is State.RECEIVED:
            with tracing.stage(Stage.JOURNAL_APPLYING):
                self._journal.applying(message.id, account.guid)
        with tracing.stage(Stage.APPLY):
            outcome = await asyncio.to_thread(self._directory.apply, command, account)
        self._throttle.record(command.operation, account.guid, outcome, self._clock())
        if self._failpoint == AFTER_DIRECTORY_WRITE:
            # The worst moment to die: AD has the write, the journal and the caller do not.
            os.kill(os.getpid(), signal.SIGKILL)
        return self._record(message, outcome, account)

    def prune(self) -> int:
        """Forget journal entries past the replay window (see Journal.prune); how many went."""
        return self._journal.prune()

    def _expired(self, message: RequestMessage, when: str) -> Outcome:
        return Outcome(
            Reason.REQUEST_EXPIRED,
            f"expired {self._clock() - message.expires_at:.0f}s {when}",
        )

    async def _earlier_write(
        self, command: Command, account: Account, since: float
    ) -> Outcome | None:
        """What to do with a request an earlier delivery may have written to `account` (from
        `since` on), asking the DC about that account (by objectGUID) whatever name the request
        gave:
        None to write it now, or the outcome to report instead. pwdLastSet alone proves
        nothing (another write may have set it), so the DC is asked what is true:

        - an unlock is written again: lockoutTime = 0 twice is harmless;
        - nothing written since `since` (pwdLastSet clearly before it): write it now;
        - an expire: pwdLastSet = 0 already, write it again (harmless); a password set since
          is newer than the expire: superseded, not expired again (the user would change twice);
        - a reset or change the relay would refuse anyway gets that refusal, before any bind;
        - otherwise the DC says whether the requested password is in effect (a bind as the
          user): yes, applied; no, for a change write it now (the DC checks the old password,
          so a change cannot undo a newer write), for a reset superseded (writing it would undo
          the password set since); no with pwdLastSet 0, or cannot tell without risking a
          lockout: unknown, and nothing is written.
        """
        if command.operation is Operation.UNLOCK:
            return None
        try:
            return await self._recover(command, account, since)
        except DirectoryError as exc:
            reason = Reason(exc.reason)
            if reason is not Reason.DIRECTORY_UNAVAILABLE:
                reason = Reason.REQUEST_OUTCOME_UNKNOWN
            return Outcome(reason, f"could not check an earlier delivery's write: {exc}")

    async def _recover(self, command: Command, account: Account, since: float) -> Outcome | None:
        last_set = await asyncio.to_thread(self._directory.password_last_set, account)
        if last_set is not None and last_set.timestamp() < since - CLOCK_TOLERANCE_SECONDS:
            return None
        when = f"pwdLastSet {last_set:%Y-%m-%dT%H:%M:%SZ}" if last_set else "pwdLastSet 0"
        if isinstance(command, ExpirePassword):
            if last_set is None:
                return None
            return Outcome(
                Reason.REQUEST_SUPERSEDED,
                f"a password was set after this expire was issued ({when}): not expired again",
            )
        if not isinstance(command, ResetPassword | ChangePassword):
            return None
        refused = await asyncio.to_thread(self._directory.refusal, command, account)
        if refused is not None:
            return refused
        in_effect = await asyncio.to_thread(
            self._directory.password_in_effect, account, command.new_password
        )
        if in_effect:
            return Outcome(
                Reason.APPLIED,
                f"the requested password is in effect ({when}): applied by an earlier delivery",
            )
        if in_effect is False and isinstance(command, ChangePassword):
            return None
        if in_effect is False and last_set is not None:
            return Outcome(
                Reason.REQUEST_SUPERSEDED,
                f"another password is in effect, set at about or after this request ({when}); "
                "not written, so as not to undo it",
            )
        return Outcome(
            Reason.REQUEST_OUTCOME_UNKNOWN,
            f"a password may have been set at about or after this request ({when}) and the DC "
            "could not say whether it is this request's without risk (a bind that could lock "
            "the account out, or pwdLastSet 0, which has no time); nothing written",
        )

    def _record(
        self, message: RequestMessage, outcome: Outcome, account: Account | None = None
    ) -> Answered:
        answered = Answered(outcome, account)
        with tracing.stage(Stage.JOURNAL_OUTCOME):
            self._journal.finish(
                message.id,
                self._outcome_message(message, answered, 0).to_payload(),
                account.guid if account else None,
            )
        return answered

    def _outcome_message(
        self, message: RequestMessage, answered: Answered, duration_ms: int
    ) -> OutcomeMessage:
        outcome = answered.outcome
        return OutcomeMessage(
            request_id=message.id,
            domain=message.domain,
            relay=self.relay_id,
            reason=outcome.reason,
            message=outcome.message[:2000],
            detail=outcome.detail[:2000],
            completed_at=int(self._clock()),
            duration_ms=duration_ms,
            account=answered.account,
        )

    @contextlib.asynccontextmanager
    async def _keep_locked(self, delivery: Delivery) -> AsyncIterator[None]:
        """Renew the message lock every half lock duration while the request is processed.

        Timed on this host's monotonic clock from when the message was received, never by
        comparing the service's locked-until with the local wall clock: a clock ahead of the
        service's by more than the time left would renew in a tight loop, one behind it too late
        (https://github.com/Azure/azure-service-bus-dotnet/issues/688).
        """

        async def renew() -> None:
            half = delivery.lock_seconds / 2
            renew_at = delivery.received_at + half
            while True:
                await asyncio.sleep(max(0.0, renew_at - time.monotonic()))
                asked = time.monotonic()
                try:
                    await self._transport.renew_lock(delivery)
                except TransportError as exc:
                    log.warning(
                        "lock_renewal_failed",
                        extra={"message_id": delivery.message_id, "error": str(exc)},
                    )
                    return
                renew_at = asked + half

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    @contextlib.asynccontextmanager
    async def _one_write_per_account(
        self, message: RequestMessage, seen: Entry | None
    ) -> AsyncIterator[Account | Outcome]:
        """Resolve the request's user and hold that account's lock (by objectGUID) meanwhile;
        the outcome instead when there is no one account. An entry a crash left APPLYING is
        resolved by the account it recorded, not by its name again (a rename since could find
        another). The resolution runs under a lock on the name as given, handed over once the
        account's lock is held, so requests naming a user alike keep their order of arrival."""
        recorded = seen.account if seen is not None else None
        user: str | Account = Account(recorded) if recorded else message.user
        held: str | None = None
        async with self._name_locks.held(recorded or upn_key(message.user)):
            with tracing.stage(Stage.RESOLVE):
                found = await asyncio.to_thread(self._directory.resolve, user)
            if isinstance(found, Account):
                with tracing.stage(Stage.USER_LOCK):
                    await self._user_locks.acquire(found.guid)
                held = found.guid
        try:
            yield found
        finally:
            if held is not None:
                self._user_locks.release(held)

    async def _answer(
        self, delivery: Delivery, message: RequestMessage, answered: Answered, started: float
    ) -> Settled:
        outcome = answered.outcome
        tracing.annotate({"writeback.reason": outcome.reason.value})
        duration = int((self._clock() - started) * 1000)
        log.info(
            "request_handled",
            extra={
                "request": message.id,
                "operation": message.operation.value,
                "reason": outcome.reason.value,
                "delivery": delivery.delivery_count,
                "duration_ms": duration,
                # The caller's W3C trace: the cloud's telemetry and these logs join on it.
                "trace_id": message.traceparent.split("-")[1] if message.traceparent else None,
            },
        )
        try:
            with tracing.stage(Stage.OUTCOME_SEND):
                token = sealing.sign_outcome(
                    self._outcome_message(message, answered, duration), self._keys.signing
                )
                # Where the signed request says (the sending cloud instance's session), else on
                # the request's own session; never the message's unsigned ReplyToSessionId.
                await self._transport.send_outcome(
                    message.id, token, message.reply_session or message.id
                )
        except TransportError as exc:
            # Journaled: the redelivered message resends this very outcome.
            log.warning("outcome_not_sent", extra={"request": message.id, "error": str(exc)})
            return Settled.LEFT
        with tracing.stage(Stage.SETTLE):
            return await self._settle(self._transport.complete(delivery), Settled.COMPLETED)

    async def _dead_letter(self, delivery: Delivery, exc: ProtocolError) -> Settled:
        log.warning(
            "request_refused",
            extra={"message_id": delivery.message_id, "reason": exc.reason, "problem": str(exc)},
        )
        return await self._settle(
            self._transport.dead_letter(delivery, exc.reason, str(exc)[:1000]),
            Settled.DEAD_LETTERED,
        )

    async def _settle(self, settling: object, result: Settled) -> Settled:
        try:
            await settling  # type: ignore[misc]
        except TransportError as exc:
            log.warning("settle_failed", extra={"result": result.value, "error": str(exc)})
            return Settled.LEFT
        return result
