"""The two deployments name, keep and document the same things.

Names of globally unique resources follow one pattern in both (`<kind>-<prefix>-<suffix>`,
storage `st<prefix><suffix>`), with an 8-character suffix derived from the resource group; log
and blob retention and vault soft delete are the same; and the docs list exactly the event types
the Event Grid subscription delivers. A difference here is a deployment that behaves differently
depending on which tool made it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra import bicep_model, terraform_model

ROOT = Path(__file__).resolve().parents[2]
PREFIX = bicep_model.example_parameters()["namePrefix"]

# Bicep resource type -> (Terraform resource type, its name in the configuration).
NAMED = {
    "Microsoft.OperationalInsights/workspaces": ("azurerm_log_analytics_workspace", "main"),
    "Microsoft.Insights/components": ("azurerm_application_insights", "main"),
    "Microsoft.Storage/storageAccounts": ("azurerm_storage_account", "main"),
    "Microsoft.ServiceBus/namespaces": ("azurerm_servicebus_namespace", "main"),
    "Microsoft.EventHub/namespaces": ("azurerm_eventhub_namespace", "main"),
    "Microsoft.KeyVault/vaults": ("azurerm_key_vault", "main"),
    "Microsoft.Web/serverfarms": ("azurerm_service_plan", "main"),
    "Microsoft.Web/sites": (terraform_model.FUNCTION_APP, "main"),
}

# The names as released, the suffix 8 characters long. A name is part of a live deployment: a
# changed one makes a redeployment create (Bicep) or replace (Terraform) that resource, so a
# change here needs its note in docs/deploy.md#upgrading-an-existing-deployment.
RELEASED_NAMES = {
    "Microsoft.OperationalInsights/workspaces": "log-{prefix}-{suffix}",
    "Microsoft.Insights/components": "appi-{prefix}-{suffix}",
    "Microsoft.Storage/storageAccounts": "st{prefix}{suffix}",
    "Microsoft.ServiceBus/namespaces": "sbns-{prefix}-{suffix}",
    "Microsoft.EventHub/namespaces": "evhns-{prefix}-{suffix}",
    "Microsoft.KeyVault/vaults": "kv-{prefix}-{suffix}",
    "Microsoft.Web/serverfarms": "plan-{prefix}-{suffix}",
    "Microsoft.Web/sites": "func-{prefix}-{suffix}",
}


@pytest.fixture(scope="module")
def bicep() -> bicep_model.Model:
    return bicep_model.load()


@pytest.fixture(scope="module")
def terraform() -> terraform_model.TerraformModel:
    return terraform_model.load(ROOT / "infra" / "terraform")


def _bicep_pattern(model: bicep_model.Model, resource_type: str) -> str:
    suffix = model.variables["suffix"]
    assert len(suffix) == 8
    return model.one(resource_type).name.replace(suffix, "{suffix}")


def _terraform_pattern(model: terraform_model.TerraformModel, kind: str, name: str) -> str:
    text = model.resources[kind][name]["name"]
    return text.replace("${var.name_prefix}", PREFIX).replace("${local.suffix}", "{suffix}")


class TestNames:
    @pytest.mark.parametrize("resource_type", NAMED, ids=lambda t: t.split("/")[-1])
    def test_the_same_name_pattern(
        self,
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
        resource_type: str,
    ) -> None:
        """Each globally unique resource has the same name pattern and suffix length in both."""
        kind, name = NAMED[resource_type]
        assert _bicep_pattern(bicep, resource_type) == _terraform_pattern(terraform, kind, name)

    @pytest.mark.parametrize("resource_type", NAMED, ids=lambda t: t.split("/")[-1])
    def test_the_released_name(self, bicep: bicep_model.Model, resource_type: str) -> None:
        """Each name is the released one (with the same pattern in Terraform, checked above):
        renaming a resource makes a redeployment create or replace it, and docs/deploy.md must
        say so before a name changes."""
        released = RELEASED_NAMES[resource_type].replace("{prefix}", PREFIX)
        assert _bicep_pattern(bicep, resource_type) == released, (
            "a renamed resource needs docs/deploy.md#upgrading-an-existing-deployment"
        )
        deploy = (ROOT / "docs" / "deploy.md").read_text()
        assert '<a id="upgrading-an-existing-deployment"></a>' in deploy

    def test_the_terraform_suffix_has_eight_characters(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Terraform's suffix is 8 characters, like Bicep's take(uniqueString(...), 8)."""
        assert "substr(sha1(data.azurerm_resource_group.main.id), 0, 8)" in str(
            terraform.locals["suffix"]
        )

    def test_the_same_topic_names(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Both Event Grid topics have the same names in both."""
        suffix = bicep.variables["suffix"]
        bicep_topics = {
            t.name.replace(suffix, "{suffix}") for t in bicep.of_type("Microsoft.EventGrid/topics")
        }
        terraform_topics = {
            _terraform_pattern(terraform, "azurerm_eventgrid_topic", name)
            for name in terraform.resources["azurerm_eventgrid_topic"]
        }
        assert bicep_topics == terraform_topics


class TestRetention:
    def test_the_same_log_retention(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Log Analytics keeps logs equally long in both."""
        workspace = bicep.one("Microsoft.OperationalInsights/workspaces")
        tf = terraform.resources["azurerm_log_analytics_workspace"]["main"]
        assert workspace.properties["retentionInDays"] == tf["retention_in_days"] == 90

    def test_the_same_blob_soft_delete(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Deleted blobs and containers are restorable for the same number of days in both."""
        service = bicep.one("Microsoft.Storage/storageAccounts/blobServices").properties
        (blob,) = terraform.resources["azurerm_storage_account"]["main"]["blob_properties"]
        assert service["deleteRetentionPolicy"] == {
            "enabled": True,
            "days": blob["delete_retention_policy"][0]["days"],
        }
        assert service["containerDeleteRetentionPolicy"] == {
            "enabled": True,
            "days": blob["container_delete_retention_policy"][0]["days"],
        }

    def test_the_same_vault_soft_delete(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """The vault's soft delete and purge protection are the same in both."""
        vault = bicep.one("Microsoft.KeyVault/vaults").properties
        tf = terraform.resources["azurerm_key_vault"]["main"]
        assert vault["softDeleteRetentionInDays"] == tf["soft_delete_retention_days"]
        assert vault["enablePurgeProtection"] is tf["purge_protection_enabled"] is True


class TestEventTypesInDocs:
    @pytest.mark.parametrize("doc", ["events.md", "deploy.md"])
    def test_docs_list_exactly_the_subscribed_types(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel, doc: str
    ) -> None:
        """Every Writeback.*.Requested type a doc names is one the subscription delivers, and
        the doc names all of them; both subscriptions deliver the same ones."""
        subscribed = set(bicep.variables["requestedEventTypes"])
        (subscription,) = terraform.resources["azurerm_eventgrid_event_subscription"].values()
        assert set(subscription["included_event_types"]) == subscribed
        text = (ROOT / "docs" / doc).read_text()
        assert set(re.findall(r"Writeback\.\w+\.Requested", text)) == subscribed
