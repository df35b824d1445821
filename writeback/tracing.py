"""The stages of one request as OpenTelemetry spans, on both sides of the wire.

The cloud opens a span per API request (`writeback.cloud.telemetry`) and puts its W3C
`traceparent` into the signed request; the relay continues that trace from the message, so one
trace shows a request from the caller's call to the DC's answer and back. Each stage is a child
span named in `Stage` (the names operators and `bench.report` read). Only the OpenTelemetry API
is used here: with no SDK configured every call goes to its no-op tracer, a few microseconds per
stage; an SDK (the Azure Monitor distro, a test's in-memory exporter) makes them real.

Attributes are codes, ids and counts, never a password, token, key or directory value; an
exception that ends a stage is recorded as its type's name only, because its text is not ours to
vouch for (`record_exception` would copy the message and the traceback into the span).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

TRACER = "writeback"
_PROPAGATOR = TraceContextTextMapPropagator()
Attribute = str | int | float | bool


class Stage(enum.StrEnum):
    """The span names of a request's stages, in the order a reset meets them."""

    # The cloud (function_app.py → writeback.cloud), under the API request's span.
    AUTHENTICATE = "writeback.authenticate"
    VALIDATE = "writeback.validate"  # the body, the caller's role and target
    ROUTE = "writeback.route"  # the user's domain
    HEARTBEAT = "writeback.heartbeat"  # whether a relay of the domain is alive (agents table)
    SEAL = "writeback.seal"  # JWE to the relay keys, JWS with the cloud's key
    AUDIT_PENDING = "writeback.audit.pending"
    SEND = "writeback.send"
    OUTCOME = "writeback.outcome.receive"  # from sent until the relay's verified outcome
    AUDIT_LINK = "writeback.audit.link"  # the account index, after the answer
    AUDIT_FINAL = "writeback.audit.final"
    AUDIT_UNMARK = "writeback.audit.unmark"  # the pending mark's removal, after the answer
    # The relay (writeback.relay), under its span for the message, in the caller's trace.
    RELAY = "writeback.relay.handle"
    DELIVERY = "writeback.relay.delivery"  # enqueued on the broker until received
    VERIFY = "writeback.relay.verify"
    JOURNAL_RECEIVED = "writeback.relay.journal.received"
    OPEN = "writeback.relay.open"
    RESOLVE = "writeback.relay.directory.resolve"  # the account the request names
    USER_LOCK = "writeback.relay.lock"  # waiting for the account's write lock
    JOURNAL_APPLYING = "writeback.relay.journal.applying"  # written and fsynced
    APPLY = "writeback.relay.apply"  # the directory layer: the reads below and the modify
    READ_USER = "writeback.relay.directory.read"  # the account again by objectGUID
    READ_GROUPS = "writeback.relay.directory.groups"  # tokenGroups, for the protection check
    READ_POLICY = "writeback.relay.directory.policy"  # domain policy or PSO, when not cached
    MODIFY = "writeback.relay.directory.modify"
    JOURNAL_OUTCOME = "writeback.relay.journal.outcome"  # written and fsynced
    OUTCOME_SEND = "writeback.relay.outcome.send"  # signed and sent
    SETTLE = "writeback.relay.settle"


# What a stage is without an SDK: the API's own non-recording span, and nothing made current.
_UNRECORDED = nullcontext(trace.INVALID_SPAN)


def _tracer() -> trace.Tracer:
    # Looked up at each use: a provider set (or a test's) after import is the one used.
    return trace.get_tracer(TRACER)


def recording() -> bool:
    """Whether an SDK is configured: until one sets the global tracer provider, the API's is a
    proxy whose spans record nothing, and a stage skips even the context switch."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def stage(
    name: str,
    attributes: dict[str, Attribute] | None = None,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    start_ns: int | None = None,
) -> AbstractContextManager[trace.Span]:
    """A child span of the current one (or of `parent`) for one stage (a `Stage`, or the request
    itself), current meanwhile; about a microsecond and nothing else without an SDK."""
    if not recording():
        return _UNRECORDED
    return _stage(name, attributes, kind, parent, start_ns)


@contextmanager
def _stage(
    name: str,
    attributes: dict[str, Attribute] | None,
    kind: trace.SpanKind,
    parent: otel_context.Context | None,
    start_ns: int | None,
) -> Iterator[trace.Span]:
    with _tracer().start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        start_time=start_ns,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def record(
    name: Stage,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Attribute] | None = None,
    *,
    parent: otel_context.Context | None = None,
) -> None:
    """A stage that already happened (timed before its trace was known, or by another clock):
    a child of the current span (or of `parent`) from `start_ns` to `end_ns` (time.time_ns();
    an end before the start, clocks apart, is taken as the start)."""
    if not recording():
        return
    span = _tracer().start_span(name, context=parent, attributes=attributes, start_time=start_ns)
    span.end(end_time=max(start_ns, end_ns))


def annotate(attributes: dict[str, Attribute]) -> None:
    """Add attributes to the current span (a no-op when none records)."""
    trace.get_current_span().set_attributes(attributes)


def joined(traceparent: str | None) -> otel_context.Context | None:
    """The caller's trace as a parent context, from a W3C traceparent (None: a new trace)."""
    if not traceparent or not recording():
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def current_traceparent() -> str | None:
    """The current span's W3C traceparent, or None when no span records one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def now_ns() -> int:
    return time.time_ns()
