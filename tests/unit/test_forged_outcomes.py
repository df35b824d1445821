"""A forged or unverifiable outcome on a pending request's session is a security event, never
the request's outcome: the cloud logs it, skips it, and still records the relay's real outcome.

Whoever may send to the outcomes queue can put anything on a reply session or a request's own
session; the first body to arrive must not decide the request."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

import function_app
from tests.unit.cloud_stack import DOMAIN, RELAY, Stack, call, cloud_stack, request
from writeback import sealing
from writeback.protocol import Reason
from writeback.protocol.messages import OutcomeMessage
from writeback.transport import OUTCOMES_QUEUE, requests_queue
from writeback.transport.memory import StoredMessage

pytestmark = pytest.mark.timeout(60)
PASSWORD = "Forged-Unit-Pa55word!"


async def until(condition: Callable[[], object], deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def forged(request_id: str) -> str:
    """`applied` for the request, signed under the relay's key id by a key nobody registered."""
    impostor = ECKey.generate_key("P-256", parameters={"kid": f"{RELAY}.sig.a", "use": "sig"})
    outcome = OutcomeMessage(
        request_id, DOMAIN, RELAY, Reason.APPLIED, "ok", "", int(time.time()), 1
    )
    return sealing.sign_outcome(outcome, impostor)


def inject(stack: Stack, request_id: str, session: str) -> None:
    stack.broker.send(
        OUTCOMES_QUEUE,
        StoredMessage(forged(request_id).encode(), session_id=session, correlation_id=request_id),
    )


def reset(request_id: str) -> dict[str, str]:
    user = f"u{uuid.uuid4().hex[:10]}@{DOMAIN}"
    return {"user": user, "newPassword": PASSWORD, "initiator": "admin", "requestId": request_id}


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == "outcome refused"]


class TestForgedOutcomes:
    async def test_a_forgery_on_the_reply_session_does_not_decide_the_request(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A forged `applied` reaches the waiting instance first: it is logged as a security
        event and skipped, the caller keeps waiting, and gets the relay's real outcome."""
        caplog.set_level(logging.ERROR, "writeback.cloud.service")
        async with cloud_stack(tmp_path, wait=15) as stack:
            await stack.start_relay()
            await stack.stop_relay()  # its heartbeat stays fresh; nobody applies the request yet
            request_id = str(uuid.uuid4())
            calling = asyncio.create_task(
                call(function_app.reset_password, request("POST", "x", reset(request_id)))
            )
            await until(lambda: stack.broker.stats(requests_queue(DOMAIN))["active"] == 1)
            inject(stack, request_id, stack.service.transport.reply_session)
            await until(lambda: refusals(caplog))
            assert not calling.done()
            await stack.start_relay()
            status, answer = await calling
        assert (status, answer["reason"]) == (200, "applied")
        assert stack.audit.records[request_id].relay == RELAY
        [refusal] = refusals(caplog)
        assert (refusal.request_id, refusal.security) == (request_id, True)  # type: ignore[attr-defined]

    async def test_a_forgery_on_the_requests_session_is_dead_lettered(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A status read finds a forgery on the request's own session: dead-lettered
        (`outcome.refused`), the request still pending, and a later read records the relay's
        real outcome."""
        caplog.set_level(logging.ERROR, "writeback.cloud.service")
        async with cloud_stack(tmp_path, wait=0.3) as stack:
            await stack.start_relay()
            await stack.stop_relay()
            request_id = str(uuid.uuid4())
            status, _ = await call(
                function_app.reset_password, request("POST", "x", reset(request_id))
            )
            assert status == 504
            inject(stack, request_id, request_id)
            read = request("GET", "x", route_params={"request_id": request_id})
            status, answer = await call(function_app.request_status, read)
            assert (status, answer["state"]) == (200, "pending")
            dead = stack.broker.receive(f"{OUTCOMES_QUEUE}/$DeadLetterQueue", 10)
            assert [m.dead_letter_reason for m in dead] == ["outcome.refused"]
            await stack.start_relay()
            deadline = time.monotonic() + 10
            while answer["state"] == "pending":
                assert time.monotonic() < deadline, answer
                status, answer = await call(function_app.request_status, read)
        assert (answer["status"], answer["reason"]) == ("applied", "applied")
        assert len(refusals(caplog)) == 1
