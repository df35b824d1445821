"""infra/terraform against the azurerm provider's own schema (npm @cdktf/provider-azurerm, the
release matching the minimum azurerm versions.tf allows): resource and data source types,
arguments and nested blocks at every depth, required ones, checked in
tests/infra/azurerm_schema.py. Nothing here runs Terraform or reaches the network."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra import azurerm_schema, terraform_model

TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"

FLEX = "azurerm_function_app_flex_consumption"
# The smallest valid Flex Consumption app: the cases below each break it one way.
APP = """
resource "azurerm_function_app_flex_consumption" "main" {
  name                        = "func-writeback"
  location                    = "westeurope"
  resource_group_name         = "rg-writeback"
  service_plan_id             = "plan-id"
  storage_container_type      = "blobContainer"
  storage_container_endpoint  = "https://st.blob.core.windows.net/app-package"
  storage_authentication_type = "SystemAssignedIdentity"
  runtime_name                = "python"
  runtime_version             = "3.11"
  app_settings = {
    WRITEBACK_DOMAINS = "corp.example.com"
  }
  site_config {
    minimum_tls_version = "1.2"
  }
  EXTRA
}
"""


@pytest.fixture(scope="module")
def schema() -> azurerm_schema.ProviderSchema:
    return azurerm_schema.load()


def _parsed() -> dict[str, list[Any]]:
    return terraform_model.parse_texts(terraform_model.read_directory(TERRAFORM))


def _problems(text: str, schema: azurerm_schema.ProviderSchema) -> list[str]:
    model = terraform_model.build(terraform_model.parse_texts({"main.tf": text}))
    return azurerm_schema.problems(model.resources, schema)


def _app(schema: azurerm_schema.ProviderSchema, extra: str = "", drop: str = "") -> list[str]:
    text = APP.replace("EXTRA", extra)
    if drop:
        text = re.sub(rf"\n  {drop}\s+=[^\n]*", "", text)
    return _problems(text, schema)


class TestConfiguration:
    def test_schema_is_the_minimum_azurerm_allowed(self, schema: Any) -> None:
        """The package's azurerm release is the lowest one versions.tf's constraint admits, so
        an argument newer than that minimum is reported."""
        (terraform,) = _parsed()["terraform"]
        (providers,) = terraform_model.normalise(terraform)["required_providers"]
        constraint = providers["azurerm"]["version"]
        match = re.fullmatch(r"~>\s*(\d+)\.(\d+)(?:\.(\d+))?", constraint)
        assert match, f"write the azurerm constraint as ~> X.Y[.Z], not {constraint!r}"
        minimum = ".".join(part or "0" for part in match.groups())
        assert schema.version == minimum

    def test_package_pins_the_release(self) -> None:
        """package.json names one exact @cdktf/provider-azurerm release and the lock pins its
        integrity."""
        package = json.loads((azurerm_schema.PACKAGE / "package.json").read_text())
        version = package["devDependencies"]["@cdktf/provider-azurerm"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version)
        lock = json.loads((azurerm_schema.PACKAGE / "package-lock.json").read_text())
        entry = lock["packages"]["node_modules/@cdktf/provider-azurerm"]
        assert entry["version"] == version
        assert entry["integrity"].startswith("sha512-")

    def test_every_resource_and_data_source_matches_the_schema(self, schema: Any) -> None:
        """Every resource and data source type, argument and nested block in infra/terraform
        exists in the provider schema, and every required one is set."""
        model = terraform_model.load(TERRAFORM)
        assert azurerm_schema.problems(model.resources, schema) == []

    def test_other_providers_types_are_required(self) -> None:
        """Every resource type the azurerm schema does not judge (time_sleep) belongs to a
        provider versions.tf requires, and so pins."""
        (terraform,) = _parsed()["terraform"]
        (providers,) = terraform_model.normalise(terraform)["required_providers"]
        model = terraform_model.load(TERRAFORM)
        assert azurerm_schema.foreign_types(model.resources, providers) == []
        assert azurerm_schema.foreign_types({"random_password": {}}, providers) == [
            "random_password"
        ]

    def test_the_provider_block_matches_the_schema(self, schema: Any) -> None:
        """The `provider "azurerm"` block's arguments and its features blocks exist."""
        blocks = [terraform_model.normalise(b) for b in _parsed()["provider"]]
        bodies = [block["azurerm"] for block in blocks if "azurerm" in block]
        assert bodies
        assert azurerm_schema.provider_problems(bodies, schema) == []

    def test_every_type_is_checked(self) -> None:
        """The check covers every resource and data source in the configuration, including
        the Flex Consumption app and both data sources."""
        model = terraform_model.load(TERRAFORM)
        assert {FLEX, "data.azurerm_client_config", "data.azurerm_resource_group"} <= set(
            model.resources
        )


class TestWhatTheMinimumCanSet:
    """Settings of infra/bicep that azurerm gained over time: once the minimum azurerm has the
    argument, Terraform sets it there, as Bicep does, and by no other provider or step."""

    def test_flex_app_sets_http_concurrency(self, schema: Any) -> None:
        """The minimum's Flex app has http_concurrency, and the app sets it from the variable:
        an azurerm that knows the argument but is not given it resets it on the next update."""
        assert "http_concurrency" in schema.block(schema.resources[FLEX]).arguments
        app = terraform_model.load(TERRAFORM).resources[FLEX]["main"]
        assert app["http_concurrency"] == "${var.http_per_instance_concurrency}"

    def test_topics_set_minimum_tls_once_the_provider_can(self, schema: Any) -> None:
        """Bicep's TLS 1.2 on the Event Grid topics is set in Terraform as soon as the minimum
        azurerm has an argument for it; until then README.md keeps the step after apply."""
        topic = schema.block(schema.resources["azurerm_eventgrid_topic"])
        tls = [name for name in topic.arguments if "tls" in name]
        topics = terraform_model.load(TERRAFORM).resources["azurerm_eventgrid_topic"]
        if tls:
            assert all(body.get(tls[0]) == "1.2" for body in topics.values()), tls
        else:
            readme = (TERRAFORM / "README.md").read_text()
            assert "properties.minimumTlsVersionAllowed=1.2" in readme


class TestReportsBrokenConfigurations:
    """Each kind of disagreement is reported, in a snippet and in the real configuration."""

    def test_a_valid_snippet_passes(self, schema: Any) -> None:
        """The snippet the other cases break is itself clean."""
        assert _app(schema) == []

    def test_unknown_argument(self, schema: Any) -> None:
        """An argument the resource does not have is reported with its address."""
        assert _app(schema, 'ftps_state = "Disabled"') == [
            f"{FLEX}.main: ftps_state: no such argument or block"
        ]

    def test_unknown_nested_block(self, schema: Any) -> None:
        """A nested block the resource does not have is reported."""
        assert _app(schema, "scale_and_concurrency {\n    maximum = 40\n  }") == [
            f"{FLEX}.main: scale_and_concurrency: no such argument or block"
        ]

    def test_unknown_argument_in_a_nested_block(self, schema: Any) -> None:
        """An argument a nested block does not have is reported with its path."""
        problems = _problems(APP.replace("EXTRA", "").replace("minimum_tls", "min_tls"), schema)
        assert problems == [f"{FLEX}.main: site_config.min_tls_version: no such argument or block"]

    def test_missing_required_argument(self, schema: Any) -> None:
        """A required argument left out is reported."""
        assert _app(schema, drop="runtime_name") == [
            f"{FLEX}.main: runtime_name: required argument, not set"
        ]

    def test_argument_written_as_a_block(self, schema: Any) -> None:
        """A map argument written as a block (`tags { ... }`) is reported."""
        assert _app(schema, 'tags {\n    team = "identity"\n  }') == [
            f"{FLEX}.main: tags: an argument, written as a block (use `tags = ...`)"
        ]

    def test_unknown_dynamic_block(self, schema: Any) -> None:
        """A dynamic block of a name the resource has no block for is reported."""
        extra = 'dynamic "cors" {\n    for_each = []\n    content {}\n  }'
        assert _app(schema, extra) == [f"{FLEX}.main: dynamic 'cors': no such block"]

    def test_unknown_resource_and_data_source(self, schema: Any) -> None:
        """A resource type or data source azurerm does not have is reported."""
        text = 'resource "azurerm_flex_function_app" "a" {}\ndata "azurerm_vault" "b" {}\n'
        assert _problems(text, schema) == [
            "azurerm_flex_function_app.a: azurerm 4.46.0 has no resource type "
            "azurerm_flex_function_app",
            "data.azurerm_vault.b: azurerm 4.46.0 has no data source azurerm_vault",
        ]

    def test_unknown_provider_argument(self, schema: Any) -> None:
        """A misspelt argument in the provider's features block is reported."""
        body = {"features": [{"key_vault": [{"purge_soft_delete_on_destroyed": False}]}]}
        assert azurerm_schema.provider_problems([body], schema) == [
            'provider "azurerm": features.key_vault.purge_soft_delete_on_destroyed: '
            "no such argument or block"
        ]

    def test_break_in_the_real_configuration(self, schema: Any) -> None:
        """A misspelt nested block of the real storage account is reported."""
        texts = terraform_model.read_directory(TERRAFORM)
        assert texts["storage.tf"].count("container_delete_retention_policy {") == 1
        texts["storage.tf"] = texts["storage.tf"].replace(
            "container_delete_retention_policy {", "container_retention_policy {"
        )
        model = terraform_model.build(terraform_model.parse_texts(texts))
        assert azurerm_schema.problems(model.resources, schema) == [
            "azurerm_storage_account.main: blob_properties.container_retention_policy: "
            "no such argument or block"
        ]


@pytest.fixture(scope="module")
def azuread() -> azurerm_schema.ProviderSchema:
    return azurerm_schema.load(azurerm_schema.AZUREAD_JSII)


class TestAzuread:
    """The app registrations (app-registration.tf) against the azuread provider's own schema
    (npm @cdktf/provider-azuread, the release matching the minimum azuread versions.tf allows)."""

    def test_schema_is_the_minimum_azuread_allowed(self, azuread: Any) -> None:
        """The package's azuread release is the lowest one versions.tf's constraint admits."""
        (terraform,) = _parsed()["terraform"]
        (providers,) = terraform_model.normalise(terraform)["required_providers"]
        match = re.fullmatch(r"~>\s*(\d+)\.(\d+)(?:\.(\d+))?", providers["azuread"]["version"])
        assert match
        assert azuread.provider == "azuread"
        assert azuread.version == ".".join(part or "0" for part in match.groups())

    def test_package_pins_the_release(self) -> None:
        """package.json names one exact @cdktf/provider-azuread release and the lock pins its
        integrity."""
        package = json.loads((azurerm_schema.AZUREAD_PACKAGE / "package.json").read_text())
        version = package["devDependencies"]["@cdktf/provider-azuread"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version)
        lock = json.loads((azurerm_schema.AZUREAD_PACKAGE / "package-lock.json").read_text())
        entry = lock["packages"]["node_modules/@cdktf/provider-azuread"]
        assert entry["version"] == version
        assert entry["integrity"].startswith("sha512-")

    def test_every_azuread_resource_matches_the_schema(self, azuread: Any) -> None:
        """Every azuread resource and data source, argument and nested block (dynamic ones
        too) exists in the provider schema, and every required one is set."""
        model = terraform_model.load(TERRAFORM)
        checked = {t for t in model.resources if t.removeprefix("data.").startswith("azuread_")}
        assert checked == {
            "azuread_application",
            "azuread_service_principal",
            "data.azuread_service_principal",
            "azuread_service_principal_delegated_permission_grant",
            "azuread_app_role_assignment",
        }
        assert azurerm_schema.problems(model.resources, azuread) == []

    def test_the_provider_block_matches_the_schema(self, azuread: Any) -> None:
        """The `provider "azuread"` block sets nothing the provider does not have."""
        blocks = [terraform_model.normalise(b) for b in _parsed()["provider"]]
        bodies = [block["azuread"] for block in blocks if "azuread" in block]
        assert len(bodies) == 1
        assert azurerm_schema.provider_problems(bodies, azuread) == []

    def test_each_schema_judges_only_its_provider(self, schema: Any, azuread: Any) -> None:
        """azurerm's schema leaves azuread's types alone and the other way round, so each type
        is judged by its own provider's schema."""
        text = 'resource "azuread_application" "a" {\n  display_name = "x"\n}\n'
        assert _problems(text, schema) == []
        assert _problems(APP.replace("EXTRA", ""), azuread) == []

    def test_misspelt_argument_in_a_dynamic_block(self, azuread: Any) -> None:
        """A misspelt argument inside the app roles' dynamic block is reported."""
        texts = terraform_model.read_directory(TERRAFORM)
        old = "allowed_member_types = app_role.value.allowedMemberTypes"
        assert texts["app-registration.tf"].count(old) == 1
        texts["app-registration.tf"] = texts["app-registration.tf"].replace(
            old, "member_types = app_role.value.allowedMemberTypes"
        )
        model = terraform_model.build(terraform_model.parse_texts(texts))
        assert azurerm_schema.problems(model.resources, azuread) == [
            "azuread_application.api: app_role.member_types: no such argument or block",
            "azuread_application.api: app_role.allowed_member_types: required argument, not set",
        ]

    def test_argument_of_another_major(self, azuread: Any) -> None:
        """azuread 2.x's `application_id` on a service principal (3.x: client_id) is reported."""
        text = 'resource "azuread_service_principal" "a" {\n  application_id = "x"\n}\n'
        assert _problems(text, azuread) == [
            "azuread_service_principal.a: application_id: no such argument or block",
            "azuread_service_principal.a: client_id: required argument, not set",
        ]
