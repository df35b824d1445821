"""host.json and function_app.py's binding metadata against their published JSON schemas, and
every binding connection and `%SETTING%` resolvable in local.settings.sample.json and in both
deployments' app settings (tests/infra/function_metadata.py). Nothing starts the Functions host."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.infra import bicep_model, terraform_model
from tests.infra import function_metadata as fm

REPO = Path(__file__).resolve().parents[2]
LOCAL_SETTINGS = REPO / "local.settings.sample.json"


@pytest.fixture(scope="module")
def metadata() -> dict[str, dict[str, Any]]:
    return fm.function_metadata()


@pytest.fixture(scope="module")
def function_schema() -> dict[str, Any]:
    return fm.schema("function.json")


def _host_json() -> dict[str, Any]:
    return dict(json.loads((REPO / "host.json").read_text(encoding="utf-8")))


def _local_settings() -> dict[str, str]:
    return dict(json.loads(LOCAL_SETTINGS.read_text(encoding="utf-8"))["Values"])


class TestHostJson:
    def test_host_json_matches_its_schema(self) -> None:
        """host.json is valid under SchemaStore's host.json schema."""
        assert fm.host_json_problems(_host_json(), fm.schema("host.json")) == []

    @pytest.mark.parametrize(
        ("path", "value", "reported"),
        [
            (("extensions", "http", "routePrefx"), "api", "extensions.http: Additional prop"),
            (("logging", "logLevel", "default"), "Loud", "logging.logLevel.default: 'Loud'"),
            (("version",), "3.0", "version: '2.0' was expected"),
        ],
    )
    def test_broken_host_json_is_reported(
        self, path: tuple[str, ...], value: str, reported: str
    ) -> None:
        """A misspelt key, a log level that does not exist and a wrong version are reported."""
        document = copy.deepcopy(_host_json())
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        problems = fm.host_json_problems(document, fm.schema("host.json"))
        assert len(problems) == 1
        assert problems[0].startswith(reported), problems


class TestBindingMetadata:
    def test_every_function_is_indexed(self, metadata: dict[str, Any]) -> None:
        """function_app.py declares triggers of every kind the checks below cover."""
        types = {b["type"] for f in metadata.values() for b in f["bindings"]}
        assert {"httpTrigger", "serviceBusTrigger", "eventGridTrigger", "eventGrid"} <= types
        assert {"eventHubTrigger", "timerTrigger"} <= types

    def test_every_binding_matches_its_schema(
        self, metadata: dict[str, Any], function_schema: dict[str, Any]
    ) -> None:
        """Each function's metadata, and each binding against its type's definition, is valid
        under SchemaStore's function.json schema."""
        problems = {
            name: fm.binding_problems(function, function_schema)
            for name, function in metadata.items()
        }
        assert {name: found for name, found in problems.items() if found} == {}

    def test_broken_bindings_are_reported(self, function_schema: dict[str, Any]) -> None:
        """A bad auth level, cardinality, direction, a missing name and a non-boolean function
        field are each reported with the binding's position and type."""
        broken = {
            "scriptFile": "function_app.py",
            "disabled": "no",
            "bindings": [
                {"type": "httpTrigger", "direction": "IN", "name": "req", "authLevel": "anon"},
                {"type": "eventHubTrigger", "direction": "IN", "name": "e", "cardinality": "all"},
                {"type": "timerTrigger", "direction": "IN", "schedule": "%S%"},
                {"type": "serviceBusTrigger", "direction": "OUT", "name": "message"},
            ],
        }
        assert fm.binding_problems(broken, function_schema) == [
            "disabled: 'no' is not of type 'boolean'",
            "bindings.2: 'name' is a required property",
            "bindings.0 (httpTrigger): authLevel: 'anon' is not one of "
            "['anonymous', 'function', 'admin']",
            "bindings.1 (eventHubTrigger): cardinality: 'all' is not one of ['one', 'many']",
            "bindings.3 (serviceBusTrigger): direction: 'out' is not one of ['in']",
        ]


class TestSettingsResolve:
    def test_connections_and_expressions_are_found(self, metadata: dict[str, Any]) -> None:
        """The bindings name the connections and settings the deployments provide for."""
        assert fm.connections(metadata) == {
            "AzureWebJobsStorage": "host storage",
            "ServiceBusConnection": "serviceBusTrigger",
            "WritebackEvents": "eventGrid",
            "EntraAuditHub": "eventHubTrigger",
        }
        assert fm.expressions(metadata) == {
            "WRITEBACK_AUDIT_HUB",
            "WRITEBACK_AUDIT_CONSUMER_GROUP",
            "WRITEBACK_SWEEP_SCHEDULE",
        }

    def test_local_settings_sample(self, metadata: dict[str, Any]) -> None:
        """local.settings.sample.json has every connection (its exact name or the identity
        setting under its prefix; an empty value is a placeholder) and every %SETTING% with a
        value."""
        assert fm.resolution_problems(metadata, _local_settings(), empty_allowed=True) == []

    @pytest.mark.parametrize(
        "parameters",
        [{}, {"apiKeysEnabled": True, "eventSubscriptionEnabled": True, "apiKeys": "key"}],
        ids=["example", "everything-on"],
    )
    def test_bicep_app_settings(self, metadata: dict[str, Any], parameters: Any) -> None:
        """The Bicep app settings resolve every connection and %SETTING%, with a value."""
        settings = bicep_model.load(parameters=parameters).app_setting_values
        assert fm.resolution_problems(metadata, settings) == []

    def test_terraform_app_settings(self, metadata: dict[str, Any]) -> None:
        """The Terraform app settings resolve every connection and %SETTING%, with a value."""
        settings = terraform_model.load(REPO / "infra" / "terraform").app_setting_values
        assert fm.resolution_problems(metadata, settings) == []

    def test_unresolvable_settings_are_reported(self, metadata: dict[str, Any]) -> None:
        """A connection with neither its exact setting nor its identity setting, a connection
        whose only setting is empty, and a %SETTING% without a value are reported."""
        settings = _local_settings()
        del settings["EntraAuditHub__fullyQualifiedNamespace"]
        settings["ServiceBusConnection"] = ""
        del settings["ServiceBusConnection__fullyQualifiedNamespace"]
        settings["WRITEBACK_SWEEP_SCHEDULE"] = ""
        assert fm.resolution_problems(metadata, settings) == [
            "connection EntraAuditHub (eventHubTrigger): no setting EntraAuditHub or "
            "EntraAuditHub__fullyQualifiedNamespace",
            "connection ServiceBusConnection (serviceBusTrigger): no setting "
            "ServiceBusConnection or ServiceBusConnection__fullyQualifiedNamespace",
            "connection WritebackEvents (eventGrid): no setting WritebackEvents or "
            "WritebackEvents__topicEndpointUri",
            "%WRITEBACK_SWEEP_SCHEDULE%: no setting WRITEBACK_SWEEP_SCHEDULE with a value",
        ]

    def test_a_prefix_other_than_the_identity_setting_does_not_resolve(
        self, metadata: dict[str, Any]
    ) -> None:
        """A setting under the prefix that the extension does not read for an identity
        connection (`__namespace` for Service Bus) is not taken as the connection."""
        settings = {
            **_local_settings(),
            "ServiceBusConnection__namespace": "sb.example",
        }
        del settings["ServiceBusConnection"]
        del settings["ServiceBusConnection__fullyQualifiedNamespace"]
        problems = fm.resolution_problems(metadata, settings, empty_allowed=True)
        assert problems == [
            "connection ServiceBusConnection (serviceBusTrigger): no setting "
            "ServiceBusConnection or ServiceBusConnection__fullyQualifiedNamespace"
        ]
