"""The sweeper: outcomes left on the reply session of a cloud instance that is gone reach the
audit trail, verified, through another instance; a live instance's session is left to it.

Each test runs the real service, the in-memory queue model and a real relay on the in-memory
directory (tests.unit.cloud_stack); an instance "dies" by closing its transport, so nobody
listens on its reply session when the relay answers there."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import function_app
from tests import functions
from tests.unit.cloud_stack import DOMAIN, RELAY, Stack, call, cloud_stack, request
from writeback.cloud import http
from writeback.cloud.audit import AuditRecord
from writeback.cloud.bootstrap import Cloud
from writeback.cloud.service import OUTCOME_RETENTION_SECONDS
from writeback.cloud.sweep import HORIZON_SECONDS, SweepSummary, sweep
from writeback.cloud.telemetry import Telemetry
from writeback.errors import TransportUnavailable
from writeback.protocol.messages import MAX_LIFETIME_SECONDS
from writeback.transport import OUTCOMES_QUEUE

pytestmark = pytest.mark.timeout(60)
PASSWORD = "Sweep-Unit-Pa55word!"
WAIT = 0.3


async def until(condition: Callable[[], object], deadline: float = 10.0) -> None:
    """Return once `condition()` is true; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def pending(stack: Stack, received_at: float, **overrides: object) -> AuditRecord:
    """A pending request as `submit` records it, without sending anything."""
    record = AuditRecord(
        request_id=str(uuid.uuid4()),
        received_at=received_at,
        domain=DOMAIN,
        user=f"u{uuid.uuid4().hex[:10]}@{DOMAIN}",
        operation="reset",
        initiator="admin",
        caller="api-key",
        caller_kind="api-key",
        expires_at=received_at + 60,
        reply_session="cloud-" + uuid.uuid4().hex,
    )
    return dataclasses.replace(record, **overrides)  # type: ignore[arg-type]


async def submit_pending(stack: Stack) -> str:
    """A reset that the relay has not answered when its caller stops waiting (pending)."""
    await stack.start_relay()
    await stack.stop_relay()  # its heartbeat stays fresh: requests are sent, nobody applies them
    body = {
        "user": f"u{uuid.uuid4().hex[:10]}@{DOMAIN}",
        "newPassword": PASSWORD,
        "initiator": "admin",
    }
    status, answer = await call(function_app.reset_password, request("POST", "x", body))
    assert (status, answer["state"]) == (504, "pending")
    return str(answer["requestId"])


async def answered_while_gone(stack: Stack) -> tuple[str, str]:
    """A pending request whose instance died before the relay answered on its reply session:
    (request id, the dead session), the outcome waiting there with nobody listening."""
    request_id = await submit_pending(stack)
    gone = stack.service.transport
    await gone.close()
    await stack.start_relay()
    await until(lambda: stack.broker.peek(OUTCOMES_QUEUE, 1, session_id=gone.reply_session))
    return request_id, gone.reply_session


class TestGoneInstance:
    async def test_its_outcome_is_adopted_and_recorded(self, tmp_path: Path) -> None:
        """The request recorded the session it named; another instance's sweep adopts that
        session and records the relay's verified outcome; AD was written once."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            request_id, session = await answered_while_gone(stack)
            assert stack.audit.records[request_id].reply_session == session
            assert stack.audit.records[request_id].status == "pending"
            heir = stack.instance()
            try:
                summary = await sweep(heir)
            finally:
                await heir.transport.close()
            assert summary == SweepSummary(
                pending=1, adopted=(session,), moved=1, held=0, completed=1, failed=0
            )
            record = stack.audit.records[request_id]
            assert (record.status, record.reason, record.relay) == ("applied", "applied", RELAY)
            assert len(stack.directory.applied) == 1
            assert stack.broker.peek(OUTCOMES_QUEUE, 1, session_id=session) == []

    async def test_the_timer_trigger_runs_the_sweep(self, tmp_path: Path) -> None:
        """function_app's timer, as the host calls it (past due or not), sweeps with the
        instance it runs on."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            request_id, _ = await answered_while_gone(stack)
            heir = stack.instance()
            authenticator = http._cloud.authenticator if http._cloud else None
            assert authenticator is not None
            http.use(Cloud(heir, authenticator, Telemetry()))
            try:
                await functions.timer(function_app.sweep_replies, past_due=True)
            finally:
                await heir.transport.close()
            assert stack.audit.records[request_id].status == "applied"


class TestLiveInstance:
    async def test_its_session_is_left_and_the_request_still_completes(
        self, tmp_path: Path
    ) -> None:
        """A live instance forwards its own late outcome: the sweep leaves its session alone
        (held), still records the outcome, and the instance keeps answering its callers."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            request_id = await submit_pending(stack)
            await stack.start_relay()
            await until(lambda: stack.broker.peek(OUTCOMES_QUEUE, 1, session_id=request_id))
            heir = stack.instance()
            try:
                summary = await sweep(heir)
            finally:
                await heir.transport.close()
            assert (summary.adopted, summary.held, summary.completed) == ((), 1, 1)
            assert stack.audit.records[request_id].status == "applied"
            body = {
                "user": f"u{uuid.uuid4().hex[:10]}@{DOMAIN}",
                "newPassword": PASSWORD,
                "initiator": "admin",
            }
            status, _ = await call(function_app.reset_password, request("POST", "x", body))
            assert status == 200


class TestWindow:
    async def test_requests_outside_the_window_are_not_touched(self, tmp_path: Path) -> None:
        """A request whose caller may still be waiting, and one older than the horizon, are
        neither read nor adopted for."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            now = time.time()
            young = pending(stack, now)
            ancient = pending(stack, now - HORIZON_SECONDS - 60)
            for record in (young, ancient):
                await stack.audit.record(record)
            summary = await sweep(stack.service)
            assert summary == SweepSummary()
            assert stack.audit.records[young.request_id] == young
            assert stack.audit.records[ancient.request_id] == ancient

    async def test_a_request_past_its_outcomes_retention_is_timed_out(self, tmp_path: Path) -> None:
        """No outcome can come any more: the sweep records agent.timeout for good, having
        adopted (and found empty) the session the request named."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            received = time.time() - 60 - OUTCOME_RETENTION_SECONDS - 30
            record = pending(stack, received)
            await stack.audit.record(record)
            summary = await sweep(stack.service)
            assert (summary.adopted, summary.moved, summary.completed) == (
                (record.reply_session,),
                0,
                1,
            )
            done = stack.audit.records[record.request_id]
            assert (done.status, done.reason) == ("failed", "agent.timeout")

    async def test_a_status_read_that_could_not_look_never_times_a_request_out(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past its retention, but the outcomes session could not be read (Service Bus down, or
        another reader holding it): the request stays pending rather than becoming
        agent.timeout over an outcome that other reader may be recording."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            record = pending(stack, time.time() - 60 - OUTCOME_RETENTION_SECONDS - 30)
            await stack.audit.record(record)

            async def unreadable(*_: object, **__: object) -> str | None:
                raise TransportUnavailable("session held by another receiver")

            monkeypatch.setattr(stack.service.transport, "wait_for_outcome", unreadable)
            answer = await stack.service.status(record.request_id)
            assert answer is not None
            assert answer.state == "pending"
            assert stack.audit.records[record.request_id].status == "pending"

    async def test_a_request_still_in_time_stays_pending(self, tmp_path: Path) -> None:
        """No outcome yet but one may still come: the request stays pending for the next
        sweep, and an entry without a reply session (written before they were recorded) is
        read all the same."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            record = pending(stack, time.time() - 5, reply_session=None)
            await stack.audit.record(record)
            summary = await sweep(stack.service)
            assert summary == SweepSummary(pending=1)
            assert stack.audit.records[record.request_id] == record

    async def test_a_request_whose_status_cannot_be_read_does_not_stop_the_others(
        self, tmp_path: Path
    ) -> None:
        """A domain whose relay keys are missing fails its request's read (counted, retried
        next time); the other request is still recorded."""
        async with cloud_stack(tmp_path, wait=WAIT) as stack:
            old = time.time() - 60 - OUTCOME_RETENTION_SECONDS - 30
            unreadable = pending(stack, old, domain="gone.example.test")
            readable = pending(stack, old)
            for record in (unreadable, readable):
                await stack.audit.record(record)
            summary = await sweep(stack.service)
            assert (summary.completed, summary.failed) == (1, 1)
            assert stack.audit.records[unreadable.request_id].status == "pending"
            assert stack.audit.records[readable.request_id].reason == "agent.timeout"

    def test_the_horizon_reaches_past_every_requests_last_chance(self) -> None:
        """The sweep looks back further than any request's expiry plus the outcomes'
        retention, so every request is swept at least once after its outcome is final."""
        assert HORIZON_SECONDS > MAX_LIFETIME_SECONDS + OUTCOME_RETENTION_SECONDS
