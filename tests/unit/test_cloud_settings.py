"""The cloud side's settings: every one the code reads is in local.settings.sample.json, the
sample itself starts the app, and bad or unresolved values stop start-up naming the setting."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from writeback.cloud import bootstrap
from writeback.cloud.settings import CloudSettings
from writeback.errors import ConfigurationError
from writeback.routing import Routes, UnknownDomain

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
NAME = re.compile(
    r'"((?:WRITEBACK_[A-Z_]+)|(?:ServiceBusConnection(?:__[A-Za-z]+)?)'
    r"|(?:AzureWebJobsStorage(?:__[A-Za-z]+)?)|APPLICATIONINSIGHTS_[A-Z_]+)\""
)


def read_by_the_code() -> set[str]:
    sources = [*sorted((ROOT / "writeback" / "cloud").glob("*.py")), ROOT / "function_app.py"]
    return {name for path in sources for name in NAME.findall(path.read_text())}


class TestSample:
    def test_every_setting_the_code_reads_is_in_the_sample(self) -> None:
        """A setting added to the code without the sample (and so without infra) fails here."""
        read = read_by_the_code()
        assert "WRITEBACK_DOMAINS" in read  # the scan itself works
        assert read - set(SAMPLE) == set()

    def test_the_sample_is_a_working_configuration(self) -> None:
        """The sample's values start the app: local Service Bus and Azurite, API key auth."""
        settings = CloudSettings.from_env(SAMPLE)
        assert settings.servicebus.connection_string
        assert settings.storage.connection_string == "UseDevelopmentStorage=true"
        assert settings.routes.domains == {"corp.example.test"}


class TestRefusals:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("WRITEBACK_DOMAINS", ""),
            ("WRITEBACK_DOMAINS", "Not A Domain"),
            ("WRITEBACK_UPN_SUFFIXES", "example.com=elsewhere.test"),
            ("WRITEBACK_UPN_SUFFIXES", "example.com"),
            ("WRITEBACK_WAIT_SECONDS", "soon"),
            ("WRITEBACK_WAIT_SECONDS", "500"),
            ("WRITEBACK_REQUEST_LIFETIME_SECONDS", "9000"),
            ("WRITEBACK_HEARTBEAT_INTERVAL_SECONDS", "0"),
            ("WRITEBACK_API_KEYS", "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/s/k/)"),
        ],
    )
    def test_bad_values_name_their_setting(self, name: str, value: str) -> None:
        """Each bad value stops start-up with an error naming the setting."""
        with pytest.raises(ConfigurationError) as caught:
            CloudSettings.from_env({**SAMPLE, name: value})
        assert caught.value.setting == name

    def test_wait_longer_than_lifetime_is_refused(self) -> None:
        """A caller cannot be made to wait for a request the relay would already refuse."""
        with pytest.raises(ConfigurationError) as caught:
            CloudSettings.from_env(
                {
                    **SAMPLE,
                    "WRITEBACK_WAIT_SECONDS": "60",
                    "WRITEBACK_REQUEST_LIFETIME_SECONDS": "30",
                }
            )
        assert caught.value.setting == "WRITEBACK_WAIT_SECONDS"

    def test_no_connection_settings(self) -> None:
        """Without Service Bus or storage settings the error names the Azure form to set."""
        for missing, named in (
            ("ServiceBusConnection", "ServiceBusConnection__fullyQualifiedNamespace"),
            ("AzureWebJobsStorage", "AzureWebJobsStorage__tableServiceUri"),
        ):
            with pytest.raises(ConfigurationError) as caught:
                CloudSettings.from_env({**SAMPLE, missing: ""})
            assert caught.value.setting == named


class TestRouting:
    def test_suffixes_route_exactly(self) -> None:
        """Own names and alternate suffixes route, case-insensitively; subdomains do not."""
        routes = Routes.parse("corp.example.com,emea.example.com", "example.com=corp.example.com")
        assert routes.route("Alice@EXAMPLE.com") == "corp.example.com"
        assert routes.route("bob@emea.example.com") == "emea.example.com"
        for upn in ("carol@sub.example.com", "dave@example.org", "no-suffix"):
            with pytest.raises(UnknownDomain):
                routes.route(upn)


class TestStartUp:
    def test_the_app_imports_without_settings(self) -> None:
        """With nothing configured, importing function_app (as the host indexes it) succeeds:
        settings are checked when the service is first built."""
        result = subprocess.run(
            [sys.executable, "-c", "import function_app"],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("WRITEBACK_")},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    async def test_building_the_app_quiets_the_sdks_request_logging(self) -> None:
        """Built from the sample's settings (nothing connects), the cloud side keeps the Azure
        SDK from logging each HTTP request and response at INFO; its warnings still pass."""
        sdk = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
        before = sdk.level
        try:
            sdk.setLevel(logging.NOTSET)
            cloud = await bootstrap.build(SAMPLE)
            await cloud.close()
            assert sdk.level == logging.WARNING  # whatever the root logger's (the worker's INFO)
        finally:
            sdk.setLevel(before)
