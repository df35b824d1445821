"""The writeback service: what the API and the triggers do, with no HTTP and no Azure in sight.

`submit` routes a validated submission to its domain (by the account reference that names the user:
`writeback.routing`, with the NetBIOS names and domain SIDs the relays announce), fails fast when no
relay of that domain has sent a heartbeat within three intervals, seals the passwords to every relay
key of the domain and signs the request (naming the instance's reply session, where the relay
answers), records it as pending in the audit trail, sends it and waits for the relay's signed
outcome until the wait ends. The outcome is verified (signed by a key of the relay it names, for
this very request) and recorded before the caller is answered; a body that does not verify is logged
as a security event and skipped, and the wait goes on for the real outcome. An outcome that names
the account the relay resolved files the record under that account too and links the account's names
to it (the account index, `writeback.cloud.accounts`, written after the answer), so the account's
history is found by any of its names. A request that got no answer in time stays pending: `status`
looks for its outcome again later, on any instance (the transport keeps a late outcome on the
request's own session; if the instance that sent it is gone, the sweeper in `writeback.cloud.sweep`
moves it there). The service never holds a password longer than the sealing takes and never writes
one anywhere: the audit record has no field that could hold it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from joserfc.jwk import ECKey, KeySet

from writeback import sealing, tracing
from writeback.cloud import signals
from writeback.cloud.accounts import account_names
from writeback.cloud.agents import AgentRecord, AgentRegistry
from writeback.cloud.audit import AuditRecord, AuditTrail
from writeback.cloud.relays import Relays
from writeback.cloud.submissions import InvalidInput, Submission, user_reference
from writeback.errors import ProtocolError, TransportError
from writeback.protocol import Reason
from writeback.protocol.accounts import Account, AccountRef, AnchorKind
from writeback.protocol.commands import WITHOUT_SECRETS
from writeback.protocol.messages import OutcomeMessage, RequestMessage
from writeback.routing import DomainMismatch, DomainRequired, Routes, UnknownDomain
from writeback.tracing import Stage
from writeback.transport import CloudTransport

log = logging.getLogger(__name__)

OUTCOME_RETENTION_SECONDS = 300  # outcomes queue TTL: after this, a pending request is lost


class Keys(Protocol):
    """The cloud's signing key and each domain's relay public keys (see cloud.secrets)."""

    async def signing_key(self) -> ECKey: ...

    async def relay_keys(self, domain: str) -> KeySet: ...


class Caller(Protocol):
    """Who asked: for the audit trail (see cloud.auth.Caller)."""

    @property
    def kind(self) -> str: ...

    @property
    def identity(self) -> str: ...


@dataclass(frozen=True)
class ServiceSettings:
    wait_seconds: float = 25.0  # how long a caller waits for the outcome
    lifetime_seconds: int = 60  # how long a relay may still apply a request
    heartbeat_interval: float = 60.0  # a domain is offline after three missed heartbeats
    poll_wait_seconds: float = 1.0  # how long a status read looks for a late outcome


@dataclass(frozen=True)
class Answer:
    """What the caller is told: one outcome, or that it is still pending."""

    request_id: str
    state: str  # "completed" or "pending"
    status: str | None
    reason: str | None
    message: str | None
    duration_ms: int | None
    relay: str | None = None

    @classmethod
    def of(cls, record: AuditRecord) -> Answer:
        done = record.status != "pending"
        return cls(
            request_id=record.request_id,
            state="completed" if done else "pending",
            status=record.status if done else None,
            reason=record.reason,
            message=record.message,
            duration_ms=record.duration_ms,
            relay=record.relay,
        )


_NO_DOMAIN = {
    AnchorKind.UPN: "its UPN suffix belongs to no writeback domain",
    AnchorKind.SID: "its domain SID belongs to no writeback domain (as its relays announce it)",
    AnchorKind.SAM: "its NetBIOS domain name belongs to no writeback domain (as its relays "
    "announce it)",
    AnchorKind.GUID: "names no domain",
}
HISTORY_HOURS = 168  # how far back a user's history reaches: a week
HISTORY_LIMIT = 100  # the most entries one history answer holds
# The outcomes of requests that never reached a relay: nothing can have been written.
NOT_SENT = frozenset({Reason.AGENT_UNAVAILABLE.value, Reason.TRANSPORT_UNAVAILABLE.value})


def resendable(previous: AuditRecord, retry: AuditRecord) -> bool:
    """Whether `retry` may reuse the request id of `previous`: only the same caller, for the same
    user and operation, after an outcome that says the request was never sent, and only while
    the first request is still valid (its expiry stays: a retry never renews it, and a resend
    always falls within Service Bus duplicate detection's window, 10 min, should a send that
    failed have reached it after all). Anything else with a used id is a duplicate."""
    still_valid = retry.received_at < (previous.expires_at or previous.received_at)
    return (
        still_valid
        and previous.reason in NOT_SENT
        and (
            previous.caller_kind,
            previous.caller,
            previous.user.casefold(),
            previous.operation,
        )
        == (retry.caller_kind, retry.caller, retry.user.casefold(), retry.operation)
    )


class WritebackService:
    """The cloud side's use cases; adapters come in through the constructor (see bootstrap)."""

    def __init__(
        self,
        *,
        routes: Routes,
        transport: CloudTransport,
        keys: Keys,
        audit: AuditTrail,
        agents: AgentRegistry,
        settings: ServiceSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = routes
        self.transport = transport
        self.keys = keys
        self.audit = audit
        self.agents = agents
        self.settings = settings or ServiceSettings()
        self.clock = clock
        self.relays = Relays(
            routes=routes, keys=keys, agents=agents,
            heartbeat_interval=self.settings.heartbeat_interval,
            clock=lambda: self.clock(),  # noqa: PLW0108 - follows a clock replaced later
        )  # fmt: skip

    # -- writes ---------------------------------------------------------------------------------
    async def submit(
        self, submission: Submission, caller: Caller, *, source: str = "api", trace_id: str | None
        = None, traceparent: str | None = None
    ) -> Answer:  # fmt: skip
        """Send one writeback request and wait for its outcome (or answer pending)."""
        started = self.clock()
        with tracing.stage(Stage.ROUTE):
            domain = await self.route(submission.user, submission.domain)
        request_id = submission.request_id or str(uuid.uuid4())
        issued = int(started)
        expires = submission.expires_at or issued + self.settings.lifetime_seconds
        record = AuditRecord(
            request_id=request_id,
            received_at=started,
            domain=domain,
            user=submission.user,
            operation=submission.operation.value,
            initiator=submission.initiator.value if submission.initiator else None,
            caller=caller.identity,
            caller_kind=caller.kind,
            source=source,
            unlock=submission.unlock,
            force_change_at_next_logon=submission.force_change_at_next_logon,
            sealed_by_caller=submission.sealed_by_caller,
            status="pending",
            reason=None,
            message=None,
            detail=None,
            relay=None,
            completed_at=None,
            duration_ms=None,
            trace_id=trace_id,
            expires_at=float(expires),
            # Where the outcome will arrive: if this instance dies first, the sweeper adopts it.
            reply_session=self.transport.reply_session,
        )
        if submission.request_id:
            previous = await self.audit.get(request_id)
            if previous is not None and not resendable(previous, record):
                raise InvalidInput("requestId", "was used before", "request.duplicate")
            if previous is not None and previous.expires_at is not None:
                # Never sent (no relay alive, Service Bus down): the same caller may try the same
                # request again. It keeps its first arrival and expiry: a retry cannot renew it.
                expires = int(previous.expires_at)
                record = dataclasses.replace(
                    record, received_at=previous.received_at, expires_at=previous.expires_at
                )

        with tracing.stage(Stage.HEARTBEAT):
            alive = await self.relays.alive(domain)
        if not alive:
            return await self._finish(record, Reason.AGENT_UNAVAILABLE, "no relay heartbeat")
        message = RequestMessage(
            id=request_id,
            domain=domain,
            operation=submission.operation,
            user=submission.user,
            issued_at=issued,
            expires_at=expires,
            initiator=submission.initiator,
            unlock=submission.unlock,
            force_change_at_next_logon=submission.force_change_at_next_logon,
            traceparent=traceparent,
            # Where this instance listens for outcomes; signed, so no one else can redirect it.
            reply_session=self.transport.reply_session,
        )
        with tracing.stage(Stage.SEAL):
            relay_keys = await self.keys.relay_keys(domain)
            token = await self._seal(message, submission, relay_keys)
        with tracing.stage(Stage.AUDIT_PENDING):
            await self.audit.record(record)
        try:
            with tracing.stage(Stage.SEND):
                await self.transport.send_request(domain, request_id, token, float(expires))
        except TransportError as exc:
            log.warning("request not sent", extra={"request_id": request_id, "error": str(exc)})
            return await self._finish(record, Reason.TRANSPORT_UNAVAILABLE, str(exc))
        log.info(
            "request sent",
            extra={"request_id": request_id, "domain": domain, "operation": message.operation},
        )
        deadline = min(started + self.settings.wait_seconds, float(expires))
        return await self._collect(record, relay_keys, deadline, timeout_is_final=False)

    async def route(self, user: str, domain: str | None = None) -> str:
        """The domain of the account `user` names (canonical spelling) and the caller's `domain`;
        InvalidInput (`user.unknown_domain`, `user.domain_required`, `request.invalid` naming
        `domain`) when there is none or they disagree."""
        ref = AccountRef.parse(user)
        if domain is not None:
            domain = self.domain(domain, status_reason="request.invalid")
        announced = ref.kind in (AnchorKind.SID, AnchorKind.SAM)  # routed by the relays' names
        try:
            try:
                names = await self.relays.names() if announced else None
                return self.routes.route_account(ref, names, domain)
            except UnknownDomain:
                if not announced:
                    raise
                # A relay may have announced its domain since the names were read.
                names = await self.relays.names(refresh=True)
                return self.routes.route_account(ref, names, domain)
        except UnknownDomain:
            raise InvalidInput("user", _NO_DOMAIN[ref.kind], "user.unknown_domain") from None
        except DomainRequired:
            raise InvalidInput(
                "domain",
                "is required: the user is named by a GUID, which names no domain, and several "
                "domains are served",
                "user.domain_required",
            ) from None
        except DomainMismatch as exc:
            raise InvalidInput("domain", f"is not the user's domain ({exc.args[0]} is)") from None

    async def _seal(
        self, message: RequestMessage, submission: Submission, relay_keys: KeySet
    ) -> str:
        signing_key = await self.keys.signing_key()
        if message.operation in WITHOUT_SECRETS:
            return sealing.seal_request(message, None, relay_keys, signing_key)
        if submission.sealed is None:
            return sealing.seal_request(message, submission.secrets, relay_keys, signing_key)
        # Sealed by the caller: it must be sealed to a current key and bound to this request,
        # or the relay would refuse it after a round trip; say so now, naming the field.
        kids = {key.kid for key in sealing.keys_for(relay_keys, "enc")}
        recipients = submission.sealed.get("recipients")
        named = {sealing.recipient_kid(r) for r in recipients} if isinstance(
            recipients, list
        ) else set()  # fmt: skip
        if not kids & named:
            raise InvalidInput(
                "sealedPassword", "is sealed to no current relay key of the domain; fetch the keys"
            )
        if not sealing.bound_to(submission.sealed, message.binding()):
            raise InvalidInput(
                "sealedPassword",
                "is bound to another request (requestId, user, operation and expiresAt must "
                "match what was sealed)",
            )
        sealed = dataclasses.replace(message, sealed=submission.sealed)
        return sealing.sign(sealed.to_payload(), signing_key, sealing.REQUEST_TYPE)

    async def _collect(
        self, record: AuditRecord, relay_keys: KeySet, deadline: float, *, timeout_is_final: bool
    ) -> Answer:
        verified: dict[str, OutcomeMessage] = {}

        def accept(body: str) -> bool:
            outcome = self._verified(record, body, relay_keys)
            if outcome is not None:
                verified[body] = outcome
            return outcome is not None

        looked = True
        try:
            with tracing.stage(Stage.OUTCOME):
                body = await self.transport.wait_for_outcome(record.request_id, deadline, accept)
        except TransportError as exc:
            log.warning(
                "outcome not received", extra={"request_id": record.request_id, "error": str(exc)}
            )
            # Not a look at the session (Service Bus down, or another reader holds it): never a
            # reason to end the request as agent.timeout, which could replace the outcome that
            # other reader is recording.
            body, looked = None, False
        if body is None:
            if timeout_is_final and looked:
                return await self._finish(record, Reason.AGENT_TIMEOUT, "no outcome arrived")
            answer = Answer.of(record)
            return dataclasses.replace(
                answer,
                reason=Reason.AGENT_TIMEOUT.value,
                message=Reason.AGENT_TIMEOUT.message,
                duration_ms=self._elapsed(record),
            )
        outcome = verified[body]
        done = dataclasses.replace(
            record,
            status=outcome.status.value,
            reason=outcome.reason.value,
            message=outcome.message,
            detail=outcome.detail,
            relay=outcome.relay,
            completed_at=self.clock(),
            duration_ms=self._elapsed(record),
            account=outcome.account.guid if outcome.account else record.account,
        )
        # The record before the answer; the account index is written after it (the audit
        # trail's reads wait for it), and a failure of either is only logged.
        await self._record_quietly(done)
        if outcome.account:
            await self._link_quietly(record, outcome.account)
        log.info(
            "request completed",
            extra={
                "request_id": done.request_id,
                "status": done.status,
                "reason": done.reason,
                "relay": done.relay,
                "duration_ms": done.duration_ms,
            },
        )
        return Answer.of(done)

    @staticmethod
    def _verified(record: AuditRecord, body: str, relay_keys: KeySet) -> OutcomeMessage | None:
        """The outcome in `body` if a relay key of the request's domain signed it for this very
        request; None otherwise, logged as a security event. Whoever can send to the outcomes
        queue can put anything on a reply session, so such a body is never taken as the
        outcome, nor as a reason to stop waiting for the real one."""
        try:
            outcome = sealing.verify_outcome(body, relay_keys)
            if outcome.request_id != record.request_id or outcome.domain != record.domain:
                raise ProtocolError(
                    Reason.OUTCOME_INVALID_SIGNATURE.value, "answers another request", "requestId"
                )
        except ProtocolError as exc:
            log.error(
                signals.OUTCOME_REFUSED.name,
                extra={"request_id": record.request_id, "error": str(exc), "security": True},
            )
            return None
        return outcome

    async def _finish(self, record: AuditRecord, reason: Reason, detail: str) -> Answer:
        done = dataclasses.replace(
            record,
            status=reason.status.value,
            reason=reason.value,
            message=reason.message,
            detail=detail,
            completed_at=self.clock(),
            duration_ms=self._elapsed(record),
        )
        await self._record_quietly(done)
        log.info(
            "request completed",
            extra={"request_id": done.request_id, "status": done.status, "reason": done.reason},
        )
        return Answer.of(done)

    async def _record_quietly(self, record: AuditRecord) -> None:
        # The directory may already be written: the caller must learn the outcome even if the
        # audit table is down; the failure is logged for an operator.
        try:
            with tracing.stage(Stage.AUDIT_FINAL, {"writeback.status": record.status}):
                await self.audit.record(record)
        except Exception as exc:
            log.error(
                "audit record not written",
                extra={"request_id": record.request_id, "error": type(exc).__name__},
            )

    async def _link_quietly(self, record: AuditRecord, account: Account) -> None:
        """Index the names the account was known by (the one the caller typed and the ones the
        relay found) under its GUID; like the record, never at the cost of the answer."""
        try:
            names = await self.relays.names()
            netbios = next((n for n, d in names.netbios.items() if d == record.domain), None)
            await self.audit.link(account.guid, account_names(account, record.user, netbios))
        except Exception as exc:
            log.error(
                "account index not written",
                extra={"request_id": record.request_id, "error": type(exc).__name__},
            )

    def _elapsed(self, record: AuditRecord) -> int:
        return int(1000 * (self.clock() - record.received_at))

    # -- reads ----------------------------------------------------------------------------------
    async def status(self, request_id: str) -> Answer | None:
        """A request's state; a pending one is looked for once more on its session."""
        record = await self.audit.get(request_id)
        if record is None or record.status != "pending":
            return None if record is None else Answer.of(record)
        now = self.clock()
        expires = record.expires_at or record.received_at + self.settings.lifetime_seconds
        final = now > expires + OUTCOME_RETENTION_SECONDS
        relay_keys = await self.keys.relay_keys(record.domain)
        return await self._collect(
            record, relay_keys, now + self.settings.poll_wait_seconds, timeout_is_final=final
        )

    async def history(self, user: str, hours: int) -> list[AuditRecord]:
        """The user's requests and drift records received in the last `hours` (1 to
        HISTORY_HOURS), newest first, at most HISTORY_LIMIT of them: what a helpdesk looks at
        when a user says their password did not work on-premises."""
        user = user_reference(user)
        if not 1 <= hours <= HISTORY_HOURS:
            raise InvalidInput("hours", f"must be a whole number from 1 to {HISTORY_HOURS}")
        now = self.clock()
        records = await self.audit.for_user(user, now - hours * 3600, now)
        records.sort(key=lambda record: record.received_at, reverse=True)
        return records[:HISTORY_LIMIT]

    def domain(self, name: str, *, status_reason: str = "domain.unknown") -> str:
        """A configured domain by name (InvalidInput naming `domain`, with `status_reason`,
        otherwise: domain.unknown, a 404, for a domain in the path)."""
        domain = name.lower()
        if domain not in self.routes.domains:
            raise InvalidInput("domain", "is not a writeback domain", status_reason)
        return domain

    async def encryption_keys(self, domain: str) -> dict[str, object]:
        """The public JWKS callers seal passwords to (encryption keys only)."""
        relay_keys = await self.keys.relay_keys(self.domain(domain))
        return {"keys": [key.as_dict(private=False) for key in sealing.keys_for(relay_keys, "enc")]}

    async def policy(self, domain: str) -> tuple[dict[str, object] | None, AgentRecord | None]:
        """The password rules the freshest relay of `domain` reported, and that relay."""
        relays = await self.agents.list(self.domain(domain))
        reported = [relay for relay in relays if relay.policy is not None]
        if not reported:
            return None, None
        newest = max(reported, key=lambda relay: relay.last_seen)
        return dict(newest.policy or {}), newest
