"""The signals operators watch: every metric and log event that the Azure Monitor workbook and
alert rules in infra/monitoring read, named here once and used by the code that emits them.

Application Insights stores an OpenTelemetry metric in `customMetrics` (its name in `name`, its
attributes in `customDimensions`) and a `writeback` log line in `traces` (the message in
`message`, the `extra` fields in `customDimensions`). A signal here says which table it lands in,
its name there, and the fields it carries, so tests/infra can check that each query names only
signals and fields the code emits, and tests/unit that the code emits them with those fields.
A field is a code, an id, a count or a domain; never a password, token, key or user name.
"""

from __future__ import annotations

from dataclasses import dataclass

METRICS, LOGS = "customMetrics", "traces"


@dataclass(frozen=True)
class Signal:
    """One metric (`table` METRICS) or log event (LOGS), as Application Insights stores it."""

    name: str  # the metric's name, or the log line's message
    table: str
    fields: frozenset[str]  # its customDimensions keys


def _signal(name: str, table: str, *fields: str) -> Signal:
    return Signal(name, table, frozenset(fields))


# Every write call answered, by outcome: status is applied, rejected, failed, or pending (504).
REQUESTS = _signal("writeback.requests", METRICS, "operation", "status", "reason")
REQUEST_DURATION = _signal("writeback.request.duration", METRICS, "operation", "status")
# The same answer as one log line, with its time to the caller: percentiles need each value,
# and Application Insights keeps a histogram metric only as count, sum, minimum and maximum.
ANSWERED = _signal(
    "request answered", LOGS, "request_id", "operation", "status", "reason", "duration_ms"
)
# A relay's heartbeat, verified and recorded.
HEARTBEAT = _signal("heartbeat", LOGS, "domain", "relay", "version")
# Forged or wrongly signed messages: security events.
HEARTBEAT_REFUSED = _signal(
    "heartbeat refused: signed by no registered relay key", LOGS, "security"
)
OUTCOME_REFUSED = _signal("outcome refused", LOGS, "request_id", "error", "security")
# A password that Entra ID changed and AD did not.
DRIFT = _signal("writeback.drift", METRICS, "domain", "activity")
PASSWORD_DRIFT = _signal(
    "password drift",
    LOGS,
    "request_id",
    "domain",
    "activity",
    "logged_by",
    "entra_id",
    "correlation_id",
)

ALL = (
    REQUESTS,
    REQUEST_DURATION,
    ANSWERED,
    HEARTBEAT,
    HEARTBEAT_REFUSED,
    OUTCOME_REFUSED,
    DRIFT,
    PASSWORD_DRIFT,
)
