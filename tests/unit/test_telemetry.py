"""Telemetry of the API: a span per request that continues the caller's trace, and metrics of
requests by outcome and their duration, read back through OpenTelemetry's in-memory SDK."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import function_app
from tests.unit.cloud_stack import DOMAIN, call, cloud_stack, request
from writeback.cloud import http, telemetry
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
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", lambda: tracers)
    return reader, spans


class TestTelemetry:
    async def test_a_request_is_counted_timed_and_traced(
        self, tmp_path: Path, instruments: tuple[InMemoryMetricReader, InMemorySpanExporter]
    ) -> None:
        """One reset gives one request span in the caller's trace (its stages are its children,
        tests/unit/test_tracing.py) and one count by its outcome."""
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
        (span,) = [s for s in spans.get_finished_spans() if s.name == "writeback reset"]
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


class TestOnePipeline:
    @pytest.fixture
    def distro_calls(self, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
        """configure_azure_monitor replaced by a recorder (no exporter, no network)."""
        calls: list[dict[str, object]] = []
        monkeypatch.setattr(
            "azure.monitor.opentelemetry.configure_azure_monitor",
            lambda **options: calls.append(options),
        )
        return calls

    def test_the_worker_exports_so_the_app_does_not(
        self, distro_calls: list[dict[str, object]]
    ) -> None:
        """With the worker's Azure Monitor set-up on, the app configures no second exporter."""
        environ = {telemetry.WORKER_TELEMETRY_SETTING: "true"}
        telemetry.configure("InstrumentationKey=x", "Authorization=AAD", environ)
        assert distro_calls == []

    def test_without_the_worker_the_app_exports_with_its_identity(
        self, distro_calls: list[dict[str, object]]
    ) -> None:
        """Outside the worker (local host) the app configures the distro, signing in with the
        managed identity when the authentication string asks for Entra ID."""
        telemetry.configure("InstrumentationKey=x", "Authorization=AAD", {})
        (options,) = distro_calls
        assert options["connection_string"] == "InstrumentationKey=x"
        assert options["logger_name"] == "writeback"
        assert type(options["credential"]).__name__ == "ManagedIdentityCredential"

    def test_a_request_joins_the_invocations_trace(
        self, instruments: tuple[InMemoryMetricReader, InMemorySpanExporter]
    ) -> None:
        """Inside an invocation (the worker's current span, in the host's trace) a request's span
        is that span's child, whatever traceparent the caller's header carries."""
        _, spans = instruments
        tracer = trace.get_tracer("host")
        with tracer.start_as_current_span("invocation") as invocation:
            header = f"00-{TRACE}-00f067aa0ba902b7-01"
            with Telemetry().request("reset", header) as sent:
                pass
        invocation_context = invocation.get_span_context()
        (request_span, _) = spans.get_finished_spans()
        assert request_span.parent is not None
        assert request_span.parent.span_id == invocation_context.span_id
        assert sent.split("-")[1] == f"{invocation_context.trace_id:032x}"
