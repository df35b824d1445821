"""Neither deployment gives the Flex Consumption app a site property or app setting that the
plan refuses or ignores (tests/infra/flex_consumption.py lists them, with Microsoft's reasons).
Nothing here reaches Azure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra import bicep_model, flex_consumption, terraform_model

TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"
EVERYTHING_ON = {"apiKeysEnabled": True, "eventSubscriptionEnabled": True, "apiKeys": "key"}
FTPS_STATE = "modules/functionapp.bicep site: properties.siteConfig.ftpsState: FTPS not supported"


class TestDeployments:
    @pytest.mark.parametrize("parameters", [{}, EVERYTHING_ON], ids=["example", "everything-on"])
    def test_bicep_sets_nothing_flex_refuses(self, parameters: dict[str, object]) -> None:
        """The Bicep site sets no denied property (under properties or siteConfig) and no
        denied app setting."""
        model = bicep_model.load(parameters=parameters)
        assert flex_consumption.bicep_problems(model.declared) == []

    def test_bicep_site_has_no_ftps_state(self) -> None:
        """The Bicep site leaves out siteConfig.ftpsState, which a Flex site refuses (error
        51021), as the issue 14 finding said it did."""
        assert FTPS_STATE not in flex_consumption.bicep_problems(bicep_model.load().declared)

    def test_terraform_sets_nothing_flex_refuses(self) -> None:
        """The Terraform Flex app sets no denied site_config argument and no denied app
        setting."""
        model = terraform_model.load(TERRAFORM)
        assert flex_consumption.terraform_problems(model.resources) == []

    def test_local_only_runtime_setting_stays_local(self) -> None:
        """FUNCTIONS_WORKER_RUNTIME, which the Core Tools need locally, is in both deployments'
        list of local-only settings, the list that keeps it out of Azure."""
        assert "FUNCTIONS_WORKER_RUNTIME" in bicep_model.load().variables["localOnlySettings"]
        assert "FUNCTIONS_WORKER_RUNTIME" in terraform_model.load(TERRAFORM).local_only_settings


SITE = """
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-writeback'
  location: 'westeurope'
  kind: 'functionapp,linux'
  properties: {
    siteConfig: {
      alwaysOn: true
      appSettings: [
        {
          name: 'FUNCTIONS_WORKER_RUNTIME'
          value: 'python'
        }
        {
          name: 'website_run_from_package'
          value: '1'
        }
      ]
    }
    containerSize: 1536
  }
}
"""

APP = """
resource "azurerm_function_app_flex_consumption" "main" {
  app_settings = {
    FUNCTIONS_EXTENSION_VERSION = "~4"
    WRITEBACK_DOMAINS           = "corp.example.com"
  }
  site_config {
    use_32_bit_worker = true
  }
}
"""


class TestReportsDeniedSettings:
    def test_bicep_site_with_denied_settings(self, tmp_path: Path) -> None:
        """A site property in either place and an app setting in any case are reported."""
        (tmp_path / "main.bicep").write_text(SITE, encoding="utf-8")
        (tmp_path / bicep_model.EXAMPLE_PARAMETERS).write_text('{"parameters": {}}')
        problems = flex_consumption.bicep_problems(bicep_model.load(tmp_path).declared)
        assert problems == [
            "main.bicep site: properties.containerSize: renamed as "
            "functionAppConfig.scaleAndConcurrency.instanceMemoryMB",
            "main.bicep site: properties.siteConfig.alwaysOn: not valid",
            "main.bicep site: app setting FUNCTIONS_WORKER_RUNTIME: replaced by "
            "functionAppConfig.runtime.name",
            "main.bicep site: app setting website_run_from_package: not used for deployments in "
            "Flex Consumption",
        ]

    def test_terraform_app_with_denied_settings(self) -> None:
        """A denied site_config argument (in azurerm's spelling) and app setting are reported."""
        model = terraform_model.build(terraform_model.parse_texts({"main.tf": APP}))
        assert flex_consumption.terraform_problems(model.resources) == [
            "azurerm_function_app_flex_consumption.main: site_config.use_32_bit_worker: "
            "32-bit not supported",
            "azurerm_function_app_flex_consumption.main: app setting "
            "FUNCTIONS_EXTENSION_VERSION: set by the platform",
        ]
