"""The stages of a request as spans: one trace from the caller's traceparent through the cloud,
the broker and the relay, read back through OpenTelemetry's in-memory SDK; no secret in any."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import function_app
from tests.unit.cloud_stack import API_KEY, DOMAIN, call, cloud_stack, request
from tests.unit.test_directory_unit import ALICE_UPN, NEW, directory, make_link
from writeback import tracing
from writeback.protocol import ResetPassword
from writeback.tracing import Stage

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PASSWORD = "Trace-Pa55word!-kx81"
CLOUD_STAGES = [
    Stage.AUTHENTICATE, Stage.VALIDATE, Stage.ROUTE, Stage.HEARTBEAT, Stage.SEAL,
    Stage.AUDIT_PENDING, Stage.SEND, Stage.OUTCOME, Stage.AUDIT_FINAL, Stage.AUDIT_LINK,
]  # fmt: skip
RELAY_STAGES = [
    Stage.VERIFY, Stage.JOURNAL_RECEIVED, Stage.OPEN, Stage.RESOLVE, Stage.USER_LOCK,
    Stage.JOURNAL_APPLYING, Stage.APPLY, Stage.JOURNAL_OUTCOME, Stage.OUTCOME_SEND, Stage.SETTLE,
]  # fmt: skip


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider for this test only (the API's globals stay untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", lambda: provider)
    yield exporter
    provider.shutdown()


def by_name(finished: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
    return named


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def traced_reset(tmp_path: Path) -> tuple[int, dict[str, object]]:
    async with cloud_stack(tmp_path) as stack:
        await stack.start_relay()
        body = {"user": f"trace@{DOMAIN}", "newPassword": PASSWORD, "initiator": "admin"}
        req = request("POST", "x", body, headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
        return await call(function_app.reset_password, req)


class TestOneTrace:
    async def test_every_stage_is_a_span_in_the_callers_trace(
        self, tmp_path: Path, spans: InMemorySpanExporter
    ) -> None:
        """A reset yields the request's span as the caller's child, each cloud stage and the
        relay's span and broker delivery as its children, and each relay stage under the
        relay's span, all in the caller's trace."""
        status, _ = await traced_reset(tmp_path)
        assert status == 200
        named = by_name(spans.get_finished_spans())
        (root,) = named["writeback reset"]
        assert root.kind is SpanKind.SERVER
        assert parent_id(root) == int(CALLER_SPAN, 16)
        for span in spans.get_finished_spans():
            if span.name.startswith("writeback"):
                assert f"{span.context.trace_id:032x}" == TRACE, span.name
        for name in [*CLOUD_STAGES, Stage.DELIVERY, Stage.RELAY]:
            (span,) = named[name]
            assert parent_id(span) == root.context.span_id, name
        (relay,) = named[Stage.RELAY]
        assert relay.kind is SpanKind.CONSUMER
        for name in RELAY_STAGES:
            (span,) = named[name]
            assert parent_id(span) == relay.context.span_id, name

    async def test_the_stages_come_in_the_order_of_the_request(
        self, tmp_path: Path, spans: InMemorySpanExporter
    ) -> None:
        """The cloud's stages start in order (the final record after the outcome, the account
        index after the final record), and the relay's work lies between the send and the
        outcome's receipt."""
        await traced_reset(tmp_path)
        named = by_name(spans.get_finished_spans())
        starts = [named[name][0].start_time or 0 for name in CLOUD_STAGES]
        assert starts == sorted(starts)
        assert (named[Stage.AUDIT_FINAL][0].start_time or 0) >= (
            named[Stage.OUTCOME][0].end_time or 0
        )
        relay, outcome = named[Stage.RELAY][0], named[Stage.OUTCOME][0]
        assert (outcome.start_time or 0) <= (relay.start_time or 0)
        assert (relay.end_time or 0) <= (outcome.end_time or 0)
        delivery = named[Stage.DELIVERY][0]
        assert (delivery.end_time or 0) == relay.start_time

    async def test_no_span_carries_a_secret(
        self, tmp_path: Path, spans: InMemorySpanExporter
    ) -> None:
        """Names, attributes, events and statuses of every span hold no password, no API key and
        no sealed or signed token."""
        await traced_reset(tmp_path)
        finished = spans.get_finished_spans()
        assert finished
        text = repr(
            [
                (s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in
                 s.events], s.status.description)
                for s in finished
            ]
        )  # fmt: skip
        for secret in (PASSWORD, API_KEY, "eyJ"):
            assert secret not in text


class TestDirectoryStages:
    def test_the_reads_and_the_modify_of_a_reset_are_spans(
        self, spans: InMemorySpanExporter
    ) -> None:
        """Applying a reset records the read of the account, its groups, the policy read
        (cache empty) and the modify, each a child of the span current in the caller."""
        with tracing.stage(Stage.APPLY):
            directory(make_link()).apply(ResetPassword(ALICE_UPN, NEW))
        named = by_name(spans.get_finished_spans())
        (apply,) = named[Stage.APPLY]
        for name in (Stage.READ_USER, Stage.READ_GROUPS, Stage.READ_POLICY, Stage.MODIFY):
            assert named[name], name
            assert all(parent_id(span) == apply.context.span_id for span in named[name]), name
        (modify,) = named[Stage.MODIFY]
        assert dict(modify.attributes or {}) == {"writeback.operation": "reset"}


class TestStage:
    def test_a_failed_stage_names_the_exception_type_only(
        self, spans: InMemorySpanExporter
    ) -> None:
        """An exception's text may hold anything: the span keeps its type, no message, no event."""
        with pytest.raises(ValueError, match="leaked"), tracing.stage(Stage.SEAL):
            raise ValueError(f"leaked {PASSWORD}")
        (span,) = spans.get_finished_spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError"
        assert not span.events

    def test_without_an_sdk_a_stage_records_nothing(self) -> None:
        """With only the API (no provider set) a stage is the API's non-recording span, made
        current nowhere: no cost beyond the call, and no traceparent to hand on."""
        assert not tracing.recording()
        with tracing.stage(Stage.SEAL) as span:
            assert not span.is_recording()
            assert tracing.current_traceparent() is None
        tracing.record(Stage.VERIFY, 1, 2)  # nothing to record it on, and no error
