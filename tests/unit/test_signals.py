"""The signals operators watch (writeback.cloud.signals) are emitted by the code, with their
names and exactly their fields, as OpenTelemetry hands them to the Azure Monitor exporter:
metrics read back through the SDK's in-memory reader, `writeback` log lines through the logging
handler the Azure Monitor distro attaches (opentelemetry-instrumentation-logging's) and the SDK's
in-memory log exporter: the distro's own path into `traces`."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import function_app
from tests.entra import audit_message, stream
from tests.unit.cloud_stack import (
    CLOUD_KEY,
    DOMAIN,
    ENC_KEY,
    RELAY,
    SIG_KEY,
    DictSecrets,
    call,
    cloud_stack,
    request,
)
from tests.unit.test_forged_outcomes import inject, reset
from writeback import sealing
from writeback.cloud import http, signals
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, relay_keys_secret
from writeback.cloud.service import WritebackService
from writeback.cloud.telemetry import Telemetry
from writeback.protocol.messages import Heartbeat
from writeback.routing import Routes
from writeback.testing import MemoryAgentRegistry, MemoryAuditTrail
from writeback.transport.inprocess import InProcessCloud
from writeback.transport.memory import MemoryBroker

pytestmark = pytest.mark.timeout(60)


@dataclass
class Captured:
    """What OpenTelemetry would export: metric points and log records, by name."""

    reader: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def points(self, signal: signals.Signal) -> list[Any]:
        assert signal.table == signals.METRICS
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data is not None else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == signal.name
            for point in metric.data.data_points
        ]

    def lines(self, signal: signals.Signal) -> list[dict[str, Any]]:
        """The attributes of each log record whose message is the signal's name, less the
        code.* attributes the handler adds of itself."""
        assert signal.table == signals.LOGS
        return [
            {
                key: value
                for key, value in (entry.log_record.attributes or {}).items()
                if not key.startswith("code.")
            }
            for entry in self.logs.get_finished_logs()
            if entry.log_record.body == signal.name
        ]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """SDK meter and logger providers for this test only, the handler on the `writeback`
    logger at INFO as the Functions worker exports it."""
    reader, logs = InMemoryMetricReader(), InMemoryLogRecordExporter()
    monkeypatch.setattr("opentelemetry.metrics.get_meter", MeterProvider([reader]).get_meter)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger = logging.getLogger("writeback")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield Captured(reader, logs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        provider.shutdown()


def _fields(attributes: dict[str, Any]) -> frozenset[str]:
    return frozenset(attributes)


class TestAnswers:
    async def test_an_answer_is_counted_timed_and_logged_with_its_duration(
        self, tmp_path: Path, captured: Captured
    ) -> None:
        """One reset emits one `writeback.requests` point, one duration and one `request
        answered` line, each with exactly its signal's fields."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            cloud = await http.cloud()
            cloud.telemetry = Telemetry()
            body = {"user": f"s@{DOMAIN}", "newPassword": "Signal-Pa55w0rd", "initiator": "admin"}
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
        assert status == 200
        (count,) = captured.points(signals.REQUESTS)
        assert _fields(dict(count.attributes)) == signals.REQUESTS.fields
        assert (count.value, count.attributes["reason"]) == (1, "applied")
        (duration,) = captured.points(signals.REQUEST_DURATION)
        assert _fields(dict(duration.attributes)) == signals.REQUEST_DURATION.fields
        (line,) = captured.lines(signals.ANSWERED)
        assert _fields(line) == signals.ANSWERED.fields
        assert (line["request_id"], line["status"]) == (answer["requestId"], "applied")
        assert isinstance(line["duration_ms"], int)
        assert line["duration_ms"] >= 0


def _service(agents: MemoryAgentRegistry) -> WritebackService:
    jwks = json.dumps({"keys": [k.as_dict(private=False) for k in (ENC_KEY, SIG_KEY)]})
    secrets = DictSecrets(
        {SIGNING_KEY_SECRET: json.dumps(CLOUD_KEY.as_dict(private=True)),
         relay_keys_secret(DOMAIN): jwks}
    )  # fmt: skip
    return WritebackService(
        routes=Routes.build([DOMAIN]),
        transport=InProcessCloud(MemoryBroker([])),
        keys=CloudKeys(secrets),
        audit=MemoryAuditTrail(),
        agents=agents,
    )


def _heartbeat(key: ECKey) -> str:
    message = Heartbeat(
        relay=RELAY, domain=DOMAIN, version="9.8.7", sent_at=int(time.time()),
        capabilities={}, policy=None, last_error=None,
    )  # fmt: skip
    return sealing.sign_heartbeat(message, key)


class TestHeartbeats:
    async def test_a_verified_heartbeat_names_domain_relay_and_version(
        self, captured: Captured
    ) -> None:
        """A heartbeat the domain's keys verify is logged as `heartbeat` with its domain,
        relay and version: the last one per relay is what the workbook shows."""
        service = _service(MemoryAgentRegistry())
        assert await service.relays.record_heartbeat(_heartbeat(SIG_KEY)) is not None
        (line,) = captured.lines(signals.HEARTBEAT)
        assert line == {"domain": DOMAIN, "relay": RELAY, "version": "9.8.7"}
        assert captured.lines(signals.HEARTBEAT_REFUSED) == []

    async def test_a_forged_heartbeat_is_a_security_event(self, captured: Captured) -> None:
        """A heartbeat signed under the relay's kid by a key nobody registered is refused,
        logged as a security event, and logs no `heartbeat`."""
        agents = MemoryAgentRegistry()
        impostor = ECKey.generate_key("P-256", parameters={"kid": SIG_KEY.kid, "use": "sig"})
        assert await _service(agents).relays.record_heartbeat(_heartbeat(impostor)) is None
        assert captured.lines(signals.HEARTBEAT_REFUSED) == [{"security": True}]
        assert captured.lines(signals.HEARTBEAT) == []
        assert await agents.list(None) == []


class TestForgedOutcome:
    async def test_a_forged_outcome_is_a_security_event(
        self, tmp_path: Path, captured: Captured
    ) -> None:
        """A forged outcome found by a status read is logged as `outcome refused` with the
        request id, the problem and the security flag."""
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
        (line,) = captured.lines(signals.OUTCOME_REFUSED)
        assert _fields(line) == signals.OUTCOME_REFUSED.fields
        assert (line["request_id"], line["security"]) == (request_id, True)


class TestDrift:
    async def test_drift_is_counted_and_logged(self, tmp_path: Path, captured: Captured) -> None:
        """A reset in the Microsoft 365 admin center emits one `writeback.drift` point and one
        `password drift` line, each with exactly its signal's fields."""
        target = f"sg{uuid.uuid4().hex[:10]}@{DOMAIN}"
        async with cloud_stack(tmp_path):
            await stream(audit_message("audit-m365-admin-reset.json", target=target))
        (point,) = captured.points(signals.DRIFT)
        assert _fields(dict(point.attributes)) == signals.DRIFT.fields
        assert point.value == 1
        (line,) = captured.lines(signals.PASSWORD_DRIFT)
        assert _fields(line) == signals.PASSWORD_DRIFT.fields
        assert line["domain"] == DOMAIN
        assert all(target not in str(value) for value in line.values())


class TestCatalogue:
    def test_names_are_unique_per_table(self) -> None:
        """No two signals share a name in one table: a query for one never counts another."""
        names = [(signal.table, signal.name) for signal in signals.ALL]
        assert len(names) == len(set(names))
        assert {signal.table for signal in signals.ALL} == {signals.METRICS, signals.LOGS}
