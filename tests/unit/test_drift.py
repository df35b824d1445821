"""The Entra audit stream through function_app's Event Hubs trigger, called the documented way
with `func.EventHubEvent` bodies shaped as Entra's diagnostic export (tests/fixtures/entra),
over the real service, the in-memory audit trail and a real relay on the in-memory directory."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import function_app
from tests.entra import FIXTURES, audit_message, stream
from tests.unit.cloud_stack import DOMAIN, Stack, call, cloud_stack, request
from writeback.cloud import drift
from writeback.cloud.audit import AuditRecord
from writeback.cloud.settings import CloudSettings, EventSettings
from writeback.errors import ConfigurationError, StorageError
from writeback.protocol import Operation, Outcome, Reason

pytestmark = pytest.mark.timeout(60)


def user() -> str:
    return f"dr{uuid.uuid4().hex[:10]}@{DOMAIN}"


def drifts(stack: Stack) -> list[AuditRecord]:
    return [r for r in stack.audit.records.values() if r.operation == drift.DRIFT]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    """An SDK meter provider for this test only (the stream's counter is made per Cloud)."""
    reader = InMemoryMetricReader()
    monkeypatch.setattr("opentelemetry.metrics.get_meter", MeterProvider([reader]).get_meter)
    return reader


def drift_points(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "writeback.drift"
        for point in metric.data.data_points
    ]


class TestBinding:
    def test_the_trigger_reads_the_audit_hub_as_infra_sets_it(self) -> None:
        """Event Hubs trigger, identity-based connection `EntraAuditHub`, hub and consumer group
        from app settings, batches (cardinality many)."""
        (hub,) = json.loads(function_app.entra_audit.build().get_function_json())["bindings"]
        assert hub == {
            "direction": "IN", "type": "eventHubTrigger", "name": "events",
            "connection": "EntraAuditHub", "eventHubName": "%WRITEBACK_AUDIT_HUB%",
            "consumerGroup": "%WRITEBACK_AUDIT_CONSUMER_GROUP%", "cardinality": "MANY",
        }  # fmt: skip


class TestSettings:
    def test_defaults_and_values(self) -> None:
        """Off, 300 s and off by default; the sample's values and explicit ones are read."""
        assert EventSettings.from_env({}) == EventSettings(False, 300.0, False)
        sample = json.loads((Path(function_app.__file__).parent / "local.settings.sample.json")
                            .read_text())["Values"]  # fmt: skip
        assert CloudSettings.from_env(sample).events == EventSettings(False, 300.0, False)
        assert EventSettings.from_env(
            {"WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE": "True",
             "WRITEBACK_DRIFT_WINDOW_SECONDS": "600", "WRITEBACK_DRIFT_FORCE_CHANGE": "yes"}
        ) == EventSettings(True, 600.0, True)  # fmt: skip

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE", "maybe"),
            ("WRITEBACK_DRIFT_WINDOW_SECONDS", "0"),
            ("WRITEBACK_DRIFT_WINDOW_SECONDS", "five minutes"),
            ("WRITEBACK_DRIFT_FORCE_CHANGE", "2"),
        ],
    )
    def test_bad_values_name_their_setting(self, name: str, value: str) -> None:
        """A bad value stops start-up naming the setting."""
        with pytest.raises(ConfigurationError) as caught:
            EventSettings.from_env({name: value})
        assert caught.value.setting == name


class TestDrift:
    async def test_a_microsoft_365_admin_center_reset_is_drift(
        self, tmp_path: Path, counted: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A reset no writeback saw: one drift record (readable by its id through the API), one
        count of writeback.drift and one warning line, and no UPN in the log."""
        target = user()
        async with cloud_stack(tmp_path) as stack:
            await stream(audit_message("audit-m365-admin-reset.json", target=target))
            (record,) = drifts(stack)
            assert (record.user, record.domain, record.source) == (target, DOMAIN, "entra-audit")
            assert (record.status, record.reason) == ("failed", "password.drift")
            assert record.initiator == "user:megan.bowen@example.test"
            assert record.detail is not None
            assert "Reset user password" in record.detail
            assert "Core Directory" in record.detail
            status, answer = await call(
                function_app.request_status,
                request("GET", "x", route_params={"request_id": record.request_id}),
            )
            assert (status, answer["reason"]) == (502, "password.drift")
        (point,) = drift_points(counted)
        assert point.value == 1
        assert point.attributes == {"domain": DOMAIN, "activity": "Reset user password"}
        (warning,) = [r for r in caplog.records if r.getMessage() == "password drift"]
        assert warning.levelno == logging.WARNING
        assert warning.request_id == record.request_id  # type: ignore[attr-defined]
        assert target not in caplog.text
        assert all(target not in repr(vars(entry)) for entry in caplog.records)

    async def test_a_matching_writeback_request_is_no_drift(self, tmp_path: Path) -> None:
        """The portal's own reset: written back through the API, then seen in Entra within
        the window; no drift. The same reset seen long after the window is drift."""
        target = user()
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = {"user": target.upper(), "newPassword": "Drift-Pa55word!", "initiator": "admin"}
            status, _ = await call(function_app.reset_password, request("POST", "x", body))
            assert status == 200
            now = time.time()
            await stream(audit_message("audit-entra-admin-reset.json", target=target, at=now + 5))
            assert drifts(stack) == []
            await stream(audit_message("audit-m365-admin-reset.json", target=target, at=now + 900))
            assert len(drifts(stack)) == 1

    async def test_twin_records_and_a_second_delivery_give_one_drift(self, tmp_path: Path) -> None:
        """An Entra admin center reset logs two records (SSPR and Core Directory), and Event
        Hubs may deliver a batch twice: still one drift record."""
        target = user()
        async with cloud_stack(tmp_path) as stack:
            message = audit_message("audit-entra-admin-reset.json", target=target)
            await stream(message)
            await stream(message)
            assert len(drifts(stack)) == 1

    async def test_self_service_resets_and_changes_are_read(self, tmp_path: Path) -> None:
        """Self-service reset and change messages are drift for a user no writeback served;
        a failed reset changed no password and is not."""
        first, second, third = user(), user(), user()
        async with cloud_stack(tmp_path) as stack:
            await stream(
                audit_message("audit-sspr-reset.json", target=first),
                audit_message("audit-self-service-change.json", target=second),
                audit_message("audit-sspr-reset-failed.json", target=third),
            )
            assert {record.user for record in drifts(stack)} == {first, second}

    async def test_users_of_no_writeback_domain_are_not_ours(self, tmp_path: Path) -> None:
        """A reset of a cloud-only or other-forest user is none of writeback's business."""
        async with cloud_stack(tmp_path) as stack:
            await stream(audit_message("audit-m365-admin-reset.json", target="a@elsewhere.test"))
            assert stack.audit.records == {}

    async def test_force_change_expires_the_drifted_password(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With WRITEBACK_DRIFT_FORCE_CHANGE on, drift sends one expire for the user (applied by
        the relay), audited as its own request, and the drift record names it. The twin record
        and a second delivery of the batch send nothing more."""
        monkeypatch.setenv("WRITEBACK_DRIFT_FORCE_CHANGE", "true")
        target = user()
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            message = audit_message("audit-entra-admin-reset.json", target=target)
            await stream(message)
            await stream(message)
            (record,) = drifts(stack)
            assert [(c.operation, c.user) for c in stack.directory.applied] == [
                (Operation.EXPIRE, target)
            ]
            (expire,) = [r for r in stack.audit.records.values() if r.operation == "expire"]
            assert (expire.user, expire.status, expire.reason) == (target, "applied", "applied")
            assert (expire.source, expire.caller) == ("entra-audit", "entra-audit:drift")
            assert record.detail is not None
            assert f"expire request {expire.request_id}" in record.detail
            assert record.detail.endswith("applied.")

    async def test_force_change_is_off_by_default(self, tmp_path: Path) -> None:
        """Without the setting drift is recorded and nothing is sent to the relay."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(audit_message("audit-m365-admin-reset.json", target=user()))
            (record,) = drifts(stack)
            assert record.detail is not None
            assert "WRITEBACK_DRIFT_FORCE_CHANGE" not in record.detail
            assert stack.directory.applied == []
            assert [r.operation for r in stack.audit.records.values()] == ["drift"]

    async def test_a_refused_expire_is_named_in_the_drift_record(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The relay refuses the expire (a protected account, here): drift is still recorded,
        and its detail carries the relay's reason for the operator."""
        monkeypatch.setenv("WRITEBACK_DRIFT_FORCE_CHANGE", "1")
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            stack.directory.outcomes.append(Outcome(Reason.USER_PROTECTED, "adminCount=1"))
            await stream(audit_message("audit-m365-admin-reset.json", target=user()))
            (record,) = drifts(stack)
            assert record.detail is not None
            assert record.detail.endswith("user.protected.")


class TestBadAndUnrelated:
    async def test_unrelated_and_malformed_records_are_skipped_without_failing_the_batch(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Sign-ins, other directory changes, messages that are not JSON or not an export, and
        relevant records that cannot be read are skipped and logged; the good record in the
        same batch is still handled."""
        caplog.set_level(logging.INFO)
        target = user()
        broken = json.loads(audit_message("audit-m365-admin-reset.json", target=target))
        good = json.loads(json.dumps(broken["records"][0]))
        no_properties = {**good, "properties": "?"}
        no_user = json.loads(json.dumps(good))
        no_user["properties"]["targetResources"] = [{"type": "Group", "id": "g"}]
        bad_time = json.loads(json.dumps(good))
        bad_time["properties"]["activityDateTime"] = "yesterday"
        bad_time["time"] = "yesterday"
        bad_upn = json.loads(json.dumps(good))
        bad_upn["properties"]["targetResources"][0]["userPrincipalName"] = "no-suffix\x00"
        no_result = json.loads(json.dumps(good))
        del no_result["properties"]["result"]
        unhashable = {**good, "operationName": ["Reset user password"]}
        malformed = {"records": ["text", 42, no_properties, no_user, bad_time, bad_upn,
                                 no_result, unhashable]}  # fmt: skip
        async with cloud_stack(tmp_path) as stack:
            await stream(
                (FIXTURES / "audit-unrelated.json").read_bytes(),
                b"\xff not json",
                json.dumps({"value": []}),
                json.dumps(malformed),
                audit_message("audit-m365-admin-reset.json", target=target),
            )
            (record,) = drifts(stack)
            assert record.user == target
            assert len(stack.audit.records) == 1
        skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
        # Two messages, two non-objects and five unreadable records; a list for a name is
        # simply not a relevant operation.
        assert len(skipped) == 9
        (summary,) = [r for r in caplog.records if r.getMessage() == "audit batch"]
        assert (summary.drifts, summary.skipped) == (1, 9)  # type: ignore[attr-defined]

    async def test_a_storage_failure_is_raised_after_the_rest_of_the_batch(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The audit table failing for one record does not stop the others; the batch then
        raises, so a retry policy can run it again (the work is idempotent)."""
        failing, fine = user(), user()
        async with cloud_stack(tmp_path) as stack:
            real = stack.audit.for_user

            async def for_user(upn: str, since: float, until: float) -> list[AuditRecord]:
                if upn == failing:
                    raise StorageError("WritebackAudit", "query requests: unreachable")
                return await real(upn, since, until)

            monkeypatch.setattr(stack.audit, "for_user", for_user)
            with pytest.raises(StorageError):
                await stream(
                    audit_message("audit-m365-admin-reset.json", target=failing),
                    audit_message("audit-m365-admin-reset.json", target=fine),
                )
            assert [record.user for record in drifts(stack)] == [fine]


class TestUnlock:
    async def test_self_service_unlock_is_written_back_only_when_enabled(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Off by default: nothing happens. On: the user is unlocked in AD once, even when the
        batch comes again, through the service (audited with source entra-audit)."""
        target = user()
        message = audit_message("audit-sspr-unlock.json", target=target)
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(message)
            assert stack.directory.applied == []
            assert stack.audit.records == {}
        monkeypatch.setenv("WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE", "true")
        async with cloud_stack(tmp_path / "on") as stack:
            await stack.start_relay()
            await stream(message)
            await stream(message)
            (command,) = stack.directory.applied
            assert (command.operation, command.user) == (Operation.UNLOCK, target)
            (record,) = stack.audit.records.values()
            assert (record.status, record.source, record.caller_kind) == (
                "applied", "entra-audit", "event",
            )  # fmt: skip
            assert record.caller == f"entra-audit:user:{target}"
            assert record.request_id.startswith("entra:")
