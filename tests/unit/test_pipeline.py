"""The relay's handling of one request, on the in-process transport and an in-memory directory."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, KeySet, RSAKey

from writeback import sealing
from writeback.protocol import Initiator, Operation, Outcome, Reason
from writeback.protocol.accounts import Account
from writeback.protocol.messages import OutcomeMessage, RequestMessage, Secrets
from writeback.relay.journal import Journal, State
from writeback.relay.pipeline import Pipeline, RelayKeys, Settled
from writeback.testing import FakeDirectory
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, Delivery, requests_queue
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig

DOMAIN = "corp.example.test"
USER = "alice@corp.example.test"
PASSWORD = "Pipeline-Pa55word!"


@dataclasses.dataclass(frozen=True)
class Keys:
    relay: RSAKey
    other_relay: RSAKey
    relay_sig: ECKey
    cloud: ECKey
    stranger: ECKey

    def public(self, *keys: Any) -> KeySet:
        return KeySet([type(k).import_key(k.as_dict(private=False)) for k in keys])


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        RSAKey.generate_key(3072, parameters={"kid": "relay-1.enc.a", "use": "enc"}),
        RSAKey.generate_key(3072, parameters={"kid": "relay-2.enc.a", "use": "enc"}),
        ECKey.generate_key("P-256", parameters={"kid": "relay-1.sig.a", "use": "sig"}),
        ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.a", "use": "sig"}),
        ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.evil", "use": "sig"}),
    )


class Default:
    """A marker: the World's own choice (its cloud's reply session)."""


DEFAULT = Default()


@dataclasses.dataclass
class World:
    broker: MemoryBroker
    cloud: InProcessCloud
    relay: InProcessRelay
    directory: FakeDirectory
    journal: Journal
    pipeline: Pipeline
    keys: Keys
    alice: Account

    @property
    def alice_last_set(self) -> datetime:
        return self.directory.last_set[self.alice.guid]

    @alice_last_set.setter
    def alice_last_set(self, when: datetime) -> None:
        """pwdLastSet of alice's account, as the DC holds it (by objectGUID)."""
        self.directory.last_set[self.alice.guid] = when

    @property
    def alice_password(self) -> str:
        return self.directory.passwords[self.alice.guid]

    @alice_password.setter
    def alice_password(self, password: str) -> None:
        """The password in effect for alice's account."""
        self.directory.passwords[self.alice.guid] = password

    def token(
        self,
        operation: Operation = Operation.RESET,
        *,
        request_id: str = "req-1",
        expires_in: int = 60,
        signer: ECKey | None = None,
        recipients: Any = None,
        user: str = USER,
        reply_session: str | Default | None = DEFAULT,
    ) -> str:
        now = int(time.time())
        message = RequestMessage(
            id=request_id,
            domain=DOMAIN,
            operation=operation,
            user=user,
            issued_at=now - 5,
            expires_at=now + expires_in,
            initiator=Initiator.ADMIN if operation is Operation.RESET else None,
            reply_session=(
                self.cloud.reply_session if isinstance(reply_session, Default) else reply_session
            ),
        )
        secrets = {
            Operation.RESET: Secrets(PASSWORD),
            Operation.CHANGE: Secrets(PASSWORD, "Old1!"),
            Operation.UNLOCK: None,
            Operation.EXPIRE: None,
        }[operation]
        return sealing.seal_request(
            message,
            secrets,
            recipients or self.keys.public(self.keys.relay),
            signer or self.keys.cloud,
        )

    async def send(self, token: str, request_id: str = "req-1") -> None:
        await self.cloud.send_request(DOMAIN, request_id, token, time.time() + 60)

    async def handle_next(self) -> Settled:
        [delivery] = await self.relay.receive(1, 2.0)
        return await self.pipeline.handle(delivery)

    async def outcome(self, request_id: str = "req-1") -> OutcomeMessage:
        token = await self.cloud.wait_for_outcome(request_id, time.time() + 2)
        assert token is not None, "no outcome was sent"
        return sealing.verify_outcome(token, self.keys.public(self.keys.relay_sig))

    def outcomes_on(self, session: str) -> list[tuple[str | None, str]]:
        """(CorrelationId, relay) of the outcomes waiting on one session of the outcomes queue."""
        found = self.broker.peek(OUTCOMES_QUEUE, 10, session_id=session)
        relay_keys = self.keys.public(self.keys.relay_sig)
        return [
            (m.correlation_id, sealing.verify_outcome(m.body.decode(), relay_keys).relay)
            for m in found
        ]

    def dead_letters(self) -> list[tuple[str | None, str | None]]:
        queue = f"{requests_queue(DOMAIN)}/$DeadLetterQueue"
        return [
            (m.dead_letter_reason, m.dead_letter_description) for m in self.broker.peek(queue, 10)
        ]


@pytest.fixture
async def world(keys: Keys, tmp_path: Path) -> AsyncIterator[World]:
    broker = MemoryBroker(
        [
            QueueConfig(
                requests_queue(DOMAIN),
                lock_duration=1.0,
                max_delivery_count=5,
                duplicate_detection_window=600,
            ),
            QueueConfig(OUTCOMES_QUEUE, requires_session=True, default_ttl=300),
            QueueConfig(HEARTBEATS_QUEUE),
        ]
    )
    relay = InProcessRelay(broker, DOMAIN)
    directory = FakeDirectory()
    alice = directory.add(USER, sam="alice")
    journal = Journal(tmp_path / "journal.sqlite3")
    pipeline = Pipeline(
        relay_id="relay-1",
        domain=DOMAIN,
        directory=directory,
        transport=relay,
        journal=journal,
        keys=RelayKeys(keys.public(keys.cloud), KeySet([keys.relay]), keys.relay_sig),
    )
    cloud = InProcessCloud(broker)
    yield World(broker, cloud, relay, directory, journal, pipeline, keys, alice)
    await cloud.close()
    journal.close()


class TestApplying:
    @pytest.mark.parametrize("operation", list(Operation))
    async def test_each_operation(self, world: World, operation: Operation) -> None:
        """Each operation is applied once, answered signed, journaled and completed."""
        await world.send(world.token(operation))
        assert await world.handle_next() is Settled.COMPLETED
        outcome = await world.outcome()
        assert (outcome.reason, outcome.relay, outcome.request_id) == (
            Reason.APPLIED,
            "relay-1",
            "req-1",
        )
        assert [c.operation for c in world.directory.applied] == [operation]
        entry = world.journal.get("req-1")
        assert entry is not None
        assert entry.state is State.APPLIED
        assert world.broker.stats(requests_queue(DOMAIN))["active"] == 0

    async def test_a_rejection_is_answered_and_completed(self, world: World) -> None:
        """A directory refusal reaches the caller with its reason and is not retried."""
        world.directory.outcomes.append(Outcome(Reason.POLICY_LENGTH, "5 < 8", "Too short."))
        await world.send(world.token())
        assert await world.handle_next() is Settled.COMPLETED
        outcome = await world.outcome()
        assert (outcome.reason, outcome.message, outcome.detail) == (
            Reason.POLICY_LENGTH,
            "Too short.",
            "5 < 8",
        )


class TestReplySession:
    async def test_answered_on_the_signed_reply_session(self, world: World) -> None:
        """The outcome goes to the reply session the signed request names, correlated by the
        request id, and reaches the cloud instance waiting there."""
        await world.send(world.token())
        assert await world.handle_next() is Settled.COMPLETED
        assert (await world.outcome()).request_id == "req-1"
        other = "cloud-0123456789abcdef0123456789abcdef"
        await world.send(world.token(request_id="req-2", reply_session=other), "req-2")
        assert await world.handle_next() is Settled.COMPLETED
        assert world.outcomes_on(other) == [("req-2", "relay-1")]
        assert world.outcomes_on("req-2") == []

    async def test_no_reply_session_answers_on_the_request_id(self, world: World) -> None:
        """A request that names no reply session is answered on its own session (its id)."""
        await world.send(world.token(reply_session=None))
        assert await world.handle_next() is Settled.COMPLETED
        assert world.outcomes_on("req-1") == [("req-1", "relay-1")]

    @pytest.mark.parametrize("signed", ["cloud-signed", None])
    async def test_the_unsigned_reply_to_session_is_ignored(
        self, world: World, signed: str | None
    ) -> None:
        """A ReplyToSessionId changed on the way (it is not signed) never redirects the
        outcome: it goes where the signed request says, or to the request's id."""
        await world.send(world.token(reply_session=signed))
        [delivery] = await world.relay.receive(1, 2.0)
        redirected = dataclasses.replace(delivery, reply_to_session_id="attacker")
        assert await world.pipeline.handle(redirected) is Settled.COMPLETED
        assert world.outcomes_on("attacker") == []
        assert world.outcomes_on(signed or "req-1") == [("req-1", "relay-1")]

    async def test_a_duplicate_is_answered_on_the_reply_session(self, world: World) -> None:
        """The recorded outcome sent again for a redelivered request goes to its reply session."""
        other = "cloud-other"
        token = world.token(reply_session=other)
        await world.send(token)
        await world.handle_next()
        await world.send(token, "req-1-again")  # a new MessageId slips past duplicate detection
        [delivery] = await world.relay.receive(1, 2.0)
        redelivered = dataclasses.replace(delivery, message_id="req-1")
        assert await world.pipeline.handle(redelivered) is Settled.COMPLETED
        assert world.outcomes_on(other) == [("req-1", "relay-1"), ("req-1", "relay-1")]
        assert len(world.directory.applied) == 1


class TestExactlyOnce:
    async def test_a_duplicate_gets_the_recorded_outcome(self, world: World) -> None:
        """A request delivered again after it was answered is answered again, not re-applied."""
        token = world.token()
        await world.send(token)
        await world.handle_next()
        await world.outcome()
        await world.send(token, "req-1-again")  # a new MessageId slips past duplicate detection
        [delivery] = await world.relay.receive(1, 2.0)
        redelivered = dataclasses.replace(delivery, message_id="req-1")
        assert await world.pipeline.handle(redelivered) is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.APPLIED
        assert len(world.directory.applied) == 1

    async def test_a_late_duplicate_still_gets_the_recorded_outcome(self, world: World) -> None:
        """A request answered, then delivered again after its expiry (its answer was lost), gets
        its recorded outcome, not request.expired, and is not applied again."""
        token = world.token()
        await world.send(token)
        await world.handle_next()
        await world.outcome()
        await world.send(token, "req-1-again")
        [delivery] = await world.relay.receive(1, 2.0)
        redelivered = dataclasses.replace(delivery, message_id="req-1")
        world.pipeline._clock = lambda: time.time() + 3600  # long after the request's expiry
        assert await world.pipeline.handle(redelivered) is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.APPLIED
        assert len(world.directory.applied) == 1

    async def test_crash_after_the_write_reports_applied(self, world: World) -> None:
        """Journal APPLYING, pwdLastSet after it, and the DC confirms the requested password is
        in effect: the write happened; it is reported applied and not repeated."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_last_set = datetime.now(UTC)  # AD took the write before the crash
        world.alice_password = PASSWORD
        await world.send(world.token())
        assert await world.handle_next() is Settled.COMPLETED
        outcome = await world.outcome()
        assert outcome.reason is Reason.APPLIED
        assert "in effect" in outcome.detail
        assert world.directory.applied == []

    async def test_crash_path_never_claims_a_write_that_another_made(self, world: World) -> None:
        """Journal APPLYING, pwdLastSet after it, but another password is in effect (a newer
        write, not this request's): superseded, not applied, and nothing written over it."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_last_set = datetime.now(UTC)
        world.alice_password = "Someone-Elses-Pa55!"
        await world.send(world.token())
        await world.handle_next()
        outcome = await world.outcome()
        assert outcome.reason is Reason.REQUEST_SUPERSEDED
        assert world.directory.applied == []

    async def test_a_reset_over_pwdlastset_zero_is_not_guessed(self, world: World) -> None:
        """Journal APPLYING, pwdLastSet 0 (must change: it has no time) and another password in
        effect: a helpdesk's must-change reset may have come after this one, so nothing is
        written over it and the answer is request.outcome_unknown."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_password = "Helpdesk-Must-Change-1!"
        await world.send(world.token())
        await world.handle_next()
        assert (await world.outcome()).reason is Reason.REQUEST_OUTCOME_UNKNOWN
        assert world.directory.applied == []

    async def test_unverifiable_is_said_honestly(self, world: World) -> None:
        """When the DC cannot say which password is in effect without risking a lockout, the
        answer is request.outcome_unknown: never applied by inference, nothing written."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_last_set = datetime.now(UTC)
        world.alice_password = PASSWORD
        world.directory.verifiable = False
        await world.send(world.token())
        await world.handle_next()
        assert (await world.outcome()).reason is Reason.REQUEST_OUTCOME_UNKNOWN
        assert world.directory.applied == []

    async def test_crash_before_the_write_applies_it(self, world: World) -> None:
        """Journal APPLYING but pwdLastSet older: AD never got it, so it is applied now."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_last_set = datetime.fromtimestamp(time.time() - 86400, UTC)
        await world.send(world.token())
        await world.handle_next()
        assert (await world.outcome()).reason is Reason.APPLIED
        assert len(world.directory.applied) == 1

    async def test_another_relays_write_is_recognised(self, world: World) -> None:
        """Redelivered, unknown to this journal, AD changed since issue and the requested
        password is the one in effect: reported applied, not written again."""
        world.alice_last_set = datetime.now(UTC)  # the relay that died wrote it
        world.alice_password = PASSWORD
        await world.send(world.token())
        [delivery] = await world.relay.receive(1, 2.0)
        redelivered = dataclasses.replace(delivery, delivery_count=2)
        assert await world.pipeline.handle(redelivered) is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.APPLIED
        assert world.directory.applied == []

    async def test_a_change_abandoned_by_a_listen_holder_is_applied_not_claimed(
        self, world: World
    ) -> None:
        """The issue's case: a helpdesk reset, then the user's change within two minutes, which
        a holder of Listen received and abandoned. Redelivered, its password is not in effect
        (the helpdesk's is): it is applied now, with the DC checking the old password, never
        reported applied while AD keeps the helpdesk's password."""
        world.alice_last_set = datetime.now(UTC)  # the helpdesk's reset, just before
        world.alice_password = "Helpdesk-Pa55word!"
        await world.send(world.token(Operation.CHANGE))
        [delivery] = await world.relay.receive(1, 2.0)
        redelivered = dataclasses.replace(delivery, delivery_count=2)  # the abandon counted
        assert await world.pipeline.handle(redelivered) is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.APPLIED
        assert [c.operation for c in world.directory.applied] == [Operation.CHANGE]
        assert world.alice_password == PASSWORD

    async def test_a_first_delivery_is_always_applied(self, world: World) -> None:
        """On a first delivery a recent pwdLastSet (the user changed it) never skips the write."""
        world.alice_last_set = datetime.now(UTC)
        await world.send(world.token())
        await world.handle_next()
        assert len(world.directory.applied) == 1

    async def test_a_request_issued_in_the_future_is_answered_not_applied(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A relay whose clock is 10 minutes behind the cloud's: the signed request is answered
        request.malformed naming the clock, nothing is applied or journaled, so the same
        request can be applied once the clocks agree."""
        await world.send(world.token())
        world.pipeline._clock = lambda: time.time() - 600
        assert await world.handle_next() is Settled.COMPLETED
        outcome = await world.outcome()
        assert outcome.reason is Reason.REQUEST_MALFORMED
        assert "ahead of this relay's clock" in outcome.detail
        assert world.directory.applied == []
        assert world.journal.get("req-1") is None
        assert "request_from_the_future" in caplog.text

    async def test_wrong_current_passwords_are_throttled_before_the_directory(
        self, world: World
    ) -> None:
        """Five changes with a wrong current password reach the DC; the sixth for the same
        user is answered account.throttled and journaled without touching the DC."""
        world.directory.outcomes.extend([Outcome(Reason.OLD_PASSWORD_MISMATCH)] * 5)
        for n in range(6):
            request_id = f"req-wrong-{n}"
            await world.send(world.token(Operation.CHANGE, request_id=request_id), request_id)
            assert await world.handle_next() is Settled.COMPLETED
        last = await world.outcome("req-wrong-5")
        assert last.reason is Reason.ACCOUNT_THROTTLED
        assert last.message.startswith("Too many attempts with a wrong current password.")
        assert len(world.directory.applied) == 5
        entry = world.journal.get("req-wrong-5")
        assert entry is not None
        assert entry.state is State.REJECTED

    async def test_a_change_ad_took_before_a_crash_is_not_throttled(self, world: World) -> None:
        """Journal APPLYING and the changed password in effect: the change is reported applied
        even when wrong guesses meanwhile reached the limit (recovery comes before the
        throttle)."""
        world.directory.outcomes.extend([Outcome(Reason.OLD_PASSWORD_MISMATCH)] * 5)
        for n in range(5):
            request_id = f"req-guess-{n}"
            await world.send(world.token(Operation.CHANGE, request_id=request_id), request_id)
            await world.handle_next()
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="change", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_last_set = datetime.now(UTC)
        world.alice_password = PASSWORD
        await world.send(world.token(Operation.CHANGE))
        assert await world.handle_next() is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.APPLIED

    async def test_an_expire_redelivered_after_a_new_password_is_superseded(
        self, world: World
    ) -> None:
        """An expire delivered again when a password was set after it was issued: writing
        pwdLastSet = 0 again would make the user change twice (or expire a newer password), so
        it is superseded, and nothing is written."""
        world.alice_last_set = datetime.now(UTC)  # a password set after the expire
        await world.send(world.token(Operation.EXPIRE))
        [delivery] = await world.relay.receive(1, 2.0)
        redelivered = dataclasses.replace(delivery, delivery_count=2)
        assert await world.pipeline.handle(redelivered) is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.REQUEST_SUPERSEDED
        assert world.directory.applied == []

    async def test_an_expire_left_applying_is_written_again(self, world: World) -> None:
        """pwdLastSet = 0 reads as never set: an expire a crash left APPLYING is simply written
        again (it is idempotent), and the fake directory shows the must-change state."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="expire", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1")
        world.alice_last_set = datetime.fromtimestamp(time.time() - 86400, UTC)
        await world.send(world.token(Operation.EXPIRE))
        assert await world.handle_next() is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.APPLIED
        assert [c.operation for c in world.directory.applied] == [Operation.EXPIRE]
        assert world.directory.password_last_set(world.alice) is None

    async def test_one_write_per_user_at_a_time(self, world: World) -> None:
        """Two requests for one user in parallel never overlap in the directory."""
        world.directory.delay = 0.2
        for request_id in ("req-a", "req-b"):
            await world.send(world.token(request_id=request_id), request_id)
        deliveries = await world.relay.receive(2, 2.0)
        results = await asyncio.gather(*(world.pipeline.handle(d) for d in deliveries))
        assert results == [Settled.COMPLETED, Settled.COMPLETED]
        assert (len(world.directory.applied), world.directory.overlaps) == (2, 0)

    async def test_the_lock_is_renewed_during_a_slow_write(self, world: World) -> None:
        """A write longer than the lock does not lose the message to redelivery."""
        world.directory.delay = 2.5  # the queue's lock lasts 1 s
        await world.send(world.token())
        assert await world.handle_next() is Settled.COMPLETED
        assert world.broker.stats(requests_queue(DOMAIN))["active"] == 0

    async def test_the_lock_is_renewed_on_the_monotonic_clock(self, world: World) -> None:
        """A relay whose clock is 5 s ahead of the broker's (longer than the 1 s lock) renews
        about twice a second during a 2.5 s write, not in a tight loop, and completes."""
        world.directory.delay = 2.5
        world.pipeline._clock = lambda: time.time() + 5
        renewals = 0
        renew = world.relay.renew_lock

        async def counted(delivery: Delivery) -> float:
            nonlocal renewals
            renewals += 1
            return await renew(delivery)

        world.relay.renew_lock = counted  # type: ignore[method-assign]
        await world.send(world.token())
        assert await world.handle_next() is Settled.COMPLETED
        assert 3 <= renewals <= 7


class TestRefusals:
    async def test_forged_signature_is_dead_lettered(self, world: World) -> None:
        """A request signed by an unknown key is dead-lettered, never applied nor answered."""
        await world.send(world.token(signer=world.keys.stranger))
        assert await world.handle_next() is Settled.DEAD_LETTERED
        assert world.dead_letters()[0][0] == "request.invalid_signature"
        assert world.directory.applied == []

    async def test_tampered_message_is_dead_lettered(self, world: World) -> None:
        """One changed character in the signed request makes it a dead letter."""
        token = world.token()
        header, payload, signature = token.split(".")
        tampered = ".".join(
            [header, payload[:-4] + ("AAAA" if payload[-4:] != "AAAA" else "BBBB"), signature]
        )
        await world.send(tampered)
        assert await world.handle_next() is Settled.DEAD_LETTERED
        assert world.directory.applied == []

    async def test_message_id_must_be_the_signed_id(self, world: World) -> None:
        """A validly signed request sent under another MessageId is refused as malformed."""
        await world.send(world.token(request_id="req-1"), "req-other")
        assert await world.handle_next() is Settled.DEAD_LETTERED
        assert world.dead_letters()[0] == (
            "request.malformed",
            "id: the MessageId is not the signed request id",
        )

    async def test_expired_is_answered(self, world: World) -> None:
        """A signed request that expired on the way is answered request.expired, not applied."""
        now = int(time.time())
        message = RequestMessage(
            id="req-1",
            domain=DOMAIN,
            operation=Operation.UNLOCK,
            user=USER,
            issued_at=now - 30,
            expires_at=now - 1,
            reply_session=world.cloud.reply_session,
        )
        await world.send(
            sealing.seal_request(
                message, None, world.keys.public(world.keys.relay), world.keys.cloud
            )
        )
        assert await world.handle_next() is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.REQUEST_EXPIRED
        assert world.directory.applied == []

    async def test_not_sealed_to_this_relay(self, world: World) -> None:
        """Secrets sealed only to another relay's key are answered undecryptable at once."""
        await world.send(world.token(recipients=world.keys.public(world.keys.other_relay)))
        assert await world.handle_next() is Settled.COMPLETED
        assert (await world.outcome()).reason is Reason.REQUEST_UNDECRYPTABLE
        assert world.directory.applied == []

    async def test_journal_failure_abandons(self, world: World) -> None:
        """If the journal cannot be written, nothing is applied and the message comes back."""
        world.journal.close()
        await world.send(world.token())
        assert await world.handle_next() is Settled.ABANDONED
        assert world.directory.applied == []


class TestNoSecrets:
    async def test_logs_hold_no_password(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Handling applied, refused and forged requests logs no password."""
        caplog.set_level(logging.DEBUG)
        await world.send(world.token())
        await world.handle_next()
        await world.send(world.token(Operation.CHANGE, request_id="req-2"), "req-2")
        await world.handle_next()
        await world.send(world.token(signer=world.keys.stranger, request_id="req-3"), "req-3")
        await world.handle_next()
        text = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
        assert caplog.records
        assert PASSWORD not in text
        assert "Old1!" not in text
        for entry in ("req-1", "req-2"):
            recorded = world.journal.get(entry)
            assert recorded is not None
            assert PASSWORD not in repr(recorded)


class TestOneIdentity:
    async def test_a_sid_and_a_upn_of_one_user_share_the_throttle(self, world: World) -> None:
        """Wrong current passwords sent by UPN, by SID, by GUID and as CORP\\alice count for one
        account: the sixth, whatever its spelling, is throttled without reaching the DC."""
        alice = world.alice
        names = [USER, alice.sid, alice.guid, "CORP\\alice", "\uff41lice@corp.example.test"]
        world.directory.outcomes.extend([Outcome(Reason.OLD_PASSWORD_MISMATCH)] * 5)
        for n, name in enumerate([*names, USER]):
            request_id = f"req-spelling-{n}"
            token = world.token(Operation.CHANGE, request_id=request_id, user=str(name))
            await world.send(token, request_id)
            assert await world.handle_next() is Settled.COMPLETED
        assert (await world.outcome("req-spelling-5")).reason is Reason.ACCOUNT_THROTTLED
        assert len(world.directory.applied) == 5

    async def test_the_outcome_carries_the_resolved_account(self, world: World) -> None:
        """An outcome for a found account names it (objectGUID, SID, UPN, sAMAccountName),
        also when it is a refusal, and the journal records its GUID."""
        world.directory.outcomes.append(Outcome(Reason.USER_PROTECTED))
        await world.send(world.token(user=str(world.alice.sid)))
        await world.handle_next()
        outcome = await world.outcome()
        assert outcome.reason is Reason.USER_PROTECTED
        assert outcome.account == world.alice
        entry = world.journal.get("req-1")
        assert entry is not None
        assert entry.account == world.alice.guid

    async def test_no_account_for_an_unknown_user(self, world: World) -> None:
        """A user no account matches is user.not_found with no account, and nothing written."""
        await world.send(world.token(user="S-1-5-21-1-2-3-999"))
        await world.handle_next()
        outcome = await world.outcome()
        assert (outcome.reason, outcome.account) == (Reason.USER_NOT_FOUND, None)
        assert world.directory.applied == []

    async def test_a_duplicate_gets_the_account_again(self, world: World) -> None:
        """The recorded outcome a duplicate receives still names the account."""
        token = world.token(user="CORP\\alice")
        await world.send(token)
        await world.handle_next()
        assert (await world.outcome()).account == world.alice
        await world.send(token, "req-1-again")  # a new MessageId slips past duplicate detection
        [delivery] = await world.relay.receive(1, 2.0)
        await world.pipeline.handle(dataclasses.replace(delivery, message_id="req-1"))
        assert (await world.outcome()).account == world.alice
        assert len(world.directory.applied) == 1

    async def test_one_write_per_account_across_spellings(self, world: World) -> None:
        """Requests naming one user by UPN and by SID at once never overlap in the directory."""
        world.directory.delay = 0.2
        for request_id, name in (("req-a", USER), ("req-b", world.alice.sid)):
            await world.send(world.token(request_id=request_id, user=str(name)), request_id)
        deliveries = await world.relay.receive(2, 2.0)
        await asyncio.gather(*(world.pipeline.handle(d) for d in deliveries))
        assert (len(world.directory.applied), world.directory.overlaps) == (2, 0)

    async def test_a_lookup_the_dc_botches_after_a_crash_is_unknown_not_failed(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An entry left APPLYING whose account the DC now answers wrongly for (a protocol
        error, access denied) may have been written: the answer is request.outcome_unknown, as
        for any check of an earlier write that fails, never a final directory.error."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1", world.alice.guid)
        botched = Outcome(Reason.DIRECTORY_ERROR, "the DC answered something unusable")
        monkeypatch.setattr(world.directory, "resolve", lambda user: botched)
        await world.send(world.token())
        await world.handle_next()
        outcome = await world.outcome()
        assert outcome.reason is Reason.REQUEST_OUTCOME_UNKNOWN
        assert "unusable" in outcome.detail
        assert world.directory.applied == []

    async def test_crash_recovery_goes_by_the_recorded_account(self, world: World) -> None:
        """An entry left APPLYING to alice's account is resolved against that account even when
        its UPN now finds another (alice renamed, a new hire given her UPN): the password in
        effect is checked on alice's account, and the newcomer is never written."""
        world.journal.begin(
            "req-1", domain=DOMAIN, operation="reset", user=USER, expires_at=time.time() + 60
        )
        world.journal.applying("req-1", world.alice.guid)
        renamed = dataclasses.replace(world.alice, upn="alice.old@corp.example.test")
        world.directory.accounts[renamed.guid] = renamed
        newcomer = world.directory.add(USER)
        world.alice_last_set = datetime.now(UTC)
        world.alice_password = PASSWORD
        await world.send(world.token())
        await world.handle_next()
        outcome = await world.outcome()
        assert (outcome.reason, outcome.account) == (Reason.APPLIED, renamed)
        assert world.directory.applied == []
        assert newcomer.guid not in world.directory.passwords
        assert set(world.directory.resolved) == {world.alice.guid}
