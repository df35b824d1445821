"""Offline checks of infra/bicep: it parses, it declares the contract (queues, secrets, tables,
topics, event hub, app settings), every identity gets the narrowest role on the narrowest scope,
and checkov finds nothing it is not told why to skip. Nothing here reaches Azure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devstack.servicebus import writeback_queues
from tests.infra import bicep_model, bicep_types
from tests.infra.bicep_model import (
    EVENTGRID_DATA_SENDER,
    EVENTHUBS_DATA_RECEIVER,
    FUNCTION_PRINCIPAL,
    KEYVAULT_REFERENCE,
    KEYVAULT_SECRETS_USER,
    LITERAL,
    MONITORING_METRICS_PUBLISHER,
    PARAMETER,
    RELAY_PRINCIPAL,
    RESOURCE,
    SERVICEBUS_DATA_OWNER,
    SERVICEBUS_DATA_RECEIVER,
    SERVICEBUS_DATA_SENDER,
    STORAGE_BLOB_DATA_CONTRIBUTOR,
    STORAGE_BLOB_DATA_OWNER,
    STORAGE_QUEUE_DATA_CONTRIBUTOR,
    STORAGE_TABLE_DATA_CONTRIBUTOR,
    TOPIC_PRINCIPAL,
    Entity,
    Model,
    least_privilege_violations,
)
from writeback.cloud import events
from writeback.cloud.secrets import SIGNING_KEY_SECRET, relay_keys_secret
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue

REPO = Path(__file__).resolve().parents[2]
# The one module with `extension microsoftGraphV1` (the app registrations), which checkov's
# older pycep cannot parse; it declares only Microsoft Graph resources, which checkov has no
# checks for.
GRAPH_MODULE = "app-registration.bicep"
BICEP = bicep_model.BICEP_ROOT
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
EXAMPLE = bicep_model.example_parameters()
DOMAINS = [domain["name"] for domain in EXAMPLE["domains"]]

# Placeholders, not keys: the model only needs the secure parameters to be non-empty.
SECRETS = {
    "cloudSigningKey": '{"kty": "EC"}',
    "relayJwks": dict.fromkeys(DOMAINS, '{"keys": []}'),
    "apiKeys": "api-key-placeholder",
}
API_KEYS_SECRET = "writeback-api-keys"

APP_SETTINGS = {
    "AzureWebJobsStorage__accountName": RESOURCE,
    "AzureWebJobsStorage__blobServiceUri": RESOURCE,
    "AzureWebJobsStorage__queueServiceUri": RESOURCE,
    "AzureWebJobsStorage__tableServiceUri": RESOURCE,
    "ServiceBusConnection__fullyQualifiedNamespace": RESOURCE,
    "WRITEBACK_DOMAINS": PARAMETER,
    "WRITEBACK_UPN_SUFFIXES": PARAMETER,
    "WRITEBACK_WAIT_SECONDS": PARAMETER,
    "WRITEBACK_REQUEST_LIFETIME_SECONDS": PARAMETER,
    "WRITEBACK_HEARTBEAT_INTERVAL_SECONDS": PARAMETER,
    "WRITEBACK_AUDIT_TABLE": LITERAL,
    "WRITEBACK_AGENTS_TABLE": LITERAL,
    "WRITEBACK_KEYVAULT_URL": RESOURCE,
    "WRITEBACK_KEYS_REFRESH_SECONDS": LITERAL,
    "WRITEBACK_AUTH_TENANT_ID": PARAMETER,
    # The created API app registration's client id and identifier URI, and the example's own.
    "WRITEBACK_AUTH_AUDIENCES": RESOURCE,
    "WRITEBACK_PAGES_CLIENT_ID": RESOURCE,
    "WRITEBACK_API_KEYS": PARAMETER,  # '' when API keys are off; a Key Vault reference when on
    "WRITEBACK_API_KEY_ROLES": PARAMETER,
    "WRITEBACK_SELF_SERVICE_ACRS": PARAMETER,
    "WRITEBACK_SELF_SERVICE_AMR": PARAMETER,
    "APPLICATIONINSIGHTS_CONNECTION_STRING": RESOURCE,
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": LITERAL,
    "WritebackEvents__topicEndpointUri": RESOURCE,
    "EntraAuditHub__fullyQualifiedNamespace": RESOURCE,
    "WRITEBACK_AUDIT_HUB": LITERAL,
    "WRITEBACK_AUDIT_CONSUMER_GROUP": LITERAL,
    "WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE": PARAMETER,
    "WRITEBACK_DRIFT_WINDOW_SECONDS": PARAMETER,
    "WRITEBACK_DRIFT_FORCE_CHANGE": PARAMETER,
    "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS": PARAMETER,
    "WRITEBACK_SWEEP_SCHEDULE": LITERAL,
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": LITERAL,
    "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME": LITERAL,
    "PYTHON_ISOLATE_WORKER_DEPENDENCIES": LITERAL,
    "AzureWebJobsFeatureFlags": LITERAL,
}
LOCAL_ONLY_SETTINGS = [
    "AzureWebJobsStorage",
    "ServiceBusConnection",
    "WRITEBACK_SECRETS_DIR",
    "WRITEBACK_AUTH_JWKS_URL",
    "WRITEBACK_AUTH_AUTHORITY",
    "FUNCTIONS_WORKER_RUNTIME",
]

# What the app registrations give the deployer (created, or the values given by hand).
APP_REGISTRATION_OUTPUTS = (
    "authTenantId",
    "authAudiences",
    "apiClientId",
    "apiIdentifierUri",
    "pagesClientId",
    "pagesRedirectUri",
    "adminClientId",
)

REQUEST_QUEUE = {
    "requiresDuplicateDetection": True,
    "duplicateDetectionHistoryTimeWindow": "PT10M",
    "defaultMessageTimeToLive": "PT10M",
    "deadLetteringOnMessageExpiration": True,
    "maxDeliveryCount": 5,
    "lockDuration": "PT30S",
}
OUTCOMES = {
    "requiresSession": True,
    "defaultMessageTimeToLive": "PT5M",
    "deadLetteringOnMessageExpiration": True,
    "lockDuration": "PT30S",
    "maxDeliveryCount": 5,
}
HEARTBEATS = {"defaultMessageTimeToLive": "PT5M", "maxDeliveryCount": 5, "lockDuration": "PT30S"}

# Event-driven writeback and the Entra ID audit stream: names function_app.py's triggers use.
# The code's contract (writeback.cloud.events.REQUESTED): a type the code takes and the
# subscription filters out would never reach the function in Azure.
REQUESTED_EVENT_TYPES = list(events.REQUESTED)
EVENT_FUNCTION = "writeback_event"
DEAD_LETTER_CONTAINER = "eventgrid-deadletter"
AUDIT_HUB = "entra-audit"
AUDIT_CONSUMER_GROUP = "writeback"
TOPIC = "Microsoft.EventGrid/topics"
SUBSCRIPTION = "Microsoft.EventGrid/topics/eventSubscriptions"


@pytest.fixture(scope="module")
def model() -> Model:
    """The template with every optional part on: secrets given, API keys enabled, the Event Grid
    subscription created."""
    return bicep_model.load(
        parameters={**SECRETS, "apiKeysEnabled": True, "eventSubscriptionEnabled": True}
    )


@pytest.fixture(scope="module")
def plain() -> Model:
    """The template with the example parameters alone: no secret values, API keys off, no Event
    Grid subscription (the first deployment, before the code is published)."""
    return bicep_model.load()


def _topic(model: Model, role: str) -> Any:
    """The Event Grid topic whose name ends in -requests or -completed."""
    (topic,) = [t for t in model.of_type(TOPIC) if t.name.endswith(f"-{role}")]
    return topic


def _queue(name: str) -> Entity:
    return Entity("queue", name)


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)M)?(?:(\d+)S)?", duration)
    assert match, duration
    return int(match[1] or 0) * 60 + int(match[2] or 0)


class TestSource:
    @pytest.mark.parametrize("path", bicep_model.bicep_files(), ids=lambda p: p.name)
    def test_every_file_parses(self, path: Path) -> None:
        """pycep-parser accepts main.bicep and every module."""
        tree = bicep_model.parse(path)
        assert tree.get("resources") or tree.get("modules")

    def test_no_access_keys_are_read(self) -> None:
        """No file calls listKeys() or another list*() function: every caller uses Entra ID."""
        for path in bicep_model.bicep_files():
            assert not re.search(r"\blist\w*\(", path.read_text(), re.IGNORECASE), path

    def test_no_syntax_checkov_cannot_parse(self) -> None:
        """No file uses user-defined types, functions or imports, which checkov's pycep rejects;
        `extension` only in the app registration module, whose resources are all Microsoft
        Graph's (checkov has no check for them, so it loses nothing by skipping the file)."""
        newer = re.compile(r"^\s*(?:@export\(\)|type |func |import |extension )", re.MULTILINE)
        for path in bicep_model.bicep_files():
            if path.name == GRAPH_MODULE:
                continue
            assert not newer.search(path.read_text()), path
        graph = bicep_model.parse(BICEP / "modules" / GRAPH_MODULE)
        assert graph["extensions"] == {"microsoftGraphV1": {}}
        types = {resource["type"] for resource in graph["resources"].values()}
        assert types
        assert all(t.startswith(bicep_model.GRAPH_NAMESPACE) for t in types), types

    def test_graph_extension_is_declared_in_bicepconfig(self) -> None:
        """bicepconfig.json beside main.bicep names the microsoftGraphV1 extension at the
        release whose type data tests/infra checks against."""
        config = json.loads((BICEP / "bicepconfig.json").read_text())
        reference = config["extensions"]["microsoftGraphV1"]
        registry, _, release = reference.rpartition(":")
        assert registry == "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0"
        vendored = bicep_types.GRAPH_TYPES_ROOT / "microsoft.graph" / "v1.0" / release
        assert (vendored / "types.json").is_file(), vendored

    def test_example_parameters_are_declared(self) -> None:
        """The example parameters file sets only parameters main.bicep declares, secrets none."""
        declared = bicep_model.parse(BICEP / "main.bicep")["parameters"]
        assert set(EXAMPLE) <= set(declared)
        assert not set(EXAMPLE) & {"cloudSigningKey", "relayJwks", "apiKeys"}

    def test_secret_parameters_are_secure(self) -> None:
        """The signing key, relay JWKS and API keys arrive as @secure() parameters."""
        declared = bicep_model.parse(BICEP / "main.bicep")["parameters"]
        for name in ("cloudSigningKey", "relayJwks", "apiKeys"):
            assert {"type": "secure"} in declared[name]["decorators"], name


class TestServiceBus:
    def test_queues_are_the_contract(self, model: Model) -> None:
        """Each domain's request queue, the outcomes and the heartbeats queue, with the agreed
        properties, and nothing else."""
        expected = {requests_queue(domain): REQUEST_QUEUE for domain in DOMAINS}
        expected |= {OUTCOMES_QUEUE: OUTCOMES, HEARTBEATS_QUEUE: HEARTBEATS}
        assert model.queues == expected

    def test_queues_match_the_local_broker(self, model: Model) -> None:
        """The queues behave as devstack's broker models them, so tests run against the real
        shape (devstack leaves lock and delivery count of outcomes and heartbeats at its broker
        defaults, which are only compared where it sets them)."""
        for config in writeback_queues(DOMAINS):
            declared = model.queues[config.name]
            assert declared.get("requiresSession", False) == config.requires_session
            assert _seconds(declared["defaultMessageTimeToLive"]) == config.default_ttl
            window = declared.get("duplicateDetectionHistoryTimeWindow")
            assert (window and _seconds(window)) == config.duplicate_detection_window
            dead_letter = declared.get("deadLetteringOnMessageExpiration", False)
            assert dead_letter == config.dead_letter_on_expiration
            if config.name.startswith("writeback-requests-"):
                assert _seconds(declared["lockDuration"]) == config.lock_duration
                assert declared["maxDeliveryCount"] == config.max_delivery_count

    def test_namespace_has_no_local_auth(self, model: Model) -> None:
        """SAS keys are off and TLS 1.2 is the minimum, on the Standard tier by default."""
        namespace = model.one("Microsoft.ServiceBus/namespaces")
        assert namespace.properties == {"disableLocalAuth": True, "minimumTlsVersion": "1.2"}
        assert namespace.body["sku"] == {"name": "Standard", "tier": "Standard"}

    def test_premium_tier_is_a_parameter(self) -> None:
        """serviceBusSku 'Premium' gives a Premium namespace."""
        premium = bicep_model.load(parameters={"serviceBusSku": "Premium"})
        sku = premium.one("Microsoft.ServiceBus/namespaces").body["sku"]
        assert sku == {"name": "Premium", "tier": "Premium"}

    def test_outputs_name_the_request_queues(self, model: Model) -> None:
        """The deployment outputs list each domain's request queue, the topics' endpoints, the
        audit hub's namespace and name, and the rule the Entra ID diagnostic setting uses."""
        assert model.outputs["requestQueueNames"] == [requests_queue(d) for d in DOMAINS]
        assert set(model.outputs) == {
            "functionAppName",
            "functionAppHostName",
            "serviceBusNamespace",
            "keyVaultUri",
            "requestQueueNames",
            "eventGridRequestsTopicEndpoint",
            "eventGridCompletedTopicEndpoint",
            "eventHubsNamespace",
            "auditHubName",
            "entraDiagnosticsRuleId",
            *APP_REGISTRATION_OUTPUTS,
        }
        assert model.outputs["auditHubName"] == AUDIT_HUB
        for role in ("Requests", "Completed"):
            endpoint = model.outputs[f"eventGrid{role}TopicEndpoint"]
            assert endpoint.origin is _topic(model, role.lower()), role
            assert endpoint.path == ("properties", "endpoint")
        rule = model.outputs["entraDiagnosticsRuleId"]
        assert rule.origin.type == "Microsoft.EventHub/namespaces/authorizationRules"


class TestEventGrid:
    def test_two_topics_take_cloudevents_from_identities_only(self, model: Model) -> None:
        """A requests topic and a completed topic, both CloudEvents 1.0, no access keys, TLS 1.2
        at least; only the requests topic has an identity (for dead-lettering)."""
        assert len(model.of_type(TOPIC)) == 2
        for role in ("requests", "completed"):
            topic = _topic(model, role)
            assert topic.properties["inputSchema"] == "CloudEventSchemaV1_0", role
            assert topic.properties["disableLocalAuth"] is True, role
            assert topic.properties["minimumTlsVersionAllowed"] == "1.2", role
        assert _topic(model, "requests").body["identity"] == {"type": "SystemAssigned"}
        assert "identity" not in _topic(model, "completed").body

    def test_subscription_delivers_requested_events_to_the_function(self, model: Model) -> None:
        """One subscription, on the requests topic, hands the three Requested types to the
        writeback_event function of this Function App, as CloudEvents, one at a time."""
        subscription = model.one(SUBSCRIPTION)
        assert subscription.parent.full_name == _topic(model, "requests").full_name
        properties = subscription.properties
        destination = properties["destination"]
        assert destination["endpointType"] == "AzureFunction"
        function = destination["properties"]["resourceId"].origin
        assert (function.type, function.name) == ("Microsoft.Web/sites/functions", EVENT_FUNCTION)
        assert function.parent.name == model.one("Microsoft.Web/sites").name
        assert destination["properties"]["maxEventsPerBatch"] == 1
        assert properties["eventDeliverySchema"] == "CloudEventSchemaV1_0"
        assert properties["filter"] == {"includedEventTypes": REQUESTED_EVENT_TYPES}

    def test_requests_are_retried_briefly_then_dead_lettered(self, model: Model) -> None:
        """A request is retried for ten minutes at most, then written to the dead-letter
        container with the topic's identity (the account has no shared keys)."""
        properties = model.one(SUBSCRIPTION).properties
        assert properties["retryPolicy"] == {
            "maxDeliveryAttempts": 5,
            "eventTimeToLiveInMinutes": 10,
        }
        assert "deadLetterDestination" not in properties
        dead_letter = properties["deadLetterWithResourceIdentity"]
        assert dead_letter["identity"] == {"type": "SystemAssigned"}
        destination = dead_letter["deadLetterDestination"]
        assert destination["endpointType"] == "StorageBlob"
        account = destination["properties"]["resourceId"].origin
        assert account.name == model.one("Microsoft.Storage/storageAccounts").name
        assert destination["properties"]["blobContainerName"] == DEAD_LETTER_CONTAINER

    def test_subscription_waits_for_the_published_code(self, plain: Model) -> None:
        """Without eventSubscriptionEnabled (the first deployment, before the code is published
        and the function exists) there is no subscription; the topics are there already."""
        assert plain.of_type(SUBSCRIPTION) == []
        assert len(plain.of_type(TOPIC)) == 2


class TestEventHubs:
    def test_namespace_takes_only_a_send_rule(self, model: Model) -> None:
        """Standard, TLS 1.2. Local authentication stays on for the Entra ID diagnostic setting,
        which can only send with an authorization rule: there is exactly one, on the namespace
        (diagnostic settings refuse hub rules), with Send and nothing else."""
        namespace = model.one("Microsoft.EventHub/namespaces")
        assert namespace.body["sku"] == {"name": "Standard", "tier": "Standard", "capacity": 1}
        assert namespace.properties["minimumTlsVersion"] == "1.2"
        assert namespace.properties["disableLocalAuth"] is False
        (rule,) = model.of_type("Microsoft.EventHub/namespaces/authorizationRules")
        assert rule.parent is namespace
        assert rule.properties == {"rights": ["Send"]}
        assert model.of_type("Microsoft.EventHub/namespaces/eventhubs/authorizationRules") == []

    def test_audit_hub_and_consumer_group(self, model: Model) -> None:
        """The entra-audit hub (2 to 4 partitions, a day of retention) and the writeback
        consumer group the trigger reads with."""
        hub = model.one("Microsoft.EventHub/namespaces/eventhubs")
        assert hub.name == AUDIT_HUB
        assert 2 <= hub.properties["partitionCount"] <= 4
        assert hub.properties["messageRetentionInDays"] == 1
        group = model.one("Microsoft.EventHub/namespaces/eventhubs/consumergroups")
        assert (group.name, group.parent) == (AUDIT_CONSUMER_GROUP, hub)


class TestKeyVault:
    def test_vault_is_rbac_only_and_purge_protected(self, model: Model) -> None:
        """Access is by Azure RBAC only; soft delete (90 days) and purge protection are on."""
        vault = model.one("Microsoft.KeyVault/vaults").properties
        assert vault["enableRbacAuthorization"] is True
        assert vault["enableSoftDelete"] is True
        assert vault["softDeleteRetentionInDays"] == 90
        assert vault["enablePurgeProtection"] is True
        assert vault["sku"]["name"] == "standard"

    def test_secret_names_are_the_ones_the_code_reads(self, model: Model) -> None:
        """The signing key, each domain's relay JWKS and the API keys, named as
        writeback.cloud.secrets names them ('-' doubled, '.' as '-')."""
        names = {s.name for s in model.of_type("Microsoft.KeyVault/vaults/secrets")}
        expected = {SIGNING_KEY_SECRET, API_KEYS_SECRET, *map(relay_keys_secret, DOMAINS)}
        assert names == expected
        assert relay_keys_secret("my-co.test") in names

    def test_every_secret_has_a_content_type_and_an_expiry(self, model: Model) -> None:
        """Each secret says what it holds and when it is due for rotation (checkov's CKV_AZURE_114
        and CKV_AZURE_41, which checkov cannot see through the secret's condition)."""
        for secret in model.of_type("Microsoft.KeyVault/vaults/secrets"):
            assert secret.properties["contentType"], secret
            assert secret.properties["attributes"]["exp"] is not None, secret

    def test_secrets_are_written_only_when_given(self, plain: Model) -> None:
        """Without values the deployment writes no secret, so keys rotated in Key Vault stay."""
        assert plain.of_type("Microsoft.KeyVault/vaults/secrets") == []

    def test_api_keys_secret_needs_api_keys_enabled(self) -> None:
        """An API keys value is ignored while apiKeysEnabled is false."""
        disabled = bicep_model.load(parameters=SECRETS)
        names = {s.name for s in disabled.of_type("Microsoft.KeyVault/vaults/secrets")}
        assert API_KEYS_SECRET not in names


class TestStorage:
    def test_account_accepts_no_shared_keys(self, model: Model) -> None:
        """StorageV2, HTTPS and TLS 1.2 only, no shared keys, no anonymous blob access."""
        account = model.one("Microsoft.Storage/storageAccounts")
        assert account.body["kind"] == "StorageV2"
        assert account.properties["allowSharedKeyAccess"] is False
        assert account.properties["allowBlobPublicAccess"] is False
        assert account.properties["minimumTlsVersion"] == "TLS1_2"
        assert account.properties["supportsHttpsTrafficOnly"] is True

    def test_container_and_tables(self, model: Model) -> None:
        """The Flex deployment container, Event Grid's dead-letter container and the audit and
        agents tables exist, the containers private."""
        containers = model.of_type("Microsoft.Storage/storageAccounts/blobServices/containers")
        assert sorted((c.name, c.properties["publicAccess"]) for c in containers) == [
            ("app-package", "None"),
            (DEAD_LETTER_CONTAINER, "None"),
        ]
        tables = model.of_type("Microsoft.Storage/storageAccounts/tableServices/tables")
        assert {t.name for t in tables} == {"WritebackAudit", "WritebackAgents"}

    def test_names_follow_azure_rules_for_the_longest_prefix(self) -> None:
        """With an 11-character prefix every globally unique name is still valid."""
        longest = bicep_model.load(parameters={"namePrefix": "abcdefghijk"})
        rules = {
            "Microsoft.Storage/storageAccounts": r"[a-z0-9]{3,24}",
            "Microsoft.KeyVault/vaults": r"(?!.*--)[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]",
            "Microsoft.ServiceBus/namespaces": r"[a-zA-Z][a-zA-Z0-9-]{4,48}[a-zA-Z0-9]",
            "Microsoft.EventHub/namespaces": r"[a-zA-Z][a-zA-Z0-9-]{4,48}[a-zA-Z0-9]",
            "Microsoft.EventGrid/topics": r"[a-zA-Z0-9-]{3,50}",
            "Microsoft.Web/sites": r"[a-zA-Z0-9][a-zA-Z0-9-]{0,58}[a-zA-Z0-9]",
        }
        for resource_type, rule in rules.items():
            resources = longest.of_type(resource_type)
            assert resources, resource_type
            for resource in resources:
                assert re.fullmatch(rule, resource.name), (resource_type, resource.name)


class TestFunctionApp:
    def test_flex_consumption_plan(self, model: Model) -> None:
        """A Linux Flex Consumption (FC1) plan."""
        plan = model.one("Microsoft.Web/serverfarms")
        assert plan.body["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
        assert plan.properties["reserved"] is True

    def test_site_is_locked_down(self, model: Model) -> None:
        """System-assigned identity, HTTPS only, TLS 1.2, no FTP."""
        site = model.one("Microsoft.Web/sites")
        assert site.body["kind"] == "functionapp,linux"
        assert site.body["identity"] == {"type": "SystemAssigned"}
        assert site.properties["httpsOnly"] is True
        assert site.properties["siteConfig"]["minTlsVersion"] == "1.2"

    def test_deployment_package_is_read_with_the_identity(self, model: Model) -> None:
        """The package comes from the app-package container, authenticated by the app's
        identity; the runtime and scale come from the parameters."""
        config = model.one("Microsoft.Web/sites").properties["functionAppConfig"]
        storage = config["deployment"]["storage"]
        assert storage["type"] == "blobContainer"
        assert storage["value"].endswith("}app-package")
        assert storage["authentication"] == {"type": "SystemAssignedIdentity"}
        assert config["runtime"] == {"name": "python", "version": "3.11"}
        assert config["scaleAndConcurrency"] == {
            "maximumInstanceCount": 40,
            "instanceMemoryMB": 2048,
            "triggers": {"http": {"perInstanceConcurrency": 16}},
        }

    def test_app_settings_are_exactly_the_contract(self, plain: Model) -> None:
        """Exactly the settings the code reads in Azure, each from the agreed kind of source."""
        assert plain.app_settings == APP_SETTINGS

    def test_app_setting_values(self, plain: Model) -> None:
        """Parameters and constants arrive as the strings the settings loader parses."""
        values = plain.app_setting_values
        assert values["WRITEBACK_DOMAINS"] == ",".join(DOMAINS)
        assert values["WRITEBACK_WAIT_SECONDS"] == "25"
        assert values["WRITEBACK_REQUEST_LIFETIME_SECONDS"] == "60"
        assert values["WRITEBACK_HEARTBEAT_INTERVAL_SECONDS"] == "60"
        assert values["WRITEBACK_KEYS_REFRESH_SECONDS"] == "300"
        assert values["WRITEBACK_AUDIT_TABLE"] == "WritebackAudit"
        assert values["WRITEBACK_AGENTS_TABLE"] == "WritebackAgents"
        assert values["WRITEBACK_AUTH_TENANT_ID"] == EXAMPLE["authTenantId"]
        api_client_id, identifier_uri, given = values["WRITEBACK_AUTH_AUDIENCES"].split(",")
        assert api_client_id == str(plain.outputs["apiClientId"])
        assert identifier_uri == "api://{tenant().tenantId}/writeback-" + EXAMPLE["namePrefix"]
        assert given == EXAMPLE["authAudiences"]
        assert values["WRITEBACK_PAGES_CLIENT_ID"] == plain.outputs["pagesClientId"]
        assert values["WRITEBACK_API_KEYS"] == ""
        assert values["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"
        assert values["WRITEBACK_AUDIT_HUB"] == AUDIT_HUB
        assert values["WRITEBACK_AUDIT_CONSUMER_GROUP"] == AUDIT_CONSUMER_GROUP
        assert values["WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE"] == "false"
        assert values["WRITEBACK_DRIFT_WINDOW_SECONDS"] == "300"
        assert values["WRITEBACK_DRIFT_FORCE_CHANGE"] == "false"
        assert values["WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS"] == ""
        assert values["WRITEBACK_SWEEP_SCHEDULE"] == "0 */1 * * * *"

    def test_behaviour_parameters_arrive_as_the_code_parses_them(self) -> None:
        """The Entra ID audit behaviour parameters become lower-case booleans, a number and the
        comma-separated list of the domains Microsoft's writeback also serves."""
        values = bicep_model.load(
            parameters={
                "unlockOnEntraSelfService": True,
                "driftWindowSeconds": 900,
                "driftForceChange": True,
                "microsoftWritebackDomains": [DOMAINS[0].upper(), *DOMAINS[1:]],
            }
        ).app_setting_values
        assert values["WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE"] == "true"
        assert values["WRITEBACK_DRIFT_WINDOW_SECONDS"] == "900"
        assert values["WRITEBACK_DRIFT_FORCE_CHANGE"] == "true"
        assert values["WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS"].lower() == ",".join(DOMAINS).lower()

    def test_api_key_roles_arrive_as_the_code_parses_them(self) -> None:
        """The key callers' roles become the comma-separated list auth reads; none means all."""
        roles = ["Writeback.Reset.SelfService", "Writeback.Read"]
        values = bicep_model.load(parameters={"apiKeyRoles": roles}).app_setting_values
        assert values["WRITEBACK_API_KEY_ROLES"] == "Writeback.Reset.SelfService,Writeback.Read"
        assert bicep_model.load().app_setting_values["WRITEBACK_API_KEY_ROLES"] == ""

    def test_step_up_parameters_arrive_as_the_code_parses_them(self) -> None:
        """The contexts and methods an own reset needs become comma-separated lists; none
        means no step-up."""
        values = bicep_model.load(
            parameters={"selfServiceAcrs": ["c1", "c2"], "selfServiceAmr": ["mfa"]}
        ).app_setting_values
        assert values["WRITEBACK_SELF_SERVICE_ACRS"] == "c1,c2"
        assert values["WRITEBACK_SELF_SERVICE_AMR"] == "mfa"
        plain = bicep_model.load().app_setting_values
        assert (plain["WRITEBACK_SELF_SERVICE_ACRS"], plain["WRITEBACK_SELF_SERVICE_AMR"]) == (
            "",
            "",
        )

    def test_event_connections_point_at_their_resources(self, plain: Model) -> None:
        """The output binding's connection names the completed topic's endpoint, the trigger's
        connection the audit namespace's host name."""
        endpoint = plain.app_setting_values["WritebackEvents__topicEndpointUri"]
        assert endpoint.origin is _topic(plain, "completed")
        assert endpoint.path == ("properties", "endpoint")
        namespace = plain.app_setting_values["EntraAuditHub__fullyQualifiedNamespace"]
        assert "evhns-" in namespace.text
        assert "serviceBusEndpoint" in namespace.text

    def test_api_keys_setting_is_a_key_vault_reference(self, model: Model) -> None:
        """With API keys on, the setting names the vault's secret; the keys never appear."""
        vault = model.one("Microsoft.KeyVault/vaults").name
        assert model.app_settings["WRITEBACK_API_KEYS"] == KEYVAULT_REFERENCE
        assert model.app_setting_values["WRITEBACK_API_KEYS"] == (
            f"@Microsoft.KeyVault(VaultName={vault};SecretName={API_KEYS_SECRET})"
        )

    def test_local_only_settings_are_listed_and_absent(self, model: Model) -> None:
        """main.bicep lists the settings Azure must not set, and sets none of them."""
        assert model.variables["localOnlySettings"] == LOCAL_ONLY_SETTINGS
        assert not set(LOCAL_ONLY_SETTINGS) & set(model.app_settings)

    def test_every_sample_setting_is_deployed_or_local_only(self, model: Model) -> None:
        """Each setting of local.settings.sample.json is set in Azure or listed as local-only."""
        sample = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
        assert set(sample) <= set(model.app_settings) | set(LOCAL_ONLY_SETTINGS)

    def test_telemetry_needs_entra_id(self, model: Model) -> None:
        """Application Insights is workspace-based and refuses key-based ingestion."""
        component = model.one("Microsoft.Insights/components").properties
        assert component["DisableLocalAuth"] is True
        assert component["WorkspaceResourceId"].origin.type == (
            "Microsoft.OperationalInsights/workspaces"
        )


class TestRoleAssignments:
    def test_no_role_is_broader_than_the_contract(self, model: Model, plain: Model) -> None:
        """Every data-plane role sits on one queue, secret or table (the host storage excepted)."""
        assert least_privilege_violations(model) == []
        assert least_privilege_violations(plain) == []

    def test_function_gets_exactly_what_it_needs(self, model: Model) -> None:
        """Send to each request queue; receive outcomes and heartbeats; read each secret; write
        its two tables; read the package; host storage; publish telemetry. Nothing else."""
        account = model.one("Microsoft.Storage/storageAccounts").name
        insights = model.one("Microsoft.Insights/components").name
        secrets = [SIGNING_KEY_SECRET, *map(relay_keys_secret, DOMAINS), API_KEYS_SECRET]
        expected = {
            *((SERVICEBUS_DATA_SENDER, _queue(requests_queue(d))) for d in DOMAINS),
            (SERVICEBUS_DATA_RECEIVER, _queue(OUTCOMES_QUEUE)),
            (SERVICEBUS_DATA_SENDER, _queue(OUTCOMES_QUEUE)),  # re-sends late outcomes
            (SERVICEBUS_DATA_OWNER, _queue(HEARTBEATS_QUEUE)),  # its trigger's scale monitor
            *((KEYVAULT_SECRETS_USER, Entity("secret", name)) for name in secrets),
            (STORAGE_TABLE_DATA_CONTRIBUTOR, Entity("table", "WritebackAudit")),
            (STORAGE_TABLE_DATA_CONTRIBUTOR, Entity("table", "WritebackAgents")),
            (STORAGE_BLOB_DATA_OWNER, Entity("blob-container", "app-package")),
            (STORAGE_BLOB_DATA_OWNER, Entity("storage-account", account)),
            (STORAGE_QUEUE_DATA_CONTRIBUTOR, Entity("storage-account", account)),
            (MONITORING_METRICS_PUBLISHER, Entity("application-insights", insights)),
            (EVENTHUBS_DATA_RECEIVER, Entity("event-hub", AUDIT_HUB)),
            (EVENTGRID_DATA_SENDER, Entity("eventgrid-topic", _topic(model, "completed").name)),
        }
        assert model.granted(FUNCTION_PRINCIPAL) == expected

    def test_requests_topic_identity_writes_dead_letters_only(self, model: Model) -> None:
        """The requests topic's identity holds Storage Blob Data Contributor on the dead-letter
        container and nothing else; no other topic has a role."""
        requests = _topic(model, "requests").name
        assert {a.principal for a in model.role_assignments if a.principal_kind == TOPIC_PRINCIPAL}
        assert model.granted(TOPIC_PRINCIPAL) == model.granted(TOPIC_PRINCIPAL, requests)
        assert model.granted(TOPIC_PRINCIPAL) == {
            (STORAGE_BLOB_DATA_CONTRIBUTOR, Entity("blob-container", DEAD_LETTER_CONTAINER))
        }

    def test_function_reads_api_keys_only_when_enabled(self) -> None:
        """With API keys off the function gets no role on their secret, even with a value."""
        model = bicep_model.load(parameters=SECRETS)
        scopes = {scope for _, scope in model.granted(FUNCTION_PRINCIPAL)}
        assert Entity("secret", API_KEYS_SECRET) not in scopes
        assert Entity("secret", SIGNING_KEY_SECRET) in scopes

    def test_each_relay_gets_exactly_its_own_queue(self, model: Model) -> None:
        """A relay receives from its own domain's request queue and sends outcomes and
        heartbeats; it has no role on another domain's queue, on Key Vault or on storage."""
        for domain in EXAMPLE["domains"]:
            for principal in domain["relayPrincipalIds"]:
                assert model.granted(RELAY_PRINCIPAL, principal) == {
                    (SERVICEBUS_DATA_RECEIVER, _queue(requests_queue(domain["name"]))),
                    (SERVICEBUS_DATA_SENDER, _queue(OUTCOMES_QUEUE)),
                    (SERVICEBUS_DATA_SENDER, _queue(HEARTBEATS_QUEUE)),
                }

    def test_every_principal_is_known(self, model: Model) -> None:
        """Every assignment goes to the function's identity, a declared relay or the requests
        topic's identity, as a service principal, under a name unique to its scope, principal
        and role."""
        assignments = model.of_type("Microsoft.Authorization/roleAssignments")
        assert {a.principal_kind for a in model.role_assignments} == {
            FUNCTION_PRINCIPAL,
            RELAY_PRINCIPAL,
            TOPIC_PRINCIPAL,
        }
        assert {a.properties["principalType"] for a in assignments} == {"ServicePrincipal"}
        names = [str(a.body["name"]) for a in assignments]
        assert len(names) == len(set(names))


class TestDeliberateBreak:
    @pytest.mark.parametrize(
        ("module", "entity_scope", "wide_scope", "reported", "wide"),
        [
            (
                "relay-access.bicep",
                "scope: requestQueue\n",
                "scope: namespace\n",
                3,
                "servicebus-namespace",
            ),
            ("function-access.bicep", "scope: secrets[i]\n", "scope: vault\n", 4, "key-vault"),
            (
                "function-access.bicep",
                "scope: auditHub\n",
                "scope: eventHubNamespace\n",
                1,
                "eventhub-namespace",
            ),
            (
                "eventgrid.bicep",
                "scope: deadLetterContainer\n",
                "scope: account\n",
                1,
                "storage-account",
            ),
        ],
    )
    def test_widened_scope_is_reported(
        self,
        tmp_path: Path,
        *,
        module: str,
        entity_scope: str,
        wide_scope: str,
        reported: int,
        wide: str,
    ) -> None:
        """Moving one role assignment from its entity to the namespace, vault or account is
        caught, once per principal and entity, by the same check the real template passes."""
        copy = tmp_path / "bicep"
        shutil.copytree(BICEP, copy)
        path = copy / "modules" / module
        source = path.read_text()
        assert source.count(entity_scope) == 1
        path.write_text(source.replace(entity_scope, wide_scope))

        violations = least_privilege_violations(
            bicep_model.load(copy, {**SECRETS, "apiKeysEnabled": True})
        )

        assert len(violations) == reported, violations
        assert all(f"on {wide} " in v and "must be scoped to a" in v for v in violations)


def _checkov_skips_in_source() -> set[tuple[str, str]]:
    found = set()
    for path in bicep_model.bicep_files():
        for check in re.findall(r"//\s*checkov:skip=(CKV\w+):\S", path.read_text()):
            found.add(("/" + path.relative_to(BICEP).as_posix(), check))
    return found


@pytest.fixture(scope="module")
def checkov() -> dict[str, Any]:
    """checkov's JSON report on infra/bicep, offline."""
    if not CHECKOV.exists():
        (pytest.fail if os.environ.get("WRITEBACK_REQUIRE_CHECKOV") else pytest.skip)(
            "checkov is not installed in .venv-checkov (python3 -m venv .venv-checkov && "
            ".venv-checkov/bin/pip install checkov==3.3.30)"
        )
    completed = subprocess.run(
        [str(CHECKOV), "-d", str(BICEP), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        timeout=110,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    assert isinstance(report, dict), "expected one framework's report"
    return report


class TestCheckov:
    def test_no_failed_checks(self, checkov: dict[str, Any]) -> None:
        """checkov reports no failed check."""
        failed = [
            f"{c['check_id']} {c['resource']} {c['file_path']}"
            for c in checkov["results"]["failed_checks"]
        ]
        assert failed == []

    def test_every_file_with_resources_parsed(self, checkov: dict[str, Any]) -> None:
        """checkov's own (older) pycep parses every file that declares a resource; main.bicep,
        which only wires modules and holds the fail() parameter checks its grammar lacks, is the
        one file it may not parse, and so checkov loses no resource."""
        unparsed = {Path(p).name for p in checkov["results"].get("parsing_errors") or []}
        assert unparsed <= {"main.bicep", GRAPH_MODULE}, unparsed
        assert not bicep_model.parse(BICEP / "main.bicep").get("resources")
        assert checkov["summary"]["passed"] > 0

    def test_every_skip_is_in_the_source_with_a_reason(self, checkov: dict[str, Any]) -> None:
        """Each skipped check is skipped by a `checkov:skip=ID:reason` comment on its resource,
        and no such comment is left over for a check that no longer fires."""
        skipped = checkov["results"]["skipped_checks"]
        for check in skipped:
            reason = check["check_result"].get("suppress_comment") or ""
            assert len(reason) > 20, check["check_id"]
        reported = {(c["file_path"], c["check_id"]) for c in skipped}
        assert reported == _checkov_skips_in_source()

    def test_key_controls_pass(self, checkov: dict[str, Any]) -> None:
        """The controls this template exists to satisfy are checked and pass."""
        passed = {c["check_id"] for c in checkov["results"]["passed_checks"]}
        expected = {
            "CKV_AZURE_3",  # storage: HTTPS only
            "CKV_AZURE_44",  # storage: TLS 1.2
            "CKV_AZURE_42",  # key vault: recoverable
            "CKV_AZURE_110",  # key vault: purge protection
            "CKV_AZURE_111",  # key vault: soft delete
            "CKV_AZURE_14",  # app: HTTPS only
            "CKV_AZURE_15",  # app: TLS 1.2
            "CKV_AZURE_16",  # app: managed identity
            "CKV_AZURE_191",  # event grid: the requests topic has a managed identity
            "CKV_AZURE_192",  # event grid: topics take no access keys
            "CKV_AZURE_223",  # event hubs: TLS 1.2
        }
        assert expected <= passed, expected - passed
