"""The cloud's side of the Service Bus transport (CloudTransport): the sender side.

`ServiceBusCloud` sends each request to its domain's queue with this instance's reply session
as the place to answer, and waits for the outcome: on the reply session, which the listener
below it holds open for the instance's life (`listener.py`), or, for a request this instance
is not waiting for, on a short-lived receiver of the request's own session. Other instances'
reply sessions are adopted by the layer between the two (`adopter.py`).

Failures: a request that cannot be sent raises TransportError and is not expected any more;
while the reply session is down, waits run to their deadline (the outcome is kept in the
session and reaches a later wait or, as an orphan, the request's session). An outcome the
caller refuses is dead-lettered (`outcome.refused`). Bodies are never logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from azure.servicebus import ServiceBusMessage

from writeback.errors import TransportUnavailable
from writeback.transport import OUTCOMES_QUEUE, requests_queue
from writeback.transport.replies import accept_any
from writeback.transport.servicebus.adopter import Adopter
from writeback.transport.servicebus.bus import CONTENT_TYPE, translate_servicebus_error
from writeback.transport.servicebus.listener import NO_KEEP_ALIVE

REFUSED = "outcome.refused"


class ServiceBusCloud(Adopter):
    """The cloud side of the transport (CloudTransport)."""

    async def start(self, domains: Iterable[str] = (), timeout: float = 30.0) -> None:
        self._listen()
        opening = [self.warm(requests_queue(domain)) for domain in domains]
        try:
            await asyncio.wait_for(asyncio.gather(self._listening.wait(), *opening), timeout)
        except TimeoutError as exc:
            raise TransportUnavailable(
                f"reply session {self.reply_session}: not open after {timeout:.0f}s"
            ) from exc

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        registered = self.replies.expect(request_id, expires_at)  # before it can be answered
        self._listen()
        ttl = max(1.0, expires_at - time.time())
        message = ServiceBusMessage(
            body,
            message_id=request_id,
            content_type=CONTENT_TYPE,
            time_to_live=timedelta(seconds=ttl),
            reply_to=OUTCOMES_QUEUE,
            reply_to_session_id=self.reply_session,
        )
        try:
            await self._send(requests_queue(domain), message)
        except BaseException:
            if registered:
                self.replies.forget(request_id)
            raise

    async def wait_for_outcome(
        self, request_id: str, deadline: float, accept: Callable[[str], bool] = accept_any
    ) -> str | None:
        if self.replies.expecting(request_id):
            return await self.replies.wait(request_id, deadline, accept)
        return await self._wait_on_request_session(request_id, deadline, accept)

    async def _wait_on_request_session(
        self, request_id: str, deadline: float, accept: Callable[[str], bool]
    ) -> str | None:
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        receiver = self.client.get_queue_receiver(
            OUTCOMES_QUEUE,
            session_id=request_id,
            max_wait_time=remaining,
            prefetch_count=1,
            **NO_KEEP_ALIVE,
        )
        try:
            await receiver.__aenter__()
            while (remaining := deadline - time.time()) > 0:
                received = await receiver.receive_messages(
                    max_message_count=1, max_wait_time=remaining
                )
                if received:
                    body = str(received[0])
                    if accept(body):
                        await receiver.complete_message(received[0])
                        return body
                    await receiver.dead_letter_message(
                        received[0],
                        reason=REFUSED,
                        error_description="the cloud could not verify it",
                    )
        except Exception as exc:
            raise translate_servicebus_error(exc, f"wait for outcome {request_id}") from exc
        finally:
            # Answer the caller first; the close (a round trip of its own) follows.
            self._background(receiver.close())
        return None
