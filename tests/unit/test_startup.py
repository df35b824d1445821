"""A missing or unresolved setting never unloads the app: every function stays indexed, callers get
a 503 that says only that the service is not configured, and the setting is named in the log
and, for an authenticated operator, by /api/v1/health."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

import function_app
from tests import functions
from writeback.cloud import http

KEY = "startup-test-operator-key-0123456789"
UNRESOLVED = "@Microsoft.KeyVault(VaultName=kv-writeback;SecretName=writeback-api-keys)"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """App settings with a domain and an API key, and nothing else: no Service Bus, no storage,
    no keys."""
    for name in list(os.environ):
        if name.startswith(("WRITEBACK_", "ServiceBus", "AzureWebJobs")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WRITEBACK_DOMAINS", "corp.example.test")
    monkeypatch.setenv("WRITEBACK_API_KEYS", KEY)
    http.use(None)
    yield dict(os.environ)
    http.use(None)


def reset(key: str | None = KEY) -> functions.HttpCall:
    headers = {"x-functions-key": key} if key else {}
    return functions.HttpCall("POST", "v1/passwords/reset", b'{"user": "a@b.c"}', headers)


def health(key: str | None = KEY) -> functions.HttpCall:
    return functions.HttpCall("GET", "v1/health", headers={"x-functions-key": key} if key else {})


class TestMisconfigured:
    async def test_callers_get_a_generic_503_and_the_log_names_the_setting(
        self, environ: dict[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A reset while Service Bus is not configured: 503 service.misconfigured, a message
        that names no setting; the log names it."""
        caplog.set_level(logging.ERROR)
        status, body, _ = await functions.http(function_app.reset_password, reset())
        answer = functions.json_body(body)
        assert (status, answer["error"]) == (503, "service.misconfigured")
        assert "ServiceBus" not in body.decode()
        assert "WRITEBACK" not in body.decode()
        settings = [getattr(r, "setting", None) for r in caplog.records]
        assert "ServiceBusConnection__fullyQualifiedNamespace" in settings

    async def test_an_operator_sees_the_setting_in_health(self, environ: dict[str, str]) -> None:
        """/api/v1/health names the setting and the problem to a caller with the read role;
        without a key it is 401 and says nothing about settings."""
        status, body, _ = await functions.http(function_app.health, health())
        answer = functions.json_body(body)
        assert (status, answer["status"]) == (503, "misconfigured")
        assert answer["setting"] == "ServiceBusConnection__fullyQualifiedNamespace"
        assert answer["problem"]
        status, body, _ = await functions.http(function_app.health, health(None))
        assert status == 401
        assert "setting" not in functions.json_body(body)

    async def test_an_unresolved_reference_is_named_and_its_value_never_used(
        self, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unresolved Key Vault reference in WRITEBACK_API_KEYS: the reference text is not an
        API key, nobody can authenticate, and every caller gets the generic 503."""
        monkeypatch.setenv("WRITEBACK_API_KEYS", UNRESOLVED)
        for key in (UNRESOLVED, KEY, None):
            status, body, _ = await functions.http(function_app.health, health(key))
            assert (status, functions.json_body(body)["error"]) == (503, "service.misconfigured")
        assert http.operator_auth_settings(os.environ) is None

    async def test_an_unresolved_setting_elsewhere_still_lets_the_operator_in(
        self, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unresolved reference in another setting: the operator's key still works and
        health names that setting."""
        monkeypatch.setenv("WRITEBACK_UPN_SUFFIXES", UNRESOLVED)
        status, body, _ = await functions.http(function_app.health, health())
        answer = functions.json_body(body)
        assert (status, answer["setting"]) == (503, "WRITEBACK_UPN_SUFFIXES")
        assert "Key Vault" in answer["problem"]
        assert UNRESOLVED not in body.decode()

    async def test_a_broken_role_list_takes_its_keys_with_it(
        self, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A role list that cannot be read is not replaced by every role: the keys it governs
        are dropped with it, so a reset-only key never reads the configuration in health."""
        monkeypatch.setenv("WRITEBACK_API_KEY_ROLES", "Writeback.Reset.Admin,Writeback.Bogus")
        assert http.operator_auth_settings(os.environ) is None
        monkeypatch.setenv("WRITEBACK_API_KEY_ROLES", UNRESOLVED)
        status, body, _ = await functions.http(function_app.health, health())
        assert (status, functions.json_body(body)["error"]) == (503, "service.misconfigured")

    async def test_a_reset_only_key_is_not_an_operator(
        self, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A key without the read role is refused by health (403) and learns nothing."""
        monkeypatch.setenv("WRITEBACK_API_KEY_ROLES", "Writeback.Reset.Admin")
        status, body, _ = await functions.http(function_app.health, health())
        assert status == 403
        assert "setting" not in functions.json_body(body)
