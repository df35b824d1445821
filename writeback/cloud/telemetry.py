"""Metrics and traces of the cloud side, on OpenTelemetry; Application Insights when configured.

There is one telemetry pipeline. In Azure the host runs with host.json `telemetryMode`
`OpenTelemetry` and the app setting `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`: the Python
worker configures the Azure Monitor distro itself and runs each invocation inside the host's
trace, so this module only adds its instruments and never configures a second exporter. Run
elsewhere (the local host, tests) with `APPLICATIONINSIGHTS_CONNECTION_STRING` set, it configures
the distro itself; with neither, the same calls go to OpenTelemetry's no-op (or whatever provider
a test installs). Metrics: `writeback.requests` (by operation, status, reason) and
`writeback.request.duration` (ms, by operation and status); each answer is also one
`request answered` log line with its duration, for percentiles (the names and fields operators
query are in `writeback.cloud.signals`). Each request runs in a span whose
W3C `traceparent` travels inside the signed request message, so the relay's logs carry the same
trace id. Attributes are codes and ids, never a password, token or key.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from writeback import tracing
from writeback.cloud import signals

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()
# The worker's own Azure Monitor set-up (learn.microsoft.com/azure/azure-functions/
# opentelemetry-howto): when it is on, a second configure_azure_monitor() would export twice.
WORKER_TELEMETRY_SETTING = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"


def worker_exports(environ: Mapping[str, str]) -> bool:
    """Whether the Functions Python worker exports this process's telemetry itself."""
    return environ.get(WORKER_TELEMETRY_SETTING, "").strip().lower() in ("true", "1")


def configure(
    connection_string: str | None,
    authentication: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send telemetry to Application Insights when a connection string is set (once per worker),
    unless the Functions worker already does (`environ` is the process environment by default:
    the worker reads the same setting there).

    `authentication` is APPLICATIONINSIGHTS_AUTHENTICATION_STRING: `Authorization=AAD` makes the
    exporter authenticate with the Function's managed identity (the resource has local
    authentication off, as infra/ deploys it).
    """
    if not connection_string:
        return
    if worker_exports(os.environ if environ is None else environ):
        log.info("telemetry to Application Insights through the Functions worker")
        return
    # Imported only when used: they are heavy, and the cold start matters.
    from azure.identity import ManagedIdentityCredential  # noqa: PLC0415
    from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415

    options: dict[str, Any] = {}
    if (authentication or "").replace(" ", "").lower() == "authorization=aad":
        options["credential"] = ManagedIdentityCredential()
    configure_azure_monitor(connection_string=connection_string, logger_name="writeback", **options)
    log.info("telemetry to Application Insights")


class Telemetry:
    """The API's instruments; cheap to call when nothing is configured."""

    def __init__(self) -> None:
        meter = metrics.get_meter("writeback")
        self._requests = meter.create_counter(
            signals.REQUESTS.name, unit="{request}", description="Writeback requests by outcome"
        )
        self._duration = meter.create_histogram(
            signals.REQUEST_DURATION.name, unit="ms", description="Time to the caller's answer"
        )

    @contextmanager
    def request(self, operation: str, incoming: str | None) -> Iterator[str]:
        """See `request` (the module function): kept for the handlers that hold a Telemetry."""
        with request(operation, incoming) as traceparent:
            yield traceparent

    def completed(self, operation: str, answer: Any) -> None:
        status = answer.status or "pending"
        labels = {"operation": operation, "status": status, "reason": answer.reason or ""}
        self._requests.add(1, labels)
        if answer.duration_ms is not None:
            self._duration.record(answer.duration_ms, {"operation": operation, "status": status})
        log.info(
            signals.ANSWERED.name,
            extra={
                "request_id": answer.request_id,
                "operation": operation,
                "status": status,
                "reason": answer.reason or "",
                "duration_ms": answer.duration_ms,
            },
        )
        span = trace.get_current_span()
        span.set_attribute("writeback.request_id", answer.request_id)
        span.set_attribute("writeback.reason", answer.reason or "")


@contextmanager
def request(operation: str, incoming: str | None) -> Iterator[str]:
    """A span for one API request, yielding the traceparent to put in the request message; its
    stages (`writeback.tracing.Stage`) are its children.

    Its parent is the invocation's span when one is current (the worker runs each invocation
    in the host's trace, which continues the caller's), else the caller's `traceparent` when it
    sent one, else none (a new trace)."""
    in_invocation = trace.get_current_span().get_span_context().is_valid
    context = (
        _PROPAGATOR.extract({"traceparent": incoming}) if incoming and not in_invocation else None
    )
    with tracing.stage(
        f"writeback {operation}",
        {"writeback.operation": operation},
        kind=trace.SpanKind.SERVER,
        parent=context,
    ):
        yield tracing.current_traceparent() or incoming or _random_traceparent()


def _random_traceparent() -> str:
    """A fresh trace when no tracer records one: the relay's logs still join the cloud's."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]
