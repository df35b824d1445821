"""What makes a first deployment (and a redeployment) of infra/ succeed in Azure, checked offline.

Each class is one finding of the review that walked both deployments as Azure would run them: a
property Azure refuses, a role on a scope that does not exist yet, a vault name a deleted vault
still holds, a data-plane write racing its role, a host feature that needs a role nobody has. The
same facts are asserted of infra/bicep (through bicep_model) and infra/terraform (through
terraform_model and python-hcl2), so that the two keep failing, and passing, together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import hcl2
import pytest

from tests.infra import bicep_model, terraform_model
from tests.infra.bicep_model import (
    FUNCTION_PRINCIPAL,
    KEYVAULT_SECRETS_USER,
    SERVICEBUS_DATA_OWNER,
    SERVICEBUS_DATA_RECEIVER,
    DeploymentRefused,
    Entity,
)
from writeback.cloud.secrets import SIGNING_KEY_SECRET, relay_keys_secret
from writeback.transport import HEARTBEATS_QUEUE

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
DOMAINS = [d["name"] for d in bicep_model.example_parameters()["domains"]]
API_KEYS_SECRET = "writeback-api-keys"
# Object IDs each deployment must accept or refuse alike: 36 characters, yet not all GUIDs.
GUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NOT_HEX_ID = "0f8fad5b-d9cb-469f-a165-70867728950g"
RELAY_IDS = {
    GUID: True,
    GUID.upper(): True,
    NOT_HEX_ID: False,
    GUID.replace("-", "") + "----": False,  # the dashes at the end
    "0f8fad5bd-9cb-469f-a165-70867728950e": False,  # a dash out of place
    GUID.replace("-", "_"): False,
    f"{{{GUID[:34]}}}": False,  # braces
    GUID + " ": False,
    "": False,
}


@pytest.fixture(scope="module")
def terraform() -> terraform_model.TerraformModel:
    return terraform_model.load(TERRAFORM)


@pytest.fixture(scope="module")
def hcl() -> dict[str, Any]:
    """Every .tf file's python-hcl2 tree, merged by top-level block kind."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for kind, blocks in hcl2.loads(path.read_text()).items():
            merged.setdefault(kind, []).extend(terraform_model.normalise(blocks))
    return merged


def _tf_resource(terraform: terraform_model.TerraformModel, kind: str, name: str) -> Any:
    return terraform.resources[kind][name]


def _secret_grants(model: bicep_model.Model) -> set[str]:
    return {
        a.scope.name
        for a in model.role_assignments
        if a.role == KEYVAULT_SECRETS_USER and a.principal_kind == FUNCTION_PRINCIPAL
    }


class TestFlexSite:
    def test_no_site_sets_ftps_state(self, terraform: terraform_model.TerraformModel) -> None:
        """No Flex Consumption site sets ftpsState, which Azure refuses there (error 51021)."""
        for site in bicep_model.load().of_type("Microsoft.Web/sites"):
            assert "ftpsState" not in site.properties.get("siteConfig", {}), site
        app = _tf_resource(terraform, terraform_model.FUNCTION_APP, "main")
        assert "ftps_state" not in app["site_config"][0]

    def test_http_concurrency_is_sized_for_waiting_calls(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Both deployments raise HTTP per-instance concurrency above Python's default of 1, to
        the same default, from a parameter."""
        model = bicep_model.load()
        site = model.one("Microsoft.Web/sites")
        triggers = site.properties["functionAppConfig"]["scaleAndConcurrency"]["triggers"]
        bicep_default = triggers["http"]["perInstanceConcurrency"]
        assert bicep_default > 1
        changed = bicep_model.load(parameters={"httpPerInstanceConcurrency": 7})
        changed_site = changed.one("Microsoft.Web/sites").properties["functionAppConfig"]
        assert changed_site["scaleAndConcurrency"]["triggers"]["http"] == {
            "perInstanceConcurrency": 7
        }
        app = _tf_resource(terraform, terraform_model.FUNCTION_APP, "main")
        assert app["http_concurrency"] == "${var.http_per_instance_concurrency}"
        assert terraform.variables["http_per_instance_concurrency"]["default"] == bicep_default

    def test_terraform_sets_http_concurrency_through_azurerm_alone(
        self, terraform: terraform_model.TerraformModel, hcl: dict[str, Any]
    ) -> None:
        """No other provider writes the site: an azurerm that knows http_concurrency but is not
        given it resets the value on the app's next update, fighting whoever set it."""
        assert not [kind for kind in terraform.resources if kind.startswith("azapi_")]
        (terraform_block,) = hcl["terraform"]
        (providers,) = terraform_block["required_providers"]
        assert "azapi" not in providers


class TestSecretGrants:
    CASES: ClassVar[dict[str, tuple[dict[str, Any], set[str]]]] = {
        "none": ({}, set()),
        "signing key": ({"cloudSigningKey": "{}"}, {SIGNING_KEY_SECRET}),
        "one domain": (
            {"relayJwks": {DOMAINS[0]: "{}", DOMAINS[1]: ""}},
            {relay_keys_secret(DOMAINS[0])},
        ),
        "api keys off": ({"apiKeys": "k" * 40}, set()),
        "api keys on": ({"apiKeysEnabled": True, "apiKeys": "k" * 40}, {API_KEYS_SECRET}),
    }

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_bicep_grants_exactly_the_secrets_it_writes(self, case: str) -> None:
        """A secret left out gets no role (a role needs its secret to exist), as in Terraform."""
        parameters, expected = self.CASES[case]
        model = bicep_model.load(parameters=parameters)
        written = {r.name for r in model.of_type("Microsoft.KeyVault/vaults/secrets")}
        assert written == expected
        assert _secret_grants(model) == expected

    def test_terraform_grants_on_the_same_condition(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Terraform writes, and grants, a secret under the conditions the Bicep cases prove."""
        assert dict(terraform.secrets) == {
            SIGNING_KEY_SECRET: "${local.create_signing_key_secret ? 1 : 0}",
            "writeback-relays-{domain}": "${local.relay_jwks_domains}",
            API_KEYS_SECRET: "${local.create_api_keys_secret ? 1 : 0}",
        }
        names = (TERRAFORM / "names.tf").read_text()
        assert 'create_signing_key_secret = nonsensitive(var.cloud_signing_key != "")' in names
        assert 'var.api_keys_enabled && nonsensitive(var.api_keys != "")' in names
        assert 'if nonsensitive(lookup(local.relay_jwks, name, "") != "")' in names


class TestKeyVaultRedeploy:
    def test_bicep_recovers_the_deleted_vault_on_request(self) -> None:
        """keyVaultRecover turns the vault's createMode to recover; by default it is created."""
        created = bicep_model.load().one("Microsoft.KeyVault/vaults")
        assert created.properties["createMode"] == "default"
        recovered = bicep_model.load(parameters={"keyVaultRecover": True})
        assert recovered.one("Microsoft.KeyVault/vaults").properties["createMode"] == "recover"

    def test_terraform_recovers_the_deleted_vault(self, hcl: dict[str, Any]) -> None:
        """azurerm recovers a soft-deleted vault of the same name and its secrets, never purges."""
        (provider,) = [p["azurerm"] for p in hcl["provider"] if "azurerm" in p]
        (key_vault,) = provider["features"][0]["key_vault"]
        assert key_vault["recover_soft_deleted_key_vaults"] is True
        assert key_vault["recover_soft_deleted_secrets"] is True
        assert key_vault["purge_soft_delete_on_destroy"] is False

    def test_terraform_imports_the_recovered_secrets(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """The recovered vault's secrets already exist, which azurerm refuses to create: the
        README and docs/deploy.md import each one, at its address, by the name the code reads."""
        docs = [(TERRAFORM / "README.md").read_text(), (ROOT / "docs" / "deploy.md").read_text()]
        imports = {
            "signing_key[0]": SIGNING_KEY_SECRET,
            'relay_keys["corp.example.com"]': relay_keys_secret("corp.example.com"),
            "api_keys[0]": API_KEYS_SECRET,
        }
        assert set(terraform.resources["azurerm_key_vault_secret"]) == {
            "signing_key",
            "relay_keys",
            "api_keys",
        }
        for address, secret in imports.items():
            pattern = (
                rf"terraform import 'azurerm_key_vault_secret\.{re.escape(address)}'"
                rf"[ \\\n]+\"\$\(secret_id {re.escape(secret)}\)\""
            )
            for text in docs:
                assert re.search(pattern, text), address


class TestSecretsKeepRotations:
    """A later apply neither writes a secret's value back over a rotation nor destroys a secret
    whose value was left out, the promises infra/bicep keeps by writing only what it is given."""

    def test_each_secret_is_written_once_and_never_destroyed(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Every Terraform secret ignores its value after creation (a rotation in Key Vault
        stays) and refuses to be destroyed (an emptied value stops the plan)."""
        secrets = terraform.resources["azurerm_key_vault_secret"]
        assert set(secrets) == {"signing_key", "relay_keys", "api_keys"}
        for name, body in secrets.items():
            assert body["lifecycle"] == [{"ignore_changes": ["value"], "prevent_destroy": True}], (
                name
            )

    def test_the_hand_over_names_each_secret_with_its_role(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """The README's `terraform state rm` takes out each secret together with the role that
        reads it, by the addresses the configuration uses, so both stay in Azure."""
        readme = (TERRAFORM / "README.md").read_text()
        roles = terraform.resources["azurerm_role_assignment"]
        for name, body in terraform.resources["azurerm_key_vault_secret"].items():
            (role,) = [
                r for r, b in roles.items() if f"azurerm_key_vault_secret.{name}[" in b["scope"]
            ]
            key = '["corp.example.com"]' if "for_each" in body else "[0]"
            assert f"'azurerm_key_vault_secret.{name}{key}'" in readme, name
            assert f"'azurerm_role_assignment.{role}{key}'" in readme, role


class TestParameterChecks:
    """Bicep refuses, with fail(), the combinations Terraform's variable validations refuse."""

    BAD: ClassVar[dict[str, tuple[dict[str, Any], str]]] = {
        "wait beyond lifetime": ({"waitSeconds": 61, "requestLifetimeSeconds": 60}, "waitSeconds"),
        "audiences alone": (
            {
                "authTenantId": "",
                "authAudiences": "api://x",
                "apiKeysEnabled": True,
                "createAppRegistration": False,
            },
            "go together",
        ),
        "tenant alone": (
            {"authAudiences": "", "createAppRegistration": False},
            "go together",
        ),
        "no authentication": (
            {
                "authTenantId": "",
                "authAudiences": "",
                "apiKeysEnabled": False,
                "createAppRegistration": False,
            },
            "No way to authenticate",
        ),
        "pages path without slashes": ({"pagesPath": "api/pages"}, "pagesPath"),
        "app role that does not exist": (
            {"appRoleAssignments": [{"role": "Writeback.All", "principalId": "x"}]},
            "appRoleAssignments role",
        ),
        "app roles without the registration": (
            {
                "createAppRegistration": False,
                "appRoleAssignments": [{"role": "Writeback.Read", "principalId": "x"}],
            },
            "needs createAppRegistration",
        ),
        "duplicate domains": (
            {"domains": [{"name": "a.test", "relayPrincipalIds": []}] * 2},
            "unique",
        ),
        "relay id not a guid": (
            {"domains": [{"name": "a.test", "relayPrincipalIds": ["relay-1"]}]},
            "GUID",
        ),
        "relay id of a guid's length, not hexadecimal": (
            {"domains": [{"name": "a.test", "relayPrincipalIds": [NOT_HEX_ID]}]},
            "GUID",
        ),
        "jwks for an unknown domain": ({"relayJwks": {"other.test": "{}"}}, "relayJwks"),
        "microsoft writeback for an unknown domain": (
            {"microsoftWritebackDomains": ["other.test"]},
            "microsoftWritebackDomains",
        ),
    }

    @pytest.mark.parametrize("case", BAD, ids=str)
    def test_bicep_refuses(self, case: str) -> None:
        """The deployment stops with a message naming the rule."""
        parameters, message = self.BAD[case]
        with pytest.raises(DeploymentRefused, match=message):
            bicep_model.load(parameters=parameters)

    @pytest.mark.parametrize("relay_id", RELAY_IDS, ids=repr)
    def test_relay_ids_are_guids_in_both(
        self, terraform: terraform_model.TerraformModel, relay_id: str
    ) -> None:
        """Bicep accepts exactly the relay object IDs Terraform's GUID regex accepts."""
        (rule,) = [
            rule["condition"]
            for rule in terraform.variables["domains"]["validation"]
            if "relay_principal_ids" in rule["condition"]
        ]
        pattern = re.search(r'regex\("([^"]+)", id\)', rule)
        assert pattern
        assert bool(re.fullmatch(pattern[1], relay_id)) is RELAY_IDS[relay_id]
        domains = [{"name": "a.test", "relayPrincipalIds": [relay_id]}]
        if RELAY_IDS[relay_id]:
            bicep_model.load(parameters={"domains": domains})
        else:
            with pytest.raises(DeploymentRefused, match="GUID"):
                bicep_model.load(parameters={"domains": domains})

    def test_terraform_has_each_rule(self, terraform: terraform_model.TerraformModel) -> None:
        """Each rule Bicep checks is a validation of the Terraform variables."""
        messages = " ".join(
            rule["error_message"]
            for variable in terraform.variables.values()
            for rule in variable.get("validation", [])
        )
        for fragment in ("request_lifetime_seconds", "go together", "No way to authenticate"):
            assert fragment in messages
        for fragment in ("unique", "GUID", "relay_jwks key", "microsoft_writeback_domains entry"):
            assert fragment in messages
        app_rules = ("pages_path", "app_role_assignments role", "needs create_app_registration")
        for fragment in app_rules:
            assert fragment in messages


class TestServiceBusScale:
    def test_heartbeat_trigger_can_read_its_queue_count(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """The function holds Data Owner (the Manage claim scale monitoring needs) on the
        heartbeats queue, its only trigger's queue, and on no other queue, in both."""
        model = bicep_model.load()
        owner = {s for r, s in model.granted(FUNCTION_PRINCIPAL) if r == SERVICEBUS_DATA_OWNER}
        assert owner == {Entity("queue", HEARTBEATS_QUEUE)}
        assert (SERVICEBUS_DATA_RECEIVER, Entity("queue", HEARTBEATS_QUEUE)) not in (
            model.granted(FUNCTION_PRINCIPAL)
        )
        tf_owner = {
            r.scope for r in terraform.role_assignments if r.role == "Azure Service Bus Data Owner"
        }
        assert tf_owner == {terraform_model.Entity("queue", HEARTBEATS_QUEUE)}


class TestHostSettings:
    def test_both_deployments_set_the_host_settings(
        self, terraform: terraform_model.TerraformModel
    ) -> None:
        """Diagnostic events are off (their tables hold no role), the app's pinned packages win
        over the worker's, and the worker exports the app's telemetry in the host's traces."""
        expected = {
            "AzureWebJobsFeatureFlags": "DisableDiagnosticEventLogging",
            "PYTHON_ISOLATE_WORKER_DEPENDENCIES": "1",
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
        }
        bicep = bicep_model.load().app_setting_values
        for name, value in expected.items():
            assert bicep.get(name) == value, name
            assert terraform.app_setting_values.get(name) == value, name


class TestTerraformFirstApply:
    def test_data_plane_writes_wait_for_the_deployers_roles(self, hcl: dict[str, Any]) -> None:
        """Secrets and tables depend on a time_sleep that follows both deployer roles, so the
        first apply does not meet 403 while the roles propagate."""
        resources = {
            (kind, name): body
            for block in hcl["resource"]
            for kind, named in block.items()
            for name, body in named.items()
        }
        (sleep,) = [b for (k, _), b in resources.items() if k == "time_sleep"]
        seconds = int(re.fullmatch(r"(\d+)s", sleep["create_duration"])[1])  # type: ignore[index]
        assert seconds >= 60
        triggers = " ".join(sleep["triggers"].values())
        for role in ("deployer_write_secrets", "deployer_create_tables"):
            assert f"azurerm_role_assignment.{role}" in triggers
        for (kind, name), body in resources.items():
            if kind in ("azurerm_key_vault_secret", "azurerm_storage_table"):
                assert "${time_sleep.deployer_roles_propagate}" in body["depends_on"], name

    def test_azure_web_jobs_storage_stays_blank_and_watched(self, hcl: dict[str, Any]) -> None:
        """AzureWebJobsStorage is given as "" (else azurerm writes a keyed string that beats the
        identity settings) and never ignored (else the next update writes that string)."""
        (app,) = [
            named[terraform_model.FUNCTION_APP]["main"]
            for named in hcl["resource"]
            if terraform_model.FUNCTION_APP in named
        ]
        assert app["app_settings"]["AzureWebJobsStorage"] == ""
        ignored = [rule.get("ignore_changes") for rule in app.get("lifecycle", [])]
        assert not any(ignored), ignored

    def test_providers_are_pinned_and_locked_or_lockable(self, hcl: dict[str, Any]) -> None:
        """Every provider has a source and a version held to one major release; without a
        committed lock file the README starts with `terraform providers lock`."""
        (terraform_block,) = hcl["terraform"]
        (providers,) = terraform_block["required_providers"]
        assert set(providers) == {"azurerm", "azuread", "time"}
        for name, requirement in providers.items():
            assert requirement["source"], name
            assert re.fullmatch(r"~> \d+\.\d+(\.\d+)?", requirement["version"]), name
        lock = TERRAFORM / ".terraform.lock.hcl"
        if lock.exists():
            text = lock.read_text()
            for requirement in providers.values():
                assert f'"registry.terraform.io/{requirement["source"].lower()}"' in text
        else:
            assert "terraform providers lock" in (TERRAFORM / "README.md").read_text()
