"""Bicep and Terraform describe the same deployment, and both set every setting the code reads.

Both models are loaded for the same domains (the Bicep example's), with every secret given and
the Event Grid subscription on, and compared on what matters for security and for the app: the
queues and their properties, the Event Grid topics and their subscription, the audit Event Hub
and its consumer group, every role assignment of the Function, the relays and the requests
topic's identity (role and entity; Terraform's extra roles for whoever runs it are its own), the
storage redundancy, the app settings, the shared inputs and the outputs. The settings the code
reads are found by scanning its source, so a setting renamed in the code and not in infra/ fails
here; a test shows that with a renamed copy. The functions the Event Grid subscription and the
app settings point at are checked against function_app.py's own binding metadata.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.functions import indexed
from tests.infra import bicep_model, terraform_model
from tests.unit.test_cloud_settings import NAME

ROOT = Path(__file__).resolve().parents[2]
SINGLETONS = {
    "application-insights",
    "storage-account",
    "key-vault",
    "servicebus-namespace",
    "eventhub-namespace",
}
# Inputs both deployments take, Bicep name -> Terraform name, for the event-driven features.
SHARED_INPUTS = {
    "unlockOnEntraSelfService": "unlock_on_entra_self_service",
    "driftWindowSeconds": "drift_window_seconds",
    "driftForceChange": "drift_force_change",
    "microsoftWritebackDomains": "microsoft_writeback_domains",
    "apiKeyRoles": "api_key_roles",
    "selfServiceAcrs": "self_service_acrs",
    "selfServiceAmr": "self_service_amr",
    "eventSubscriptionEnabled": "event_subscription_enabled",
    # The app registrations.
    "createAppRegistration": "create_app_registration",
    "pagesClientId": "pages_client_id",
    "pagesHostName": "pages_host_name",
    "pagesPath": "pages_path",
    "appRoleAssignments": "app_role_assignments",
    # The alerts (tests/infra/test_monitoring.py compares the rules themselves).
    "alertEmail": "alert_email",
    "alertFailureRatePercent": "alert_failure_rate_percent",
    "relayOfflineMinutes": "relay_offline_minutes",
}
# Outputs both report, Bicep name -> Terraform name.
SHARED_OUTPUTS = {
    "functionAppName": "function_app_name",
    "functionAppHostName": "function_app_hostname",
    "serviceBusNamespace": "servicebus_namespace",
    "keyVaultUri": "key_vault_uri",
    "requestQueueNames": "request_queue_names",
    "eventGridRequestsTopicEndpoint": "eventgrid_requests_topic_endpoint",
    "eventGridCompletedTopicEndpoint": "eventgrid_completed_topic_endpoint",
    "eventHubsNamespace": "eventhubs_namespace",
    "auditHubName": "audit_hub_name",
    "entraDiagnosticsRuleId": "entra_diagnostics_rule_id",
    "authTenantId": "auth_tenant_id",
    "authAudiences": "auth_audiences",
    "apiClientId": "api_client_id",
    "apiIdentifierUri": "api_identifier_uri",
    "pagesClientId": "pages_client_id",
    "pagesRedirectUri": "pages_redirect_uri",
    "adminClientId": "admin_client_id",
}


def seconds(duration: str | None) -> int | None:
    return None if duration is None else terraform_model.iso_seconds(duration)


@pytest.fixture(scope="module")
def bicep() -> bicep_model.Model:
    return bicep_model.load(
        parameters={
            "apiKeysEnabled": True,
            "apiKeys": "k" * 40,
            "cloudSigningKey": "{}",
            "relayJwks": {
                domain["name"]: '{"keys": []}'
                for domain in bicep_model.example_parameters()["domains"]
            },
            "eventSubscriptionEnabled": True,
        }
    )


@pytest.fixture(scope="module")
def terraform() -> terraform_model.TerraformModel:
    return terraform_model.load(ROOT / "infra" / "terraform")


@pytest.fixture(scope="module")
def domains(bicep: bicep_model.Model) -> list[str]:
    return [domain["name"] for domain in bicep.parameters["domains"]]


def bicep_queues(model: bicep_model.Model) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "session": bool(props.get("requiresSession", False)),
            "dedup": bool(props.get("requiresDuplicateDetection", False)),
            "dedup_window": seconds(props.get("duplicateDetectionHistoryTimeWindow"))
            if props.get("requiresDuplicateDetection")
            else None,
            "ttl": seconds(props.get("defaultMessageTimeToLive")),
            "dlq_on_expiry": bool(props.get("deadLetteringOnMessageExpiration", False)),
            "max_delivery": props.get("maxDeliveryCount"),
            "lock": seconds(props.get("lockDuration")),
        }
        for name, props in model.queues.items()
    }


def terraform_queues(
    model: terraform_model.TerraformModel, domains: list[str]
) -> dict[str, dict[str, Any]]:
    expanded = {}
    for name, props in model.queues.items():
        for domain in domains if terraform_model.DOMAIN in name else [""]:
            expanded[name.replace(terraform_model.DOMAIN, domain)] = {
                "session": bool(props.get("requires_session")),
                "dedup": bool(props.get("requires_duplicate_detection")),
                "dedup_window": seconds(props.get("duplicate_detection_history_time_window"))
                if props.get("requires_duplicate_detection")
                else None,
                "ttl": seconds(props.get("default_message_ttl")),
                "dlq_on_expiry": bool(props.get("dead_lettering_on_message_expiration")),
                "max_delivery": props.get("max_delivery_count"),
                "lock": seconds(props.get("lock_duration")),
            }
    return expanded


def scope(kind: str, name: str) -> tuple[str, str]:
    """An entity as both sides can name it: singletons by kind alone, an Event Grid topic by
    what it carries (the last part of its name: requests or completed), since the rest of its
    name is made of each side's own suffix."""
    if kind == "eventgrid-topic":
        return (kind, topic_role(name))
    return (kind, "" if kind in SINGLETONS else name)


def topic_role(name: str) -> str:
    """`requests` or `completed`, from a topic name such as evgt-<prefix>-<suffix>-requests."""
    return name.rsplit("-", 1)[-1]


def bicep_topics(model: bicep_model.Model) -> dict[str, dict[str, Any]]:
    return {
        topic_role(t.name): {
            "schema": t.properties["inputSchema"],
            "keys": not t.properties["disableLocalAuth"],
            "identity": (t.body.get("identity") or {}).get("type"),
        }
        for t in model.of_type("Microsoft.EventGrid/topics")
    }


def terraform_topics(model: terraform_model.TerraformModel) -> dict[str, dict[str, Any]]:
    return {
        topic_role(t["name"]): {
            "schema": t["input_schema"],
            "keys": t["local_auth_enabled"],
            "identity": (t.get("identity") or [{}])[0].get("type"),
        }
        for t in model.resources["azurerm_eventgrid_topic"].values()
    }


def bicep_subscription(model: bicep_model.Model) -> dict[str, Any]:
    (subscription,) = model.of_type("Microsoft.EventGrid/topics/eventSubscriptions")
    properties = subscription.properties
    function = properties["destination"]["properties"]["resourceId"].origin
    dead_letter = properties["deadLetterWithResourceIdentity"]
    return {
        "topic": topic_role(subscription.parent.name),
        "endpoint": properties["destination"]["endpointType"],
        "function": function.name,
        "batch": properties["destination"]["properties"]["maxEventsPerBatch"],
        "schema": properties["eventDeliverySchema"],
        "types": properties["filter"]["includedEventTypes"],
        "attempts": properties["retryPolicy"]["maxDeliveryAttempts"],
        "ttl_minutes": properties["retryPolicy"]["eventTimeToLiveInMinutes"],
        "dead_letter_identity": dead_letter["identity"]["type"],
        "dead_letter_container": dead_letter["deadLetterDestination"]["properties"][
            "blobContainerName"
        ],
    }


def terraform_subscription(model: terraform_model.TerraformModel) -> dict[str, Any]:
    (subscription,) = model.resources["azurerm_eventgrid_event_subscription"].values()
    (endpoint,) = subscription["azure_function_endpoint"]
    (retry,) = subscription["retry_policy"]
    (identity,) = subscription["dead_letter_identity"]
    (destination,) = subscription["storage_blob_dead_letter_destination"]
    topic = re.fullmatch(r"\$\{azurerm_eventgrid_topic\.(\w+)\.id\}", subscription["scope"])
    assert topic, subscription["scope"]
    container = re.fullmatch(
        r"\$\{azurerm_storage_container\.(\w+)\.name\}",
        destination["storage_blob_container_name"],
    )
    assert container, destination
    return {
        "topic": topic_role(model.resources["azurerm_eventgrid_topic"][topic[1]]["name"]),
        "endpoint": "AzureFunction",
        "function": endpoint["function_id"].rsplit("/functions/", 1)[-1],
        "batch": endpoint["max_events_per_batch"],
        "schema": subscription["event_delivery_schema"],
        "types": subscription["included_event_types"],
        "attempts": retry["max_delivery_attempts"],
        "ttl_minutes": retry["event_time_to_live"],
        "dead_letter_identity": identity["type"],
        "dead_letter_container": model.resources["azurerm_storage_container"][container[1]]["name"],
    }


def bicep_audit_stream(model: bicep_model.Model) -> dict[str, Any]:
    namespace = model.one("Microsoft.EventHub/namespaces")
    hub = model.one("Microsoft.EventHub/namespaces/eventhubs")
    group = model.one("Microsoft.EventHub/namespaces/eventhubs/consumergroups")
    rules = model.of_type("Microsoft.EventHub/namespaces/authorizationRules")
    return {
        "sku": (namespace.body["sku"]["name"], namespace.body["sku"]["capacity"]),
        "tls": namespace.properties["minimumTlsVersion"],
        "keys": not namespace.properties["disableLocalAuth"],
        "hub": hub.name,
        "partitions": hub.properties["partitionCount"],
        "retention_days": hub.properties["messageRetentionInDays"],
        "consumer_group": group.name,
        "rules": {r.name: sorted(r.properties["rights"]) for r in rules},
    }


def terraform_audit_stream(model: terraform_model.TerraformModel) -> dict[str, Any]:
    (namespace,) = model.resources["azurerm_eventhub_namespace"].values()
    (hub,) = model.resources["azurerm_eventhub"].values()
    (group,) = model.resources["azurerm_eventhub_consumer_group"].values()
    rules = model.resources["azurerm_eventhub_namespace_authorization_rule"].values()
    return {
        "sku": (namespace["sku"], namespace["capacity"]),
        "tls": namespace["minimum_tls_version"],
        "keys": namespace["local_authentication_enabled"],
        "hub": hub["name"],
        "partitions": hub["partition_count"],
        "retention_days": hub["message_retention"],
        "consumer_group": group["name"],
        "rules": {
            r["name"]: sorted(right.title() for right in ("send", "listen", "manage") if r[right])
            for r in rules
        },
    }


def bicep_grants(model: bicep_model.Model) -> set[tuple[str, str, tuple[str, str]]]:
    return {
        (a.principal_kind, a.role, scope(a.scope.kind, a.scope.name))
        for a in model.role_assignments
    }


def terraform_grants(
    model: terraform_model.TerraformModel, domains: list[str]
) -> set[tuple[str, str, tuple[str, str]]]:
    return {
        (principal, terraform_model.ROLE_IDS[role], scope(entity.kind, entity.name))
        for principal, role, entity in terraform_model.grants(model, domains)
        if principal != "deployer"  # azurerm writes secrets and tables on the data plane
    }


def code_settings(sources: list[Path]) -> set[str]:
    """The app setting names the given source files read (as the unit contract test scans)."""
    return {name for path in sources for name in NAME.findall(path.read_text())}


def missing_settings(read: set[str], deployed: set[str], local_only: set[str]) -> set[str]:
    """Settings the code reads that a deployment neither sets nor declares local-only."""
    return read - deployed - local_only


class TestParity:
    def test_the_same_queues_with_the_same_properties(
        self,
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
        domains: list[str],
    ) -> None:
        """Each queue exists in both, with the same sessions, duplicate detection, TTL,
        dead-lettering, delivery count and lock."""
        assert bicep_queues(bicep) == terraform_queues(terraform, domains)

    def test_the_same_roles_on_the_same_entities(
        self,
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
        domains: list[str],
    ) -> None:
        """The Function and the relays hold the same roles on the same entities in both."""
        assert bicep_grants(bicep) == terraform_grants(terraform, domains)

    def test_the_same_app_settings_and_local_only_list(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Both set the same app settings (Terraform also blanks the provider's key-based
        AzureWebJobsStorage) and declare the same settings local-only."""
        terraform_settings = {
            name for name, kind in terraform.app_settings.items() if kind != "empty"
        }
        assert set(bicep.app_settings) == terraform_settings
        assert set(bicep.variables["localOnlySettings"]) == set(terraform.local_only_settings)

    def test_the_same_event_grid_topics(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """A requests and a completed topic in both: CloudEvents 1.0, no access keys, an identity
        on the requests topic only."""
        assert bicep_topics(bicep) == terraform_topics(terraform)
        assert set(bicep_topics(bicep)) == {"requests", "completed"}

    def test_the_same_minimum_tls_where_the_provider_allows(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Bicep requires TLS 1.2 on both topics. No azurerm release up to 4.55 can set it
        (docs/deploy.md sets it after apply), so Terraform may leave it out, but never sets
        anything else (test_terraform_schema fails once the minimum azurerm has the argument)."""
        for topic in bicep.of_type("Microsoft.EventGrid/topics"):
            assert topic.properties["minimumTlsVersionAllowed"] == "1.2", topic
        for topic in terraform.resources["azurerm_eventgrid_topic"].values():
            assert topic.get("minimum_tls_version", "1.2") == "1.2", topic

    def test_the_same_event_subscription(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """From the requests topic to the same function, for the same three event types, with
        the same batch, schema, retries and identity-based dead-lettering."""
        assert bicep_subscription(bicep) == terraform_subscription(terraform)
        assert bicep_subscription(bicep)["topic"] == "requests"

    def test_the_subscription_behind_the_same_switch(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Both create the subscription only when told the code is published."""
        plain = bicep_model.load()
        assert plain.parameters["eventSubscriptionEnabled"] is False
        assert plain.of_type("Microsoft.EventGrid/topics/eventSubscriptions") == []
        (subscription,) = terraform.resources["azurerm_eventgrid_event_subscription"].values()
        assert subscription["count"] == "${var.event_subscription_enabled ? 1 : 0}"

    def test_the_same_audit_stream(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """The same namespace tier, TLS and local authentication, the same hub, partitions,
        retention and consumer group, and the same one Send-only rule."""
        assert bicep_audit_stream(bicep) == terraform_audit_stream(terraform)

    def test_the_same_event_inputs_and_outputs(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """The event-driven inputs have the same defaults; both report the same outputs."""
        declared = bicep_model.parse(bicep_model.BICEP_ROOT / "main.bicep")["parameters"]
        for bicep_name, terraform_name in SHARED_INPUTS.items():
            default = terraform.variables[terraform_name]["default"]
            assert declared[bicep_name]["default"] == default, bicep_name
        assert set(bicep.outputs) == set(SHARED_OUTPUTS)
        assert set(terraform.outputs) == set(SHARED_OUTPUTS.values())

    def test_the_same_literal_settings(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Settings both write as constants (tables, the audit hub and its consumer group) have
        the same values."""
        literal = {n for n, kind in bicep.app_settings.items() if kind == bicep_model.LITERAL}
        assert {"WRITEBACK_AUDIT_HUB", "WRITEBACK_AUDIT_CONSUMER_GROUP"} <= literal
        for name in literal:
            assert bicep.app_setting_values[name] == terraform.app_setting_values[name], name

    def test_the_same_storage_redundancy(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """The audit table's account is zone- and geo-redundant in both."""
        bicep_sku = bicep.one("Microsoft.Storage/storageAccounts").body["sku"]["name"]
        (account,) = terraform.resources["azurerm_storage_account"].values()
        assert bicep_sku == f"Standard_{account['account_replication_type']}"


class TestSettingsContract:
    SOURCES = (*sorted((ROOT / "writeback" / "cloud").glob("*.py")), ROOT / "function_app.py")

    def test_every_setting_the_code_reads_is_deployed_by_both(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """What the cloud code reads, each deployment sets or declares local-only."""
        read = code_settings(list(self.SOURCES))
        assert "WRITEBACK_WAIT_SECONDS" in read  # the scan works
        local_only = set(terraform.local_only_settings)
        assert missing_settings(read, set(bicep.app_settings), local_only) == set()
        assert missing_settings(read, set(terraform.app_settings), local_only) == set()

    def test_a_setting_renamed_in_the_code_is_caught(
        self, tmp_path: Path, bicep: bicep_model.Model
    ) -> None:
        """A copy of the code that reads WRITEBACK_WAIT_SECS instead fails the contract."""
        renamed = tmp_path / "settings.py"
        source = (ROOT / "writeback" / "cloud" / "settings.py").read_text()
        renamed.write_text(re.sub(r'"WRITEBACK_WAIT_SECONDS"', '"WRITEBACK_WAIT_SECS"', source))
        sources = [renamed if p.name == "settings.py" else p for p in self.SOURCES]
        read = code_settings(sources)
        local_only = set(bicep.variables["localOnlySettings"])
        assert missing_settings(read, set(bicep.app_settings), local_only) == {
            "WRITEBACK_WAIT_SECS"
        }


@pytest.fixture(scope="module")
def app_bindings() -> dict[str, list[dict[str, Any]]]:
    """function_app.py's functions and their bindings, as the worker indexes them for the host."""
    return {name: list(f.bindings) for name, f in indexed().items()}


def functions_with(bindings: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    """The functions with a binding of type `kind`, each with that binding."""
    return {
        name: binding
        for name, declared in bindings.items()
        for binding in declared
        if binding["type"] == kind
    }


def setting_value(value: str, settings: dict[str, Any]) -> Any:
    """A binding value as the host resolves it: `%NAME%` is the app setting NAME."""
    match = re.fullmatch(r"%(\w+)%", value)
    return settings.get(match[1]) if match else value


class TestFunctionContract:
    """What infra points at exists in function_app.py under the same names: Event Grid refuses a
    subscription to a missing function, and a trigger reading another hub or consumer group
    would silently receive nothing."""

    def test_event_grid_subscription_targets_the_trigger(
        self,
        app_bindings: dict[str, list[dict[str, Any]]],
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
    ) -> None:
        """The subscription delivers to the app's one Event Grid trigger, and each Event Grid
        output binding's connection has its identity-based endpoint setting in both."""
        triggers = functions_with(app_bindings, "eventGridTrigger")
        assert list(triggers) == [bicep_subscription(bicep)["function"]]
        assert list(triggers) == [terraform_subscription(terraform)["function"]]
        outputs = functions_with(app_bindings, "eventGrid")
        assert outputs, "function_app.py publishes no Completed events"
        for output in outputs.values():
            setting = f"{output['connection']}__topicEndpointUri"
            assert setting in bicep.app_settings, setting
            assert setting in terraform.app_settings, setting

    def test_event_hub_trigger_reads_the_audit_hub(
        self,
        app_bindings: dict[str, list[dict[str, Any]]],
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
    ) -> None:
        """The app's Event Hubs trigger connects through a deployed identity-based setting and
        reads the deployed hub with the deployed consumer group."""
        triggers = functions_with(app_bindings, "eventHubTrigger")
        assert triggers, "function_app.py has no Event Hubs trigger for the audit hub"
        stream = bicep_audit_stream(bicep)
        for model in (bicep, terraform):
            values = model.app_setting_values
            for trigger in triggers.values():
                assert f"{trigger['connection']}__fullyQualifiedNamespace" in model.app_settings
                assert setting_value(trigger["eventHubName"], values) == stream["hub"]
                group = trigger.get("consumerGroup", "$Default")
                assert setting_value(group, values) == stream["consumer_group"]
