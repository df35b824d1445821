"""Every HTTP route and every trigger payload, fuzzed: whatever a caller or a publisher sends,
the answer is a 4xx (or the documented 503/504 of an unavailable relay), never a 500, and no
ERROR record with a traceback is logged for a caller's fault. Payloads reach the functions as
Azure delivers them (tests.functions: the worker and the library decode them)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from tests import functions
from tests.unit.cloud_stack import DOMAIN, RELAY, cloud_stack, request
from writeback.cloud.agents import AgentRecord
from writeback.cloud.events import NotSentYet, OutcomePending

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Text that has broken parsers before: surrogates are not sendable, the rest is.
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60) | st.sampled_from(
    ["", " ", "\u3000a@corp.example.test", "a@" + DOMAIN, "../../etc", "%00", "\ufeff", "a" * 600]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
# Malformed JWE general serialisations, the shapes a caller's sealedPassword can take.
JWE = st.fixed_dictionaries(
    {},
    optional={
        "recipients": st.lists(
            st.fixed_dictionaries(
                {}, optional={"header": st.dictionaries(st.sampled_from(["alg", "kid"]), JSON),
                              "encrypted_key": TEXT}
            ) | JSON,
            max_size=3,
        ) | JSON,
        "protected": TEXT, "iv": TEXT, "ciphertext": TEXT, "tag": TEXT, "aad": TEXT,
    },
)  # fmt: skip
# Account references of every kind, well formed or nearly: a SID of the announced domain or
# another, GUIDs and immutable IDs, down-level names, and UPNs with odd suffixes.
USER = st.one_of(
    st.builds("S-1-5-21-1-2-3-{}".format, st.integers(0, 2**32)),
    st.builds("{}-{}".format, st.sampled_from(["S-1-5-21-9-9-9", "s-1-5-32", "S-1-"]), TEXT),
    st.uuids().map(str),
    st.uuids().map(lambda u: base64.b64encode(u.bytes_le).decode()),
    st.builds("{}\\{}".format, st.sampled_from(["CORP", "corp", "EMEA", "", "A" * 16]), TEXT),
    st.builds("{}@{}".format, TEXT, st.sampled_from([DOMAIN, "example.test", "x.test", ""])),
    TEXT,
)
DOMAIN_FIELD = st.sampled_from([DOMAIN, DOMAIN.upper(), "emea.example.test", "x", ""]) | JSON
ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "reset_password": ("POST", ()),
    "change_password": ("POST", ()),
    "unlock_account": ("POST", ()),
    "expire_password": ("POST", ()),
    "request_status": ("GET", ("request_id",)),
    "user_history": ("GET", ("user",)),
    "health": ("GET", ()),
    "domain_keys": ("GET", ("domain",)),
    "domain_policy": ("GET", ("domain",)),
    "user_policy": ("GET", ("user",)),
}
AVAILABILITY = {(503, "agent.unavailable"), (504, "agent.timeout")}


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]


async def alive(stack: Any) -> None:
    """A relay that looks alive (a fresh heartbeat) but serves nothing: requests wait briefly."""
    now = time.time()
    await stack.agents.record(
        AgentRecord(DOMAIN, RELAY, "test", now, now, {}, None, None, "CORP", "S-1-5-21-1-2-3")
    )


class TestRoutes:
    @FUZZ
    @given(
        function=st.sampled_from(sorted(ROUTES)),
        body=st.one_of(
            st.binary(max_size=300),
            JSON.map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries(
                {"user": USER | JSON},
                optional={
                    "domain": DOMAIN_FIELD,
                    "sealedPassword": JWE,
                    "newPassword": TEXT | JSON,
                    "oldPassword": TEXT | JSON,
                    "requestId": TEXT | JSON,
                    "expiresAt": JSON,
                    "initiator": TEXT | JSON,
                },
            ).map(lambda v: json.dumps(v).encode()),
            st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
        ),
        route=st.lists(USER, min_size=3, max_size=3),
        query=st.dictionaries(st.sampled_from(["hours", "x"]), TEXT, max_size=2),
    )
    async def test_no_route_answers_a_500(  # noqa: PLR0917 - hypothesis passes them by name
        self,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
        function: str,
        body: bytes,
        route: list[str],
        query: dict[str, str],
    ) -> None:
        """Any body, route value and query string on any route: a 2xx, a 4xx or the documented
        availability answers, and no traceback in the log."""
        caplog.clear()
        method, names = ROUTES[function]
        async with cloud_stack(tmp_path, wait=0.01) as stack:
            await alive(stack)
            call = request(method, "x", raw=body, params=query,
                           route_params=dict(zip(names, route, strict=False)))  # fmt: skip
            status, answer, _ = await functions.http(function, call)
        reason = functions.json_body(answer).get("reason") if answer.startswith(b"{") else None
        assert status < 500 or (status, reason) in AVAILABILITY, answer[:300]
        assert tracebacks(caplog) == []


class TestTriggers:
    @FUZZ
    @given(
        event=st.one_of(
            st.dictionaries(TEXT, JSON, max_size=6),
            st.fixed_dictionaries(
                {
                    "specversion": st.sampled_from(["1.0", "0.3"]) | JSON,
                    "id": TEXT | JSON,
                    "source": TEXT | JSON,
                    "type": st.sampled_from(
                        ["Writeback.PasswordReset.Requested", "Writeback.AccountUnlock.Requested"]
                    )
                    | TEXT,
                    "data": st.fixed_dictionaries(
                        {"user": TEXT | JSON}, optional={"sealedPassword": JWE}
                    )
                    | JSON,
                },
                optional={"traceparent": TEXT | JSON},
            ),
        )
    )
    async def test_an_event_is_answered_or_retried_never_crashed(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, event: dict[str, Any]
    ) -> None:
        """Any event: refused or dropped, or retried for a documented reason (no relay, no
        outcome yet); nothing else raises and nothing logs a traceback."""
        caplog.clear()
        async with cloud_stack(tmp_path, wait=0.01):
            # The documented retries (no relay, no outcome yet): Event Grid delivers again.
            with contextlib.suppress(NotSentYet, OutcomePending):
                await functions.event_grid(function_app.writeback_event, event)
        assert tracebacks(caplog) == []

    @FUZZ
    @given(bodies=st.lists(st.binary(max_size=200) | JSON.map(json.dumps), min_size=1, max_size=4))
    async def test_audit_batches_and_heartbeats_never_raise(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, bodies: list[bytes | str]
    ) -> None:
        """Any Event Hubs batch and any heartbeat body is skipped or used, never raised, and
        logs no traceback."""
        caplog.clear()
        async with cloud_stack(tmp_path, wait=0.01):
            await functions.event_hubs(function_app.entra_audit, *bodies)
            for body in bodies:
                raw = body if isinstance(body, bytes) else body.encode()
                await functions.service_bus(function_app.record_heartbeat, raw, message_id="m")
        assert tracebacks(caplog) == []
