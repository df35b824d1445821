"""Side by side with Microsoft's writeback (WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS): the Entra
audit stream through function_app's Event Hubs trigger, with the published-shaped fixtures of
tests/fixtures/entra, over the real service, the in-memory audit trail and a real relay. For a
domain Microsoft's writeback also serves, what its SSPR library logged is recorded as written back
by Microsoft and its Core Directory twin is matched, in any order and across batches; a reset only
Core Directory logged (the Microsoft 365 admin center) is still drift."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pytest

import function_app
from tests.entra import audit_message, by_service, reversed_records, stream
from tests.unit.cloud_stack import DOMAIN, Stack, call, cloud_stack, request
from writeback.cloud import drift, microsoft_writeback
from writeback.cloud.audit import AuditRecord
from writeback.cloud.entra_audit import SSPR_LIBRARY
from writeback.cloud.settings import CloudSettings, EventSettings
from writeback.errors import ConfigurationError
from writeback.protocol import Operation

pytestmark = pytest.mark.timeout(60)

MICROSOFT = "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS"
CORE = "Core Directory"
OTHER = "branch.example.test"  # a second writeback domain
SAMPLE = json.loads((Path(function_app.__file__).parent / "local.settings.sample.json")
                    .read_text())["Values"]  # fmt: skip
# The fixtures with an SSPR record and its Core Directory twin: the operation and the SSPR
# activity. The first has the SSPR record first, the others the Core Directory record first.
TWINS = {
    "audit-entra-admin-reset.json": ("reset", "Reset password (by admin)"),
    "audit-sspr-reset.json": ("reset", "Reset password (self-service)"),
    "audit-self-service-change.json": ("change", "Change password (self-service)"),
}


def user(domain: str = DOMAIN) -> str:
    return f"sbs{uuid.uuid4().hex[:10]}@{domain}"


def drifts(stack: Stack) -> list[AuditRecord]:
    return [r for r in stack.audit.records.values() if r.operation == drift.DRIFT]


def entries(stack: Stack) -> list[AuditRecord]:
    return [r for r in stack.audit.records.values() if r.caller == microsoft_writeback.CALLER]


def summaries(caplog: pytest.LogCaptureFixture) -> list[dict[str, int]]:
    """What each batch's summary line counted, in order."""
    return [vars(r) for r in caplog.records if r.getMessage() == "audit batch"]


@pytest.fixture
def side_by_side(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Microsoft's writeback also serves DOMAIN, and drift forces a change: a wrong drift would
    expire the password the user just chose, which the relay would apply."""
    monkeypatch.setenv(MICROSOFT, DOMAIN)
    monkeypatch.setenv("WRITEBACK_DRIFT_FORCE_CHANGE", "true")
    caplog.set_level(logging.INFO)


class TestSetting:
    def test_empty_by_default(self) -> None:
        """No domain by default, and none in the sample: writeback is the only writeback."""
        assert EventSettings.from_env({}).microsoft_writeback_domains == frozenset()
        assert CloudSettings.from_env(SAMPLE).events.microsoft_writeback_domains == frozenset()

    def test_listed_domains_are_read_in_lower_case(self) -> None:
        """A comma-separated list, spaces, case and empty items aside, read once into the
        cloud's settings against WRITEBACK_DOMAINS."""
        domains = {"WRITEBACK_DOMAINS": f"{DOMAIN},{OTHER}"}
        listed = EventSettings.from_env({**domains, MICROSOFT: " Corp.Example.TEST ,, "})
        assert listed.microsoft_writeback_domains == frozenset({DOMAIN})
        both = CloudSettings.from_env({**SAMPLE, **domains, MICROSOFT: f"{OTHER.upper()},{DOMAIN}"})
        assert both.events.microsoft_writeback_domains == frozenset({DOMAIN, OTHER})

    @pytest.mark.parametrize(
        "value", ["elsewhere.test", f"{DOMAIN},elsewhere.test", "example.test"], ids=repr
    )
    def test_a_domain_writeback_does_not_serve_is_refused(self, value: str) -> None:
        """A domain not in WRITEBACK_DOMAINS (a typo, or a UPN suffix rather than its domain)
        stops start-up naming the setting, rather than leaving drift on for Microsoft's resets."""
        environ = {**SAMPLE, "WRITEBACK_UPN_SUFFIXES": f"example.test={DOMAIN}", MICROSOFT: value}
        with pytest.raises(ConfigurationError) as caught:
            CloudSettings.from_env(environ)
        assert caught.value.setting == MICROSOFT
        assert "WRITEBACK_DOMAINS" in caught.value.problem


@pytest.mark.usefixtures("side_by_side")
class TestMicrosoftWroteBack:
    @pytest.mark.parametrize("order", ["published", "reversed"])
    @pytest.mark.parametrize("fixture", TWINS)
    async def test_sspr_records_are_recorded_as_microsofts_and_their_twins_match(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, fixture: str, order: str
    ) -> None:
        """An SSPR record and its Core Directory twin, in either order in the batch: one entry
        saying Microsoft's writeback wrote the password (applied), no drift, no expire sent,
        and no UPN in the log."""
        target = user()
        operation, activity = TWINS[fixture]
        message = audit_message(fixture, target=target)
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(message if order == "published" else reversed_records(message))
            assert drifts(stack) == []
            assert stack.directory.applied == []
            (entry,) = stack.audit.records.values()
            assert (entry.user, entry.domain, entry.operation) == (target, DOMAIN, operation)
            assert (entry.status, entry.reason) == ("applied", "applied")
            assert (entry.source, entry.caller_kind) == ("entra-audit", "event")
            assert entry.caller == "entra-audit:microsoft-writeback"
            assert entry.request_id.startswith("microsoft:")
            assert entry.detail is not None
            assert f"'{activity}' ({SSPR_LIBRARY})" in entry.detail
            assert "written back by Microsoft's writeback" in entry.detail
        ((summary),) = summaries(caplog)
        assert (summary["microsoft"], summary["matched"], summary["drifts"]) == (1, 1, 0)
        assert target not in caplog.text
        assert all(target not in repr(vars(record)) for record in caplog.records)

    async def test_twins_in_separate_messages_of_one_batch_match(self, tmp_path: Path) -> None:
        """The Core Directory record's message ahead of the SSPR record's in one batch: the
        batch's SSPR records are handled first, so the twin still finds the entry."""
        target = user()
        message = audit_message("audit-sspr-reset.json", target=target)
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(by_service(message, CORE), by_service(message, SSPR_LIBRARY))
            assert drifts(stack) == []
            assert len(entries(stack)) == 1
            assert stack.directory.applied == []

    @pytest.mark.parametrize("fixture", TWINS)
    async def test_a_twin_in_a_later_batch_finds_the_entry(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, fixture: str
    ) -> None:
        """The SSPR record in one batch, its Core Directory twin in the next: the twin finds the
        entry in the user's window and is matched; both batches again change nothing."""
        target = user()
        message = audit_message(fixture, target=target)
        sspr, core = by_service(message, SSPR_LIBRARY), by_service(message, CORE)
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(sspr)
            await stream(core)
            await stream(sspr)
            await stream(core)
            assert drifts(stack) == []
            assert len(entries(stack)) == len(stack.audit.records) == 1
            assert stack.directory.applied == []
        counted = [(s["microsoft"], s["matched"], s["repeated"]) for s in summaries(caplog)]
        assert counted == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0)]

    async def test_without_correlation_ids_any_entry_in_the_window_matches(
        self, tmp_path: Path
    ) -> None:
        """Records that carry no correlation id (Entra's always do) cannot name their twin: a
        Core Directory record then matches any entry of Microsoft's writeback in the window."""
        target = user()
        message = json.loads(audit_message("audit-entra-admin-reset.json", target=target))
        for record in message["records"]:
            del record["correlationId"], record["properties"]["correlationId"]
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(reversed_records(json.dumps(message).encode()))
            assert drifts(stack) == []
            assert len(entries(stack)) == 1

    async def test_the_helpdesk_history_shows_it(self, tmp_path: Path) -> None:
        """The user's requests list the entry as an applied reset from the audit stream, with a
        message naming Microsoft's writeback, and its id reads back through the API."""
        target = user()
        message = audit_message("audit-sspr-reset.json", target=target, at=time.time() - 60)
        async with cloud_stack(tmp_path) as stack:
            await stream(message)
            assert drifts(stack) == []
            status, answer = await call(
                function_app.user_history, request("GET", "x", route_params={"user": target})
            )
            assert status == 200, answer
            (listed,) = answer["requests"]
            assert (listed["operation"], listed["source"], listed["status"]) == (
                "reset", "entra-audit", "applied",
            )  # fmt: skip
            assert listed["message"] == microsoft_writeback.MESSAGE
            status, single = await call(
                function_app.request_status,
                request("GET", "x", route_params={"request_id": listed["requestId"]}),
            )
            assert (status, single["status"], single["reason"]) == (200, "applied", "applied")

    async def test_a_failed_self_service_reset_records_nothing(self, tmp_path: Path) -> None:
        """A reset Microsoft's writeback could not make (on-premises unreachable) changed no
        password: no entry, no drift."""
        async with cloud_stack(tmp_path) as stack:
            await stream(audit_message("audit-sspr-reset-failed.json", target=user()))
            assert stack.audit.records == {}


@pytest.mark.usefixtures("side_by_side")
class TestStillDrift:
    async def test_a_microsoft_365_admin_center_reset_is_drift(self, tmp_path: Path) -> None:
        """Core Directory alone (Microsoft's writeback never saw it): drift, and the expire goes
        to the relay as for any domain."""
        target = user()
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(audit_message("audit-m365-admin-reset.json", target=target))
            (record,) = drifts(stack)
            assert record.user == target
            assert entries(stack) == []
            assert [(c.operation, c.user) for c in stack.directory.applied] == [
                (Operation.EXPIRE, target)
            ]

    async def test_a_microsoft_entry_matches_only_its_own_twin(self, tmp_path: Path) -> None:
        """A Microsoft 365 admin center reset a minute after the user's self-service reset is
        drift: Microsoft's entry matches the record with its correlation id, not the window."""
        target, now = user(), time.time()
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(audit_message("audit-sspr-reset.json", target=target, at=now))
            await stream(audit_message("audit-m365-admin-reset.json", target=target, at=now + 60))
            assert len(entries(stack)) == 1
            (record,) = drifts(stack)
            assert record.detail is not None
            assert "'Reset user password' (Core Directory)" in record.detail
            assert [c.operation for c in stack.directory.applied] == [Operation.EXPIRE]

    async def test_only_the_listed_domains_change(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With only the other domain listed, a self-service reset in DOMAIN is drift as before,
        and the same reset in the other domain is Microsoft's."""
        monkeypatch.setenv(MICROSOFT, OTHER)
        monkeypatch.delenv("WRITEBACK_DRIFT_FORCE_CHANGE")
        ours, theirs = user(), user(OTHER)
        async with cloud_stack(tmp_path, more_domains=[OTHER]) as stack:
            await stream(
                audit_message("audit-sspr-reset.json", target=ours),
                audit_message("audit-sspr-reset.json", target=theirs),
            )
            assert [record.user for record in drifts(stack)] == [ours]
            assert [(entry.user, entry.domain) for entry in entries(stack)] == [(theirs, OTHER)]


@pytest.mark.usefixtures("side_by_side")
class TestUnlock:
    async def test_self_service_unlock_sends_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE on, a self-service unlock in a domain
        Microsoft's writeback serves sends no unlock: Microsoft unlocked the account."""
        monkeypatch.setenv("WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE", "true")
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            await stream(audit_message("audit-sspr-unlock.json", target=user()))
            assert stack.directory.applied == []
            assert stack.audit.records == {}
        ((summary),) = summaries(caplog)
        assert (summary["unlocks"], summary["not_ours"]) == (0, 1)
