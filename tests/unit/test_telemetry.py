"""Telemetry of the API: a span per request that continues the caller's trace, and metrics of
requests by outcome and their duration, read back through OpenTelemetry's in-memory SDK."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import function_app
from tests.unit.cloud_stack import DOMAIN, call, cloud_stack, request
from writeback.cloud import http
from writeback.cloud.telemetry import Telemetry

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def instruments(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[InMemoryMetricReader, InMemorySpanExporter]:
    """SDK providers for this test only (the API's globals stay untouched)."""
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    meters = MeterProvider(metric_readers=[reader])
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr("opentelemetry.metrics.get_meter", meters.get_meter)
    monkeypatch.setattr("opentelemetry.trace.get_tracer", tracers.get_tracer)
    return reader, spans


class TestTelemetry:
    async def test_a_request_is_counted_timed_and_traced(
        self, tmp_path: Path, instruments: tuple[InMemoryMetricReader, InMemorySpanExporter]
    ) -> None:
        """One reset gives one span in the caller's trace and one count by its outcome."""
        reader, spans = instruments
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            cloud = await http.cloud()  # the stack's Cloud: give it instruments on our providers
            cloud.telemetry = Telemetry()
            body = {"user": f"tele@{DOMAIN}", "newPassword": "Tele-Pa55word!", "initiator": "admin"}
            parent = f"00-{TRACE}-00f067aa0ba902b7-01"
            req = request("POST", "x", body, headers={"traceparent": parent})
            status, answer = await call(function_app.reset_password, req)
        assert status == 200
        (span,) = spans.get_finished_spans()
        assert f"{span.context.trace_id:032x}" == TRACE
        assert span.attributes is not None
        assert span.attributes["writeback.request_id"] == answer["requestId"]
        assert stack.audit.records[answer["requestId"]].trace_id == TRACE
        data = reader.get_metrics_data()
        assert data is not None
        points = {
            metric.name: list(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        (count,) = points["writeback.requests"]
        assert count.value == 1
        assert dict(count.attributes or {}) == {
            "operation": "reset", "status": "applied", "reason": "applied"
        }  # fmt: skip
        (duration,) = points["writeback.request.duration"]
        assert duration.count == 1
